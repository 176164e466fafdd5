"""Probability matrices in the store: chunked raw float32 blobs, one set per (data, source)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from labelfix.store.locking import insert_missing
from labelfix.store.models import ProbabilityChunk, ProbabilitySet, utcnow

# About 4 MiB a chunk: small enough to stream, large enough that a million rows is ~20 rows.
CHUNK_BYTES = 4 << 20
DTYPE = "<f4"


def find(session: Session, *, fingerprint: str, source_key: str) -> ProbabilitySet | None:
    """The complete stored set for this data and probability source, if there is one."""
    return session.scalars(
        select(ProbabilitySet).where(
            ProbabilitySet.fingerprint == fingerprint,
            ProbabilitySet.source_key == source_key,
            ProbabilitySet.completed_at.is_not(None),
        )
    ).first()


def save(
    session: Session,
    matrix: np.ndarray,
    *,
    fingerprint: str,
    source_key: str,
    source: str,
    on_chunk: Callable[[int], None] | None = None,
) -> ProbabilitySet:
    """Store an (N, K) matrix as float32 chunks and return its set (flushed, not committed).

    An incomplete set left by a crash for the same key is replaced. When another process
    stores the same matrix at the same time (a shared PostgreSQL store), its set is waited
    for and returned, and this one writes nothing.
    """
    query = select(ProbabilitySet).where(
        ProbabilitySet.fingerprint == fingerprint, ProbabilitySet.source_key == source_key
    )
    stale = session.scalars(query).first()
    if stale is not None:
        if stale.completed_at is not None:
            return stale
        session.execute(delete(ProbabilityChunk).where(ProbabilityChunk.set_id == stale.id))
        session.delete(stale)
        session.flush()
    n_rows, n_classes = matrix.shape
    insert_missing(session, ProbabilitySet.__table__, [{
        "fingerprint": fingerprint, "source_key": source_key, "source": source,
        "n_rows": n_rows, "n_classes": n_classes, "dtype": DTYPE, "created_at": utcnow(),
    }], keys=("fingerprint", "source_key"))
    prob_set = session.scalars(query).one()
    if prob_set.completed_at is not None:
        # Complete already: another process's, committed while this insert waited for it.
        # (labelfix never commits an incomplete set, so an incomplete one is this one.)
        return prob_set
    rows_per_chunk = max(1, CHUNK_BYTES // max(1, n_classes * 4))
    data = np.ascontiguousarray(matrix, dtype=DTYPE)
    for index, start in enumerate(range(0, max(n_rows, 1), rows_per_chunk)):
        block = data[start : start + rows_per_chunk]
        session.execute(
            ProbabilityChunk.__table__.insert(),
            {"set_id": prob_set.id, "chunk_index": index, "row_start": start,
             "n_rows": len(block), "data": block.tobytes()},
        )
        if on_chunk is not None:
            on_chunk(len(block))
    prob_set.completed_at = utcnow()
    session.flush()
    return prob_set


def load(session: Session, prob_set: ProbabilitySet) -> np.ndarray:
    """The stored matrix as (N, K) float32."""
    out = np.empty((prob_set.n_rows, prob_set.n_classes), dtype=np.float32)
    filled = 0
    for row_start, n_rows, data in _chunks(session, prob_set.id):
        out[row_start : row_start + n_rows] = np.frombuffer(data, dtype=prob_set.dtype).reshape(
            n_rows, prob_set.n_classes
        )
        filled += n_rows
    if filled != prob_set.n_rows:
        from labelfix.errors import StoreError

        raise StoreError(
            f"stored probabilities {prob_set.id} hold {filled} of {prob_set.n_rows} rows; "
            "the database is damaged, scan again with another --db", exit_code=1,
        )
    return out


def load_rows(session: Session, prob_set: ProbabilitySet, rows: list[int]) -> np.ndarray:
    """Only the given rows of a stored matrix, as (len(rows), K) float32, reading only the
    chunks that hold them."""
    wanted = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(wanted), prob_set.n_classes), dtype=np.float32)
    if len(wanted) == 0:
        return out
    chunks = session.execute(
        select(ProbabilityChunk.row_start, ProbabilityChunk.n_rows).where(
            ProbabilityChunk.set_id == prob_set.id).order_by(ProbabilityChunk.chunk_index)
    ).all()
    for row_start, n_rows in chunks:
        inside = (wanted >= row_start) & (wanted < row_start + n_rows)
        if not inside.any():
            continue
        ((_, _, data),) = _chunks(session, prob_set.id, row_start=row_start)
        block = np.frombuffer(data, dtype=prob_set.dtype).reshape(n_rows, prob_set.n_classes)
        out[inside] = block[wanted[inside] - row_start]
    return out


def _chunks(session: Session, set_id: int, *, row_start: int | None = None
            ) -> Iterator[tuple[int, int, bytes]]:
    """(row_start, n_rows, data) of a set's chunks in order (only the one starting at
    ``row_start`` when given), streamed: one chunk or two in memory at a time."""
    connection = session.connection()
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        # bytea in binary format: the default text format sends it hex-encoded, twice the
        # bytes, and decoding that took two thirds of loading a 1,000,000 x 20 matrix. A
        # server-side cursor, two chunks a fetch, so the whole matrix is never held twice.
        sql = ("SELECT row_start, n_rows, data FROM probability_chunks WHERE set_id = %s"
               + (" AND row_start = %s" if row_start is not None else "")
               + " ORDER BY chunk_index")
        params = (set_id,) if row_start is None else (set_id, row_start)
        raw = connection.connection.driver_connection
        with raw.cursor(name=f"labelfix_chunks_{set_id}", binary=True) as cursor:
            cursor.itersize = 2
            cursor.execute(sql, params)
            for start, n_rows, data in cursor:
                yield start, n_rows, data
        return
    query = (select(ProbabilityChunk.row_start, ProbabilityChunk.n_rows, ProbabilityChunk.data)
             .where(ProbabilityChunk.set_id == set_id).order_by(ProbabilityChunk.chunk_index))
    if row_start is not None:
        query = query.where(ProbabilityChunk.row_start == row_start)
    for start, n_rows, data in session.execute(query):
        yield start, n_rows, data
