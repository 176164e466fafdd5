"""Two labelfix processes on one database at the same time: no "database is locked", no
duplicate annotation or correction, and the history of running them one after the other; on
SQLite (one writer at a time) and on PostgreSQL (row locks and ON CONFLICT DO NOTHING)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Database, both_backends
from tests.reliability.conftest import count, integrity_ok
from tests.servers.rubrix import RubrixServer

pytestmark = both_backends

REMOTE = "reviews_label_errors"


@pytest.fixture()
def rubrix(monkeypatch: pytest.MonkeyPatch):
    with RubrixServer(api_key="k", workspaces=("rubrix",)) as server:
        monkeypatch.setenv("RUBRIX_API_URL", server.url)
        monkeypatch.setenv("RUBRIX_API_KEY", "k")
        monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
        monkeypatch.setenv("LABELFIX_PUSH_BATCH", "3")  # many small transactions to interleave
        yield server


def _start(db: Database, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "labelfix", "--db", str(db), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _review_on_server(server: RubrixServer, candidates: list[dict]) -> None:
    for index, candidate in enumerate(candidates[:12]):
        label = candidate["suggested_label"] if index % 3 else candidate["given_label"]
        server.annotate(REMOTE, f"reviews-{candidate['row']}", label=label,
                        agent=f"annotator{index % 2}")


def _history(cli) -> list[tuple]:
    entries = json.loads(cli("history", "--json").stdout)
    return sorted((h["row"], h["old_label"], h["new_label"], h["annotator"]) for h in entries)


def test_two_syncs_at_once(cli, db: Database, tmp_path: Path, csv_dataset: Path, probs_npy: Path,
                           rubrix) -> None:
    assert cli("scan", str(csv_dataset), "--probs", str(probs_npy)).returncode == 0
    total = count(db, "select count(*) from candidates")
    first, second = _start(db, "sync", "--backend", "rubrix"), \
        _start(db, "sync", "--backend", "rubrix")
    results = [_finish(first), _finish(second)]
    for code, _out, err in results:
        assert code == 0, err
        assert "locked" not in err
    assert len(rubrix.records(REMOTE)) == total
    candidates = json.loads(cli("candidates", "--json").stdout)
    _review_on_server(rubrix, candidates)
    first, second = _start(db, "sync", "--backend", "rubrix", "--json"), \
        _start(db, "sync", "--backend", "rubrix", "--json")
    outcomes = [_finish(first), _finish(second)]
    for code, _out, err in outcomes:
        assert code == 0, err
    pulled = sum(json.loads(out)["pulled"] for _c, out, _e in outcomes)
    assert pulled == 12  # each verdict recorded by exactly one of the two
    assert count(db, "select count(*) from annotations") == 12
    assert count(db, "select count(*) from corrections") == 8
    assert integrity_ok(db)
    concurrent = _history(cli)

    # The same work one process after the other gives the same history.
    sequential_db = tmp_path / "sequential.db"
    with RubrixServer(api_key="k", workspaces=("rubrix",)) as again:
        env = {"RUBRIX_API_URL": again.url}

        def run_alone(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "labelfix", "--db", str(sequential_db),
                                   *args], capture_output=True, text=True,
                                  env={**os.environ, **env}, timeout=300)

        assert run_alone("scan", str(csv_dataset), "--probs", str(probs_npy)).returncode == 0
        assert run_alone("sync", "--backend", "rubrix").returncode == 0
        _review_on_server(again, candidates)
        assert run_alone("sync", "--backend", "rubrix").returncode == 0
        history = json.loads(run_alone("history", "--json").stdout)
    assert sorted((h["row"], h["old_label"], h["new_label"], h["annotator"])
                  for h in history) == concurrent


def test_accept_suggested_beside_a_sync(cli, db: Database, csv_dataset: Path, probs_npy: Path,
                                        rubrix) -> None:
    assert cli("scan", str(csv_dataset), "--probs", str(probs_npy)).returncode == 0
    total = count(db, "select count(*) from candidates")
    review = _start(db, "review", "--accept-suggested", "--top", str(total))
    sync = _start(db, "sync", "--backend", "rubrix")
    for code, _out, err in (_finish(review), _finish(sync)):
        assert code == 0, err
        assert "locked" not in err
    assert count(db, "select count(*) from annotations") == total
    assert count(db, "select count(*) from corrections") == count(
        db, "select count(*) from candidates where given_label != suggested_label")
    assert count(db, "select count(*) from (select row from corrections group by row "
                     "having count(*) > 1) as twice") == 0
    assert len(rubrix.records(REMOTE)) == total
    assert integrity_ok(db)
