"""`labelfix scan`, `audits` and `candidates` as users run them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import db_exists_with_data, make_synthetic

SCAN_KEYS = {"audit_id", "dataset", "total", "candidates", "model", "filter_by", "accuracy"}
AUDIT_KEYS = {"audit_id", "dataset", "version", "model", "total", "candidates", "status",
              "created_at"}
CANDIDATE_KEYS = {"row", "text", "given_label", "suggested_label", "label_quality", "rank",
                  "review_state"}


def test_scan_with_probs_prints_the_tutorials_lines_and_records_the_audit(
    run, csv_dataset: Path, probs_npy: Path, synthetic
) -> None:
    from cleanlab.filter import find_label_issues

    result = run("scan", str(csv_dataset), "--probs", str(probs_npy))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Total: 400"
    expected = find_label_issues(synthetic.labels, np.load(probs_npy),
                                 return_indices_ranked_by="self_confidence")
    assert lines[1] == f"Candidates: {len(expected)} ({100 * len(expected) / 400:.1f}%)"
    assert "Top" in result.stdout and "Given -> suggested" in result.stdout

    listed = run("candidates", "--json").json()
    assert [c["row"] for c in listed] == expected.tolist()
    assert set(listed[0]) == CANDIDATE_KEYS
    first = listed[0]
    assert first["text"] == synthetic.texts[first["row"]]
    assert first["given_label"] == synthetic.label_names[synthetic.labels[first["row"]]]
    assert first["review_state"] == "pending"
    assert [c["rank"] for c in listed] == list(range(1, len(listed) + 1))
    assert len(run("candidates", "1", "--limit", "3", "--json").json()) == 3


def test_scan_json_has_exactly_the_contract_keys(run, csv_dataset: Path, probs_npy: Path) -> None:
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert set(data) == SCAN_KEYS
    assert data["dataset"] == "reviews" and data["total"] == 400
    assert data["filter_by"] == "prune_by_noise_rate"
    assert data["model"] == "probs:probs.npy"
    assert 0.5 < data["accuracy"] <= 1.0


def test_rescan_reuses_stored_probabilities_and_lists_both_audits(
    run, db: Path, csv_dataset: Path, probs_npy: Path
) -> None:
    first = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--json").json()
    second = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--json",
                 "--filter-by", "both")
    assert second.exit_code == 0
    assert "Reusing the probabilities" in second.stderr
    assert second.json()["audit_id"] == first["audit_id"] + 1
    audits = run("audits", "--json").json()
    assert [a["audit_id"] for a in audits] == [1, 2]
    assert set(audits[0]) == AUDIT_KEYS
    assert all(a["status"] == "complete" and a["version"] == 0 for a in audits)
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from probability_sets").fetchone()[0] == 1


def test_baseline_cross_validation_is_used_without_probs_and_reused(run, csv_dataset: Path) -> None:
    first = run("scan", str(csv_dataset), "--folds", "3", "--json")
    assert first.exit_code == 0, first.stderr
    data = first.json()
    assert data["model"] == "tfidf-logreg (3-fold)"
    assert data["candidates"] > 0 and data["accuracy"] > 0.7
    again = run("scan", str(csv_dataset), "--folds", "3")
    assert "Reusing the probabilities" in again.stderr
    other_folds = run("scan", str(csv_dataset), "--folds", "4")
    assert "Reusing" not in other_folds.stderr


def test_stored_probabilities_round_trip_exactly(run, db: Path, csv_dataset: Path,
                                                 probs_npy: Path) -> None:
    from labelfix.store import Store, resolve_url
    from labelfix.store import probabilities as stored
    from labelfix.store.models import ProbabilitySet

    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    with Store(resolve_url(db)).session() as session:
        prob_set = session.query(ProbabilitySet).one()
        np.testing.assert_array_equal(stored.load(session, prob_set), np.load(probs_npy))


def test_same_data_as_csv_with_probs_beside_the_demo(run, tmp_path: Path) -> None:
    """The acceptance flow in small: demo audit, CSV + .npy audit, both listed."""
    import pandas as pd

    from labelfix.data import SourceSpec, load

    demo = load(SourceSpec("demo"))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=demo.n_rows).astype(np.float32)
    probs[np.arange(demo.n_rows), demo.labels] += 2.0
    probs /= probs.sum(axis=1, keepdims=True)
    np.save(tmp_path / "demo_probs.npy", probs)
    result = run("scan", "demo", "--probs", str(tmp_path / "demo_probs.npy"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Total: 7600\n")

    frame = pd.DataFrame({"text": demo.text_lists()[0],
                          "label": [demo.label_names[i] for i in demo.labels]})
    frame.to_csv(tmp_path / "ag.csv", index=False)
    csv_scan = run("scan", str(tmp_path / "ag.csv"), "--labels", ",".join(demo.label_names),
                   "--probs", str(tmp_path / "demo_probs.npy"), "--json")
    assert csv_scan.exit_code == 0, csv_scan.stderr
    # The very same rows are the same dataset version, wherever they are read from.
    assert "version 0 of dataset 'ag_news'" in csv_scan.stderr
    audits = run("audits", "--json").json()
    assert [(a["dataset"], a["version"], a["total"]) for a in audits] == [
        ("ag_news", 0, 7600), ("ag_news", 0, 7600)]
    assert audits[0]["candidates"] == audits[1]["candidates"]
    apart = run("scan", str(tmp_path / "ag.csv"), "--labels", ",".join(demo.label_names),
                "--probs", str(tmp_path / "demo_probs.npy"), "--name", "ag_copy", "--json")
    assert apart.json()["dataset"] == "ag_copy"


def test_probs_column(run, tmp_path: Path, synthetic) -> None:
    import pandas as pd

    probs = synthetic.probs()
    frame = synthetic.frame()
    frame["scores"] = list(probs)
    frame.to_parquet(tmp_path / "with_scores.parquet")
    result = run("scan", str(tmp_path / "with_scores.parquet"), "--probs-column", "scores",
                 "--labels", ",".join(synthetic.label_names), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["model"] == "column:scores"
    expected = run("scan", str(tmp_path / "with_scores.parquet"), "--name", "again",
                   "--labels", ",".join(synthetic.label_names), "--probs",
                   str(_save(tmp_path / "p.npy", probs)), "--json").json()
    assert result.json()["candidates"] == expected["candidates"]
    assert pd.read_parquet(tmp_path / "with_scores.parquet").shape[0] == synthetic.n


def _save(path: Path, matrix: np.ndarray) -> Path:
    np.save(path, matrix)
    return path


def test_changed_data_under_the_same_name_is_refused(run, tmp_path: Path, synthetic,
                                                    probs_npy: Path) -> None:
    path = synthetic.write(tmp_path / "data.csv")
    assert run("scan", str(path), "--probs", str(probs_npy)).exit_code == 0
    synthetic.texts[0] = "an edited text"
    synthetic.write(path)
    result = run("scan", str(path), "--probs", str(probs_npy))
    assert result.exit_code == 2
    assert "changed since version 0" in result.stderr and "--name" in result.stderr
    assert len(run("audits", "--json").json()) == 1


def test_a_failure_during_the_scan_leaves_a_failed_audit(run, csv_dataset: Path, probs_npy: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import labelfix.scan

    def broken(*args: object, **kwargs: object) -> None:
        raise MemoryError("simulated")

    monkeypatch.setattr(labelfix.scan, "find_candidates", broken)
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy))
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    audits = run("audits", "--json").json()
    assert [a["status"] for a in audits] == ["failed"]
    monkeypatch.undo()
    rerun = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--json")
    assert rerun.exit_code == 0
    assert [a["status"] for a in run("audits", "--json").json()] == ["failed", "complete"]


# Bad input: one line on stderr, exit 2, no traceback, nothing written to the store.

def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    import pandas as pd

    data = make_synthetic(60)
    good = data.write(tmp_path / "good.csv")
    one_class = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "x"]}).to_csv(one_class, index=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    blank = tmp_path / "blank.csv"
    pd.DataFrame({"text": ["a", "", "c"], "label": ["x", "y", "x"]}).to_csv(blank, index=False)
    probs = data.probs()
    np.save(tmp_path / "short.npy", probs[:-1])
    nan = probs.copy()
    nan[3, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    negative = probs.copy()
    negative[5] = [1.5, -0.5, 0, 0]
    np.save(tmp_path / "negative.npy", negative)
    return {
        "missing path": (["scan", str(tmp_path / "nope.csv")], "does not exist"),
        "missing text column": (["scan", str(good), "--text-column", "body"],
                                "its columns are text, label"),
        "missing label column": (["scan", str(good), "--label-column", "y2"],
                                 "its columns are text, label"),
        "labels outside names": (["scan", str(good), "--labels", "World,Sports"],
                                 "not among the label names"),
        "one class": (["scan", str(one_class)], "at least two classes"),
        "empty dataset": (["scan", str(empty)], "no rows"),
        "empty texts": (["scan", str(blank)], "row(s): 1"),
        "probs wrong shape": (["scan", str(good), "--probs", str(tmp_path / "short.npy")],
                              "but the data has 60 rows"),
        "probs NaN": (["scan", str(good), "--probs", str(tmp_path / "nan.npy")], "NaN"),
        "probs negative": (["scan", str(good), "--probs", str(tmp_path / "negative.npy")],
                           "negative"),
        "probs missing": (["scan", str(good), "--probs", str(tmp_path / "none.npy")],
                          "does not exist"),
        "bad filter": (["scan", str(good), "--filter-by", "magic"], "prune_by_class"),
        "too many folds": (["scan", str(good), "--folds", "40"], "fewer rows than folds"),
    }


@pytest.mark.parametrize("case", [
    "missing path", "missing text column", "missing label column", "labels outside names",
    "one class", "empty dataset", "empty texts", "probs wrong shape", "probs NaN",
    "probs negative", "probs missing", "bad filter", "too many folds",
])
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(run, db: Path, tmp_path: Path,
                                                           case: str) -> None:
    args, message = _bad_inputs(tmp_path)[case]
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not db_exists_with_data(db)


def test_no_audit_yet_is_a_clear_error(run) -> None:
    result = run("candidates")
    assert result.exit_code == 2
    assert "run `labelfix scan` first" in result.stderr
    assert run("candidates", "42").exit_code == 2
    empty = run("audits")
    assert empty.exit_code == 0 and "No audits yet" in empty.stdout


@pytest.mark.parametrize("command", [[], ["scan"], ["candidates"], ["audits"], ["db"],
                                     ["db", "upgrade"], ["db", "current"]])
def test_every_command_has_help(run, command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_help_is_fast_because_heavy_libraries_are_not_imported() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from labelfix.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(app, ['scan', '--help']).exit_code == 0\n"
        "heavy = {'torch', 'transformers', 'datasets', 'cleanlab', 'sklearn', 'pandas', "
        "'sqlalchemy', 'alembic'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_labelfix() -> None:
    out = subprocess.run([sys.executable, "-m", "labelfix", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("labelfix ")


def test_probabilities_in_another_column_order_are_warned_about(run, tmp_path: Path,
                                                               synthetic) -> None:
    path = synthetic.write(tmp_path / "d.csv")
    shuffled = synthetic.probs()[:, [3, 2, 1, 0]]
    result = run("scan", str(path), "--probs", str(_save(tmp_path / "p.npy", shuffled)))
    assert result.exit_code == 0
    assert "follow the label order Business,SciTech,Sports,World" in result.stderr
    fixed = run("scan", str(path), "--name", "fixed", "--labels", "World,Sports,SciTech,Business",
                "--probs", str(tmp_path / "p.npy"))
    assert "label order" not in fixed.stderr


def test_a_derived_name_taken_by_another_source_gets_a_free_one(run, tmp_path: Path, synthetic,
                                                               probs_npy: Path) -> None:
    first = synthetic.write(tmp_path / "reviews.csv")
    (tmp_path / "other").mkdir()
    other = make_synthetic(seed=1)
    second = other.write(tmp_path / "other" / "reviews.csv")
    assert run("scan", str(first), "--probs", str(probs_npy)).exit_code == 0
    result = run("scan", str(second), "--probs", str(probs_npy), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["dataset"] == "reviews-2"
    assert "recording this one as 'reviews-2'" in result.stderr
    # An explicit --name is never changed behind the user's back.
    taken = run("scan", str(second), "--name", "reviews", "--probs", str(probs_npy))
    assert taken.exit_code == 2 and "is taken by" in taken.stderr


def test_times_in_json_carry_their_utc_offset(run, csv_dataset: Path, probs_npy: Path) -> None:
    from datetime import datetime, timedelta

    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    created = datetime.fromisoformat(run("audits", "--json").json()[0]["created_at"])
    assert created.utcoffset() == timedelta(0)
