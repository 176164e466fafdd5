"""`labelfix sync --backend label-studio` against a real Label Studio server.

One server (installed on first use into its own virtual environment, see
tests/servers/label_studio.py) serves the whole session; each test works in a project of its
own and plays the annotators through Label Studio's REST API, as its web app sends them.

The tests of what reaches the store (push, pull, two annotators, a refused key) run on SQLite
and on PostgreSQL (``@both_backends``); the others, about the server's side, on SQLite only,
so that the real server's slow requests are not all made twice.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from labelfix.backends.http import BackendError, HttpSettings
from labelfix.backends.label_studio import (
    MODEL_VERSION,
    LabelStudioBackend,
    label_config,
)
from labelfix.errors import UsageError
from tests.conftest import Database, both_backends, db_count, db_rows
from tests.servers.label_studio import (
    LabelStudioServer,
    LabelStudioUnavailable,
    User,
    ensure_installed,
    ensure_template,
)

BACKEND = "label-studio"
ZERO = {"pushed": 0, "pulled": 0, "corrections": 0, "confirmed": 0, "discarded": 0,
        "failed": 0}


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A Label Studio on 127.0.0.1 with an admin and three annotators, for the whole session."""
    try:
        python = ensure_installed()
    except LabelStudioUnavailable as exc:
        if os.environ.get("LABELFIX_REQUIRE_LABEL_STUDIO"):
            pytest.fail(f"LABELFIX_REQUIRE_LABEL_STUDIO is set, but: {exc}")
        pytest.skip(f"Label Studio cannot be installed here: {exc}")
    # A cached, migrated database with the users in it spares a minute or two of every start.
    template = ensure_template(python, annotators=[f"{name}@example.com"
                                                   for name in ("alice", "bob", "carol")])
    server = LabelStudioServer(python=python, data_dir=tmp_path_factory.mktemp("label-studio"),
                               template=template)
    with server:
        yield server


@pytest.fixture()
def server(label_studio: LabelStudioServer,
           monkeypatch: pytest.MonkeyPatch) -> LabelStudioServer:
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.admin.token)
    monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
    return label_studio


@pytest.fixture(autouse=True)
def _registry_knows_label_studio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the registry lists label-studio, open it here as the registry will."""
    from labelfix.backends import registry

    if BACKEND in getattr(registry, "SERVER_BACKENDS", ()):
        return
    real = registry.open_backend

    def open_backend(name: str, *, insecure: bool = False, **options: object) -> object:
        if name == BACKEND:
            return LabelStudioBackend.from_env(settings=HttpSettings.from_env(insecure=insecure))
        return real(name, insecure=insecure, **options)

    monkeypatch.setattr(registry, "open_backend", open_backend)


@pytest.fixture()
def remote(request: pytest.FixtureRequest) -> str:
    """A project title of this test's own on the shared server (and of each of its backends)."""
    name = request.node.originalname.lower().removeprefix("test_")
    title = "t-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:46]
    callspec = getattr(request.node, "callspec", None)
    return f"{title[:42]}-{callspec.id[:3]}" if callspec is not None else title


@pytest.fixture()
def scanned(run, csv_dataset: Path, probs_npy: Path) -> list[dict]:
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy))
    assert result.exit_code == 0, result.stderr
    return run("candidates", "--json").json()


def _tasks(server: LabelStudioServer, title: str) -> dict[str, dict]:
    """labelfix_id -> task (with annotations and predictions) of the project ``title``."""
    project = server.project(title)
    if project is None:
        return {}
    return {t["data"]["labelfix_id"]: t for t in server.tasks(project["id"])}


def _user(server: LabelStudioServer, name: str) -> User:
    return server.users[f"{name}@example.com"]


