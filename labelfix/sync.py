"""The sync use case: push candidates to a review backend, pull verdicts, record corrections.

Every step is committed as soon as it is true (a batch accepted by the server, a pull with its
annotations and corrections), so a crash or a failed request loses nothing and a rerun
finishes the job without duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfix._hooks import checkpoint
from labelfix.backends.base import (
    PushItem,
    ReviewBackend,
    Verdict,
    check_remote_name,
    default_remote_name,
    remote_id,
)
from labelfix.backends.http import BackendError
from labelfix.errors import NotFoundError, UsageError
from labelfix.events import Event, EventCallback, Task, ignore
from labelfix.store import Store
from labelfix.store import probabilities as stored_probs
from labelfix.store.locking import insert_missing, lock_dataset
from labelfix.store.models import (
    Annotation,
    Audit,
    Candidate,
    Correction,
    Dataset,
    DatasetVersion,
    ProbabilitySet,
    ReviewState,
    SyncCursor,
    utcnow,
)
from labelfix.store.queries import get_audit, get_dataset


@dataclass
class SyncResult:
    dataset: str
    backend: str
    remote_name: str
    pushed: int = 0
    pulled: int = 0
    corrections: int = 0
    confirmed: int = 0
    discarded: int = 0
    failed: int = 0
    ignored: int = 0
    disagreements: list[str] = field(default_factory=list)


def resolve_dataset(session: Session, name: str | None) -> Dataset:
    """The named dataset, or the only one in the store.

    Raises:
        NotFoundError: no such dataset, or none at all.
        UsageError: several datasets and no name.
    """
    if name is not None:
        dataset = get_dataset(session, name=name)
        if dataset is None:
            known = ", ".join(session.scalars(select(Dataset.name))) or "none yet"
            raise NotFoundError(f"there is no dataset {name!r} (datasets: {known})")
        return dataset
    datasets = list(session.scalars(select(Dataset).order_by(Dataset.id)))
    if not datasets:
        raise NotFoundError("there are no datasets yet; run `labelfix scan` first")
    if len(datasets) > 1:
        raise UsageError("name the dataset to sync: " + ", ".join(d.name for d in datasets))
    return datasets[0]


def run_sync(
    store: Store,
    backend: ReviewBackend,
    *,
    dataset: str | None = None,
    remote_name: str | None = None,
    push: bool = True,
    pull: bool = True,
    on_event: EventCallback = ignore,
) -> SyncResult:
    """Push the newest audit's candidates not yet pushed, then pull verdicts not yet pulled.

    Raises:
        NotFoundError, UsageError: no such dataset or audit, a bad remote name.
        BackendError: the server refused or kept failing (what succeeded before is kept).
    """
    with store.session() as session:
        found = resolve_dataset(session, dataset)
        name = found.name
        dataset_id = found.id
        label_names = list(found.label_names)
    remote = check_remote_name(remote_name) if remote_name else default_remote_name(name)
    result = SyncResult(dataset=name, backend=backend.name, remote_name=remote)
    if push:
        result.pushed = push_candidates(store, backend, dataset_id=dataset_id, dataset_name=name,
                                        remote_name=remote, label_names=label_names,
                                        on_event=on_event)
    if pull:
        pull_verdicts(store, backend, dataset_id=dataset_id, remote_name=remote,
                      label_names=label_names, result=result, on_event=on_event)
    return result


def push_candidates(
    store: Store, backend: ReviewBackend, *, dataset_id: int, dataset_name: str,
    remote_name: str, label_names: Sequence[str], on_event: EventCallback = ignore,
) -> int:
    """Push the newest complete audit's candidates that are not on the server yet.

    Returns:
        How many records the server accepted.
    """
    with store.session() as session:
        audit = get_audit(session, None, dataset=dataset_name)
        items = _items_to_push(session, audit, dataset_id=dataset_id, dataset_name=dataset_name,
                               backend=backend.name, remote_name=remote_name,
                               label_names=label_names)
    if not items:
        return 0
    pushed = 0
    by_id = {item.remote_id: item for item in items}
    pending = list(by_id)
    with Task(on_event, f"Pushing to {backend.name}", total=len(items)) as task:
        try:
            for accepted in backend.push(items, remote_name=remote_name,
                                         label_names=label_names):
                with store.session() as session:
                    _mark(session, backend.name, remote_name, accepted, status="pushed",
                          dataset_id=dataset_id)
                checkpoint("sync.push_batch")
                pushed += len(accepted)
                done = set(accepted)
                pending = [rid for rid in pending if rid not in done]
                task.advance(len(accepted))
        except BackendError as exc:
            with store.session() as session:
                _mark(session, backend.name, remote_name, pending, status="failed",
                      error=str(exc), dataset_id=dataset_id)
            raise
    return pushed


def _items_to_push(
    session: Session, audit: Audit, *, dataset_id: int, dataset_name: str, backend: str,
    remote_name: str, label_names: Sequence[str],
) -> list[PushItem]:
    lock_dataset(session, dataset_id)
    candidates = list(session.scalars(
        select(Candidate).where(Candidate.audit_id == audit.id).order_by(Candidate.rank)
    ))

    def load_states() -> dict[str, ReviewState]:
        return {
            state.remote_id: state
            for state in session.scalars(select(ReviewState).where(
                ReviewState.backend == backend, ReviewState.remote_dataset == remote_name,
                ReviewState.dataset_id == dataset_id,
            ))
        }

    states = load_states()
    now = utcnow()
    missing = [
        {"dataset_id": dataset_id, "row": c.row, "candidate_id": c.id, "backend": backend,
         "remote_dataset": remote_name, "remote_id": remote_id(dataset_name, c.row),
         "status": "pending", "attempts": 0, "updated_at": now}
        for c in candidates if remote_id(dataset_name, c.row) not in states
    ]
    if missing:
        # Inserted as "pending" unless another process recorded the record meanwhile.
        insert_missing(session, ReviewState.__table__, missing,
                       keys=("backend", "remote_dataset", "remote_id"))
        states = load_states()
    todo: list[Candidate] = []
    for candidate in candidates:
        state = states.get(remote_id(dataset_name, candidate.row))
        # A record already on the server may hold a person's verdict: pushing it again would
        # overwrite that verdict, so only records never accepted are (re)sent. (None: the
        # record id is another dataset's, which a unique name makes impossible.)
        if state is None or state.status in ("pushed", "reviewed"):
            continue
        state.candidate_id = candidate.id
        todo.append(candidate)
    session.flush()
    if not todo:
        return []
    probs = candidate_probabilities(session, audit, [c.row for c in todo])
    return [
        PushItem(
            remote_id=remote_id(dataset_name, c.row), row=c.row, audit_id=audit.id,
            text=c.text, text_pair=c.text_pair, given_label=label_names[c.given_label],
            suggested_label=label_names[c.suggested_label], label_quality=c.label_quality,
            probabilities={name: float(p) for name, p in zip(label_names, probs[i], strict=True)},
            source=audit.model,
        )
        for i, c in enumerate(todo)
    ]


def candidate_probabilities(session: Session, audit: Audit, rows: list[int]) -> np.ndarray:
    """The audit's stored probabilities of the given rows, (len(rows), K) float32."""
    if audit.probability_set_id is None:
        raise NotFoundError(f"audit {audit.id} has no stored probabilities; scan again")
    prob_set = session.get_one(ProbabilitySet, audit.probability_set_id)
    return stored_probs.load_rows(session, prob_set, rows)


