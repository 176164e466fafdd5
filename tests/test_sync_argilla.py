"""`labelfix sync --backend argilla` against a server that speaks Argilla 2.x's REST API, with
the store on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database, both_backends, db_bytes, db_count
from tests.servers.argilla import ArgillaServer

pytestmark = both_backends

KEY = "argilla-key-for-tests"
REMOTE = "reviews_label_errors"


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ArgillaServer]:
    with ArgillaServer(api_key=KEY, workspaces=("argilla", "team"), owner=True) as argilla:
        monkeypatch.setenv("ARGILLA_API_URL", argilla.url)
        monkeypatch.setenv("ARGILLA_API_KEY", KEY)
        monkeypatch.setenv("ARGILLA_WORKSPACE", "team")
        monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
        monkeypatch.setenv("LABELFIX_HTTP_TIMEOUT", "2")
        yield argilla


@pytest.fixture()
def scanned(run, csv_dataset: Path, probs_npy: Path) -> list[dict]:
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    return run("candidates", "--json").json()


def _records(server: ArgillaServer) -> dict[str, dict]:
    try:
        return {r["external_id"]: r for r in server.records(REMOTE, workspace="team")}
    except KeyError:
        return {}


def test_first_push_creates_a_published_dataset_and_records(run, server, scanned,
                                                             synthetic) -> None:
    result = run("sync", "--backend", "argilla", "--push-only", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["pushed"] == len(scanned)
    setup = server.dataset(REMOTE, workspace="team")
    assert setup["dataset"]["status"] == "ready"
    assert "Is the given label right?" in setup["dataset"]["guidelines"]
    assert {f["name"] for f in setup["fields"]} >= {"text", "given_label"}
    question = next(q for q in setup["questions"] if q["name"] == "label")
    assert [o["value"] for o in question["settings"]["options"]] == list(synthetic.label_names)
    assert {m["name"] for m in setup["metadata_properties"]} == {
        "given_label", "suggested_label", "label_quality", "row", "audit_id"}
    records = _records(server)
    assert len(records) == len(scanned)
    top = scanned[0]
    record = records[f"reviews-{top['row']}"]
    assert record["fields"]["text"] == top["text"]
    assert record["fields"]["given_label"] == top["given_label"]
    assert record["metadata"]["row"] == top["row"]
    suggestion = record["suggestions"][0]
    assert suggestion["value"] == top["suggested_label"]
    assert 0.0 <= suggestion["score"] <= 1.0 and suggestion["agent"] == "probs:probs.npy"


def test_second_push_duplicates_nothing(run, server, scanned) -> None:
    assert run("sync", "--backend", "argilla", "--push-only").exit_code == 0
    again = run("sync", "--backend", "argilla", "--push-only", "--json")
    assert again.json()["pushed"] == 0
    assert len(_records(server)) == len(scanned)


def _review_ten(server: ArgillaServer, scanned: list[dict]) -> None:
    for index, candidate in enumerate(scanned[:10]):
        rid = f"reviews-{candidate['row']}"
        if index < 7:
            server.respond(REMOTE, rid, user="alice", label=candidate["suggested_label"],
                           workspace="team")
        elif index < 9:
            server.respond(REMOTE, rid, user="bob", label=candidate["given_label"],
                           workspace="team")
        else:
            server.respond(REMOTE, rid, user="carol", label=None, status="discarded",
                           workspace="team")


def test_pull_reports_10_7_2_1_then_zeros_with_annotators_in_history(run, server,
                                                                      scanned) -> None:
    assert run("sync", "--backend", "argilla").exit_code == 0
    _review_ten(server, scanned)
    result = run("sync", "--backend", "argilla", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"pushed": 0, "pulled": 10, "corrections": 7, "confirmed": 2,
                             "discarded": 1, "failed": 0}
    again = run("sync", "--backend", "argilla", "--json").json()
    assert again == {"pushed": 0, "pulled": 0, "corrections": 0, "confirmed": 0,
                     "discarded": 0, "failed": 0}
    history = run("history", "--json").json()
    assert len(history) == 7
    assert {h["annotator"] for h in history} == {"alice"}
    assert {h["backend"] for h in history} == {"argilla"}


def test_drafts_are_not_verdicts(run, server, scanned) -> None:
    assert run("sync", "--backend", "argilla").exit_code == 0
    server.respond(REMOTE, f"reviews-{scanned[0]['row']}", user="alice",
                   label=scanned[0]["suggested_label"], status="draft", workspace="team")
    assert run("sync", "--backend", "argilla", "--json").json()["pulled"] == 0


def test_two_annotators_disagreeing_are_both_kept_and_reported(run, server, scanned) -> None:
    assert run("sync", "--backend", "argilla").exit_code == 0
    candidate = scanned[0]
    rid = f"reviews-{candidate['row']}"
    server.respond(REMOTE, rid, user="alice", label=candidate["suggested_label"],
                   workspace="team")
    server.respond(REMOTE, rid, user="bob", label=candidate["given_label"], workspace="team")
    result = run("sync", "--backend", "argilla", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["pulled"] == 2
    assert "annotators disagree on 1 row(s)" in result.stderr
    assert "alice: " in result.stderr and "bob: " in result.stderr
    history = run("history", "--row", str(candidate["row"]), "--json").json()
    # Newest first: bob's keep (the newer verdict) holds, alice's relabel stays on record.
    assert [(h["annotator"], h["new_label"]) for h in history] == [
        ("bob", candidate["given_label"]), ("alice", candidate["suggested_label"])]


def test_a_verdict_changed_after_a_pull_supersedes_the_earlier_one(run, server, scanned,
                                                                   synthetic) -> None:
    assert run("sync", "--backend", "argilla").exit_code == 0
    candidate = scanned[0]
    rid = f"reviews-{candidate['row']}"
    server.respond(REMOTE, rid, user="alice", label=candidate["suggested_label"],
                   workspace="team")
    assert run("sync", "--backend", "argilla", "--json").json()["corrections"] == 1
    third = next(n for n in synthetic.label_names
                 if n not in (candidate["given_label"], candidate["suggested_label"]))
    server.respond(REMOTE, rid, user="alice", label=third, workspace="team")
    changed = run("sync", "--backend", "argilla", "--json").json()
    assert changed["pulled"] == 1 and changed["corrections"] == 1
    assert run("history", "--row", str(candidate["row"]), "--json").json()[0]["new_label"] \
        == third


def test_annotators_show_as_ids_when_the_key_may_not_read_users(run, scanned,
                                                                monkeypatch) -> None:
    with ArgillaServer(api_key=KEY, workspaces=("team",), owner=False) as argilla:
        monkeypatch.setenv("ARGILLA_API_URL", argilla.url)
        monkeypatch.setenv("ARGILLA_API_KEY", KEY)
        monkeypatch.delenv("ARGILLA_WORKSPACE", raising=False)  # one workspace: used
        assert run("sync", "--backend", "argilla").exit_code == 0
        argilla.respond(REMOTE, f"reviews-{scanned[0]['row']}", user="alice",
                        label=scanned[0]["suggested_label"], workspace="team")
        assert run("sync", "--backend", "argilla").exit_code == 0
        annotator = run("history", "--json").json()[0]["annotator"]
        assert annotator == argilla.users["alice"]["id"]


def test_a_dataset_with_other_settings_is_refused_not_altered(run, server, scanned,
                                                              monkeypatch) -> None:
    import httpx

    headers = {"X-Argilla-Api-Key": KEY}
    workspace = next(w for w in httpx.get(f"{server.url}/api/v1/me/workspaces",
                                          headers=headers).json()["items"]
                     if w["name"] == "team")
    created = httpx.post(f"{server.url}/api/v1/datasets", headers=headers,
                         json={"name": REMOTE, "workspace_id": workspace["id"]}).json()
    httpx.post(f"{server.url}/api/v1/datasets/{created['id']}/fields", headers=headers, json={
        "name": "body", "title": "body", "required": True,
        "settings": {"type": "text", "use_markdown": False}})
    result = run("sync", "--backend", "argilla")
    assert result.exit_code == 1
    assert "exists with other settings" in result.stderr and "--remote-name" in result.stderr
    assert [f["name"] for f in server.dataset(REMOTE, workspace="team")["fields"]] == ["body"]


def test_failing_server_finishes_on_rerun_with_nothing_doubled(run, server, scanned,
                                                               monkeypatch) -> None:
    import labelfix.backends.argilla as argilla

    monkeypatch.setattr(argilla, "BATCH_SIZE", 5)
    server.fail_every(3, status=502)
    result = run("sync", "--backend", "argilla", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["pushed"] == len(scanned)
    _review_ten(server, scanned)
    server.fail_every(4, mode="bad_json")
    pulled = run("sync", "--backend", "argilla", "--json").json()
    assert (pulled["pulled"], pulled["corrections"]) == (10, 7)
    server.fail_every(0)
    assert len(_records(server)) == len(scanned)


def test_wrong_key_and_missing_workspace_are_one_line(run, server, scanned, db: Database,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("ARGILLA_API_KEY", "nope")
    wrong = run("sync", "--backend", "argilla")
    assert wrong.exit_code == 1 and "401" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and "nope" not in wrong.stderr
    assert db_count(db, "select count(*) from review_states where status = 'pushed'") == 0
    monkeypatch.setenv("ARGILLA_API_KEY", KEY)
    monkeypatch.setenv("ARGILLA_WORKSPACE", "elsewhere")
    missing = run("sync", "--backend", "argilla")
    assert missing.exit_code == 2 and "not one of your workspaces" in missing.stderr


def test_the_api_key_never_reaches_the_database_or_output(run, server, scanned,
                                                          db: Database) -> None:
    assert run("sync", "--backend", "argilla").exit_code == 0
    _review_ten(server, scanned)
    results = [run("sync", "--backend", "argilla", "--json"), run("history", "--json")]
    secrets = [KEY] + [u.get("api_key") for u in server.users.values() if u.get("api_key")]
    for result in results:
        for secret in secrets:
            assert secret not in result.stdout and secret not in result.stderr
    stored = db_bytes(db)
    for secret in secrets:
        assert secret.encode() not in stored


LIVE_URL = os.environ.get("ARGILLA_API_URL")


@pytest.mark.skipif(not LIVE_URL, reason="set ARGILLA_API_URL (and ARGILLA_API_KEY, "
                    "ARGILLA_WORKSPACE) to run against a real Argilla 2.x server")
def test_live_argilla_round_trip(run, csv_dataset: Path, probs_npy: Path) -> None:
    """Push to a real server, then pull: nothing is reviewed yet, so nothing comes back."""
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--push", "argilla",
                 "--remote-name", "labelfix-live-test", "--json")
    assert result.exit_code == 0, result.stderr
    pulled = run("sync", "--backend", "argilla", "--remote-name", "labelfix-live-test",
                 "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.json()["pushed"] == 0
