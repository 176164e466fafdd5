"""Two writers of one dataset's verdicts and review states at the same moment, interleaved on
purpose: the second starts while the first's transaction is open. SQLite makes the second
wait (BEGIN IMMEDIATE); on PostgreSQL the dataset's row lock and ON CONFLICT DO NOTHING must
give the same outcome: nothing stored twice, no error, and corrections that chain."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfix.store import Store, resolve_url
from labelfix.store.models import Audit, Candidate
from labelfix.sync import _items_to_push, add_annotation, apply_verdicts
from tests.conftest import Database, both_backends, db_count, db_rows

pytestmark = both_backends

HOLD_S = 1.0  # how long the first writer keeps its transaction open after writing


@pytest.fixture()
def scanned(run, csv_dataset: Path, probs_npy: Path) -> None:
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0


def _race(db: Database, first: Callable[[Session], Any], second: Callable[[Session], Any]
          ) -> list[Any]:
    """Run ``first`` in a transaction kept open for HOLD_S after it wrote, and ``second``, in
    another store (another process's connection), as soon as ``first`` has written."""
    wrote = threading.Event()
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def one(index: int, work: Callable[[Session], Any]) -> None:
        store = Store(resolve_url(str(db)))
        try:
            store.engine  # noqa: B018 -- connected before the race
            if index == 1:
                wrote.wait(timeout=30)
            with store.session() as session:
                results[index] = work(session)
                if index == 0:
                    session.flush()
                    wrote.set()
                    time.sleep(HOLD_S)
        except BaseException as exc:  # noqa: BLE001 -- collected for the assertion
            errors.append(exc)
            wrote.set()
        finally:
            store.dispose()

    threads = [threading.Thread(target=one, args=(i, w)) for i, w in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def _verdict(*, key: str, label_offset: int, annotator: str, minutes: int
             ) -> Callable[[Session], tuple[bool, int]]:
    """Record a relabel of the top candidate to (given label + label_offset) mod 4."""

    def work(session: Session) -> tuple[bool, int]:
        candidate = session.scalars(select(Candidate).order_by(Candidate.rank)).first()
        assert candidate is not None
        dataset_id = session.get_one(Audit, candidate.audit_id).dataset_version.dataset_id
        added = add_annotation(
            session, candidate, dataset_id=dataset_id, decision="relabel",
            label=(candidate.given_label + label_offset) % 4, annotator=annotator,
            annotated_at=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes),
            backend="test", remote_dataset="remote", verdict_key=key,
        )
        if added is None:
            return False, 0
        return True, apply_verdicts(session, dataset_id=dataset_id, row=candidate.row)

    return work


def test_the_same_verdict_pulled_twice_at_once_is_stored_once(db: Database, scanned) -> None:
    same = _verdict(key="record-1|validated|t1", label_offset=1, annotator="alice", minutes=1)
    assert _race(db, same, same) == [(True, 1), (False, 0)]
    assert db_count(db, "select count(*) from annotations") == 1
    assert db_count(db, "select count(*) from corrections") == 1


def test_two_verdicts_on_one_row_at_once_chain_their_corrections(db: Database,
                                                                 scanned) -> None:
    first = _verdict(key="record-1|alice", label_offset=1, annotator="alice", minutes=1)
    second = _verdict(key="record-1|bob", label_offset=2, annotator="bob", minutes=2)
    assert _race(db, first, second) == [(True, 1), (True, 1)]
    chain = db_rows(db, "select old_label, new_label from corrections order by id")
    given = db_rows(db, "select given_label from candidates order by rank limit 1")[0][0]
    # bob's correction starts from alice's label, not from the label the row was given.
    assert chain == [(given, (given + 1) % 4), ((given + 1) % 4, (given + 2) % 4)]


def test_two_pushes_at_once_record_each_review_state_once(db: Database, scanned) -> None:
    def push(session: Session) -> int:
        audit = session.scalars(select(Audit)).one()
        dataset = audit.dataset_version.dataset
        items = _items_to_push(session, audit, dataset_id=dataset.id, dataset_name=dataset.name,
                               backend="rubrix", remote_name="remote",
                               label_names=list(dataset.label_names))
        return len(items)

    candidates = db_count(db, "select count(*) from candidates")
    # Both send every candidate (none is on the server yet); the states are not doubled.
    assert _race(db, push, push) == [candidates, candidates]
    assert db_count(db, "select count(*) from review_states") == candidates


def test_two_first_scans_of_one_source_at_once_record_one_dataset(db: Database) -> None:
    from labelfix.store.queries import DatasetInfo, ensure_version

    info = DatasetInfo(name="reviews", source="/data/reviews.csv", source_kind="file",
                       config=None, split=None, text_columns=("text",), label_column="label",
                       label_names=("a", "b"), fingerprint="f" * 64, row_count=10)

    def first_scan(session: Session) -> int:
        return ensure_version(session, info=info).id

    Store(resolve_url(str(db))).engine.dispose()  # the schema, before the race
    first, second = _race(db, first_scan, first_scan)
    assert first == second
    assert db_rows(db, "select name from datasets") == [("reviews",)]
    assert db_count(db, "select count(*) from dataset_versions") == 1
