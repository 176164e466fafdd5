"""`scan --low-memory` and `--low-memory-above`: cleanlab's batched estimate over a memory map."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Synthetic, db_exists_with_data, make_synthetic

# A harder matrix than the conftest default, so that the batched estimate and the exact
# prune_by_noise_rate path actually differ (at confidence 0.85 they agree row for row).
CONFIDENCE = 0.6
# Measured: Jaccard 0.69 between the exact and batched candidate sets on 5,000 such rows,
# every batched candidate also an exact one.
OVERLAP_FLOOR = 0.6


@pytest.fixture()
def hard(tmp_path: Path) -> tuple[Synthetic, Path, Path]:
    data = make_synthetic(5000)
    csv = data.write(tmp_path / "hard.csv")
    probs = tmp_path / "hard.npy"
    np.save(probs, data.probs(confidence=CONFIDENCE))
    return data, csv, probs


def _jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b)


def test_chunked_estimate_is_cleanlabs_batched_estimate_and_close_to_the_exact_one() -> None:
    from cleanlab.experimental.label_issues_batched import find_label_issues_batched

    from labelfix.detect import find_candidates, find_candidates_low_memory

    data = make_synthetic(5000)
    probs = data.probs(confidence=CONFIDENCE)
    low = find_candidates_low_memory(data.labels, probs, batch_rows=997)
    reference = find_label_issues_batched(data.labels, probs, batch_size=997, verbose=False,
                                          return_mask=True, n_jobs=1)
    np.testing.assert_array_equal(np.sort(low.ranked), np.flatnonzero(reference))
    assert low.approximation is not None
    exact = find_candidates(data.labels, probs)
    np.testing.assert_allclose(low.label_quality, exact.label_quality, rtol=1e-6)
    np.testing.assert_array_equal(low.suggested, exact.suggested)
    assert np.all(np.diff(low.label_quality[low.ranked]) >= 0)
    overlap = _jaccard(set(low.ranked.tolist()), set(exact.ranked.tolist()))
    assert OVERLAP_FLOOR <= overlap < 1.0


def test_a_matrix_above_the_limit_uses_the_approximation_and_says_so(
    run, db: Path, hard: tuple[Synthetic, Path, Path]
) -> None:
    data, csv, probs = hard
    exact = run("scan", str(csv), "--probs", str(probs), "--json")
    assert exact.exit_code == 0, exact.stderr
    assert "approximation" not in exact.json()
    # 5,000 x 4 float32 is 80,000 bytes, above a 50 kB limit.
    low = run("scan", str(csv), "--probs", str(probs), "--low-memory-above", "50kB")
    assert low.exit_code == 0, low.stderr
    assert "Approximation: candidates from cleanlab.experimental.label_issues_batched" \
        in low.stdout
    with sqlite3.connect(db) as connection:
        audits = connection.execute(
            "select id, json_extract(parameters, '$.approximation'), "
            "json_extract(parameters, '$.low_memory_above') from audits order by id").fetchall()
        rows = {audit: {r[0] for r in connection.execute(
            "select row from candidates where audit_id = ?", (audit,))}
            for audit, _, _ in audits}
    (first, none, _), (second, approximation, limit) = audits
    assert none is None
    assert approximation == "cleanlab.experimental.label_issues_batched" and limit == 50_000
    assert OVERLAP_FLOOR <= _jaccard(rows[first], rows[second]) < 1.0
    # A limit above the matrix keeps the exact path.
    above = run("scan", str(csv), "--probs", str(probs), "--low-memory-above", "1MB",
                "--json")
    assert "approximation" not in above.json()
    assert above.json()["candidates"] == len(rows[first])


def test_low_memory_flag_and_environment_limit(run, csv_dataset: Path, probs_npy: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    forced = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--low-memory", "--json")
    assert forced.exit_code == 0, forced.stderr
    assert forced.json()["approximation"] == "cleanlab.experimental.label_issues_batched"
    monkeypatch.setenv("LABELFIX_LOW_MEMORY_ABOVE", "1KiB")
    by_env = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--json")
    assert by_env.json()["approximation"] == "cleanlab.experimental.label_issues_batched"


@pytest.mark.parametrize("args, env, message", [
    (["--low-memory-above", "2XB"], None, "--low-memory-above '2XB': not a size"),
    (["--low-memory-above", "-1"], None, "--low-memory-above '-1': not a size"),
    ([], "lots", "LABELFIX_LOW_MEMORY_ABOVE 'lots': not a size"),
])
def test_a_bad_limit_is_one_line_exit_2_and_writes_nothing(
    run, db: Path, csv_dataset: Path, probs_npy: Path, monkeypatch: pytest.MonkeyPatch,
    args: list[str], env: str | None, message: str,
) -> None:
    if env is not None:
        monkeypatch.setenv("LABELFIX_LOW_MEMORY_ABOVE", env)
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy), *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not db_exists_with_data(db)


@pytest.mark.parametrize("text, size", [
    ("1024", 1024), ("2GB", 2_000_000_000), ("1.5 kB", 1500), ("1GiB", 1024**3), ("0", 0),
])
def test_sizes(text: str, size: int) -> None:
    from labelfix.detect import parse_size

    assert parse_size(text) == size
