"""`labelfix sync --backend rubrix` against a server that speaks Rubrix's REST API, with the
store on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database, both_backends, db_bytes, db_count, db_rows
from tests.servers.rubrix import RubrixServer

pytestmark = both_backends

KEY = "s3cret-key-for-tests"
REMOTE = "reviews_label_errors"


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RubrixServer]:
    with RubrixServer(api_key=KEY, workspaces=("rubrix", "team-a")) as rubrix:
        monkeypatch.setenv("RUBRIX_API_URL", rubrix.url)
        monkeypatch.setenv("RUBRIX_API_KEY", KEY)
        monkeypatch.setenv("RUBRIX_WORKSPACE", "team-a")
        monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
        monkeypatch.setenv("LABELFIX_HTTP_TIMEOUT", "2")
        yield rubrix


@pytest.fixture()
def scanned(run, csv_dataset: Path, probs_npy: Path) -> list[dict]:
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy))
    assert result.exit_code == 0, result.stderr
    return run("candidates", "--json").json()


def _records(server: RubrixServer) -> dict[str, dict]:
    try:
        records = server.records(REMOTE, workspace="team-a")
    except KeyError:  # the dataset was never created
        return {}
    return {str(r["id"]): r for r in records}


def test_first_push_logs_every_candidate_in_the_tutorials_shape(run, server, scanned,
                                                                 synthetic) -> None:
    result = run("sync", "--backend", "rubrix", "--push-only", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["pushed"] == len(scanned)
    records = _records(server)
    assert len(records) == len(scanned)
    top = scanned[0]
    record = records[f"reviews-{top['row']}"]
    assert record["inputs"] == {"text": top["text"]}
    assert record["status"] == "Default"
    assert record["annotation"] == {"agent": "original_benchmark",
                                    "labels": [{"class": top["given_label"], "score": 1.0}]}
    prediction = {p["class"]: p["score"] for p in record["prediction"]["labels"]}
    assert set(prediction) == set(synthetic.label_names)
    assert sum(prediction.values()) == pytest.approx(1.0, abs=1e-5)
    assert record["prediction"]["agent"] == "probs:probs.npy"
    assert record["metadata"]["row"] == top["row"]
    assert record["metadata"]["audit_id"] == 1
    assert record["metadata"]["suggested_label"] == top["suggested_label"]
    assert record["metadata"]["label_quality"] == pytest.approx(top["label_quality"], abs=1e-6)
    # The workspace header was sent, and the key only ever in its header.
    assert all(h.get("X-Rubrix-Workspace") == "team-a" for _, p, h in server.requests
               if p.startswith("/api/datasets"))
    states = {c["review_state"] for c in run("candidates", "--json").json()}
    assert states == {"pushed"}


def test_second_push_duplicates_nothing(run, server, scanned) -> None:
    assert run("sync", "--backend", "rubrix", "--push-only").exit_code == 0
    again = run("sync", "--backend", "rubrix", "--push-only", "--json")
    assert again.json()["pushed"] == 0
    assert len(_records(server)) == len(scanned)


def _review_ten(server: RubrixServer, scanned: list[dict], names: tuple[str, ...]) -> dict:
    """7 relabelled, 2 kept, 1 discarded, as the acceptance describes."""
    done = {"relabel": [], "confirm": [], "discard": []}
    for index, candidate in enumerate(scanned[:10]):
        rid = f"reviews-{candidate['row']}"
        if index < 7:
            server.annotate(REMOTE, rid, label=candidate["suggested_label"], agent="alice",
                            workspace="team-a")
            done["relabel"].append(candidate)
        elif index < 9:
            server.annotate(REMOTE, rid, label=candidate["given_label"], agent="bob",
                            workspace="team-a")
            done["confirm"].append(candidate)
        else:
            server.annotate(REMOTE, rid, label=None, agent="carol", status="Discarded",
                            workspace="team-a")
            done["discard"].append(candidate)
    return done


def test_pull_records_corrections_confirmations_and_discards(run, server, scanned,
                                                             synthetic) -> None:
    assert run("sync", "--backend", "rubrix").exit_code == 0
    done = _review_ten(server, scanned, synthetic.label_names)
    result = run("sync", "--backend", "rubrix", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"pushed": 0, "pulled": 10, "corrections": 7, "confirmed": 2,
                             "discarded": 1, "failed": 0}
    again = run("sync", "--backend", "rubrix", "--json").json()
    assert again == {"pushed": 0, "pulled": 0, "corrections": 0, "confirmed": 0,
                     "discarded": 0, "failed": 0}
    history = run("history", "--json").json()
    assert len(history) == 7
    assert {h["row"] for h in history} == {c["row"] for c in done["relabel"]}
    assert {h["annotator"] for h in history} == {"alice"}
    first = next(h for h in history if h["row"] == done["relabel"][0]["row"])
    assert first["old_label"] == done["relabel"][0]["given_label"]
    assert first["new_label"] == done["relabel"][0]["suggested_label"]
    assert first["backend"] == "rubrix" and first["audit_id"] == 1 and first["version"] is None
    assert set(first) == {"row", "old_label", "new_label", "annotator", "backend", "audit_id",
                          "reviewed_at", "version"}
    reviewed = {c["row"]: c["review_state"] for c in run("candidates", "--json").json()}
    assert sum(state == "reviewed" for state in reviewed.values()) == 10


def test_a_verdict_changed_after_a_pull_supersedes_the_earlier_one(run, server, scanned,
                                                                   synthetic) -> None:
    assert run("sync", "--backend", "rubrix").exit_code == 0
    candidate = scanned[0]
    rid = f"reviews-{candidate['row']}"
    server.annotate(REMOTE, rid, label=candidate["suggested_label"], agent="alice",
                    workspace="team-a")
    assert run("sync", "--backend", "rubrix", "--json").json()["corrections"] == 1
    third = next(n for n in synthetic.label_names
                 if n not in (candidate["given_label"], candidate["suggested_label"]))
    server.annotate(REMOTE, rid, label=third, agent="dave", workspace="team-a")
    changed = run("sync", "--backend", "rubrix", "--json").json()
    assert changed["pulled"] == 1 and changed["corrections"] == 1
    server.annotate(REMOTE, rid, label=candidate["given_label"], agent="erin",
                    workspace="team-a")
    reverted = run("sync", "--backend", "rubrix", "--json").json()
    assert reverted["confirmed"] == 1 and reverted["corrections"] == 1
    rows = run("history", "--row", str(candidate["row"]), "--json").json()
    assert [(h["old_label"], h["new_label"], h["annotator"]) for h in rows] == [
        (third, candidate["given_label"], "erin"),
        (candidate["suggested_label"], third, "dave"),
        (candidate["given_label"], candidate["suggested_label"], "alice"),
    ]


def test_a_server_failing_every_third_request_still_syncs_everything_once(
    run, server, scanned, monkeypatch: pytest.MonkeyPatch
) -> None:
    import labelfix.backends.rubrix as rubrix

    monkeypatch.setattr(rubrix, "CHUNK_SIZE", 5)
    server.fail_every(3, status=503)
    result = run("sync", "--backend", "rubrix", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["pushed"] == len(scanned)
    _review_ten(server, scanned, ("",))
    pulled = run("sync", "--backend", "rubrix", "--json").json()
    assert pulled["pulled"] == 10 and pulled["corrections"] == 7
    server.fail_every(0)
    assert len(_records(server)) == len(scanned)
    assert len(run("history", "--json").json()) == 7


def test_a_sync_cut_off_between_batches_finishes_on_rerun(run, server, scanned, db: Database,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import labelfix.backends.rubrix as rubrix

    monkeypatch.setattr(rubrix, "CHUNK_SIZE", 5)
    monkeypatch.setenv("LABELFIX_HTTP_ATTEMPTS", "1")
    # Requests: _info, then bulks; the third bulk fails and is not retried.
    server.fail_every(4, status=500)
    failed = run("sync", "--backend", "rubrix", "--push-only")
    assert failed.exit_code == 1
    assert "rubrix at http://127.0.0.1" in failed.stderr and "POST /api/datasets" in failed.stderr
    statuses = dict(db_rows(db, "select status, count(*) from review_states group by status"))
    assert statuses["pushed"] == 10 and statuses["failed"] == len(scanned) - 10
    server.fail_every(0)
    rerun = run("sync", "--backend", "rubrix", "--push-only", "--json")
    assert rerun.exit_code == 0
    assert rerun.json()["pushed"] == len(scanned) - 10
    assert len(_records(server)) == len(scanned)


def test_wrong_key_is_one_line_exit_1_and_nothing_marked_pushed(
    run, server, scanned, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUBRIX_API_KEY", "wrong-key")
    result = run("sync", "--backend", "rubrix")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "401" in result.stderr and "API key" in result.stderr
    assert "wrong-key" not in result.stderr
    assert db_count(db, "select count(*) from review_states where status = 'pushed'") == 0
    assert _records(server) == {}


def test_unreachable_server_is_one_line_exit_1(run, scanned,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("RUBRIX_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
    monkeypatch.setenv("LABELFIX_HTTP_ATTEMPTS", "2")
    result = run("sync", "--backend", "rubrix")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"rubrix at http://127.0.0.1:{port}: GET /api/_info" in lines[0]
    assert "cannot connect" in lines[0]


def test_the_api_key_never_reaches_the_database_or_output(run, server, scanned,
                                                          db: Database) -> None:
    results = [run("sync", "--backend", "rubrix", "--json"), run("history", "--json"),
               run("audits", "--json"), run("candidates", "--json")]
    for result in results:
        assert KEY not in result.stdout and KEY not in result.stderr
    assert KEY.encode() not in db_bytes(db)


def test_argilla_1_servers_are_detected_and_get_argilla_headers(
    run, scanned, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RubrixServer(api_key=KEY, workspaces=("argilla",), flavor="argilla1") as argilla:
        monkeypatch.setenv("RUBRIX_API_URL", argilla.url)
        monkeypatch.setenv("RUBRIX_API_KEY", KEY)
        monkeypatch.setenv("RUBRIX_WORKSPACE", "argilla")
        result = run("sync", "--backend", "rubrix", "--json")
        assert result.exit_code == 0, result.stderr
        assert result.json()["pushed"] == len(scanned)
        bulk = [h for m, p, h in argilla.requests if p.endswith(":bulk")]
        assert bulk and all("X-Argilla-Api-Key" in h for h in bulk)


def test_scan_push_rubrix_logs_the_candidates(run, server, csv_dataset: Path,
                                              probs_npy: Path) -> None:
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--push", "rubrix",
                 "--json")
    assert result.exit_code == 0, result.stderr
    assert len(_records(server)) == result.json()["candidates"]
    assert "Pushed" in result.stderr


def test_bad_remote_name_is_refused(run, server, scanned) -> None:
    result = run("sync", "--backend", "rubrix", "--remote-name", "Bad Name")
    assert result.exit_code == 2
    assert "lower-case" in result.stderr


LIVE_URL = os.environ.get("RUBRIX_API_URL")


@pytest.mark.skipif(not LIVE_URL, reason="set RUBRIX_API_URL (and RUBRIX_API_KEY, "
                    "RUBRIX_WORKSPACE) to run against a real Rubrix or Argilla 1.x server")
def test_live_rubrix_round_trip(run, csv_dataset: Path, probs_npy: Path) -> None:
    """Push to a real server, then pull: nothing is reviewed yet, so nothing comes back."""
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--push", "rubrix",
                 "--remote-name", "labelfix_live_test", "--json")
    assert result.exit_code == 0, result.stderr
    pulled = run("sync", "--backend", "rubrix", "--remote-name", "labelfix_live_test", "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.json()["pushed"] == 0