@both_backends
def test_first_push_creates_the_project_and_one_task_per_candidate(
    run, server, scanned, synthetic
) -> None:
    # The default remote name: the only test that uses it on the shared server.
    result = run("sync", "--backend", BACKEND, "--push-only", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["pushed"] == len(scanned)
    project = server.project("reviews_label_errors")
    assert project is not None
    assert project["label_config"] == label_config(synthetic.label_names)
    assert all(f'<Choice value="{name}"/>' in project["label_config"]
               for name in synthetic.label_names)
    assert "Is the given label right?" in project["expert_instruction"]
    assert project["show_skip_button"] is True
    # The given label is what annotators find preselected.
    assert project["model_version"] == MODEL_VERSION
    tasks = _tasks(server, "reviews_label_errors")
    assert len(tasks) == len(scanned)
    top = scanned[0]
    task = tasks[f"reviews-{top['row']}"]
    data = task["data"]
    assert data["text"] == top["text"]
    assert data["given_label"] == top["given_label"]
    assert data["suggested_label"] == top["suggested_label"]
    assert data["label_quality"] == pytest.approx(top["label_quality"], abs=1e-6)
    assert data["row"] == top["row"] and data["audit_id"] == 1
    assert "text_pair" not in data
    [prediction] = task["predictions"]
    assert prediction["model_version"] == MODEL_VERSION
    assert prediction["result"] == [{"from_name": "label", "to_name": "text", "type": "choices",
                                     "value": {"choices": [top["given_label"]]}}]
    given = synthetic.label_names.index(top["given_label"])
    assert prediction["score"] == pytest.approx(
        float(synthetic.probs()[top["row"], given]), abs=1e-5)
    assert task["annotations"] == []
    states = {c["review_state"] for c in run("candidates", "--json").json()}
    assert states == {"pushed"}


@both_backends
def test_second_push_imports_nothing_twice(run, server, scanned, remote, db: Database) -> None:
    assert run("sync", "--backend", BACKEND, "--push-only", "--remote-name", remote
               ).exit_code == 0
    again = run("sync", "--backend", BACKEND, "--push-only", "--remote-name", remote, "--json")
    assert again.exit_code == 0, again.stderr
    assert again.json()["pushed"] == 0
    assert len(_tasks(server, remote)) == len(scanned)
    # A push cut off after the server took the tasks but before labelfix recorded it: the
    # rerun finds them by their labelfix_id and records them without importing them again.
    db_rows(db, "update review_states set status = 'pending', pushed_at = null")
    rerun = run("sync", "--backend", BACKEND, "--push-only", "--remote-name", remote, "--json")
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.json()["pushed"] == len(scanned)
    project = server.project(remote)
    tasks = server.tasks(project["id"])
    assert len(tasks) == len(scanned)
    assert len({t["data"]["labelfix_id"] for t in tasks}) == len(scanned)


def _review_ten(server: LabelStudioServer, remote: str, scanned: list[dict]) -> dict:
    """7 relabelled by alice, 2 kept by bob, 1 skipped by carol, as the acceptance describes."""
    tasks = _tasks(server, remote)
    done: dict[str, list[dict]] = {"relabel": [], "confirm": [], "discard": []}
    for index, candidate in enumerate(scanned[:10]):
        task = tasks[f"reviews-{candidate['row']}"]
        if index < 7:
            server.annotate(task, user=_user(server, "alice"),
                            choice=candidate["suggested_label"], origin="prediction-changed")
            done["relabel"].append(candidate)
        elif index < 9:
            server.annotate(task, user=_user(server, "bob"), choice=candidate["given_label"],
                            origin="prediction")
            done["confirm"].append(candidate)
        else:
            server.annotate(task, user=_user(server, "carol"), choice=None)
            done["discard"].append(candidate)
    return done


@both_backends
def test_pull_records_corrections_confirmations_and_discards(run, server, scanned,
                                                             remote) -> None:
    assert run("sync", "--backend", BACKEND, "--remote-name", remote).exit_code == 0
    done = _review_ten(server, remote, scanned)
    result = run("sync", "--backend", BACKEND, "--remote-name", remote, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"pushed": 0, "pulled": 10, "corrections": 7, "confirmed": 2,
                             "discarded": 1, "failed": 0}
    again = run("sync", "--backend", BACKEND, "--remote-name", remote, "--json")
    assert again.exit_code == 0, again.stderr
    assert again.json() == ZERO
    history = run("history", "--json").json()
    assert len(history) == 7
    assert {h["row"] for h in history} == {c["row"] for c in done["relabel"]}
    assert {h["annotator"] for h in history} == {"alice@example.com"}
    first = next(h for h in history if h["row"] == done["relabel"][0]["row"])
    assert first["old_label"] == done["relabel"][0]["given_label"]
    assert first["new_label"] == done["relabel"][0]["suggested_label"]
    assert first["backend"] == BACKEND and first["audit_id"] == 1 and first["version"] is None
    reviewed = {c["row"]: c["review_state"] for c in run("candidates", "--json").json()}
    assert sum(state == "reviewed" for state in reviewed.values()) == 10


def test_a_verdict_changed_after_a_pull_supersedes_the_earlier_one(
    run, server, scanned, remote, synthetic
) -> None:
    assert run("sync", "--backend", BACKEND, "--remote-name", remote).exit_code == 0
    candidate = scanned[0]
    task = _tasks(server, remote)[f"reviews-{candidate['row']}"]
    alice, bob = _user(server, "alice"), _user(server, "bob")
    first = server.annotate(task, user=alice, choice=candidate["suggested_label"])
    pulled = run("sync", "--backend", BACKEND, "--remote-name", remote, "--json").json()
    assert pulled["pulled"] == 1 and pulled["corrections"] == 1
    third = next(n for n in synthetic.label_names
                 if n not in (candidate["given_label"], candidate["suggested_label"]))
    # Alice opens the task again and changes her answer: same annotation, updated.
    server.change(first["id"], user=alice, choice=third)
    changed = run("sync", "--backend", BACKEND, "--remote-name", remote, "--json").json()
    assert changed == {**ZERO, "pulled": 1, "corrections": 1}
    # Bob, later, keeps the given label.
    server.annotate(task, user=bob, choice=candidate["given_label"], origin="prediction")
    reverted = run("sync", "--backend", BACKEND, "--remote-name", remote, "--json").json()
    assert reverted == {**ZERO, "pulled": 1, "corrections": 1, "confirmed": 1}
    rows = run("history", "--row", str(candidate["row"]), "--json").json()
    assert [(h["old_label"], h["new_label"], h["annotator"]) for h in rows] == [
        (third, candidate["given_label"], "bob@example.com"),
        (candidate["suggested_label"], third, "alice@example.com"),
        (candidate["given_label"], candidate["suggested_label"], "alice@example.com"),
    ]


@both_backends
def test_two_annotators_on_one_task_are_both_kept(run, server, scanned, remote, synthetic,
                                                  db: Database) -> None:
    assert run("sync", "--backend", BACKEND, "--remote-name", remote).exit_code == 0
    candidate = scanned[1]
    task = _tasks(server, remote)[f"reviews-{candidate['row']}"]
    third = next(n for n in synthetic.label_names
                 if n not in (candidate["given_label"], candidate["suggested_label"]))
    server.annotate(task, user=_user(server, "alice"), choice=candidate["suggested_label"])
    server.annotate(task, user=_user(server, "carol"), choice=third)
    result = run("sync", "--backend", BACKEND, "--remote-name", remote, "--json")
    assert result.exit_code == 0, result.stderr
    # Both verdicts are on record and applied in time order: the newer one (carol's) holds.
    assert result.json() == {**ZERO, "pulled": 2, "corrections": 2}
    assert "disagree" in result.stderr and "carol@example.com" in result.stderr
    kept = db_rows(db, "select annotator, decision, label from annotations "
                       f"where row = {int(candidate['row'])} order by id")
    names = list(synthetic.label_names)
    assert sorted(kept) == sorted([
        ("alice@example.com", "relabel", names.index(candidate["suggested_label"])),
        ("carol@example.com", "relabel", names.index(third)),
    ])
    rows = run("history", "--row", str(candidate["row"]), "--json").json()
    assert [(h["old_label"], h["new_label"], h["annotator"]) for h in rows] == [
        (candidate["suggested_label"], third, "carol@example.com"),
        (candidate["given_label"], candidate["suggested_label"], "alice@example.com"),
    ]


def test_pull_before_any_push_finds_nothing(run, server, scanned, remote) -> None:
    result = run("sync", "--backend", BACKEND, "--pull-only", "--remote-name", remote, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == ZERO
    assert server.project(remote) is None


@both_backends
def test_wrong_key_is_one_line_exit_1_and_nothing_marked_pushed(
    run, server, scanned, remote, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong-key-0123456789")
    result = run("sync", "--backend", BACKEND, "--remote-name", remote)
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"label-studio at {server.url}: GET /api/projects/" in result.stderr
    assert "401" in result.stderr and "API key" in result.stderr
    assert "wrong-key-0123456789" not in result.stderr + result.stdout
    assert db_count(db, "select count(*) from review_states where status = 'pushed'") == 0
    assert server.project(remote) is None


def test_unreachable_server_is_one_line_exit_1(run, scanned,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "any-key")
    monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
    monkeypatch.setenv("LABELFIX_HTTP_ATTEMPTS", "2")
    result = run("sync", "--backend", BACKEND)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"label-studio at http://127.0.0.1:{port}: GET /api/projects/" in lines[0]
    assert "cannot connect" in lines[0]


def test_a_remote_name_too_long_for_a_project_title_is_a_usage_error(run, server,
                                                                    scanned) -> None:
    result = run("sync", "--backend", BACKEND, "--remote-name", "x" * 51)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "at most 50" in result.stderr


def test_missing_key_is_a_usage_error(run, scanned, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    result = run("sync", "--backend", BACKEND)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "LABEL_STUDIO_API_KEY" in result.stderr


def test_the_api_key_never_reaches_the_database_or_output(run, server, scanned, remote,
                                                          db: Database) -> None:
    key = server.admin.token
    results = [run("sync", "--backend", BACKEND, "--remote-name", remote, "--json"),
               run("history", "--json"), run("audits", "--json"), run("candidates", "--json")]
    assert results[0].exit_code == 0, results[0].stderr
    for result in results:
        assert key not in result.stdout and key not in result.stderr
    for path in db.parent.glob("labelfix.db*"):
        assert key.encode() not in path.read_bytes()


def test_scan_push_label_studio_imports_the_candidates(run, server, csv_dataset: Path,
                                                      probs_npy: Path, remote) -> None:
    result = run("scan", str(csv_dataset), "--probs", str(probs_npy), "--push", BACKEND,
                 "--remote-name", remote, "--json")
    assert result.exit_code == 0, result.stderr
    assert len(_tasks(server, remote)) == result.json()["candidates"]
    assert "Pushed" in result.stderr


# ---------------------------------------------------------------- without a server


def test_label_config_shows_the_pair_and_escapes_label_names() -> None:
    config = label_config(["a&b", 'say "hi"'], pair=True)
    assert '<Text name="text_pair" value="$text_pair"/>' in config
    assert '<Choice value="a&amp;b"/>' in config and "<Choice value='say \"hi\"'/>" in config


def test_a_personal_access_token_is_refused_with_a_hint() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"
    with pytest.raises(UsageError, match="legacy API token"):
        LabelStudioBackend(url="http://127.0.0.1:9", api_key=jwt)


class _FakeHttp:
    """Answers queued per (method, path); records every call."""

    def __init__(self, answers: dict[tuple[str, str], list[object]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[object] = []

    def request_json(self, method: str, path: str, *, json_body: object = None,
                     **_: object) -> object:
        self.calls.append((method, path))
        self.bodies.append(json_body)
        answer = self.answers[(method, path)].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


def _item(row: int) -> object:
    from labelfix.backends.base import PushItem

    return PushItem(remote_id=f"ds-{row}", row=row, audit_id=1, text=f"text {row}",
                    text_pair=None, given_label="a", suggested_label="b", label_quality=0.1,
                    probabilities={"a": 0.3, "b": 0.7}, source="probs:p.npy")


def test_a_failed_import_is_retried_only_for_the_tasks_the_server_lacks(monkeypatch) -> None:
    import labelfix.backends.label_studio as module

    monkeypatch.setattr(module.time, "sleep", lambda _: None)
    backend = LabelStudioBackend(url="http://127.0.0.1:9", api_key="k",
                                 settings=HttpSettings(attempts=3, backoff=0))
    tasks_page = ("GET", "/api/tasks/")
    backend.close()  # its real clients are swapped for fakes
    backend._http = _FakeHttp({
        ("GET", "/api/projects/"): [{"count": 1, "next": None,
                                     "results": [{"id": 7, "title": "r"}]}],
        # Before the push: ds-0 is there already. After the failed import: ds-1 arrived.
        tasks_page: [
            {"total": 1, "tasks": [{"id": 70, "data": {"labelfix_id": "ds-0"}}]},
            {"total": 2, "tasks": [{"id": 70, "data": {"labelfix_id": "ds-0"}},
                                   {"id": 71, "data": {"labelfix_id": "ds-1"}}]},
        ],
    })
    backend._once = _FakeHttp({("POST", "/api/projects/7/import"): [
        BackendError("label-studio at x: POST /api/projects/7/import failed after 1 attempts"),
        # The second try sends ds-2 alone; an Enterprise server answers with an import id.
        {"import": 5},
    ]})
    backend._http.answers[("GET", "/api/projects/7/imports/5/")] = [
        {"status": "in_progress"}, {"status": "completed", "task_count": 1, "task_ids": [72]}]
    batches = list(backend.push([_item(0), _item(1), _item(2)], remote_name="r",
                                label_names=["a", "b"]))
    assert batches == [["ds-0", "ds-1", "ds-2"]]
    assert backend._once.calls == [("POST", "/api/projects/7/import")] * 2
    sent = [[task["data"]["labelfix_id"] for task in body] for body in backend._once.bodies]
    assert sent == [["ds-1", "ds-2"], ["ds-2"]]
    assert backend._http.calls.count(tasks_page) == 2
