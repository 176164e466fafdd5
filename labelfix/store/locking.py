"""Writes that stay correct when several labelfix processes share one database.

SQLite lets one transaction write at a time (labelfix begins every transaction with BEGIN
IMMEDIATE), so reading, deciding and writing in one transaction is safe there. PostgreSQL runs
transactions side by side, in READ COMMITTED: two syncs could both find a verdict missing and
both record it. Two tools make the same code safe there:

- :func:`lock_dataset`: every transaction that records verdicts or review states of a
  dataset first takes that dataset's row lock (``SELECT ... FOR NO KEY UPDATE``), so such
  writes to one dataset take turns, and each statement after the lock sees what the previous
  holder committed. Taking this one lock first, before any other row lock, keeps them free of
  deadlocks.
- :func:`insert_missing`: ``INSERT ... ON CONFLICT DO NOTHING`` on a unique constraint, for
  rows that have no parent row to lock (a dataset's own row, a sync cursor, a probability set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from labelfix.store.models import Dataset

_HELD = "labelfix_dataset_locks"


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def lock_dataset(session: Session, dataset_id: int) -> None:
    """Wait for, then hold until the transaction ends, the right to write this dataset's
    verdicts and review states.

    A no-op on SQLite, whose transactions already write one at a time. Cheap to call again in
    the same transaction: the lock is taken once.
    """
    if dialect_name(session) == "sqlite":
        return
    transaction = session.get_transaction()
    held: dict[int, Any] = session.info.setdefault(_HELD, {})
    if transaction is not None and held.get(dataset_id) is transaction:
        return
    # NO KEY UPDATE, not UPDATE: inserts of rows that refer to the dataset take KEY SHARE
    # on it for their foreign key, and must not wait for this lock.
    session.execute(select(Dataset.id).where(Dataset.id == dataset_id)
                    .with_for_update(key_share=True))
    held[dataset_id] = transaction


def insert_missing(session: Session, table: Table, rows: Sequence[dict[str, Any]], *,
                   keys: Sequence[str]) -> None:
    """Insert the rows whose ``keys`` (a unique constraint) are not in ``table`` yet.

    On PostgreSQL and SQLite one ``INSERT ... ON CONFLICT (keys) DO NOTHING``: a row that
    another transaction is inserting at the same moment is waited for and then skipped, never
    an error. Other databases get a check, then an insert.
    """
    if not rows:
        return
    name = dialect_name(session)
    if name in ("postgresql", "sqlite"):
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        session.execute(insert(table).on_conflict_do_nothing(index_elements=list(keys)),
                        list(rows))
        return
    from sqlalchemy import tuple_

    columns = [table.c[key] for key in keys]
    wanted = {tuple(row[key] for key in keys) for row in rows}
    present = {tuple(r) for r in session.execute(
        select(*columns).where(tuple_(*columns).in_(list(wanted))))}
    fresh = [row for row in rows if tuple(row[key] for key in keys) not in present]
    if fresh:
        session.execute(table.insert(), fresh)
