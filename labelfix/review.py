"""The review use case: verdicts typed in the terminal, given automatically, or from a sheet.

Every path records verdicts through :func:`labelfix.sync.add_annotation` and
:func:`labelfix.sync.apply_verdicts`, exactly as verdicts pulled from a server.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfix.data import text_hash
from labelfix.errors import DataError, NotFoundError, UsageError
from labelfix.store import Store
from labelfix.store.locking import insert_missing, lock_dataset
from labelfix.store.models import (
    Annotation,
    Audit,
    Candidate,
    ReviewState,
    utcnow,
)
from labelfix.store.queries import get_audit
from labelfix.sync import (
    add_annotation,
    apply_verdicts,
    candidate_probabilities,
    standing_verdicts,
)

LOCAL = "local"
SHEET = "sheet"
SHEET_COLUMNS = ("row", "text", "given_label", "suggested_label", "label_quality", "verdict",
                 "label", "annotator")
VERDICTS = ("relabel", "confirm", "discard")


@dataclass(frozen=True)
class ReviewItem:
    """A candidate as the reviewer sees it; ``probabilities`` is (K,) float32 in label order."""

    audit_id: int
    candidate_id: int
    rank: int
    row: int
    text: str
    text_pair: str | None
    given_label: int
    suggested_label: int
    label_quality: float
    probabilities: np.ndarray


@dataclass(frozen=True)
class ReviewQueue:
    audit_id: int
    dataset: str
    model: str
    label_names: list[str]
    total: int
    reviewed: int
    relabelled: int
    items: list[ReviewItem]


def load_queue(store: Store, audit_id: int | None = None, *, limit: int | None = None
               ) -> ReviewQueue:
    """The audit's candidates that no verdict stands on yet, best rank first.

    Raises:
        NotFoundError: no such audit, or none complete yet.
    """
    with store.session() as session:
        audit = get_audit(session, audit_id)
        if audit.status != "complete":
            raise UsageError(f"audit {audit.id} is {audit.status}; review a complete audit")
        dataset = audit.dataset_version.dataset
        standing = standing_verdicts(session, dataset_id=dataset.id)
        candidates = list(session.scalars(
            select(Candidate).where(Candidate.audit_id == audit.id).order_by(Candidate.rank)
        ))
        pending = [c for c in candidates if c.row not in standing]
        if limit is not None:
            pending = pending[:limit]
        probs = candidate_probabilities(session, audit, [c.row for c in pending])
        relabelled = sum(
            1 for c in candidates
            if c.row in standing and standing[c.row].decision == "relabel"
        )
        return ReviewQueue(
            audit_id=audit.id, dataset=dataset.name, model=audit.model,
            label_names=list(dataset.label_names), total=len(candidates),
            reviewed=len(candidates) - len([c for c in candidates if c.row not in standing]),
            relabelled=relabelled,
            items=[
                ReviewItem(
                    audit_id=audit.id, candidate_id=c.id, rank=c.rank, row=c.row, text=c.text,
                    text_pair=c.text_pair, given_label=c.given_label,
                    suggested_label=c.suggested_label, label_quality=c.label_quality,
                    probabilities=probs[i],
                )
                for i, c in enumerate(pending)
            ],
        )


def record(
    store: Store, item: ReviewItem, *, decision: str, label: int | None, annotator: str,
    backend: str = LOCAL,
) -> int:
    """Commit one verdict at once (a crash or quit loses nothing).

    Returns:
        The annotation id (for undo).

    Raises:
        UsageError: an unknown decision, or a relabel without a label.
    """
    if decision not in VERDICTS:
        raise UsageError(f"unknown verdict {decision!r}; use one of {', '.join(VERDICTS)}")
    if decision == "relabel" and label is None:
        raise UsageError("a relabel needs the new label")
    if decision == "relabel" and label == item.given_label:
        decision = "confirm"
    with store.session() as session:
        candidate = session.get_one(Candidate, item.candidate_id)
        dataset_id = session.get_one(Audit, item.audit_id).dataset_version.dataset_id
        annotation = add_annotation(
            session, candidate, dataset_id=dataset_id, decision=decision,
            label=label if decision == "relabel" else None, annotator=annotator,
            annotated_at=utcnow(), backend=backend, remote_dataset=backend,
            verdict_key=f"{backend}:{uuid.uuid4()}",
        )
        if annotation is None:  # a fresh uuid never repeats
            raise UsageError("verdict recorded twice")
        apply_verdicts(session, dataset_id=dataset_id, row=candidate.row)
        return annotation.id


def undo(store: Store, annotation_id: int, *, annotator: str) -> int:
    """Take back a verdict: an ``undo`` annotation is added and the row's label restored.

    Returns:
        The row whose verdict was taken back.

    Raises:
        NotFoundError: no such verdict.
    """
    with store.session() as session:
        target = session.get(Annotation, annotation_id)
        if target is None:
            raise NotFoundError(f"there is no verdict {annotation_id} to undo")
        lock_dataset(session, target.dataset_id)
        if session.scalar(select(Annotation.id).where(Annotation.retracts_id == target.id)):
            return target.row  # taken back already (by another process, on a shared store)
        session.add(Annotation(
            dataset_id=target.dataset_id, row=target.row, candidate_id=target.candidate_id,
            backend=target.backend, remote_dataset=target.remote_dataset,
            remote_id=target.remote_id, verdict_key=f"undo:{target.id}", decision="undo",
            label=None, annotator=annotator, annotated_at=utcnow(), pulled_at=utcnow(),
            retracts_id=target.id,
        ))
        session.flush()
        apply_verdicts(session, dataset_id=target.dataset_id, row=target.row)
        return target.row


def margin(item: ReviewItem) -> float:
    """How much more probable the suggested label is than the given one (0..1)."""
    return float(item.probabilities[item.suggested_label] - item.probabilities[item.given_label])


def accept_suggested(
    store: Store, audit_id: int | None = None, *, top: int, min_margin: float = 0.0,
    annotator: str | None = None,
) -> tuple[int, int]:
    """Record the model's label for the top ``top`` pending candidates whose margin is at least
    ``min_margin``; the annotator defaults to ``auto:<model>`` so it never passes for a person.

    Returns:
        (accepted, skipped for a small margin).

    Raises:
        UsageError: ``top`` < 1 or ``min_margin`` outside 0..1.
    """
    if top < 1:
        raise UsageError("--top must be at least 1")
    if not 0.0 <= min_margin <= 1.0:
        raise UsageError(f"--min-margin {min_margin}: use a probability difference in 0..1")
    queue = load_queue(store, audit_id, limit=top)
    who = annotator or f"auto:{queue.model}"
    accepted = skipped = 0
    for item in queue.items:
        if margin(item) < min_margin:
            skipped += 1
            continue
        record(store, item, decision="relabel", label=item.suggested_label, annotator=who)
        accepted += 1
    return accepted, skipped


def write_sheet(store: Store, path: Path, audit_id: int | None = None) -> int:
    """Write the pending candidates to a CSV people fill in (UTF-8 with BOM for Excel).

    Returns:
        The number of rows written.

    Raises:
        UsageError: the file exists (it may hold someone's work).
    """
    if path.exists():
        raise UsageError(f"{path} exists; choose another file or remove it first")
    queue = load_queue(store, audit_id)
    names = queue.label_names
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SHEET_COLUMNS)
        for item in queue.items:
            text = item.text if item.text_pair is None else f"{item.text} [SEP] {item.text_pair}"
            writer.writerow([item.row, text, names[item.given_label], names[item.suggested_label],
                             f"{item.label_quality:.6f}", "", "", ""])
    temporary.replace(path)
    with store.session() as session:
        audit = session.get_one(Audit, queue.audit_id)
        dataset_id = audit.dataset_version.dataset_id
        _sheet_states(session, queue.items, dataset_id=dataset_id, remote=path.name)
    return len(queue.items)


def _sheet_states(session: Session, items: Sequence[ReviewItem], *, dataset_id: int,
                  remote: str) -> None:
    """Each row written to the sheet is "pushed" there (kept as it is when already known)."""
    lock_dataset(session, dataset_id)
    now = utcnow()
    insert_missing(session, ReviewState.__table__, [{
        "dataset_id": dataset_id, "row": item.row, "candidate_id": item.candidate_id,
        "backend": SHEET, "remote_dataset": remote, "remote_id": f"row-{item.row}",
        "status": "pushed", "attempts": 1, "pushed_at": now, "updated_at": now,
    } for item in items], keys=("backend", "remote_dataset", "remote_id"))


@dataclass(frozen=True)
class SheetImport:
    recorded: int
    corrections: int
    confirmed: int
    discarded: int
    blank: int


def import_sheet(store: Store, path: Path, *, dataset: str | None = None,
                 default_annotator: str) -> SheetImport:
    """Record the verdicts filled into a sheet written by :func:`write_sheet`.

    All or nothing: when any line is wrong (text changed, unknown verdict or label, a row that
    is not a candidate), nothing is recorded and the error lists every bad line.

    Raises:
        DataError: the file is missing, lacks columns, or has bad lines.
    """
    from labelfix.sync import resolve_dataset

    if not path.is_file():
        raise DataError(f"{path} does not exist; write one with `labelfix review --sheet {path}`")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("row", "text", "verdict", "label")
                       if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; keep the "
                                "columns that labelfix review --sheet wrote")
            lines = list(enumerate(reader, start=2))
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as \"CSV UTF-8\" (Excel) or "
                        "\"Text CSV\" with UTF-8 (LibreOffice)") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}); save it as CSV") from None
    with store.session() as session:
        found = resolve_dataset(session, dataset)
        names = list(found.label_names)
        candidates = _latest_candidates(session, dataset_id=found.id)
        plan, errors, blank = _check_sheet(lines, names, candidates, default_annotator)
        if errors:
            shown = "; ".join(errors[:20])
            more = f"; and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise DataError(f"{path}: nothing recorded, {len(errors)} bad line(s): {shown}{more}")
        counts = {"relabel": 0, "confirm": 0, "discard": 0}
        corrections = recorded = 0
        now = utcnow()
        for _line, candidate, decision, label, annotator in plan:
            annotation = add_annotation(
                session, candidate, dataset_id=found.id, decision=decision, label=label,
                annotator=annotator, annotated_at=now, backend=SHEET, remote_dataset=path.name,
                remote_id=f"row-{candidate.row}",
                verdict_key=f"{candidate.row}|{decision}|{label}|{annotator}",
            )
            if annotation is None:
                continue  # the same sheet imported again
            recorded += 1
            counts[decision] += 1
            corrections += apply_verdicts(session, dataset_id=found.id, row=candidate.row)
            state = session.scalars(select(ReviewState).where(
                ReviewState.backend == SHEET, ReviewState.remote_dataset == path.name,
                ReviewState.remote_id == f"row-{candidate.row}")).first()
            if state is not None:
                state.status = "reviewed"
                state.updated_at = now
        return SheetImport(recorded=recorded, corrections=corrections,
                           confirmed=counts["confirm"], discarded=counts["discard"], blank=blank)


def _latest_candidates(session: Session, *, dataset_id: int) -> dict[int, Candidate]:
    """Each flagged row's candidate from the newest audit that flagged it."""
    from labelfix.store.models import DatasetVersion

    rows = session.scalars(
        select(Candidate).join(Audit, Candidate.audit_id == Audit.id)
        .join(DatasetVersion, Audit.dataset_version_id == DatasetVersion.id)
        .where(DatasetVersion.dataset_id == dataset_id).order_by(Candidate.audit_id)
    )
    return {c.row: c for c in rows}


def _check_sheet(
    lines: Sequence[tuple[int, dict[str, str]]], names: list[str],
    candidates: dict[int, Candidate], default_annotator: str,
) -> tuple[list[tuple[int, Candidate, str, int | None, str]], list[str], int]:
    plan: list[tuple[int, Candidate, str, int | None, str]] = []
    errors: list[str] = []
    blank = 0
    for line, values in lines:
        verdict = (values.get("verdict") or "").strip().lower()
        label_text = (values.get("label") or "").strip()
        if not verdict and not label_text:
            blank += 1
            continue
        try:
            row = int((values.get("row") or "").strip())
        except ValueError:
            errors.append(f"line {line}: row {values.get('row')!r} is not a row number")
            continue
        candidate = candidates.get(row)
        if candidate is None:
            errors.append(f"line {line}: row {row} is not a candidate of this dataset")
            continue
        text = values.get("text") or ""
        stored = candidate.text if candidate.text_pair is None else \
            f"{candidate.text} [SEP] {candidate.text_pair}"
        if text_hash(text) != text_hash(stored):
            errors.append(f"line {line}: the text of row {row} differs from the scanned text")
            continue
        if verdict not in VERDICTS:
            errors.append(f"line {line}: verdict {verdict or '(empty)'!r} is not one of "
                          f"{', '.join(VERDICTS)}")
            continue
        label: int | None = None
        if verdict == "relabel":
            if label_text not in names:
                errors.append(f"line {line}: label {label_text or '(empty)'!r} is not one of "
                              f"{', '.join(names)}")
                continue
            label = names.index(label_text)
            if label == candidate.given_label:
                verdict, label = "confirm", None
        elif label_text and label_text not in names:
            errors.append(f"line {line}: label {label_text!r} is not one of {', '.join(names)}")
            continue
        annotator = (values.get("annotator") or "").strip() or default_annotator
        plan.append((line, candidate, verdict, label, annotator))
    return plan, errors, blank
