"""The tables of the labelfix store (SQLAlchemy 2 typed models).

Any change here needs an Alembic revision in ``migrations/versions``; ``tests/test_store.py``
fails when the two disagree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Explicit constraint names keep batch migrations on SQLite and renames on PostgreSQL predictable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    SQLite keeps no zone, so values read back naive; they were written in UTC and are returned
    as such, so that times in --json output always carry their offset.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Dataset(Base):
    """A dataset as users name it (``ag_news``), and where its rows come from."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)
    source_kind: Mapped[str] = mapped_column(String(20))
    config: Mapped[str | None] = mapped_column(String(200))
    split: Mapped[str | None] = mapped_column(String(200))
    text_columns: Mapped[list[str]] = mapped_column(JSON)
    label_column: Mapped[str] = mapped_column(String(200))
    label_names: Mapped[list[str]] = mapped_column(JSON)
    # --labels as the user gave it (None when the names came from the data), so that the
    # source can be read again exactly as it was scanned.
    labels_option: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", order_by="DatasetVersion.version"
    )


class DatasetVersion(Base):
    """One version of a dataset's rows: 0 is the data as first scanned, each export adds one."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    row_count: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    location: Mapped[str | None] = mapped_column(Text)
    format: Mapped[str | None] = mapped_column(String(20))
    corrections_applied: Mapped[int] = mapped_column(Integer, default=0)
    discarded_dropped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # For a version that dropped rows: (row_count,) int64 little-endian, the version-0 index of
    # each of its rows, so that rows keep their identity across versions.
    row_map: Mapped[bytes | None] = mapped_column(LargeBinary)
    # (row_count,) int32 little-endian, every row's label: reports and later audits need the
    # labels without reading the source again. None for versions recorded before 0004.
    labels: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class ProbabilitySet(Base):
    """An N x K matrix of predicted probabilities, kept once per (data, source) pair.

    ``source_key`` identifies where the numbers came from (a file's content hash, the baseline
    with its parameters, a model and revision) so that a re-scan can reuse them.
    """

    __tablename__ = "probability_sets"
    __table_args__ = (UniqueConstraint("fingerprint", "source_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    source_key: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    n_rows: Mapped[int] = mapped_column(Integer)
    n_classes: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(20))
    # None while chunks are being written: a crash mid-write leaves an incomplete set that is
    # ignored and replaced, never read.
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ProbabilityChunk(Base):
    """A run of consecutive rows of a probability matrix, as raw little-endian bytes."""

    __tablename__ = "probability_chunks"

    set_id: Mapped[int] = mapped_column(
        ForeignKey("probability_sets.id", ondelete="CASCADE"), primary_key=True
    )
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    row_start: Mapped[int] = mapped_column(Integer)
    n_rows: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Audit(Base):
    """One scan: which data, which probabilities, which cleanlab settings, and what came out."""

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="running")
    model: Mapped[str] = mapped_column(Text)
    model_revision: Mapped[str | None] = mapped_column(String(200))
    prob_source: Mapped[str] = mapped_column(String(40))
    probability_set_id: Mapped[int | None] = mapped_column(ForeignKey("probability_sets.id"))
    probabilities_reused: Mapped[bool] = mapped_column(default=False)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    labelfix_version: Mapped[str] = mapped_column(String(40))
    cleanlab_version: Mapped[str | None] = mapped_column(String(40))
    total: Mapped[int | None] = mapped_column(Integer)
    candidates: Mapped[int | None] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(Float)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # (N,) float32 little-endian: cleanlab's label quality of every row, not just candidates.
    label_quality: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str | None] = mapped_column(Text)
    # host:pid of the process running the audit, so that one left "running" by a process
    # that died can be told from one still at work.
    worker: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    dataset_version: Mapped[DatasetVersion] = relationship()


class Candidate(Base):
    """A row that confident learning flags as a possible label error in one audit."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("audit_id", "row"),
        Index("ix_candidates_audit_id_rank", "audit_id", "rank"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id"))
    row: Mapped[int] = mapped_column(Integer)
    text_hash: Mapped[str] = mapped_column(String(64))
    # The text is kept so that review never has to reload the source data.
    text: Mapped[str] = mapped_column(Text)
    text_pair: Mapped[str | None] = mapped_column(Text)
    given_label: Mapped[int] = mapped_column(Integer)
    suggested_label: Mapped[int] = mapped_column(Integer)
    label_quality: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)


class ReviewState(Base):
    """Where a candidate row stands with one review backend's remote dataset.

    One row per remote record: a later audit that flags the same row reuses the record, so
    that pushing twice updates rather than duplicates and never clobbers a person's verdict.
    """

    __tablename__ = "review_states"
    __table_args__ = (
        UniqueConstraint("backend", "remote_dataset", "remote_id"),
        Index("ix_review_states_dataset_id_row", "dataset_id", "row"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    row: Mapped[int] = mapped_column(Integer)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    backend: Mapped[str] = mapped_column(String(40))
    remote_dataset: Mapped[str] = mapped_column(String(200))
    remote_id: Mapped[str] = mapped_column(String(200))
    # pending: not yet on the server; pushed: waiting for people; reviewed: a verdict came
    # back; failed: the last push failed (see last_error), retried by the next sync.
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SyncCursor(Base):
    """How far verdicts were pulled from one remote dataset (in the server's own clock)."""

    __tablename__ = "sync_cursors"
    __table_args__ = (UniqueConstraint("backend", "remote_dataset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    backend: Mapped[str] = mapped_column(String(40))
    remote_dataset: Mapped[str] = mapped_column(String(200))
    cursor: Mapped[str | None] = mapped_column(String(100))
    pulled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Annotation(Base):
    """A person's verdict on a row, as pulled from a backend (or typed in `labelfix review`).

    ``verdict_key`` identifies the verdict on its server (record, state and time), so that
    pulling the same verdict twice stores it once and a changed verdict is stored anew.
    """

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("backend", "remote_dataset", "verdict_key"),
        Index("ix_annotations_dataset_id_row", "dataset_id", "row"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    row: Mapped[int] = mapped_column(Integer)
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    backend: Mapped[str] = mapped_column(String(40))
    remote_dataset: Mapped[str] = mapped_column(String(200))
    remote_id: Mapped[str | None] = mapped_column(String(200))
    verdict_key: Mapped[str] = mapped_column(String(400))
    decision: Mapped[str] = mapped_column(String(20))  # relabel | confirm | discard | undo
    label: Mapped[int | None] = mapped_column(Integer)
    annotator: Mapped[str] = mapped_column(String(200))
    annotated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    pulled_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # For decision "undo": the verdict this one takes back (undo in `labelfix review`). Both
    # rows stay; a correction restores the label the undone verdict had set.
    retracts_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))


class Correction(Base):
    """A change of a row's label. Never deleted: a later verdict adds a correction on top."""

    __tablename__ = "corrections"
    __table_args__ = (Index("ix_corrections_dataset_id_row", "dataset_id", "row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    row: Mapped[int] = mapped_column(Integer)
    text_hash: Mapped[str] = mapped_column(String(64))
    old_label: Mapped[int] = mapped_column(Integer)
    new_label: Mapped[int] = mapped_column(Integer)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id"), unique=True)
    audit_id: Mapped[int | None] = mapped_column(ForeignKey("audits.id"))
    # The dataset version that first contains this correction; None until it is exported.
    version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Report(Base):
    """Where a report of an audit was written (an audit may be reported more than once)."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    png_dir: Mapped[str | None] = mapped_column(Text)
    labelfix_version: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