def _mark(session: Session, backend: str, remote_name: str, remote_ids: Sequence[str], *,
          status: str, dataset_id: int, error: str | None = None) -> None:
    if not remote_ids:
        return
    lock_dataset(session, dataset_id)
    now = utcnow()
    for state in session.scalars(select(ReviewState).where(
        ReviewState.backend == backend, ReviewState.remote_dataset == remote_name,
        ReviewState.remote_id.in_(list(remote_ids)),
    )):
        state.attempts += 1
        state.updated_at = now
        if status == "pushed":
            state.status = "pushed"
            state.pushed_at = now
            state.last_error = None
        elif state.status not in ("pushed", "reviewed"):
            state.status = status
            state.last_error = error


def pull_verdicts(
    store: Store, backend: ReviewBackend, *, dataset_id: int, remote_name: str,
    label_names: Sequence[str], result: SyncResult, on_event: EventCallback = ignore,
) -> None:
    """Pull verdicts changed since the last pull and record annotations and corrections."""
    with store.session() as session:
        cursor_row = _cursor(session, backend.name, remote_name)
        since = cursor_row.cursor
    with Task(on_event, f"Pulling from {backend.name}", total=None):
        batch = backend.pull(remote_name=remote_name, since=since)
    with store.session() as session:
        states = {
            s.remote_id: s for s in session.scalars(select(ReviewState).where(
                ReviewState.backend == backend.name, ReviewState.remote_dataset == remote_name,
            ))
        }
        touched: set[int] = set()
        # In the servers' time order, each verdict applied as it comes: when two annotators
        # disagree, both of their changes stand in history and the newer one holds.
        for verdict in sorted(batch.verdicts, key=lambda v: (v.annotated_at, v.remote_id)):
            state = states.get(verdict.remote_id)
            if state is None or state.dataset_id != dataset_id:
                result.ignored += 1
                continue
            decision = _record_verdict(session, verdict, state, backend=backend.name,
                                       remote_name=remote_name, label_names=label_names,
                                       result=result, on_event=on_event)
            if decision is not None:
                touched.add(state.row)
                result.corrections += apply_verdicts(session, dataset_id=dataset_id,
                                                     row=state.row)
        result.disagreements = disagreements(session, dataset_id=dataset_id, rows=touched,
                                             label_names=label_names)
        cursor_row = _cursor(session, backend.name, remote_name)
        if batch.cursor is not None:
            cursor_row.cursor = batch.cursor
        cursor_row.pulled_at = utcnow()
        checkpoint("sync.pull_before_commit")
    if result.disagreements:
        shown = "; ".join(result.disagreements[:5])
        more = f"; and {len(result.disagreements) - 5} more" if len(result.disagreements) > 5 \
            else ""
        on_event(Event("warning", message=(
            f"annotators disagree on {len(result.disagreements)} row(s), the newest verdict "
            f"holds: {shown}{more}"
        )))
    if result.ignored:
        on_event(Event("info", message=(
            f"{result.ignored} reviewed record(s) in {remote_name} were not pushed by labelfix "
            "for this dataset and were left alone"
        )))


