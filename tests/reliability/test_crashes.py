"""kill -9 at chosen points of scan, sync and export: nothing claims to be complete that is
not, and rerunning the same command finishes the job with the counts of an uninterrupted run;
on SQLite and on PostgreSQL, where the server rolls back a killed client's transaction."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import Database, both_backends
from tests.reliability.conftest import count, integrity_ok
from tests.servers.rubrix import RubrixServer

KILLED = -signal.SIGKILL


@pytest.fixture()
def reference(tmp_path: Path, csv_dataset: Path) -> dict:
    """The same scan, uninterrupted, in a database of its own."""
    import subprocess
    import sys

    other = tmp_path / "reference.db"
    done = subprocess.run([sys.executable, "-m", "labelfix", "--db", str(other), "scan",
                           str(csv_dataset), "--folds", "3", "--json"], capture_output=True,
                          text=True, check=True, timeout=180)
    return json.loads(done.stdout)


@both_backends
@pytest.mark.parametrize("point", ["scan.fold#2", "scan.probabilities_stored",
                                   "scan.before_commit"])
def test_scan_killed_then_rerun(cli, db: Database, csv_dataset: Path, reference: dict,
                                point: str) -> None:
    killed = cli("scan", str(csv_dataset), "--folds", "3", crash_at=point)
    assert killed.returncode == KILLED, killed.stderr
    assert integrity_ok(db)
    audits = json.loads(cli("audits", "--json").stdout)
    assert [a["status"] for a in audits] == ["interrupted"]
    assert count(db, "select count(*) from candidates") == 0
    rerun = cli("scan", str(csv_dataset), "--folds", "3", "--json")
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert (result["total"], result["candidates"], result["accuracy"]) == (
        reference["total"], reference["candidates"], reference["accuracy"])
    if point != "scan.fold#2":  # probabilities were committed before the kill
        assert "Reusing the probabilities" in rerun.stderr
    audits = json.loads(cli("audits", "--json").stdout)
    assert [a["status"] for a in audits] == ["interrupted", "complete"]
    assert count(db, "select count(*) from probability_sets") == 1
    assert integrity_ok(db)


@pytest.fixture()
def rubrix(monkeypatch: pytest.MonkeyPatch):
    with RubrixServer(api_key="k", workspaces=("rubrix",)) as server:
        monkeypatch.setenv("RUBRIX_API_URL", server.url)
        monkeypatch.setenv("RUBRIX_API_KEY", "k")
        monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
        yield server


@both_backends
def test_sync_killed_between_two_bulk_requests_then_rerun(cli, db: Database, csv_dataset: Path,
                                                           probs_npy: Path, rubrix) -> None:
    assert cli("scan", str(csv_dataset), "--probs", str(probs_npy)).returncode == 0
    total = count(db, "select count(*) from candidates")
    batch = {"LABELFIX_PUSH_BATCH": "5"}
    killed = cli("sync", "--backend", "rubrix", env=batch, crash_at="sync.push_batch#2")
    assert killed.returncode == KILLED
    assert integrity_ok(db)
    assert count(db, "select count(*) from review_states where status = 'pushed'") == 10
    assert len(rubrix.records("reviews_label_errors")) == 10
    rerun = cli("sync", "--backend", "rubrix", "--json", env=batch)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["pushed"] == total - 10
    assert len(rubrix.records("reviews_label_errors")) == total
    assert count(db, "select count(*) from review_states where status = 'pushed'") == total


@both_backends
def test_sync_killed_before_recording_a_pull_then_rerun(cli, db: Database, csv_dataset: Path,
                                                        probs_npy: Path, rubrix) -> None:
    assert cli("scan", str(csv_dataset), "--probs", str(probs_npy)).returncode == 0
    assert cli("sync", "--backend", "rubrix").returncode == 0
    candidates = json.loads(cli("candidates", "--json").stdout)
    for index, candidate in enumerate(candidates[:10]):
        label = candidate["suggested_label"] if index < 7 else candidate["given_label"]
        rubrix.annotate("reviews_label_errors", f"reviews-{candidate['row']}",
                        label=None if index == 9 else label, agent="alice",
                        status="Discarded" if index == 9 else "Validated")
    killed = cli("sync", "--backend", "rubrix", crash_at="sync.pull_before_commit")
    assert killed.returncode == KILLED
    assert integrity_ok(db)
    assert count(db, "select count(*) from annotations") == 0
    rerun = cli("sync", "--backend", "rubrix", "--json")
    assert json.loads(rerun.stdout) == {"pushed": 0, "pulled": 10, "corrections": 7,
                                        "confirmed": 2, "discarded": 1, "failed": 0}
    assert count(db, "select count(*) from corrections") == 7


@both_backends
@pytest.mark.parametrize("point", ["export.written", "export.renamed"])
def test_export_killed_while_writing_then_rerun(cli, db: Database, csv_dataset: Path,
                                                probs_npy: Path, tmp_path: Path,
                                                point: str) -> None:
    assert cli("scan", str(csv_dataset), "--probs", str(probs_npy)).returncode == 0
    assert cli("review", "--accept-suggested", "--top", "5").returncode == 0
    out = tmp_path / "v1"
    killed = cli("export", "reviews", "--out", str(out), crash_at=point)
    assert killed.returncode == KILLED
    assert integrity_ok(db)
    versions = json.loads(cli("history", "--versions", "--json").stdout)
    assert [v["version"] for v in versions] == [0]  # nothing claims to be version 1 yet
    assert count(db, "select count(*) from corrections where version_id is not null") == 0
    rerun = cli("export", "reviews", "--out", str(out), "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["corrections_applied"] == 5
    versions = json.loads(cli("history", "--versions", "--json").stdout)
    assert [(v["version"], v["corrections_applied"]) for v in versions] == [(0, 0), (1, 5)]
    assert count(db, "select count(*) from corrections where version_id is null") == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".v1.")] == []
    from datasets import load_from_disk

    assert load_from_disk(str(out)).num_rows == 400
