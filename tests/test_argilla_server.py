"""The Argilla test double answers like an Argilla 2.8 server does, over real HTTP."""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.servers.argilla import ArgillaServer

KEY = "argilla.apikey"
UNAUTHORIZED = {"detail": {"code": "argilla.api.errors::UnauthorizedError",
                           "params": {"detail": "Could not validate credentials"}}}
FORBIDDEN = {"detail": {"code": "argilla.api.errors::ForbiddenOperationError",
                        "params": {"detail": "Operation not allowed"}}}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
US_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")
RECORD_KEYS = {"id", "status", "fields", "metadata", "external_id", "dataset_id",
               "inserted_at", "updated_at"}
SUBMITTED_OR_DISCARDED = {"type": "and", "and": [{
    "type": "terms", "values": ["submitted", "discarded"],
    "scope": {"entity": "response", "question": None, "property": "status"}}]}


class FakeClock:
    """A clock the test moves by hand, so that timestamps are known."""

    def __init__(self, start: str = "2024-05-01T12:00:00.123456") -> None:
        self.now = datetime.fromisoformat(start).replace(tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def client_for(double: ArgillaServer, key: str = KEY) -> httpx.Client:
    # Plain HTTP only: verify=False skips loading a CA bundle, ~50 ms per client.
    return httpx.Client(base_url=double.url, headers={"X-Argilla-Api-Key": key}, timeout=5,
                        verify=False)


@pytest.fixture()
def server() -> Iterator[ArgillaServer]:
    with ArgillaServer(api_key=KEY, workspaces=("argilla", "team"), owner=True) as double:
        yield double


@pytest.fixture()
def client(server: ArgillaServer) -> Iterator[httpx.Client]:
    with client_for(server) as http:
        yield http


def validation_errors(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["code"] == "argilla.api.errors::ValidationError"
    return detail["params"]["errors"]


class Setup:
    """A published dataset as the labelfix backend builds it."""

    def __init__(self, client: httpx.Client, server: ArgillaServer, name: str = "ds",
                 workspace: str = "argilla", *, publish: bool = True,
                 min_submitted: int = 1) -> None:
        self.client = client
        created = client.post("/api/v1/datasets", json={
            "name": name, "workspace_id": server.workspaces[workspace]})
        assert created.status_code == 201, created.text
        self.dataset = created.json()
        self.base = f"/api/v1/datasets/{self.dataset['id']}"
        patched = client.patch(self.base, json={
            "guidelines": "Fix the label.", "allow_extra_metadata": False,
            "distribution": {"strategy": "overlap", "min_submitted": min_submitted}})
        assert patched.status_code == 200, patched.text
        field = client.post(f"{self.base}/fields", json={
            "name": "text", "title": "Text", "required": True,
            "settings": {"type": "text", "use_markdown": False}})
        assert field.status_code == 201, field.text
        question = client.post(f"{self.base}/questions", json={
            "name": "label", "title": "Label", "required": True,
            "settings": {"type": "label_selection", "visible_options": None,
                         "options": [{"text": "pos", "value": "pos"},
                                     {"text": "neg", "value": "neg"}]}})
        assert question.status_code == 201, question.text
        self.question = question.json()
        for prop, settings in (("given_label", {"type": "terms", "values": None}),
                               ("label_quality", {"type": "float", "min": None, "max": None}),
                               ("row", {"type": "integer", "min": None, "max": None})):
            made = client.post(f"{self.base}/metadata-properties", json={
                "name": prop, "title": prop, "settings": settings,
                "visible_for_annotators": True})
            assert made.status_code == 201, made.text
        if publish:
            published = client.put(f"{self.base}/publish")
            assert published.status_code == 200, published.text
            self.dataset = published.json()

    def item(self, external_id: str, text: str = "some text", **extra: Any) -> dict[str, Any]:
        """A record as the backend sends it."""
        item = {"external_id": external_id, "fields": {"text": text},
                "metadata": {"given_label": "neg", "label_quality": 0.25, "row": 1},
                "suggestions": [{"question_id": self.question["id"], "type": "model",
                                 "value": "pos", "score": 0.75, "agent": "probs:probs.npy"}]}
        item.update(extra)
        return item

    def upsert(self, *items: dict[str, Any]) -> httpx.Response:
        return self.client.put(f"{self.base}/records/bulk", json={"items": list(items)})

    def search(self, body: dict[str, Any] | None = None, *params: tuple[str, Any]
               ) -> httpx.Response:
        return self.client.post(f"{self.base}/records/search", params=list(params),
                                json=body if body is not None else {"query": None})


def external_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["record"]["external_id"] for item in response.json()["items"]]


# --------------------------------------------------------------------------- auth and users


@pytest.mark.parametrize("headers", [
    {"X-Argilla-Api-Key": "wrong"},
    {},
    {"Authorization": f"Bearer {KEY}"},
    {"X-Rubrix-Api-Key": KEY},
], ids=["wrong-key", "no-key", "bearer-only", "rubrix-header"])
def test_a_wrong_or_missing_key_is_401(server: ArgillaServer, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/api/v1/me"), ("GET", "/api/v1/me/workspaces"),
                         ("GET", "/api/v1/me/datasets"), ("DELETE", "/api/v1/datasets/x"),
                         ("POST", "/api/v1/datasets/x/records/search")]:
        response = httpx.request(method, f"{server.url}{path}", headers=headers, json={},
                                 verify=False)
        assert response.status_code == 401, (method, path)
        assert response.json() == UNAUTHORIZED


def test_me_is_the_user_schema_with_its_api_key(server: ArgillaServer,
                                                client: httpx.Client) -> None:
    me = client.get("/api/v1/me").json()
    assert set(me) == {"id", "first_name", "last_name", "username", "role", "api_key",
                       "inserted_at", "updated_at"}
    assert UUID.match(me["id"]) and me["id"] == server.user_id
    assert (me["username"], me["role"], me["api_key"]) == ("argilla", "owner", KEY)
    assert US_FORMAT.match(me["inserted_at"])


def test_workspaces_are_listed_with_their_ids(server: ArgillaServer,
                                              client: httpx.Client) -> None:
    items = client.get("/api/v1/me/workspaces").json()["items"]
    assert [w["name"] for w in items] == ["argilla", "team"]
    assert {w["name"]: w["id"] for w in items} == server.workspaces
    assert set(items[0]) == {"id", "name", "inserted_at", "updated_at"}


def test_users_are_readable_by_owners_only(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server)
    assert setup.upsert(setup.item("ex-1")).status_code == 200
    server.respond("ds", "ex-1", user="alice", label="pos")
    alice = server.users["alice"]
    answer = client.get(f"/api/v1/users/{alice['id']}")
    assert answer.status_code == 200
    assert answer.json() == alice and answer.json()["api_key"] == alice["api_key"]
    assert answer.json()["role"] == "annotator"
    missing = client.get("/api/v1/users/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "User with id `00000000-0000-4000-8000-000000000000` not found"}
    assert [u["username"] for u in client.get("/api/v1/users").json()["items"]] == [
        "argilla", "alice"]


def test_an_admin_runs_the_workflow_but_may_not_read_users() -> None:
    with ArgillaServer(api_key=KEY, workspaces=("team",), owner=False) as double, \
            client_for(double) as http:
        assert http.get("/api/v1/me").json()["role"] == "admin"
        setup = Setup(http, double, workspace="team")
        assert setup.upsert(setup.item("ex-1")).status_code == 200
        response = double.respond("ds", "ex-1", user="alice", label="pos")
        # 403 comes before the lookup: known and unknown ids read the same.
        for user_id in (response["user_id"], "00000000-0000-4000-8000-000000000000"):
            answer = http.get(f"/api/v1/users/{user_id}")
            assert answer.status_code == 403 and answer.json() == FORBIDDEN
        assert http.get("/api/v1/users").status_code == 403
        assert [i["record"]["external_id"] for i in setup.search(
            {"filters": SUBMITTED_OR_DISCARDED}, ("include", "responses")).json()["items"]] == [
            "ex-1"]


def test_an_admin_sees_only_its_workspaces_and_an_annotator_may_not_create() -> None:
    with ArgillaServer(api_key=KEY, workspaces=("team",), owner=False) as double, \
            client_for(double) as http:
        assert [w["name"] for w in http.get("/api/v1/me/workspaces").json()["items"]] == ["team"]
    with ArgillaServer(api_key=KEY, workspaces=("team",), role="annotator") as double, \
            client_for(double) as http:
        refused = http.post("/api/v1/datasets", json={
            "name": "ds", "workspace_id": double.workspaces["team"]})
        assert refused.status_code == 403 and refused.json() == FORBIDDEN


# --------------------------------------------------------------------------- dataset lifecycle


def test_draft_settings_then_publish(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server, publish=False)
    draft = client.get(setup.base).json()
    assert set(draft) == {"id", "name", "guidelines", "allow_extra_metadata", "status",
                          "distribution", "metadata", "workspace_id", "last_activity_at",
                          "inserted_at", "updated_at"}
    assert (draft["status"], draft["allow_extra_metadata"]) == ("draft", False)
    assert draft["distribution"] == {"strategy": "overlap", "min_submitted": 1}
    fields = client.get(f"{setup.base}/fields").json()["items"]
    assert [(f["name"], f["required"], f["settings"]) for f in fields] == [
        ("text", True, {"type": "text", "use_markdown": False})]
    (question,) = client.get(f"{setup.base}/questions").json()["items"]
    assert question["settings"] == {
        "type": "label_selection", "visible_options": None,
        "options": [{"value": "pos", "text": "pos", "description": None},
                    {"value": "neg", "text": "neg", "description": None}]}
    props = client.get(f"/api/v1/me/datasets/{setup.dataset['id']}/metadata-properties")
    assert [(p["name"], p["settings"]) for p in props.json()["items"]] == [
        ("given_label", {"type": "terms", "values": None}),
        ("label_quality", {"type": "float", "min": None, "max": None}),
        ("row", {"type": "integer", "min": None, "max": None})]
    assert client.get(f"{setup.base}/vectors-settings").json() == {"items": []}
    # The server has no GET on this path: only POST, so the method is not allowed.
    assert client.get(f"{setup.base}/metadata-properties").status_code == 405
    published = client.put(f"{setup.base}/publish")
    assert published.status_code == 200 and published.json()["status"] == "ready"
    assert published.json()["updated_at"] > draft["updated_at"]
    listed = client.get("/api/v1/me/datasets").json()["items"]
    assert [(d["name"], d["status"]) for d in listed] == [("ds", "ready")]


def test_a_published_dataset_refuses_new_fields_and_questions(server: ArgillaServer,
                                                              client: httpx.Client) -> None:
    setup = Setup(client, server)
    field = client.post(f"{setup.base}/fields", json={
        "name": "more", "title": "More", "required": False, "settings": {"type": "text"}})
    assert field.status_code == 422
    assert field.json() == {"detail": "Field cannot be created for a published dataset"}
    question = client.post(f"{setup.base}/questions", json={
        "name": "note", "title": "Note", "required": False, "settings": {"type": "text"}})
    assert question.json() == {"detail": "questions cannot be created for a published dataset"}
    again = client.put(f"{setup.base}/publish")
    assert (again.status_code, again.json()) == (422, {"detail": "Dataset is already published"})
    # Metadata properties may still be added.
    late = client.post(f"{setup.base}/metadata-properties", json={
        "name": "late", "title": "late", "settings": {"type": "terms"}})
    assert late.status_code == 201


def test_publishing_needs_a_field_and_a_required_question(server: ArgillaServer,
                                                          client: httpx.Client) -> None:
    workspace_id = server.workspaces["argilla"]
    dataset = client.post("/api/v1/datasets", json={"name": "bare",
                                                    "workspace_id": workspace_id}).json()
    base = f"/api/v1/datasets/{dataset['id']}"
    refused = client.put(f"{base}/publish")
    assert refused.json() == {"detail": "Dataset cannot be published without fields"}
    client.post(f"{base}/fields", json={"name": "text", "title": "Text",
                                        "settings": {"type": "text"}})
    assert client.put(f"{base}/publish").json() == {
        "detail": "Dataset cannot be published without required questions"}
    client.post(f"{base}/questions", json={
        "name": "label", "title": "Label", "required": False,
        "settings": {"type": "label_selection", "options": [
            {"text": "a", "value": "a"}, {"text": "b", "value": "b"}]}})
    assert client.put(f"{base}/publish").status_code == 422  # an optional question is not enough
    assert client.get(base).json()["status"] == "draft"


def test_records_only_go_into_a_published_dataset(server: ArgillaServer,
                                                  client: httpx.Client) -> None:
    setup = Setup(client, server, publish=False)
    refused = setup.upsert(setup.item("ex-1"))
    assert refused.status_code == 422
    assert refused.json() == {
        "detail": "records cannot be created or updated for a non published dataset"}
    with pytest.raises(KeyError):
        server.respond("ds", "ex-1", user="alice", label="pos")
    assert server.records("ds") == []


def test_duplicate_names_and_unknown_workspaces(server: ArgillaServer,
                                                client: httpx.Client) -> None:
    workspace_id = server.workspaces["argilla"]
    assert client.post("/api/v1/datasets", json={"name": "ds",
                                                 "workspace_id": workspace_id}).status_code == 201
    again = client.post("/api/v1/datasets", json={"name": "ds", "workspace_id": workspace_id})
    assert again.status_code == 409
    assert again.json() == {"detail": f"Dataset with name `ds` already exists for workspace "
                                      f"with id `{workspace_id}`"}
    # The same name in another workspace is another dataset.
    other = client.post("/api/v1/datasets", json={"name": "ds",
                                                  "workspace_id": server.workspaces["team"]})
    assert other.status_code == 201
    nowhere = "00000000-0000-4000-8000-000000000000"
    missing = client.post("/api/v1/datasets", json={"name": "x", "workspace_id": nowhere})
    assert missing.status_code == 422
    assert missing.json() == {"detail": f"Workspace with id `{nowhere}` not found"}
    (error,) = validation_errors(client.post("/api/v1/datasets", json={"name": "x"}))
    assert (error["type"], error["loc"]) == ("missing", ["body", "workspace_id"])


def test_duplicate_settings_are_409(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server, publish=False)
    field = client.post(f"{setup.base}/fields", json={"name": "text", "title": "t",
                                                       "settings": {"type": "text"}})
    assert field.status_code == 409
    assert field.json() == {"detail": f"Field with name `text` already exists for dataset "
                                      f"with id `{setup.dataset['id']}`"}
    prop = client.post(f"{setup.base}/metadata-properties", json={
        "name": "row", "title": "row", "settings": {"type": "integer"}})
    assert prop.status_code == 409


def test_get_patch_and_delete_a_dataset(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server)
    renamed = client.patch(setup.base, json={"name": "renamed", "guidelines": None})
    assert (renamed.json()["name"], renamed.json()["guidelines"]) == ("renamed", None)
    (error,) = validation_errors(client.patch(setup.base, json={"name": None}))
    assert error["msg"] == "Value error, The following keys must have non-null values: name"
    deleted = client.delete(setup.base)
    assert deleted.status_code == 200 and deleted.json()["name"] == "renamed"
    gone = client.get(setup.base)
    assert gone.status_code == 404
    assert gone.json() == {"detail": f"Dataset with id `{setup.dataset['id']}` not found"}
    with pytest.raises(KeyError):
        server.dataset("renamed")


def test_dataset_hook_returns_the_settings(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server, "ds", "team")
    got = server.dataset("ds", workspace="team")
    assert got["dataset"] == client.get(setup.base).json()
    assert [f["name"] for f in got["fields"]] == ["text"]
    assert got["questions"][0]["id"] == setup.question["id"]
    assert [p["name"] for p in got["metadata_properties"]] == [
        "given_label", "label_quality", "row"]
    with pytest.raises(KeyError):
        server.dataset("ds", workspace="argilla")


# --------------------------------------------------------------------------- bulk upsert


def test_upsert_by_external_id_keeps_the_id_responses_and_fields(server: ArgillaServer,
                                                                  client: httpx.Client) -> None:
    setup = Setup(client, server)
    first = setup.upsert(setup.item("ex-1", "great movie"))
    assert first.status_code == 200
    (record,) = first.json()["items"]
    assert set(record) == RECORD_KEYS | {"responses", "suggestions", "vectors"}
    assert (record["status"], record["responses"], record["vectors"]) == ("pending", [], {})
    assert record["fields"] == {"text": "great movie"}
    (suggestion,) = record["suggestions"]
    assert set(suggestion) == {"id", "question_id", "type", "value", "agent", "score",
                               "inserted_at", "updated_at"}
    response = server.respond("ds", "ex-1", user="alice", label="neg")

    again = setup.upsert(setup.item("ex-1", "changed text", metadata={
        "given_label": "pos", "label_quality": 0.5, "row": 2}, suggestions=[{
            "question_id": setup.question["id"], "value": "neg", "score": 0.6}]))
    (updated,) = again.json()["items"]
    assert updated["id"] == record["id"]
    assert updated["fields"] == {"text": "great movie"}  # fields of a known record stay
    assert updated["metadata"] == {"given_label": "pos", "label_quality": 0.5, "row": 2}
    assert updated["responses"] == [response]
    assert updated["updated_at"] > record["updated_at"]
    assert updated["inserted_at"] == record["inserted_at"]
    (changed,) = updated["suggestions"]
    assert (changed["id"], changed["value"], changed["agent"]) == (suggestion["id"], "neg", None)
    assert len(server.records("ds")) == 1


def test_an_upsert_without_metadata_changes_nothing_of_the_record(
        server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server)
    (record,) = setup.upsert(setup.item("ex-1")).json()["items"]
    item = setup.item("ex-1")
    del item["metadata"]
    (again,) = setup.upsert(item).json()["items"]
    assert (again["updated_at"], again["metadata"]) == (record["updated_at"], record["metadata"])


@pytest.mark.parametrize(("count", "error_type"), [(0, "too_short"), (501, "too_long")])
def test_a_bulk_call_takes_1_to_500_items(server: ArgillaServer, client: httpx.Client,
                                          count: int, error_type: str) -> None:
    setup = Setup(client, server)
    (error,) = validation_errors(setup.upsert(*[setup.item(f"ex-{i}") for i in range(count)]))
    assert (error["type"], error["loc"]) == (error_type, ["body", "items"])
    assert server.records("ds") == []
    assert len(setup.upsert(*[setup.item(f"ex-{i}") for i in range(500)]).json()["items"]) == 500


def test_external_ids_in_one_call_must_be_unique(server: ArgillaServer,
                                                 client: httpx.Client) -> None:
    setup = Setup(client, server)
    (error,) = validation_errors(setup.upsert(setup.item("a"), setup.item("a")))
    assert error["msg"] == "Value error, External IDs must be unique"


@pytest.mark.parametrize(("bad", "reason"), [
    ({"metadata": {"given_label": "x", "label_quality": 1, "row": 1}},
     "metadata is not valid: 'label_quality' metadata property validation failed because "
     "'1' is not a float."),
    ({"metadata": {"row": 1.5}},
     "metadata is not valid: 'row' metadata property validation failed because '1.5' is not "
     "an integer."),
    ({"metadata": {"other": "x"}},
     "metadata is not valid: 'other' metadata property does not exists for dataset '{id}' "
     "and extra metadata is not allowed for this dataset"),
    ({"fields": {"text": "t", "extra": "e"}},
     "found fields values for non configured fields: ['extra']"),
    ({"fields": {}}, "fields cannot be empty"),
    ({"fields": {"text": None}}, "missing required value for field: 'text'"),
    ({"suggestions": [{"question_id": "{qid}", "value": "maybe"}]},
     "record does not have valid suggestions: 'maybe' is not a valid label for label "
     "selection question.\nValid labels are: ['pos', 'neg']"),
    ({"suggestions": [{"question_id": "00000000-0000-4000-8000-000000000000", "value": "pos"}]},
     "record does not have valid suggestions: question id=00000000-0000-4000-8000-000000000000 "
     "does not exists"),
], ids=["int-for-float", "float-for-integer", "extra-metadata", "extra-field", "no-fields",
        "missing-field", "bad-label", "unknown-question"])
def test_one_bad_record_rejects_the_whole_call(server: ArgillaServer, client: httpx.Client,
                                               bad: dict[str, Any], reason: str) -> None:
    setup = Setup(client, server)
    assert setup.upsert(setup.item("kept")).status_code == 200
    bad = copy.deepcopy(bad)
    if "suggestions" in bad:
        bad["suggestions"][0]["question_id"] = bad["suggestions"][0]["question_id"].replace(
            "{qid}", setup.question["id"])
    items = [setup.item("a"), setup.item("b"), setup.item("c", **bad)]
    refused = setup.upsert(*items)
    assert refused.status_code == 422
    reason = reason.replace("{id}", setup.dataset["id"])
    assert refused.json() == {"detail": f"Record at position 2 is not valid because {reason}"}
    assert [r["external_id"] for r in server.records("ds")] == ["kept"]


def test_schema_errors_are_validation_errors(server: ArgillaServer,
                                             client: httpx.Client) -> None:
    setup = Setup(client, server)
    item = setup.item("a")
    item["suggestions"][0].update(score=1.5, agent="model@v1")
    errors = validation_errors(setup.upsert(item))
    assert [(e["type"], e["loc"][-1]) for e in errors] == [
        ("string_pattern_mismatch", "agent"), ("less_than_equal", "score")]
    assert errors[0]["loc"] == ["body", "items", 0, "suggestions", 0, "agent"]
    (error,) = validation_errors(client.put(f"{setup.base}/records/bulk", json=[]))
    assert (error["type"], error["loc"]) == ("model_attributes_type", ["body"])
    assert server.records("ds") == []


def test_post_bulk_creates_only(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server)
    created = client.post(f"{setup.base}/records/bulk", json={"items": [setup.item("a")]})
    assert created.status_code == 201
    again = client.post(f"{setup.base}/records/bulk", json={"items": [setup.item("a")]})
    assert again.json() == {"detail": "found records with same external ids: a"}


# --------------------------------------------------------------------------- search


def test_search_by_response_status_returns_every_response(server: ArgillaServer,
                                                          client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(*[setup.item(f"ex-{i}") for i in range(4)])
    server.respond("ds", "ex-0", user="alice", label="pos")
    server.respond("ds", "ex-0", user="bob", label="neg", status="draft")
    server.respond("ds", "ex-1", user="bob", label=None, status="discarded")
    server.respond("ds", "ex-2", user="carol", label="neg", status="draft")
    found = setup.search({"query": None, "filters": SUBMITTED_OR_DISCARDED},
                         ("offset", 0), ("limit", 10), ("include", "responses"))
    body = found.json()
    assert body["total"] == 2 and external_ids(found) == ["ex-0", "ex-1"]
    first = body["items"][0]
    assert first["query_score"] == 1.0
    assert set(first["record"]) == RECORD_KEYS | {"responses"}
    # Drafts and other users' responses come with a matched record.
    assert [(r["status"], r["values"]) for r in first["record"]["responses"]] == [
        ("submitted", {"label": {"value": "pos"}}), ("draft", {"label": {"value": "neg"}})]
    assert len({r["user_id"] for r in first["record"]["responses"]}) == 2
    assert body["items"][1]["record"]["responses"][0]["values"] is None
    drafts = {"and": [{"type": "terms", "values": ["draft"],
                       "scope": {"entity": "response", "property": "status"}}]}
    assert external_ids(setup.search({"filters": drafts})) == ["ex-0", "ex-2"]
    pending = {"and": [{"type": "terms", "values": ["pending"],
                        "scope": {"entity": "response", "property": "status"}}]}
    assert external_ids(setup.search({"filters": pending})) == ["ex-3"]


def test_include_decides_which_relationships_come_back(server: ArgillaServer,
                                                       client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(setup.item("ex-1"))
    server.respond("ds", "ex-1", user="alice", label="pos")
    plain = setup.search().json()["items"][0]["record"]
    assert set(plain) == RECORD_KEYS
    suggested = setup.search(None, ("include", "suggestions")).json()["items"][0]["record"]
    assert set(suggested) == RECORD_KEYS | {"suggestions"}
    both = setup.search(None, ("include", "suggestions"), ("include", "responses"),
                        ("include", "vectors")).json()["items"][0]["record"]
    assert set(both) == RECORD_KEYS | {"suggestions", "responses", "vectors"}
    (error,) = validation_errors(setup.search(None, ("include", "everything")))
    assert error["loc"] == ["query", "include", 0]


def test_offset_and_limit_page_in_insertion_order(server: ArgillaServer,
                                                  client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(*[setup.item(f"ex-{i:02d}") for i in range(7)])
    setup.upsert(setup.item("ex-03"))  # an update does not move a record
    pages = []
    offset = 0
    while True:
        answer = setup.search({"query": None}, ("offset", offset), ("limit", 3))
        assert answer.json()["total"] == 7
        page = external_ids(answer)
        if not page:
            break
        pages.append(page)
        offset += len(page)
    assert pages == [["ex-00", "ex-01", "ex-02"], ["ex-03", "ex-04", "ex-05"], ["ex-06"]]
    (error,) = validation_errors(setup.search(None, ("limit", 1001)))
    assert (error["type"], error["loc"], error["ctx"]) == (
        "less_than_equal", ["query", "limit"], {"le": 1000})
    assert len(setup.search(None, ("limit", 1000)).json()["items"]) == 7
    assert validation_errors(setup.search(None, ("offset", -1)))[0]["loc"] == ["query", "offset"]
    default = setup.search()
    assert len(default.json()["items"]) == 7  # default limit 50


def test_sort_orders_and_drops_the_query_score(server: ArgillaServer,
                                               client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(*[setup.item(f"ex-{i}", metadata={"label_quality": q})
                   for i, q in enumerate([0.5, 0.1, 0.9])])
    by_quality = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "label_quality"},
                            "order": "desc"}]}
    answer = setup.search(by_quality)
    assert external_ids(answer) == ["ex-2", "ex-0", "ex-1"]
    assert {item["query_score"] for item in answer.json()["items"]} == {None}
    newest = {"sort": [{"scope": {"entity": "record", "property": "inserted_at"},
                        "order": "desc"}]}
    assert external_ids(setup.search(newest)) == ["ex-2", "ex-1", "ex-0"]


def test_a_record_updated_at_range_misses_new_responses() -> None:
    clock = FakeClock()
    with ArgillaServer(api_key=KEY, clock=clock) as double, client_for(double) as http:
        setup = Setup(http, double)
        setup.upsert(setup.item("ex-1"), setup.item("ex-2"))
        clock.advance(60)
        cut = clock.now.replace(tzinfo=None).isoformat()
        clock.advance(60)
        response = double.respond("ds", "ex-1", user="alice", label="pos")
        assert response["updated_at"] > cut
        since = {"and": [{"type": "range", "ge": cut,
                          "scope": {"entity": "record", "property": "updated_at"}}]}
        assert external_ids(setup.search({"filters": since})) == []
        # The status change moved the stored updated_at, which search returns, not the index.
        record = setup.search(None, ("include", "responses")).json()["items"][0]["record"]
        assert record["status"] == "completed" and record["updated_at"] > cut
        # A re-upsert re-indexes it, and then the range finds it.
        setup.upsert(setup.item("ex-1"))
        assert external_ids(setup.search({"filters": since})) == ["ex-1"]
        before = {"and": [{"type": "range", "le": cut,
                           "scope": {"entity": "record", "property": "inserted_at"}}]}
        assert external_ids(setup.search({"filters": before})) == ["ex-1", "ex-2"]


def test_there_is_no_range_filter_on_a_responses_updated_at(server: ArgillaServer,
                                                            client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(setup.item("ex-1"))
    old = server.respond("ds", "ex-1", user="alice", label="pos")["updated_at"]
    by_response_time = {"and": [{"type": "range", "ge": old,
                                 "scope": {"entity": "response", "property": "updated_at"}}]}
    (error,) = validation_errors(setup.search({"filters": by_response_time}))
    assert error["type"] == "literal_error" and error["loc"][-1] == "property"
    # What works: read each response's own updated_at.
    newer = server.respond("ds", "ex-1", user="alice", label="neg")["updated_at"]
    record = setup.search({"filters": SUBMITTED_OR_DISCARDED},
                          ("include", "responses")).json()["items"][0]["record"]
    assert [r["updated_at"] for r in record["responses"] if r["updated_at"] > old] == [newer]


def test_metadata_suggestion_and_text_filters(server: ArgillaServer,
                                              client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(setup.item("a", "the quick brown fox", metadata={"given_label": "pos"}),
                 setup.item("b", "a lazy dog", metadata={"given_label": "neg",
                                                         "label_quality": 0.75}))
    terms = {"and": [{"type": "terms", "values": ["neg"],
                      "scope": {"entity": "metadata", "metadata_property": "given_label"}}]}
    assert external_ids(setup.search({"filters": terms})) == ["b"]
    ranged = {"and": [{"type": "range", "ge": 0.5, "le": 1,
                       "scope": {"entity": "metadata", "metadata_property": "label_quality"}}]}
    assert external_ids(setup.search({"filters": ranged})) == ["b"]
    suggested = {"and": [{"type": "terms", "values": ["pos"],
                          "scope": {"entity": "suggestion", "question": "label"}}]}
    assert external_ids(setup.search({"filters": suggested})) == ["a", "b"]
    assert external_ids(setup.search({"query": {"text": {"q": "quick fox"}}})) == ["a"]
    assert external_ids(setup.search({"query": {"text": {"q": "qui*", "field": "text"}}})) == [
        "a"]
    unknown = {"and": [{"type": "terms", "values": ["x"],
                        "scope": {"entity": "metadata", "metadata_property": "nope"}}]}
    refused = setup.search({"filters": unknown})
    assert refused.status_code == 422 and refused.json() == {
        "detail": f"MetadataProperty not found filtering by name=nope, "
                  f"dataset_id={setup.dataset['id']}"}


def test_bad_search_bodies_are_validation_errors(server: ArgillaServer,
                                                 client: httpx.Client) -> None:
    setup = Setup(client, server)
    (error,) = validation_errors(setup.search({"filters": {"and": [{"type": "exists"}]}}))
    assert error["type"] == "union_tag_invalid"
    (error,) = validation_errors(setup.search({"filters": {"and": [{
        "type": "range", "scope": {"entity": "record", "property": "updated_at"}}]}}))
    assert error["msg"] == "Value error, At least one of 'ge' or 'le' must be provided"
    (error,) = validation_errors(client.post(f"{setup.base}/records/search"))
    assert (error["type"], error["loc"]) == ("missing", ["body"])


def test_me_search_sees_only_the_users_own_responses(server: ArgillaServer,
                                                     client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(setup.item("ex-1"))
    server.respond("ds", "ex-1", user="alice", label="pos")
    server.respond("ds", "ex-1", user="bob", label="neg")
    alice = server.users["alice"]
    with client_for(server, alice["api_key"]) as as_alice:
        assert as_alice.get("/api/v1/me").json()["role"] == "annotator"
        mine = as_alice.post(f"/api/v1/me/datasets/{setup.dataset['id']}/records/search",
                             params={"include": "responses"}, json={"query": None})
        (item,) = mine.json()["items"]
        assert [r["user_id"] for r in item["record"]["responses"]] == [alice["id"]]
        # The all-responses search is for owners and admins.
        assert as_alice.post(f"{setup.base}/records/search", json={}).status_code == 403


# --------------------------------------------------------------------------- annotators


def test_two_users_answer_one_record(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server, min_submitted=2)
    setup.upsert(setup.item("ex-1"))
    alice = server.respond("ds", "ex-1", user="alice", label="pos")
    assert server.records("ds")[0]["status"] == "pending"  # 1 of 2 submitted
    bob = server.respond("ds", "ex-1", user="bob", label="neg")
    (record,) = server.records("ds")
    assert record["status"] == "completed"
    assert record["responses"] == [alice, bob]
    assert set(alice) == {"id", "values", "status", "record_id", "user_id", "inserted_at",
                          "updated_at"}
    assert alice["record_id"] == record["id"] and alice["user_id"] != bob["user_id"]
    assert set(server.users) == {"argilla", "alice", "bob"}
    # Changing an answer keeps the response, bumps updated_at, and may undo completion.
    changed = server.respond("ds", "ex-1", user="alice", label=None, status="discarded")
    assert (changed["id"], changed["inserted_at"]) == (alice["id"], alice["inserted_at"])
    assert changed["updated_at"] > bob["updated_at"] and changed["values"] is None
    assert server.records("ds")[0]["status"] == "pending"


def test_respond_stamps_strictly_later_on_a_frozen_clock() -> None:
    clock = FakeClock("2024-05-01T12:00:00")
    with ArgillaServer(api_key=KEY, clock=clock) as double, client_for(double) as http:
        setup = Setup(http, double)
        setup.upsert(setup.item("ex-1"))
        stamps = [double.respond("ds", "ex-1", user=user, label="pos")["updated_at"]
                  for user in ("alice", "bob", "alice")]
        assert stamps == sorted(set(stamps))
        assert all(US_FORMAT.match(stamp) for stamp in stamps)
        assert stamps[0] > double.records("ds")[0]["inserted_at"]


def test_timestamps_lose_a_zero_fraction_as_pydantic_writes_them() -> None:
    clock = FakeClock("2024-05-01T12:00:00")
    with ArgillaServer(api_key=KEY, workspaces=(), clock=clock) as double, \
            client_for(double) as http:
        assert http.get("/api/v1/me").json()["inserted_at"] == "2024-05-01T12:00:00"


def test_respond_refuses_what_the_server_would(server: ArgillaServer,
                                               client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(setup.item("ex-1"))
    with pytest.raises(ValueError, match="not a valid label"):
        server.respond("ds", "ex-1", user="alice", label="maybe")
    with pytest.raises(ValueError, match="missing response values"):
        server.respond("ds", "ex-1", user="alice", label=None)
    with pytest.raises(ValueError, match="status"):
        server.respond("ds", "ex-1", user="alice", label="pos", status="done")
    with pytest.raises(KeyError):
        server.respond("ds", "nope", user="alice", label="pos")
    with pytest.raises(KeyError):
        server.respond("nope", "ex-1", user="alice", label="pos")
    assert "alice" not in server.users


def test_records_hook_returns_copies(server: ArgillaServer, client: httpx.Client) -> None:
    setup = Setup(client, server)
    setup.upsert(setup.item("ex-1"))
    first = server.records("ds")
    first[0]["fields"]["text"] = "changed"
    first[0]["suggestions"].clear()
    again = server.records("ds")[0]
    assert again["fields"]["text"] == "some text" and len(again["suggestions"]) == 1


# --------------------------------------------------------------------------- faults and routing


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_fail_every_answers_every_nth_request_with_a_status(server: ArgillaServer,
                                                            client: httpx.Client,
                                                            status: int) -> None:
    server.fail_every(3, status=status)
    codes = []
    for _ in range(6):
        response = client.get("/api/v1/me")
        codes.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["retry-after"] == "0"
    assert codes == [200, 200, status, 200, 200, status]
    server.fail_every(1, status=status)
    created = client.post("/api/v1/datasets", json={"name": "ds",
                                                    "workspace_id": server.workspaces["team"]})
    assert created.status_code == status
    server.fail_every(0)
    assert client.get("/api/v1/me/datasets").json() == {"items": []}  # nothing was created


def test_fail_every_reset_drops_the_connection(server: ArgillaServer,
                                               client: httpx.Client) -> None:
    server.fail_every(2, mode="reset")
    assert client.get("/api/v1/me").status_code == 200
    with pytest.raises(httpx.TransportError):
        client.get("/api/v1/me")
    assert client.get("/api/v1/me").status_code == 200


def test_fail_every_slow_delays_then_answers(server: ArgillaServer,
                                             client: httpx.Client) -> None:
    server.fail_every(1, mode="slow", delay=0.3)
    started = time.monotonic()
    response = client.get("/api/v1/me")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200 and response.json()["username"] == "argilla"
    with pytest.raises(httpx.ReadTimeout):
        client.get("/api/v1/me", timeout=0.05)


def test_fail_every_bad_json_answers_200_with_a_broken_body(server: ArgillaServer,
                                                            client: httpx.Client) -> None:
    server.fail_every(1, mode="bad_json")
    response = client.get("/api/v1/me")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_fail_every_is_exact_under_concurrency(server: ArgillaServer) -> None:
    server.fail_every(4, status=503)
    codes: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with client_for(server) as http:
            for _ in range(5):
                code = http.get("/api/v1/me").status_code
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(503) == 10 and codes.count(200) == 30
    assert server.injected_faults == 10
    with pytest.raises(ValueError):
        server.fail_every(2, mode="teapot")


def test_routing_errors(server: ArgillaServer, client: httpx.Client) -> None:
    for response in (client.get("/api/v1/nope"), client.get("/api/v2/me"),
                     httpx.get(f"{server.url}/api/v1/nope", verify=False)):
        assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
    wrong = client.put("/api/v1/me")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})
    slash = client.get("/api/v1/me/")
    assert slash.status_code == 307 and slash.headers["location"].endswith("/api/v1/me")
    (error,) = validation_errors(client.get("/api/v1/datasets/not-a-uuid"))
    assert (error["type"], error["loc"]) == ("uuid_parsing", ["path", "dataset_id"])


def test_a_malformed_json_body_is_422_even_before_the_key(server: ArgillaServer) -> None:
    response = httpx.post(f"{server.url}/api/v1/datasets", content=b"{not json",
                          headers={"Content-Type": "application/json"}, verify=False)
    (error,) = validation_errors(response)
    assert (error["type"], error["loc"], error["msg"]) == (
        "json_invalid", ["body", 1], "JSON decode error")


def test_the_request_log_keeps_method_target_and_headers(server: ArgillaServer,
                                                         client: httpx.Client) -> None:
    client.get("/api/v1/me/datasets", params={"name": "x"})
    (method, target, headers), = server.requests
    assert (method, target) == ("GET", "/api/v1/me/datasets?name=x")
    assert {k.lower(): v for k, v in headers.items()}["x-argilla-api-key"] == KEY
