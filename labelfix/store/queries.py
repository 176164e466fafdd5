"""Reads and writes of the store that the use cases share. Each takes a session first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelfix.errors import DataError, NotFoundError
from labelfix.store.locking import insert_missing, lock_dataset
from labelfix.store.models import Audit, Candidate, Dataset, DatasetVersion, utcnow


@dataclass(frozen=True)
class DatasetInfo:
    """What the store needs to know about a dataset to record a scan of it."""

    name: str
    source: str
    source_kind: str
    config: str | None
    split: str | None
    text_columns: Sequence[str]
    label_column: str
    label_names: Sequence[str]
    fingerprint: str
    row_count: int
    labels_option: Sequence[str] | None = None


def get_dataset(session: Session, *, name: str) -> Dataset | None:
    return session.scalars(select(Dataset).where(Dataset.name == name)).first()


def version_with_fingerprint(session: Session, *, fingerprint: str,
                             label_names: Sequence[str]) -> DatasetVersion | None:
    """A recorded version holding exactly these rows (e.g. an exported one being re-scanned)."""
    for version in session.scalars(
        select(DatasetVersion).where(DatasetVersion.fingerprint == fingerprint)
        .order_by(DatasetVersion.version.desc())
    ):
        if list(version.dataset.label_names) == list(label_names):
            return version
    return None


def free_name(session: Session, *, info: DatasetInfo) -> str:
    """``info.name``, or the first ``name-2``, ``name-3``... not taken by another source.

    Used when the name was derived from the source rather than given with --name.
    """
    candidate, number = info.name, 1
    while True:
        dataset = get_dataset(session, name=candidate)
        if dataset is None or _same_source(dataset, info):
            return candidate
        number += 1
        candidate = f"{info.name}-{number}"


def _same_source(dataset: Dataset, info: DatasetInfo) -> bool:
    return (dataset.source, dataset.config, dataset.split) == (info.source, info.config, info.split)


def ensure_version(session: Session, *, info: DatasetInfo) -> DatasetVersion:
    """The dataset version holding exactly these rows, created as version 0 on a first scan.

    Raises:
        DataError: the name is taken by another source, or the data behind the name changed.
    """
    dataset = get_dataset(session, name=info.name)
    if dataset is None:
        # On a shared PostgreSQL store another first scan of this source may be recording the
        # same name right now: its row is waited for and then used, never a second one.
        insert_missing(session, Dataset.__table__, [{
            "name": info.name, "source": info.source, "source_kind": info.source_kind,
            "config": info.config, "split": info.split, "text_columns": list(info.text_columns),
            "label_column": info.label_column, "label_names": list(info.label_names),
            "labels_option": list(info.labels_option) if info.labels_option else None,
            "created_at": utcnow(),
        }], keys=("name",))
        dataset = get_dataset(session, name=info.name)
        if dataset is None:  # pragma: no cover -- inserted or found just above
            raise DataError(f"dataset {info.name!r} could not be recorded; scan again")
    lock_dataset(session, dataset.id)
    # The very rows of a recorded version (say an exported one) are that version,
    # wherever they are read from.
    known = session.scalars(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id,
            DatasetVersion.fingerprint == info.fingerprint,
        ).order_by(DatasetVersion.version.desc())
    ).first()
    if known is not None and list(dataset.label_names) == list(info.label_names):
        return known
    if not _same_source(dataset, info):
        raise DataError(
            f"dataset name {info.name!r} is taken by {_describe(dataset)}; "
            "pass --name to record this source under another name"
        )
    if list(dataset.label_names) != list(info.label_names):
        raise DataError(
            f"dataset {info.name!r} was scanned with labels {','.join(dataset.label_names)}, "
            f"now {','.join(info.label_names)}; pass --labels {','.join(dataset.label_names)} "
            "or --name to record it as a new dataset"
        )
    latest = session.scalars(
        select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
        .order_by(DatasetVersion.version.desc())
    ).first()
    if latest is not None:
        raise DataError(
            f"the data of dataset {info.name!r} changed since version {latest.version} was "
            f"recorded (fingerprint {latest.fingerprint[:12]} -> {info.fingerprint[:12]}); "
            "pass --name to scan it as a new dataset"
        )
    version = DatasetVersion(
        dataset_id=dataset.id, version=0, fingerprint=info.fingerprint,
        row_count=info.row_count, location=info.source, corrections_applied=0,
    )
    session.add(version)
    session.flush()
    return version


def _describe(dataset: Dataset) -> str:
    parts = [dataset.source]
    if dataset.config:
        parts.append(f"config {dataset.config}")
    if dataset.split:
        parts.append(f"split {dataset.split}")
    return ", ".join(parts)


def get_audit(session: Session, audit_id: int | None, *, dataset: str | None = None) -> Audit:
    """An audit by id, or the newest complete one (of ``dataset`` when given).

    Raises:
        NotFoundError: no such audit, or no complete audit yet.
    """
    if audit_id is not None:
        audit = session.get(Audit, audit_id)
        if audit is None:
            raise NotFoundError(f"there is no audit {audit_id}; list them with `labelfix audits`")
        return audit
    query = select(Audit).where(Audit.status == "complete")
    if dataset is not None:
        query = query.join(DatasetVersion).join(Dataset).where(Dataset.name == dataset)
    audit = session.scalars(query.order_by(Audit.id.desc())).first()
    if audit is None:
        where = f" of dataset {dataset!r}" if dataset else ""
        raise NotFoundError(f"there is no complete audit{where} yet; run `labelfix scan` first")
    return audit


def effective_status(audit: Audit) -> str:
    """The audit's status, with "interrupted" for one whose process on this host is gone.

    A process killed mid-scan cannot mark its audit failed; it stays "running" in the store.
    On another host the process cannot be checked, and "running" is all that is known.
    """
    if audit.status != "running" or not audit.worker:
        return audit.status
    import os
    import socket

    host, _, pid = audit.worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return audit.status
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "interrupted"
    except PermissionError:  # alive, under another user
        return audit.status
    return audit.status


@dataclass(frozen=True)
class AuditRow:
    audit_id: int
    dataset: str
    version: int
    model: str
    total: int | None
    candidates: int | None
    status: str
    created_at: datetime
    accuracy: float | None
    filter_by: str | None
    report: str | None = None


def list_audits(session: Session, *, dataset: str | None = None) -> list[AuditRow]:
    """Every audit, oldest first."""
    query = (
        select(Audit, Dataset.name, DatasetVersion.version)
        .join(DatasetVersion, Audit.dataset_version_id == DatasetVersion.id)
        .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
        .order_by(Audit.id)
    )
    if dataset is not None:
        query = query.where(Dataset.name == dataset)
    reports = latest_reports(session)
    return [
        AuditRow(
            audit_id=audit.id, dataset=name, version=version, model=audit.model,
            total=audit.total, candidates=audit.candidates, status=effective_status(audit),
            created_at=audit.created_at, accuracy=audit.accuracy,
            filter_by=(audit.parameters or {}).get("filter_by"),
            report=reports.get(audit.id),
        )
        for audit, name, version in session.execute(query)
    ]


def latest_reports(session: Session) -> dict[int, str]:
    """The path of the newest report of each audit that has one."""
    from labelfix.store.models import Report

    found: dict[int, str] = {}
    for audit_id, path in session.execute(
            select(Report.audit_id, Report.path).order_by(Report.id)):
        found[audit_id] = path
    return found


def list_candidates(session: Session, *, audit_id: int, limit: int | None = None
                    ) -> list[Candidate]:
    """The candidates of an audit, best rank first."""
    query = select(Candidate).where(Candidate.audit_id == audit_id).order_by(Candidate.rank)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_candidates(session: Session, *, audit_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(Candidate).where(Candidate.audit_id == audit_id)
    ) or 0


def label_names_of(session: Session, audit: Audit) -> list[str]:
    version = session.get(DatasetVersion, audit.dataset_version_id)
    if version is None:  # foreign keys make this impossible on a sound database
        raise NotFoundError(f"audit {audit.id} has no dataset version")
    return list(version.dataset.label_names)