def _cursor(session: Session, backend: str, remote_name: str) -> SyncCursor:
    query = select(SyncCursor).where(
        SyncCursor.backend == backend, SyncCursor.remote_dataset == remote_name,
    )
    cursor = session.scalars(query).first()
    if cursor is None:
        # Two first syncs of one remote dataset at once both get here; one row results.
        insert_missing(session, SyncCursor.__table__,
                       [{"backend": backend, "remote_dataset": remote_name}],
                       keys=("backend", "remote_dataset"))
        cursor = session.scalars(query).one()
    return cursor


def _record_verdict(
    session: Session, verdict: Verdict, state: ReviewState, *, backend: str, remote_name: str,
    label_names: Sequence[str], result: SyncResult, on_event: EventCallback,
) -> str | None:
    candidate = session.get_one(Candidate, state.candidate_id)
    if verdict.discarded:
        decision, label = "discard", None
    elif verdict.label not in label_names:
        result.failed += 1
        on_event(Event("warning", message=(
            f"{backend} record {verdict.remote_id} was labelled {verdict.label!r}, which is not "
            f"one of {','.join(label_names)}; skipped"
        )))
        return None
    else:
        label = list(label_names).index(verdict.label)
        decision = "confirm" if label == candidate.given_label else "relabel"
    added = add_annotation(
        session, candidate, dataset_id=state.dataset_id, decision=decision, label=label,
        annotator=verdict.annotator, annotated_at=verdict.annotated_at, backend=backend,
        remote_dataset=remote_name, remote_id=verdict.remote_id, verdict_key=verdict.verdict_key,
    )
    if added is None:
        return None
    state.status = "reviewed"
    state.updated_at = utcnow()
    result.pulled += 1
    if decision == "confirm":
        result.confirmed += 1
    elif decision == "discard":
        result.discarded += 1
    return decision


