"""The Rubrix test double answers like Rubrix 0.18 (and Argilla 1.0) does, over real HTTP."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.servers.rubrix import RubrixServer

KEY = "secret"
UNAUTHORIZED = {"detail": {"code": "rubrix.api.errors::UnauthorizedError",
                           "params": {"detail": "Could not validate credentials"}}}
MS_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$")


# Plain HTTP only: verify=False skips loading a CA bundle, ~50 ms per client.
def plain_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, verify=False, **kwargs)


def plain_get(url: str, **kwargs: Any) -> httpx.Response:
    return plain_request("GET", url, **kwargs)


def plain_post(url: str, **kwargs: Any) -> httpx.Response:
    return plain_request("POST", url, **kwargs)


def client_for(double: RubrixServer) -> httpx.Client:
    """A client like the backend's: base URL and the key header on every call."""
    return httpx.Client(base_url=double.url, headers={"X-Rubrix-Api-Key": KEY}, timeout=5,
                        verify=False)


class FakeClock:
    """A clock the test moves by hand, so that last_updated values are known."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def set(self, text: str) -> None:
        self.now = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.fixture()
def server() -> Iterator[RubrixServer]:
    with RubrixServer(api_key=KEY, workspaces=("rubrix", "team-a")) as double:
        yield double


@pytest.fixture()
def client(server: RubrixServer) -> Iterator[httpx.Client]:
    with client_for(server) as http:
        yield http


def record(record_id: Any, text: str = "some text", **extra: Any) -> dict[str, Any]:
    """A record as the rubrix client sends it (None fields included)."""
    return {"id": record_id, "inputs": {"text": text}, "prediction": None, "annotation": None,
            "multi_label": False, "explanation": None, "metadata": {}, "event_timestamp": None,
            "metrics": {}, "search_keywords": None, **extra}


def bulk(client: httpx.Client, name: str, records: list[dict[str, Any]],
         **kwargs: Any) -> httpx.Response:
    return client.post(f"/api/datasets/{name}/TextClassification:bulk",
                       json={"tags": {}, "metadata": {}, "records": records}, **kwargs)


def load(client: httpx.Client, name: str, query: dict[str, Any] | None = None,
         **params: Any) -> list[dict[str, Any]]:
    """What rb.load reads: the NDJSON stream, one object per line."""
    with client.stream("POST", f"/api/datasets/{name}/TextClassification/data",
                       json=query, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/json"
        assert response.headers["transfer-encoding"] == "chunked"
        return [json.loads(line) for line in response.iter_lines() if line]


def ids(client: httpx.Client, name: str, query_text: str | None = None,
        **query: Any) -> list[Any]:
    return [r["id"] for r in load(client, name, {"query_text": query_text, **query})]


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(("flavor", "answer"), [("rubrix", {"rubrix_version": "0.18.0"}),
                                                ("argilla1", {"version": "1.0.1"})])
def test_info_needs_no_key_and_names_the_server(flavor: str, answer: dict[str, str]) -> None:
    with RubrixServer(api_key=KEY, flavor=flavor) as double:
        response = plain_get(f"{double.url}/api/_info")
    assert response.status_code == 200
    assert response.json() == answer


def test_me_with_the_key_drops_null_fields(client: httpx.Client) -> None:
    response = client.get("/api/me")
    assert response.status_code == 200
    assert response.json() == {"username": "rubrix", "disabled": False,
                               "workspaces": ["rubrix", "team-a"]}


@pytest.mark.parametrize("headers", [
    {"X-Rubrix-Api-Key": "wrong"},
    {},
    {"Authorization": f"Bearer {KEY}"},  # the rubrix client sends it, but not as the key
    {"X-Argilla-Api-Key": KEY},  # the other flavor's header
], ids=["wrong-key", "no-key", "bearer-only", "argilla-header"])
def test_a_wrong_or_missing_key_is_401(server: RubrixServer, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/api/me"), ("GET", "/api/datasets/ds"),
                         ("DELETE", "/api/datasets/ds")]:
        response = plain_request(method, f"{server.url}{path}", headers=headers)
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
    response = plain_post(f"{server.url}/api/datasets/ds/TextClassification:bulk",
                          headers=headers, json={"records": [record("a")]})
    assert response.status_code == 401
    assert server.datasets() == []


def test_the_key_header_with_a_bearer_token_beside_it_is_accepted(server: RubrixServer) -> None:
    response = plain_get(f"{server.url}/api/me", headers={
        "X-Rubrix-Api-Key": KEY, "Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200


def test_argilla1_reads_argilla_headers() -> None:
    with RubrixServer(api_key=KEY, workspaces=("rubrix", "team-a"), flavor="argilla1") as double:
        assert plain_get(f"{double.url}/api/me",
                         headers={"X-Rubrix-Api-Key": KEY}).status_code == 401
        headers = {"X-Argilla-Api-Key": KEY, "X-Argilla-Workspace": "team-a"}
        response = plain_post(f"{double.url}/api/datasets/ds/TextClassification:bulk",
                              headers=headers, json={"records": [record("a")]})
        assert response.status_code == 200
        assert double.datasets("team-a") == ["ds"]
        assert double.datasets() == []
        wrong = plain_get(f"{double.url}/api/me", headers={"X-Argilla-Api-Key": "nope"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"]["code"] == "argilla.api.errors::UnauthorizedError"


def test_workspaces_keep_datasets_apart(server: RubrixServer, client: httpx.Client) -> None:
    assert bulk(client, "ds", [record("a")],
                headers={"X-Rubrix-Workspace": "team-a"}).status_code == 200
    assert server.datasets("team-a") == ["ds"]
    assert server.datasets() == []  # no header: the user's own workspace
    assert client.get("/api/datasets/ds").status_code == 404
    # The query param wins over the header.
    response = client.get("/api/datasets/ds", params={"workspace": "team-a"},
                          headers={"X-Rubrix-Workspace": "rubrix"})
    assert response.status_code == 200
    assert response.json()["owner"] == "team-a"
    forbidden = client.get("/api/datasets/ds", headers={"X-Rubrix-Workspace": "other"})
    assert forbidden.status_code == 403
    assert forbidden.json() == {"detail": {
        "code": "rubrix.api.errors::ForbiddenOperationError",
        "params": {"detail": "Missing or protected workspace other"}}}


# --------------------------------------------------------------------------- datasets and bulk


@pytest.mark.parametrize("name", ["My-DS", "-ds", "_ds", "ds.v1", "ds with space"])
def test_a_dataset_name_out_of_the_rule_is_422(server: RubrixServer, client: httpx.Client,
                                               name: str) -> None:
    response = bulk(client, name, [record("a")])
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["code"] == "rubrix.api.errors::ValidationError"
    (error,) = detail["params"]["errors"]
    assert {"loc", "msg", "type"} <= set(error)
    assert "^(?!-|_)[a-z0-9-_]+$" in error["msg"]
    assert server.datasets() == []


def test_bulk_creates_the_dataset_and_upserts_by_id(server: RubrixServer,
                                                    client: httpx.Client) -> None:
    annotation = {"agent": "original_benchmark", "labels": [{"class": "neg", "score": 1.0}]}
    first = bulk(client, "my-ds", [record("ex-1", "great movie", annotation=annotation),
                                   record("ex-2", "dull plot")])
    assert first.status_code == 200
    assert first.json() == {"dataset": "my-ds", "processed": 2, "failed": 0}
    second = bulk(client, "my-ds", [record("ex-1", "great movie, really")])
    assert second.json() == {"dataset": "my-ds", "processed": 1, "failed": 0}

    stored = server.records("my-ds")
    assert [r["id"] for r in stored] == ["ex-1", "ex-2"]
    assert stored[0]["inputs"] == {"text": "great movie, really"}  # overwritten, not added
    assert [r["id"] for r in load(client, "my-ds")] == ["ex-1", "ex-2"]


def test_a_record_without_status_is_default_even_when_annotated(client: httpx.Client) -> None:
    annotated = record("a", annotation={"agent": "x", "labels": [{"class": "pos", "score": 1.0}]})
    assert "status" not in annotated
    bulk(client, "ds", [annotated, record("b", status="Validated")])
    by_id = {r["id"]: r for r in load(client, "ds")}
    assert by_id["a"]["status"] == "Default"
    assert by_id["a"]["annotation"]["labels"] == [{"class": "pos", "score": 1.0}]
    assert by_id["b"]["status"] == "Validated"


def test_a_bad_record_is_422_and_nothing_is_stored(server: RubrixServer,
                                                   client: httpx.Client) -> None:
    response = bulk(client, "ds", [record("a"), record("b", status="Done")])
    assert response.status_code == 422
    (error,) = response.json()["detail"]["params"]["errors"]
    assert error["loc"] == ["body", "records", 1, "status"]
    assert server.datasets() == []


def test_last_updated_is_set_once_per_bulk_call_in_ms_iso_format() -> None:
    clock = FakeClock(datetime(2022, 10, 2, 9, 13, 0, 123456, tzinfo=timezone.utc))
    with RubrixServer(api_key=KEY, clock=clock) as double, client_for(double) as http:
        bulk(http, "ds", [record("a"), record("b")])
        clock.set("2022-10-02T09:14:00")
        bulk(http, "ds", [record("c")])
        stamps = {r["id"]: r["last_updated"] for r in load(http, "ds")}
    assert stamps == {"a": "2022-10-02T09:13:00.123", "b": "2022-10-02T09:13:00.123",
                      "c": "2022-10-02T09:14:00.000"}
    assert all(MS_FORMAT.match(value) for value in stamps.values())


def test_get_and_delete_a_dataset(client: httpx.Client) -> None:
    missing = client.get("/api/datasets/my-ds")
    assert missing.status_code == 404
    assert missing.json()["detail"]["code"] == "rubrix.api.errors::EntityNotFoundError"
    assert missing.json()["detail"]["params"]["name"] == "my-ds"

    client.post("/api/datasets/my-ds/TextClassification:bulk",
                json={"tags": {"source": "labelfix"}, "metadata": {"v": 1},
                      "records": [record("a")]})
    found = client.get("/api/datasets/my-ds")
    assert found.status_code == 200
    body = found.json()
    assert set(body) == {"name", "task", "owner", "created_at", "last_updated", "tags",
                         "metadata"}
    assert (body["name"], body["task"], body["owner"]) == ("my-ds", "TextClassification",
                                                           "rubrix")
    assert body["tags"] == {"source": "labelfix"} and body["metadata"] == {"v": 1}
    assert MS_FORMAT.match(body["created_at"])

    assert client.delete("/api/datasets/my-ds").status_code == 200
    assert client.get("/api/datasets/my-ds").status_code == 404


def test_metadata_is_flattened_and_strings_keep_their_last_128_chars(
        server: RubrixServer, client: httpx.Client) -> None:
    long = "head-" + "x" * 120 + "TAIL"
    metadata = {"note": long, "row": 7, "nested": {"a": "b", "deep": {"c": 1.5}}, "empty": {},
                "tags": ["y" * 130]}
    bulk(client, "ds", [record("a", metadata=metadata)])
    expected = {"note": long[-128:], "row": 7, "nested.a": "b", "nested.deep.c": 1.5,
                "tags": ["y" * 128]}
    assert server.records("ds")[0]["metadata"] == expected
    (loaded,) = load(client, "ds")
    assert loaded["metadata"] == expected
    assert loaded["metadata"]["note"].endswith("TAIL") and len(loaded["metadata"]["note"]) == 128


# --------------------------------------------------------------------------- streaming


def test_the_stream_drops_null_fields_and_sorts_ids_as_strings(client: httpx.Client) -> None:
    bulk(client, "ds", [record("b"), record(10), record("9"), record(2), record("a")])
    loaded = load(client, "ds")
    # "10" < "2" < "9" < "a" < "b", and whatever int() reads comes back as an integer.
    assert [r["id"] for r in loaded] == [10, 2, 9, "a", "b"]
    for line in loaded:
        assert None not in line.values()
        assert "annotation" not in line and "prediction" not in line
    assert ids(client, "ds") == [10, 2, 9, "a", "b"]
    assert [r["id"] for r in load(client, "ds", id_from="2")] == [9, "a", "b"]


def test_limit_and_id_from_page_through_three_pages(server: RubrixServer,
                                                    client: httpx.Client) -> None:
    names = [f"rec-{i:02d}" for i in range(8)]
    bulk(client, "ds", [record(name) for name in reversed(names)])
    pages: list[list[str]] = []
    id_from = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if id_from is not None:
            params["id_from"] = id_from
        page = [r["id"] for r in load(client, "ds", {"query_text": None}, **params)]
        pages.append(page)
        if len(page) < 3:
            break
        id_from = page[-1]
    assert pages == [names[0:3], names[3:6], names[6:8]]
    assert [target for _, target, _ in server.requests][-2:] == [
        "/api/datasets/ds/TextClassification/data?limit=3&id_from=rec-02",
        "/api/datasets/ds/TextClassification/data?limit=3&id_from=rec-05",
    ]


def test_the_stream_is_sent_in_chunks_of_records() -> None:
    with RubrixServer(api_key=KEY, stream_chunk_size=2) as double:
        double.seed("ds", [record(f"r{i}") for i in range(5)])
        with socket.create_connection(("127.0.0.1", double.port), timeout=5) as raw:
            raw.sendall(b"POST /api/datasets/ds/TextClassification/data HTTP/1.1\r\n"
                        b"Host: x\r\nX-Rubrix-Api-Key: secret\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n")
            data = b""
            while chunk := raw.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    chunks = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(body[:size])
        body = body[size + 2:]
    assert [chunk.count(b"\n") for chunk in chunks] == [2, 2, 1]


@pytest.mark.parametrize("limit", ["0", "-1", "many"])
def test_limit_must_be_a_positive_integer(client: httpx.Client, limit: str) -> None:
    bulk(client, "ds", [record("a")])
    response = client.post("/api/datasets/ds/TextClassification/data", params={"limit": limit},
                           json={})
    assert response.status_code == 422
    (error,) = response.json()["detail"]["params"]["errors"]
    assert error["loc"] == ["query", "limit"]


def test_loading_a_missing_dataset_is_404(client: httpx.Client) -> None:
    response = client.post("/api/datasets/nope/TextClassification/data", json={})
    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "rubrix.api.errors::EntityNotFoundError"


# --------------------------------------------------------------------------- queries


@pytest.fixture()
def annotated() -> Iterator[tuple[RubrixServer, httpx.Client]]:
    """Four records logged and annotated at known times.

    old  "old news"       logged 2022-09-30T23:59:59.999, Validated at log time, no annotation
    r1   "great movie"    alice Validated pos  2022-10-01T12:00:00.123
    r2   "terrible film"  bob Validated neg    2022-10-01T12:00:00.124
    r3   "great film"     discarded by alice   2022-10-02T08:00:00.000
    """
    clock = FakeClock(datetime(2022, 9, 30, 23, 59, 59, 999000, tzinfo=timezone.utc))
    with RubrixServer(api_key=KEY, clock=clock) as double, client_for(double) as http:
        bulk(http, "ds", [record("old", "old news", status="Validated")])
        clock.set("2022-10-01T00:00:00")
        bulk(http, "ds", [record("r1", "great movie"), record("r2", "terrible film"),
                          record("r3", "great film")])
        clock.set("2022-10-01T12:00:00.123")
        double.annotate("ds", "r1", label="pos", agent="alice")
        clock.set("2022-10-01T12:00:00.124")
        double.annotate("ds", "r2", label="neg", agent="bob")
        clock.set("2022-10-02T08:00:00")
        double.annotate("ds", "r3", label=None, agent="alice", status="Discarded")
        yield double, http


@pytest.mark.parametrize(("query_text", "expected"), [
    ("status:Validated", ["old", "r1", "r2"]),
    ("status:Discarded", ["r3"]),
    ("status:validated", []),  # keyword fields are case-sensitive
    ("annotated_by:alice", ["r1"]),  # the discard cleared r3's annotation
    ("status:Validated AND annotated_by:bob", ["r2"]),
    ("status:Validated annotated_by:bob", ["r2"]),  # default_operator AND
    ("annotated_by:alice OR annotated_by:bob", ["r1", "r2"]),
    ("(status:Validated OR status:Discarded) AND great", ["r1", "r3"]),
    ("status:(Validated OR Discarded) AND NOT great", ["old", "r2"]),
    ("great", ["r1", "r3"]),
    ("great film", ["r3"]),
    ('"great movie"', ["r1"]),
    ("Great", ["r1", "r3"]),  # text is analysed: lower-cased
    ("annotated_as:pos", ["r1"]),
    ("id:r2", ["r2"]),
    ("", ["old", "r1", "r2", "r3"]),
])
def test_query_text(annotated: tuple[RubrixServer, httpx.Client], query_text: str,
                    expected: list[str]) -> None:
    _, http = annotated
    assert ids(http, "ds", query_text) == expected


@pytest.mark.parametrize(("query_text", "expected"), [
    ("last_updated:[2022-10-01T12:00:00.123 TO *]", ["r1", "r2", "r3"]),
    ("last_updated:[2022-10-01T12:00:00.123 TO 2022-10-01T12:00:00.124]", ["r1", "r2"]),
    ("last_updated:{2022-10-01T12:00:00.123 TO *]", ["r2", "r3"]),
    ("last_updated:[2022-10-01T12:00:00.124 TO 2022-10-01T12:00:00.124]", ["r2"]),
    ("last_updated:[* TO 2022-10-01]", ["old", "r1", "r2"]),  # all of 1 October
    ("last_updated:[2022-10-01 TO 2022-10-01]", ["r1", "r2"]),
    ("last_updated:[* TO 2022-10-01}", ["old"]),
    ("last_updated:[2022-10-01T12:00:00.1234 TO *]", ["r1", "r2", "r3"]),  # ms precision
    ("status:Validated AND last_updated:[2022-10-01T12:00:00.124 TO *]", ["r2"]),
    ("last_updated:[2022-10-01T14:00:00+02:00 TO *]", ["r1", "r2", "r3"]),  # offsets
    ("last_updated:>=2022-10-02", ["r3"]),
])
def test_last_updated_ranges(annotated: tuple[RubrixServer, httpx.Client], query_text: str,
                             expected: list[str]) -> None:
    _, http = annotated
    assert ids(http, "ds", query_text) == expected


def test_structured_filters(annotated: tuple[RubrixServer, httpx.Client]) -> None:
    _, http = annotated
    assert ids(http, "ds", status=["Validated", "Discarded"]) == ["old", "r1", "r2", "r3"]
    assert ids(http, "ds", status=["Discarded"]) == ["r3"]
    assert ids(http, "ds", ids=["r2", "old", "nope"]) == ["old", "r2"]
    assert ids(http, "ds", "great", status=["Validated"]) == ["r1"]
    assert ids(http, "ds", annotated_by=["bob"]) == ["r2"]
    bad = http.post("/api/datasets/ds/TextClassification/data", json={"status": ["Done"]})
    assert bad.status_code == 422


@pytest.mark.parametrize("query_text", [
    "status:(Validated", "status:Validated AND", "AND great", "status:", "last_updated:[2022 TO",
    "last_updated:[yesterday TO *]", "last_updated:>=2022-10-01T12:00:00", "great)",
])
def test_a_bad_query_is_reported_inside_a_200_stream(
        annotated: tuple[RubrixServer, httpx.Client], query_text: str) -> None:
    _, http = annotated
    lines = load(http, "ds", {"query_text": query_text})
    assert set(lines[-1]) == {"detail"}
    assert lines[-1]["detail"]["code"] == "rubrix.api.errors::InvalidTextSearchError"


# --------------------------------------------------------------------------- annotator hooks


def test_annotate_sets_the_verdict_and_bumps_last_updated_monotonically() -> None:
    frozen = FakeClock(datetime(2022, 10, 2, 9, 13, 0, 123000, tzinfo=timezone.utc))
    with RubrixServer(api_key=KEY, clock=frozen) as double, client_for(double) as http:
        bulk(http, "ds", [record("a"), record("b")])
        logged = double.records("ds")[0]["last_updated"]
        first = double.annotate("ds", "a", label="pos", agent="alice")
        second = double.annotate("ds", "b", label="neg", agent="bob")
        frozen.now -= timedelta(hours=1)  # the clock going back must not move stamps back
        third = double.annotate("ds", "a", label=None, agent="alice", status="Discarded")
        assert [logged, first, second, third] == [
            "2022-10-02T09:13:00.123", "2022-10-02T09:13:00.124", "2022-10-02T09:13:00.125",
            "2022-10-02T09:13:00.126"]
        by_id = {r["id"]: r for r in load(http, "ds")}
    assert by_id["b"]["annotation"] == {"agent": "bob", "labels": [{"class": "neg", "score": 1.0}]}
    assert by_id["b"]["status"] == "Validated"
    assert by_id["a"]["status"] == "Discarded" and "annotation" not in by_id["a"]
    assert by_id["a"]["last_updated"] == third


def test_annotate_on_the_wall_clock_is_strictly_increasing(server: RubrixServer) -> None:
    server.seed("ds", [record("a")])
    stamps = [server.annotate("ds", "a", label="pos", agent="alice") for _ in range(20)]
    assert stamps == sorted(set(stamps))
    with pytest.raises(KeyError):
        server.annotate("ds", "missing", label="pos", agent="alice")


def test_records_hook_returns_copies(server: RubrixServer) -> None:
    server.seed("ds", [record("a", "text")])
    server.records("ds")[0]["inputs"]["text"] = "changed"
    assert server.records("ds")[0]["inputs"] == {"text": "text"}


# --------------------------------------------------------------------------- fault injection


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_fail_every_answers_every_nth_request_with_a_status(server: RubrixServer,
                                                            client: httpx.Client,
                                                            status: int) -> None:
    server.fail_every(3, status=status)
    codes = []
    for _ in range(6):
        response = client.get("/api/me")
        codes.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["retry-after"] == "0"
    assert codes == [200, 200, status, 200, 200, status]
    # A failed call changes nothing: the 3rd request here is the bulk.
    server.fail_every(1, status=status)
    assert bulk(client, "ds", [record("a")]).status_code == status
    assert server.datasets() == []


def test_fail_every_reset_drops_the_connection(server: RubrixServer,
                                               client: httpx.Client) -> None:
    server.fail_every(2, mode="reset")
    assert client.get("/api/me").status_code == 200
    with pytest.raises(httpx.TransportError):
        client.get("/api/me")
    assert client.get("/api/me").status_code == 200


def test_fail_every_slow_delays_then_answers(server: RubrixServer,
                                             client: httpx.Client) -> None:
    server.fail_every(1, mode="slow", delay=0.3)
    started = time.monotonic()
    response = client.get("/api/me")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200 and response.json()["username"] == "rubrix"
    with pytest.raises(httpx.ReadTimeout):
        client.get("/api/me", timeout=0.05)


def test_fail_every_bad_json_answers_200_with_a_broken_body(server: RubrixServer,
                                                            client: httpx.Client) -> None:
    server.fail_every(1, mode="bad_json")
    response = client.get("/api/me")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_fail_every_is_exact_under_concurrency_and_turns_off(server: RubrixServer) -> None:
    server.fail_every(4, status=503)
    codes: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with client_for(server) as http:
            for _ in range(5):
                code = http.get("/api/me").status_code
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(503) == 10 and codes.count(200) == 30
    assert server.injected_faults == 10
    server.fail_every(0)
    assert all(plain_get(f"{server.url}/api/_info").status_code == 200 for _ in range(8))


# --------------------------------------------------------------------------- routing and logs


def test_an_unknown_route_is_404_and_a_wrong_method_405(server: RubrixServer,
                                                        client: httpx.Client) -> None:
    for response in (client.get("/api/nope"), plain_get(f"{server.url}/api/nope"),
                     client.post("/api/datasets/ds/TokenClassification:bulk", json={})):
        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}
    assert client.put("/api/me").status_code == 405


def test_a_malformed_json_body_is_422(client: httpx.Client) -> None:
    response = client.post("/api/datasets/ds/TextClassification:bulk", content=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["code"] == "rubrix.api.errors::ValidationError"
    (error,) = detail["params"]["errors"]
    assert error["loc"][0] == "body" and error["type"] == "value_error.jsondecode"
    assert error["msg"].startswith("Expecting property name")


def test_the_request_log_keeps_headers_as_received(server: RubrixServer,
                                                   client: httpx.Client) -> None:
    client.get("/api/me", headers={"X-Rubrix-Workspace": "team-a"})
    client.post("/api/datasets/ds/TextClassification/data", params={"limit": 5}, json={})
    (method, target, headers), (method2, target2, _) = server.requests
    assert (method, target) == ("GET", "/api/me")
    assert (method2, target2) == ("POST", "/api/datasets/ds/TextClassification/data?limit=5")
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered["x-rubrix-api-key"] == KEY
    assert lowered["x-rubrix-workspace"] == "team-a"


def test_delete_records_removes_or_discards(server: RubrixServer, client: httpx.Client) -> None:
    server.seed("ds", [record("a"), record("b"), record("c", "keep me")])
    response = client.request("DELETE", "/api/datasets/ds/data", json={"ids": ["a"]})
    assert response.json() == {"matched": 1, "processed": 1}
    response = client.request("DELETE", "/api/datasets/ds/data",
                              params={"mark_as_discarded": "true"}, json={"query_text": "keep"})
    assert response.json() == {"matched": 1, "processed": 1}
    assert [(r["id"], r["status"]) for r in server.records("ds")] == [
        ("b", "Default"), ("c", "Discarded")]
