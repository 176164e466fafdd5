"""Probabilities the user passes: formats, and validation against the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelfix.errors import ProbabilitiesError
from labelfix.events import Event
from labelfix.models.precomputed import read_probs_file, validate

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