def add_annotation(
    session: Session, candidate: Candidate, *, dataset_id: int, decision: str,
    label: int | None, annotator: str, annotated_at: datetime, backend: str,
    remote_dataset: str, verdict_key: str, remote_id: str | None = None,
) -> Annotation | None:
    """Record one verdict, the single way into annotations for every backend.

    ``decision`` is relabel, confirm or discard; ``label`` the chosen label index (the given
    label for confirm, None for discard). Call :func:`apply_verdicts` for the row afterwards.

    Returns:
        The new annotation, or None when this verdict (same backend, remote dataset and
        verdict key) was recorded before.
    """
    # Another process recording the same verdict waits here, then finds it recorded.
    lock_dataset(session, dataset_id)
    exists = session.scalar(select(Annotation.id).where(
        Annotation.backend == backend, Annotation.remote_dataset == remote_dataset,
        Annotation.verdict_key == verdict_key,
    ))
    if exists is not None:
        return None
    if decision == "confirm":
        label = candidate.given_label
    annotation = Annotation(
        dataset_id=dataset_id, row=candidate.row, candidate_id=candidate.id, backend=backend,
        remote_dataset=remote_dataset, remote_id=remote_id, verdict_key=verdict_key,
        decision=decision, label=label, annotator=annotator, annotated_at=annotated_at,
        pulled_at=utcnow(),
    )
    session.add(annotation)
    session.flush()
    return annotation


def apply_verdicts(session: Session, *, dataset_id: int, row: int) -> int:
    """Make the row's label what its newest relabel/confirm verdict says.

    Adds one correction when the label changes (never edits or deletes one), so that the
    newest verdict supersedes earlier ones whatever order they were pulled in.

    Returns:
        The number of corrections added (0 or 1).
    """
    # The correction depends on every verdict on the row and the latest correction: all of
    # them must be read after any other writer of this dataset committed.
    lock_dataset(session, dataset_id)
    everything = list(session.scalars(
        select(Annotation).where(Annotation.dataset_id == dataset_id, Annotation.row == row)
    ))
    undone = {a.retracts_id: a for a in everything if a.decision == "undo"}
    live = sorted(
        (a for a in everything
         if a.decision in ("relabel", "confirm") and a.id not in undone),
        key=lambda a: (a.annotated_at, a.id), reverse=True,
    )
    latest = session.scalars(
        select(Correction).where(Correction.dataset_id == dataset_id, Correction.row == row)
        .order_by(Correction.id.desc())
    ).first()
    if live:
        cause = live[0]
        candidate = session.get_one(Candidate, cause.candidate_id)
        target = cause.label
    elif latest is not None:
        # Every verdict was taken back: the row returns to the label it was given, and the
        # undo that took back the last correcting verdict is the cause on record.
        undone_by = undone.get(latest.annotation_id)
        if undone_by is None:
            return 0
        cause = undone_by
        candidate = session.get_one(Candidate, cause.candidate_id)
        target = candidate.given_label
    else:
        return 0
    current = latest.new_label if latest is not None else candidate.given_label
    if target is None or target == current:
        return 0
    if session.scalar(select(Correction.id).where(Correction.annotation_id == cause.id)):
        return 0  # this verdict already drove its correction
    session.add(Correction(
        dataset_id=dataset_id, row=row, text_hash=candidate.text_hash, old_label=current,
        new_label=target, annotation_id=cause.id, audit_id=candidate.audit_id,
    ))
    return 1


def disagreements(session: Session, *, dataset_id: int, rows: set[int],
                  label_names: Sequence[str]) -> list[str]:
    """Rows whose annotators' latest standing verdicts name different labels, described."""
    found = []
    for row in sorted(rows):
        annotations = list(session.scalars(
            select(Annotation).where(Annotation.dataset_id == dataset_id, Annotation.row == row)
            .order_by(Annotation.annotated_at, Annotation.id)
        ))
        undone = {a.retracts_id for a in annotations if a.decision == "undo"}
        latest: dict[str, str] = {}
        for a in annotations:
            if a.decision == "undo" or a.id in undone:
                continue
            latest[a.annotator] = "discard" if a.label is None else label_names[a.label]
        if len(set(latest.values())) > 1:
            who = ", ".join(f"{name}: {label}" for name, label in latest.items())
            found.append(f"row {row} ({who})")
    return found


