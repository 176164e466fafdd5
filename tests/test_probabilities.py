"""Probabilities the user passes: formats, and validation against the data; and how the store
keeps them, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelfix.errors import ProbabilitiesError
from labelfix.events import Event
from labelfix.models.precomputed import read_probs_file, validate
from labelfix.store import Store, resolve_url
from tests.conftest import Database, both_backends, db_rows

NAMES = ("a", "b", "c")


def _probs(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(3), size=n).astype(np.float32)


def test_npy_csv_and_parquet_read_the_same_matrix(tmp_path: Path) -> None:
    import pandas as pd

    matrix = _probs()
    np.save(tmp_path / "p.npy", matrix)
    np.savetxt(tmp_path / "plain.csv", matrix, delimiter=",")
    pd.DataFrame(matrix, columns=list(NAMES)).to_csv(tmp_path / "header.csv", index=False)
    pd.DataFrame(matrix, columns=list(NAMES)).to_parquet(tmp_path / "cols.parquet")
    pd.DataFrame({"probs": list(matrix)}).to_parquet(tmp_path / "list.parquet")
    for name in ("p.npy", "plain.csv", "header.csv", "cols.parquet", "list.parquet"):
        read = read_probs_file(tmp_path / name)
        np.testing.assert_allclose(read, matrix, atol=1e-6, err_msg=name)


def test_valid_matrix_passes_as_float32() -> None:
    out = validate(_probs().astype(np.float64), n_rows=6, label_names=NAMES, where="p")
    assert out.dtype == np.float32 and out.shape == (6, 3)


def test_wrong_shape_names_both_shapes() -> None:
    with pytest.raises(ProbabilitiesError, match=r"shape 6 x 3 but the data has 7 rows and 3"):
        validate(_probs(), n_rows=7, label_names=NAMES, where="p")
    with pytest.raises(ProbabilitiesError, match=r"4 classes"):
        validate(_probs(), n_rows=6, label_names=("a", "b", "c", "d"), where="p")


def test_nan_and_negative_values_are_refused_with_the_row() -> None:
    matrix = _probs()
    matrix[4, 1] = np.nan
    with pytest.raises(ProbabilitiesError, match=r"NaN or infinite values \(first in row 4\)"):
        validate(matrix, n_rows=6, label_names=NAMES, where="p")
    matrix = _probs()
    matrix[2] = [1.2, -0.2, 0.0]
    with pytest.raises(ProbabilitiesError, match=r"negative values \(first in row 2\).*softmax"):
        validate(matrix, n_rows=6, label_names=NAMES, where="p")


def test_small_drift_is_renormalised_with_a_warning() -> None:
    matrix = _probs().astype(np.float64)
    matrix[3] *= 1.0005
    events: list[Event] = []
    out = validate(matrix, n_rows=6, label_names=NAMES, where="p", on_event=events.append)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert [e.kind for e in events] == ["warning"]
    assert "renormalised" in events[0].message


def test_large_drift_is_refused() -> None:
    matrix = _probs()
    matrix[1] *= 1.01
    with pytest.raises(ProbabilitiesError, match=r"row 1 sums to"):
        validate(matrix, n_rows=6, label_names=NAMES, where="p")


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(ProbabilitiesError, match="does not exist"):
        read_probs_file(tmp_path / "missing.npy")
    (tmp_path / "p.txt").write_text("1,0\n")
    with pytest.raises(ProbabilitiesError, match="unknown file type"):
        read_probs_file(tmp_path / "p.txt")
    (tmp_path / "p.npy").write_bytes(b"garbage")
    with pytest.raises(ProbabilitiesError, match="cannot read"):
        read_probs_file(tmp_path / "p.npy")
    np.save(tmp_path / "flat.npy", np.ones(5))
    with pytest.raises(ProbabilitiesError, match="2-D"):
        read_probs_file(tmp_path / "flat.npy")


# Stored matrices: chunked float32 blobs (bytea on PostgreSQL), on both databases.


def _store(db: Database) -> Store:
    return Store(resolve_url(str(db)))


@both_backends
def test_a_matrix_of_several_chunks_is_stored_in_bounded_blobs_and_read_back_exactly(
        db: Database) -> None:
    from labelfix.store import probabilities as stored

    rows_per_chunk = stored.CHUNK_BYTES // (20 * 4)
    matrix = np.random.default_rng(3).dirichlet(np.ones(20), size=2 * rows_per_chunk + 7
                                                ).astype(np.float32)
    store = _store(db)
    with store.session() as session:
        prob_set = stored.save(session, matrix, fingerprint="f" * 64, source_key="k",
                               source="test")
        set_id = prob_set.id
    with store.session() as session:
        prob_set = stored.find(session, fingerprint="f" * 64, source_key="k")
        assert prob_set is not None and prob_set.id == set_id
        back = stored.load(session, prob_set)
        picked = stored.load_rows(session, prob_set, [0, rows_per_chunk, len(matrix) - 1, 5])
    store.dispose()
    assert back.dtype == np.float32 and np.array_equal(back, matrix)
    assert np.array_equal(picked, matrix[[0, rows_per_chunk, len(matrix) - 1, 5]])
    sizes = db_rows(db, f"select n_rows, length(data) from probability_chunks "
                        f"where set_id = {set_id} order by chunk_index")
    assert [n for n, _ in sizes] == [rows_per_chunk, rows_per_chunk, 7]
    assert max(size for _, size in sizes) <= stored.CHUNK_BYTES


@both_backends
def test_processes_storing_the_same_matrix_at_once_keep_one_set(db: Database) -> None:
    """Two scans of the same data and model on a shared store: one set, both use it."""
    import threading

    from labelfix.store import probabilities as stored

    matrix = _probs(n=30_000)
    _store(db).engine.dispose()  # the schema, before the race
    start = threading.Barrier(3)
    ids: list[int] = []
    errors: list[BaseException] = []

    def save() -> None:
        store = _store(db)
        try:
            start.wait()
            with store.session() as session:
                ids.append(stored.save(session, matrix, fingerprint="f" * 64, source_key="k",
                                       source="test").id)
        except BaseException as exc:  # noqa: BLE001 -- collected for the assertion
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=save) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == 1
    assert db_rows(db, "select count(*) from probability_sets") == [(1,)]
    store = _store(db)
    with store.session() as session:
        prob_set = stored.find(session, fingerprint="f" * 64, source_key="k")
        assert prob_set is not None
        assert np.array_equal(stored.load(session, prob_set), matrix)
    store.dispose()