def standing_verdicts(session: Session, *, dataset_id: int) -> dict[int, Annotation]:
    """The newest verdict of each reviewed row of a dataset that was not undone."""
    annotations = list(session.scalars(
        select(Annotation).where(Annotation.dataset_id == dataset_id)
        .order_by(Annotation.annotated_at, Annotation.id)
    ))
    undone = {a.retracts_id for a in annotations if a.decision == "undo"}
    standing: dict[int, Annotation] = {}
    for annotation in annotations:
        if annotation.decision != "undo" and annotation.id not in undone:
            standing[annotation.row] = annotation
    return standing


@dataclass(frozen=True)
class HistoryEntry:
    row: int
    old_label: str
    new_label: str
    annotator: str
    backend: str
    audit_id: int | None
    reviewed_at: object
    version: int | None


def history(session: Session, *, dataset: str | None = None, row: int | None = None
            ) -> list[HistoryEntry]:
    """Corrections, newest first, with who made them, when, and from which audit."""
    query = (
        select(Correction, Annotation, Dataset, DatasetVersion.version)
        .join(Annotation, Correction.annotation_id == Annotation.id)
        .join(Dataset, Correction.dataset_id == Dataset.id)
        .outerjoin(DatasetVersion, Correction.version_id == DatasetVersion.id)
        .order_by(Annotation.annotated_at.desc(), Correction.id.desc())
    )
    if dataset is not None:
        found = resolve_dataset(session, dataset)
        query = query.where(Correction.dataset_id == found.id)
    if row is not None:
        query = query.where(Correction.row == row)
    return [
        HistoryEntry(
            row=c.row, old_label=d.label_names[c.old_label], new_label=d.label_names[c.new_label],
            annotator=a.annotator, backend=a.backend, audit_id=c.audit_id,
            reviewed_at=a.annotated_at, version=version,
        )
        for c, a, d, version in session.execute(query)
    ]


def review_states(session: Session, *, dataset_id: int, rows: Sequence[int]) -> dict[int, str]:
    """The most advanced review state of each row over all backends (rows absent: pending)."""
    order = {"pending": 0, "failed": 1, "pushed": 2, "reviewed": 3}
    states: dict[int, str] = {}
    if not rows:
        return states
    for state_row, status in session.execute(
        select(ReviewState.row, ReviewState.status).where(
            ReviewState.dataset_id == dataset_id, ReviewState.row.in_(list(rows)))
    ):
        if order.get(status, 0) >= order.get(states.get(state_row, "pending"), 0):
            states[state_row] = status
    return states


@dataclass(frozen=True)
class VersionEntry:
    dataset: str
    version: int
    parent: int | None
    rows: int
    corrections_applied: int
    discarded_dropped: int
    location: str | None
    format: str | None
    created_at: object
    report: str | None = None


def versions(session: Session, *, dataset: str | None = None) -> list[VersionEntry]:
    """Every recorded version, oldest first (version 0 is the data as first scanned)."""
    parent_version = {v.id: v.version for v in session.scalars(select(DatasetVersion))}
    query = (select(DatasetVersion, Dataset.name)
             .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
             .order_by(Dataset.name, DatasetVersion.version))
    if dataset is not None:
        query = query.where(Dataset.id == resolve_dataset(session, dataset).id)
    from labelfix.store.queries import latest_reports

    reports = latest_reports(session)
    newest_audit: dict[int, int] = {}
    for audit_id, version_id in session.execute(
            select(Audit.id, Audit.dataset_version_id).order_by(Audit.id)):
        if audit_id in reports:
            newest_audit[version_id] = audit_id
    return [
        VersionEntry(
            dataset=name, version=v.version,
            parent=None if v.parent_id is None else parent_version.get(v.parent_id),
            rows=v.row_count, corrections_applied=v.corrections_applied,
            discarded_dropped=v.discarded_dropped, location=v.location, format=v.format,
            created_at=v.created_at,
            report=reports.get(newest_audit[v.id]) if v.id in newest_audit else None,
        )
        for v, name in session.execute(query)
    ]
