"""An in-process stand-in for an Argilla 2.8 server (REST API v1), for tests.

The real server needs Elasticsearch and Redis, which cannot run here, so this one keeps
workspaces, users, datasets and records in memory and answers the calls that a push/pull
client makes, with the paths, JSON shapes, status codes and error bodies of argilla-server
2.8 as read from its source (handlers, schemas, validators, search engine):

* ``GET /api/v1/me``, ``/me/workspaces``, ``/me/datasets``,
  ``/me/datasets/{id}/metadata-properties``;
* ``POST /api/v1/datasets``; ``GET``/``PATCH``/``DELETE /api/v1/datasets/{id}``;
* ``GET``/``POST .../fields``, ``.../questions``; ``POST .../metadata-properties``;
  ``GET .../vectors-settings``; ``PUT .../publish``;
* ``PUT`` (upsert) and ``POST`` (create) ``.../records/bulk``; ``GET``/``DELETE .../records``;
* ``POST /api/v1/datasets/{id}/records/search`` and ``/api/v1/me/datasets/{id}/records/search``;
* ``GET /api/v1/users`` and ``/api/v1/users/{id}`` (owners only).

Behaviour that trips clients is reproduced on purpose: the key's user may be an admin who
gets 403 on users; a draft dataset takes fields and questions, a published one takes
records; one bad record rejects the whole bulk call; an integer is not a float; an upsert of
an existing record changes its metadata and suggestions but never its fields; responses do
not move the record's indexed ``updated_at`` (a range filter on it misses new verdicts), and
there is no range filter on a response's own ``updated_at`` (the scope allows ``status``
only); ``include=responses`` returns every user's responses, drafts included; timestamps
are naive UTC ISO strings that lose their fraction when it is zero, as pydantic writes them.

Tests drive it over real HTTP and play the annotators through Python hooks::

    with ArgillaServer(api_key="argilla.apikey", workspaces=("argilla",)) as server:
        ...  # point the client at server.url
        server.respond("my-ds", "ex-1", user="alice", label="pos")
        server.fail_every(3, status=503)  # every 3rd request from now on fails

Only the standard library is used, so the double adds no dependency.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from tests.servers.loopback import LoopbackHandler, LoopbackServer
from tests.servers.loopback import json_bytes as _json_bytes

__all__ = ["ArgillaServer", "BULK_MAX_ITEMS", "KEY_HEADER", "SEARCH_LIMIT_MAX"]

KEY_HEADER = "X-Argilla-Api-Key"
ERROR_PREFIX = "argilla.api.errors"
BULK_MAX_ITEMS = 500  # RECORDS_BULK_UPSERT_MAX_ITEMS / RECORDS_BULK_CREATE_MAX_ITEMS
SEARCH_LIMIT_DEFAULT = 50  # LIST_DATASET_RECORDS_LIMIT_DEFAULT
SEARCH_LIMIT_MAX = 1000  # LIST_DATASET_RECORDS_LIMIT_LE
DELETE_RECORDS_LIMIT = 100
FILTERS_MAX = 50
TERMS_VALUES_MAX = 250
SORT_MAX = 10
RESPONSE_STATUSES = ("submitted", "draft", "discarded")
ROLES = ("owner", "admin", "annotator")
# The server's AGENT_REGEX: at least one letter or digit, and only these characters.
AGENT_PATTERN = r"^(?=.*[a-zA-Z0-9])[a-zA-Z0-9-_:\.\/\s]+$"
_AGENT = re.compile(AGENT_PATTERN)
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
_ABSENT = object()  # no request body at all


# --------------------------------------------------------------------------- plumbing


class _HttpError(Exception):
    """Ends a request with a JSON error response."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class _Redirect(Exception):
    """Ends a request with a 307 to the same path with or without its trailing slash."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def _detail(status: int, message: str) -> _HttpError:
    """The 2.x errors (NotFound, NotUnique, UnprocessableEntity): ``{"detail": "..."}``."""
    return _HttpError(status, {"detail": message})


def _coded(status: int, name: str, params: Mapping[str, Any]) -> _HttpError:
    """The older ServerError family: ``{"detail": {"code": "argilla.api.errors::Name", ...}}``."""
    return _HttpError(status, {"detail": {"code": f"{ERROR_PREFIX}::{name}",
                                          "params": dict(params)}})


def _forbidden() -> _HttpError:
    return _coded(403, "ForbiddenOperationError", {"detail": "Operation not allowed"})


def _engine_error(message: str) -> _HttpError:
    """What an exception inside the search engine becomes: GenericServerError, 500."""
    return _coded(500, "GenericServerError", {"type": "builtins.Exception", "message": message,
                                              "args": [message]})


@dataclass
class _Request:
    method: str
    target: str  # path with query, as sent
    path: str  # percent-decoded path
    query: dict[str, list[str]]  # every value, in order (include= repeats)
    headers: Any  # email.message.Message: case-insensitive get()
    body: bytes

    def param(self, name: str) -> str | None:
        """The last value, as Starlette's QueryParams[name] reads it."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _ok(content: Any, status: int = 200) -> _Response:
    return _Response(status, _json_bytes(content))


def _naive_utc(moment: datetime) -> datetime:
    """The server stores ``datetime.utcnow()``: naive, UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(_UTC).replace(tzinfo=None)
    return moment


def _ts(moment: datetime) -> str:
    """``2024-05-01T12:00:00.123456``; pydantic drops the fraction when it is zero."""
    return moment.isoformat()


# --------------------------------------------------------------------------- validation


class _Invalid:
    """Collects request-validation errors in the shape FastAPI reports pydantic 2's."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def add(self, kind: str, loc: Sequence[Any], msg: str, value: Any,
            ctx: Mapping[str, Any] | None = None) -> None:
        error: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg,
                                 "input": copy.deepcopy(value)}
        if ctx is not None:
            error["ctx"] = dict(ctx)
        self.errors.append(error)

    def value_error(self, loc: Sequence[Any], message: str, value: Any) -> None:
        # FastAPI's jsonable_encoder turns the ValueError in ctx into {}.
        self.add("value_error", loc, f"Value error, {message}", value, {"error": {}})

    def check(self) -> None:
        if self.errors:
            raise _coded(422, "ValidationError", {"errors": self.errors})


def _expected(options: Sequence[str]) -> str:
    quoted = [f"'{option}'" for option in options]
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _take(inv: _Invalid, obj: Mapping[str, Any], key: str, loc: Sequence[Any], *,
          required: bool) -> Any:
    """The value under ``key``, or _ABSENT (a missing required key is reported)."""
    if key in obj:
        return obj[key]
    if required:
        inv.add("missing", (*loc, key), "Field required", obj)
    return _ABSENT


def _v_str(inv: _Invalid, value: Any, loc: Sequence[Any], *, min_length: int | None = None,
           max_length: int | None = None) -> str | None:
    if not isinstance(value, str):
        inv.add("string_type", loc, "Input should be a valid string", value)
        return None
    if min_length is not None and len(value) < min_length:
        plural = "" if min_length == 1 else "s"
        inv.add("string_too_short", loc,
                f"String should have at least {min_length} character{plural}", value,
                {"min_length": min_length})
        return None
    if max_length is not None and len(value) > max_length:
        inv.add("string_too_long", loc, f"String should have at most {max_length} characters",
                value, {"max_length": max_length})
        return None
    return value


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _v_bool(inv: _Invalid, value: Any, loc: Sequence[Any]) -> bool | None:
    """Pydantic's lax bool: true/false, 0/1 and the usual strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, str):
        inv.add("bool_parsing", loc, "Input should be a valid boolean, unable to interpret "
                "input", value)
    else:
        inv.add("bool_type", loc, "Input should be a valid boolean", value)
    return None


def _v_int(inv: _Invalid, value: Any, loc: Sequence[Any], *, ge: int | None = None,
           le: int | None = None) -> int | None:
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            inv.add("int_parsing", loc,
                    "Input should be a valid integer, unable to parse string as an integer",
                    value)
            return None
    if number is None:
        inv.add("int_type", loc, "Input should be a valid integer", value)
        return None
    if ge is not None and number < ge:
        inv.add("greater_than_equal", loc, f"Input should be greater than or equal to {ge}",
                value, {"ge": ge})
        return None
    if le is not None and number > le:
        inv.add("less_than_equal", loc, f"Input should be less than or equal to {le}", value,
                {"le": le})
        return None
    return number


def _v_float(inv: _Invalid, value: Any, loc: Sequence[Any], *, ge: float | None = None,
             le: float | None = None) -> float | None:
    if isinstance(value, str):  # lax mode reads numbers from strings
        try:
            number = float(value.strip())
        except ValueError:
            inv.add("float_parsing", loc,
                    "Input should be a valid number, unable to parse string as a number", value)
            return None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        inv.add("float_type", loc, "Input should be a valid number", value)
        return None
    else:
        number = float(value)
    if ge is not None and not number >= ge:
        inv.add("greater_than_equal", loc, f"Input should be greater than or equal to {ge}",
                value, {"ge": ge})
        return None
    if le is not None and not number <= le:
        inv.add("less_than_equal", loc, f"Input should be less than or equal to {le}", value,
                {"le": le})
        return None
    return number


def _v_uuid(inv: _Invalid, value: Any, loc: Sequence[Any]) -> str | None:
    if not isinstance(value, str):
        inv.add("uuid_type", loc, "UUID input should be a string, bytes or UUID object", value)
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        inv.add("uuid_parsing", loc, "Input should be a valid UUID, invalid length or character",
                value, {"error": "invalid UUID"})
        return None


def _v_dict(inv: _Invalid, value: Any, loc: Sequence[Any], *, model: bool = False
            ) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if model:
        inv.add("model_attributes_type", loc,
                "Input should be a valid dictionary or object to extract fields from", value)
    else:
        inv.add("dict_type", loc, "Input should be a valid dictionary", value)
    return None


def _v_list(inv: _Invalid, value: Any, loc: Sequence[Any], *, min_items: int | None = None,
            max_items: int | None = None) -> list[Any] | None:
    if not isinstance(value, list):
        inv.add("list_type", loc, "Input should be a valid list", value)
        return None
    if min_items is not None and len(value) < min_items:
        plural = "" if min_items == 1 else "s"
        inv.add("too_short", loc, f"List should have at least {min_items} item{plural} after "
                f"validation, not {len(value)}", value,
                {"field_type": "List", "min_length": min_items, "actual_length": len(value)})
        return None
    if max_items is not None and len(value) > max_items:
        plural = "" if max_items == 1 else "s"
        inv.add("too_long", loc, f"List should have at most {max_items} item{plural} after "
                f"validation, not {len(value)}", value,
                {"field_type": "List", "max_length": max_items, "actual_length": len(value)})
        return None
    return value


def _v_literal(inv: _Invalid, value: Any, loc: Sequence[Any], options: Sequence[str], *,
               kind: str = "literal_error") -> str | None:
    if isinstance(value, str) and value in options:
        return value
    inv.add(kind, loc, f"Input should be {_expected(options)}", value,
            {"expected": _expected(options)})
    return None


def _v_tag(inv: _Invalid, obj: Mapping[str, Any], loc: Sequence[Any], tags: Sequence[str],
           discriminator: str = "type") -> str | None:
    """A discriminated union's tag; errors below it carry the tag in their loc, as in v2."""
    tag = obj.get(discriminator)
    if tag is None:
        inv.add("union_tag_not_found", loc,
                f"Unable to extract tag using discriminator '{discriminator}'", obj,
                {"discriminator": f"'{discriminator}'"})
        return None
    if tag not in tags:
        expected = ", ".join(f"'{t}'" for t in tags)
        inv.add("union_tag_invalid", loc,
                f"Input tag '{tag}' found using '{discriminator}' does not match any of the "
                f"expected tags: {expected}", obj,
                {"discriminator": f"'{discriminator}'", "tag": str(tag), "expected_tags": expected})
        return None
    return str(tag)


def _non_nullable(inv: _Invalid, body: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """UpdateSchema's check: these keys may be left out but not sent as null."""
    invalid = [key for key in keys if key in body and body[key] is None]
    if invalid:
        inv.value_error(["body"], "The following keys must have non-null values: "
                        + ", ".join(invalid), body)
        return False
    return True


# --------------------------------------------------------------------------- search helpers

_WORD = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    """Elasticsearch's standard analyzer, roughly: lower-cased word characters."""
    return _WORD.findall(text.lower())


def _keyword(value: Any) -> str:
    """How a value reads in a keyword field."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _moment(bound: Any, *, upper: bool) -> datetime:
    """A range bound on a date field: an ISO string, or a number read as epoch milliseconds.

    A date with no time spans its whole day, so an upper bound takes the day's last instant.

    Raises:
        _HttpError: Elasticsearch would fail to parse it (the server answers 500).
    """
    if isinstance(bound, (int, float)) and not isinstance(bound, bool):
        return _EPOCH + timedelta(milliseconds=float(bound))
    text = str(bound).strip()
    try:
        moment = _naive_utc(datetime.fromisoformat(text))
    except ValueError:
        raise _engine_error(f"failed to parse date field [{text}]") from None
    if upper and _DATE_ONLY.match(text):
        moment += timedelta(days=1) - _ONE_US
    return moment


def _number(bound: Any) -> float:
    try:
        return float(bound)
    except (TypeError, ValueError):
        raise _engine_error(f"failed to parse number [{bound}]") from None


# --------------------------------------------------------------------------- state


@dataclass
class _Dataset:
    """A dataset row with its settings and records. Timestamps are datetimes until rendered."""

    row: dict[str, Any]
    fields: list[dict[str, Any]] = field(default_factory=list)
    questions: list[dict[str, Any]] = field(default_factory=list)
    metadata_properties: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, insertion order
    by_external_id: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def ready(self) -> bool:
        return self.row["status"] == "ready"

    def question(self, *, name: str | None = None, id: str | None = None
                 ) -> dict[str, Any] | None:
        for question in self.questions:
            if (name is not None and question["name"] == name) or question["id"] == id:
                return question
        return None

    def metadata_property(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.metadata_properties if p["name"] == name), None)

    def field_names(self) -> list[str]:
        return [f["name"] for f in self.fields]


def _render_row(row: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = {}
    for key in keys:
        value = row.get(key)
        out[key] = _ts(value) if isinstance(value, datetime) else copy.deepcopy(value)
    return out


_DATASET_KEYS = ("id", "name", "guidelines", "allow_extra_metadata", "status", "distribution",
                 "metadata", "workspace_id", "last_activity_at", "inserted_at", "updated_at")
_FIELD_KEYS = ("id", "name", "title", "required", "settings", "dataset_id", "inserted_at",
               "updated_at")
_QUESTION_KEYS = ("id", "name", "title", "description", "required", "settings", "dataset_id",
                  "inserted_at", "updated_at")
_METADATA_KEYS = ("id", "name", "title", "settings", "visible_for_annotators", "dataset_id",
                  "inserted_at", "updated_at")
_USER_KEYS = ("id", "first_name", "last_name", "username", "role", "api_key", "inserted_at",
              "updated_at")
_WORKSPACE_KEYS = ("id", "name", "inserted_at", "updated_at")
_SUGGESTION_KEYS = ("question_id", "type", "value", "agent", "score", "id", "inserted_at",
                    "updated_at")
_RESPONSE_KEYS = ("id", "values", "status", "record_id", "user_id", "inserted_at", "updated_at")


def _by_insertion(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: (item["inserted_at"], item["id"]))


def _render_record(record: Mapping[str, Any], *, responses: bool, suggestions: bool,
                   vectors: bool, user_id: str | None = None) -> dict[str, Any]:
    """The Record schema; relationships that were not loaded are left out (exclude_unset)."""
    out: dict[str, Any] = {
        "id": record["id"], "status": record["status"],
        "fields": copy.deepcopy(record["fields"]),
        "metadata": copy.deepcopy(record["metadata"]),
        "external_id": record["external_id"],
    }
    if responses:
        listed = _by_insertion(record["responses"].values())
        if user_id is not None:
            listed = [r for r in listed if r["user_id"] == user_id]
        out["responses"] = [_render_row(r, _RESPONSE_KEYS) for r in listed]
    if suggestions:
        out["suggestions"] = [_render_row(s, _SUGGESTION_KEYS)
                              for s in _by_insertion(record["suggestions"].values())]
    if vectors:
        out["vectors"] = copy.deepcopy(record["vectors"])
    out.update({"dataset_id": record["dataset_id"], "inserted_at": _ts(record["inserted_at"]),
                "updated_at": _ts(record["updated_at"])})
    return out


@dataclass
class _Call:
    """One request, authenticated, with its path parameters and decoded body."""

    request: _Request
    actor: dict[str, Any]
    params: dict[str, str | None]
    body: Any
    invalid: _Invalid


# --------------------------------------------------------------------------- HTTP server


class _Handler(LoopbackHandler):
    """ArgillaServer's requests (every query value kept) and plain JSON answers."""

    response = _Response
    bad_json = b'{"items": [{"record": {"id": "'

    def _request(self, split: SplitResult, body: bytes) -> _Request:
        query: dict[str, list[str]] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(name, []).append(value)
        return _Request(method=self.command, target=self.path, path=unquote(split.path),
                        query=query, headers=self.headers, body=body)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        if response.body:
            self.send_header("Content-Type", "application/json")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body:
            self.wfile.write(response.body)


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: str  # ArgillaServer method name
    body: bool = False  # a JSON body model is required


def _route(method: str, path: str, handler: str, body: bool = False) -> _Route:
    # Path parameters are UUIDs; any segment matches, then fails validation with 422.
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return _Route(method, re.compile(regex), handler, body)


_ROUTES = (
    _route("GET", "/api/v1/me", "_me"),
    _route("GET", "/api/v1/me/workspaces", "_me_workspaces"),
    _route("GET", "/api/v1/me/datasets", "_me_datasets"),
    _route("GET", "/api/v1/me/datasets/{dataset_id}/metadata-properties",
           "_me_metadata_properties"),
    _route("POST", "/api/v1/me/datasets/{dataset_id}/records/search", "_me_search", True),
    _route("POST", "/api/v1/datasets", "_create_dataset", True),
    _route("GET", "/api/v1/datasets/{dataset_id}", "_get_dataset"),
    _route("PATCH", "/api/v1/datasets/{dataset_id}", "_update_dataset", True),
    _route("DELETE", "/api/v1/datasets/{dataset_id}", "_delete_dataset"),
    _route("GET", "/api/v1/datasets/{dataset_id}/fields", "_list_fields"),
    _route("POST", "/api/v1/datasets/{dataset_id}/fields", "_create_field", True),
    _route("GET", "/api/v1/datasets/{dataset_id}/questions", "_list_questions"),
    _route("POST", "/api/v1/datasets/{dataset_id}/questions", "_create_question", True),
    # Only POST: the server lists metadata properties under /me/datasets/{id}/... alone.
    _route("POST", "/api/v1/datasets/{dataset_id}/metadata-properties",
           "_create_metadata_property", True),
    _route("GET", "/api/v1/datasets/{dataset_id}/vectors-settings", "_vectors_settings"),
    _route("PUT", "/api/v1/datasets/{dataset_id}/publish", "_publish"),
    _route("PUT", "/api/v1/datasets/{dataset_id}/records/bulk", "_bulk_upsert", True),
    _route("POST", "/api/v1/datasets/{dataset_id}/records/bulk", "_bulk_create", True),
    _route("GET", "/api/v1/datasets/{dataset_id}/records", "_list_records"),
    _route("DELETE", "/api/v1/datasets/{dataset_id}/records", "_delete_records"),
    _route("POST", "/api/v1/datasets/{dataset_id}/records/search", "_search", True),
    _route("GET", "/api/v1/users", "_list_users"),
    _route("GET", "/api/v1/users/{user_id}", "_get_user"),
)


# --------------------------------------------------------------------------- the server


class ArgillaServer(LoopbackServer):
    """An Argilla 2.8 server in memory, serving its v1 REST API over real HTTP.

    Args:
        api_key: the key of the user the client plays.
        workspaces: workspace names; the key's user is a member of each.
        owner: True makes the key's user an owner; False an admin, who may run the whole
            push/pull workflow in its workspaces but gets 403 on ``/api/v1/users/{id}``.
        username: that user's username.
        role: overrides ``owner`` with ``"owner"``, ``"admin"`` or ``"annotator"`` (an
            annotator may only read datasets and search them through ``/me``).
        clock: returns now (UTC if naive); tests can pass a fake one. Every timestamp the
            server hands out is strictly later than the one before, even when the clock
            has not moved. Defaults to the wall clock.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    handler = _Handler

    def __init__(
        self,
        api_key: str = "argilla.apikey",
        workspaces: Sequence[str] = ("argilla",),
        owner: bool = True,
        *,
        username: str = "argilla",
        role: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        role = role or ("owner" if owner else "admin")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: choose one of {ROLES}")
        if isinstance(workspaces, str):
            raise TypeError("workspaces is a sequence of names, not one string")
        super().__init__()
        self.api_key = api_key
        self.username = username
        self.role = role
        self._clock = clock or (lambda: datetime.now(_UTC))
        self._last: datetime | None = None
        self._workspaces: dict[str, dict[str, Any]] = {}  # by id
        self._users: dict[str, dict[str, Any]] = {}  # by id
        self._members: dict[str, set[str]] = {}  # user id -> workspace ids
        self._datasets: dict[str, _Dataset] = {}  # by id
        with self._lock:
            for name in dict.fromkeys(workspaces):
                stamp = self._stamp()
                workspace_id = str(uuid.uuid4())
                self._workspaces[workspace_id] = {"id": workspace_id, "name": name,
                                                  "inserted_at": stamp, "updated_at": stamp}
            user = self._add_user(username, role, api_key=api_key)
            self._members[user["id"]] = set(self._workspaces)
            self.user_id: str = user["id"]

    # ---- connecting

    @property
    def headers(self) -> dict[str, str]:
        """The key header a client sends on every call."""
        return {KEY_HEADER: self.api_key}

    # ---- test hooks

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        """Every user by username (copies, API keys included), the key's user first."""
        with self._lock:
            return {u["username"]: _render_row(u, _USER_KEYS) for u in self._users.values()}

    @property
    def workspaces(self) -> dict[str, str]:
        """Workspace name -> id."""
        with self._lock:
            return {w["name"]: w["id"] for w in self._workspaces.values()}

    def dataset(self, name: str, workspace: str | None = None) -> dict[str, Any]:
        """A dataset and its settings, as the API renders them.

        Returns:
            ``{"dataset": Dataset, "fields": [...], "questions": [...],
            "metadata_properties": [...]}``, settings in creation order.

        Raises:
            KeyError: no such dataset (or, without ``workspace``, several by that name).
        """
        with self._lock:
            found = self._find(name, workspace)
            return {
                "dataset": _render_row(found.row, _DATASET_KEYS),
                "fields": [_render_row(f, _FIELD_KEYS) for f in found.fields],
                "questions": [_render_row(q, _QUESTION_KEYS) for q in found.questions],
                "metadata_properties": [_render_row(p, _METADATA_KEYS)
                                        for p in found.metadata_properties],
            }

    def records(self, name: str, workspace: str | None = None) -> list[dict[str, Any]]:
        """Copies of a dataset's records with responses, suggestions and vectors, oldest first.

        Raises:
            KeyError: no such dataset.
        """
        with self._lock:
            found = self._find(name, workspace)
            return [_render_record(r, responses=True, suggestions=True, vectors=True)
                    for r in _by_insertion(found.records.values())]

    def respond(self, dataset: str, external_id: str, *, user: str, label: str | None,
                status: str = "submitted", workspace: str | None = None) -> dict[str, Any]:
        """Play an annotator: create or update ``user``'s response to a record.

        The user is created on first use (role annotator, member of the dataset's
        workspace, with an API key of its own). The response's values answer the dataset's
        first label question (``[label]`` for a multi-label one); ``label=None`` leaves
        ``values`` null, which the server allows for drafts and discards only. The
        response's ``updated_at`` is strictly later than every earlier server timestamp.
        The record turns ``completed`` once ``distribution.min_submitted`` responses are
        submitted (and back to ``pending`` below it); like the server, that status change
        moves the record's stored ``updated_at`` but not the one its search index filters on.

        Returns:
            The response as the API renders it.

        Raises:
            KeyError: no such dataset or record.
            ValueError: what the server would refuse (unknown status or label, no values
                for a submitted response, another required question left unanswered).
        """
        if status not in RESPONSE_STATUSES:
            raise ValueError(f"status {status!r}: choose one of {RESPONSE_STATUSES}")
        with self._lock:
            found = self._find(dataset, workspace)
            record_id = found.by_external_id.get(str(external_id))
            if record_id is None:
                raise KeyError(f"no record with external_id {external_id!r} in {dataset!r}")
            record = found.records[record_id]
            question = next((q for q in found.questions if q["settings"]["type"]
                             in ("label_selection", "multi_label_selection")), None)
            if question is None:
                raise ValueError(f"dataset {dataset!r} has no label question")
            values = None
            if label is not None:
                value: Any = label
                if question["settings"]["type"] == "multi_label_selection":
                    value = [label]
                values = {question["name"]: {"value": value}}
            problem = self._response_problem(found, record, values, status)
            if problem:
                raise ValueError(problem)
            account = self._user_by_name(user)
            if account is None:
                account = self._add_user(user, "annotator")
            self._members.setdefault(account["id"], set()).add(str(found.row["workspace_id"]))
            stamp = self._stamp()
            response = self._put_response(record, account["id"], values, status, stamp)
            self._refresh_status(found, record, stamp)
            found.row["last_activity_at"] = stamp
            return _render_row(response, _RESPONSE_KEYS)

    def _stamp(self) -> datetime:
        """Now (naive UTC), strictly after the previous stamp. Hold the lock."""
        now = _naive_utc(self._clock())
        if self._last is not None and now <= self._last:
            now = self._last + _ONE_US
        self._last = now
        return now

    def _add_user(self, username: str, role: str, *, api_key: str | None = None
                  ) -> dict[str, Any]:
        stamp = self._stamp()
        user = {"id": str(uuid.uuid4()), "first_name": username, "last_name": None,
                "username": username, "role": role,
                "api_key": api_key or secrets.token_urlsafe(32),
                "inserted_at": stamp, "updated_at": stamp}
        self._users[user["id"]] = user
        return user

    def _user_by_name(self, username: str) -> dict[str, Any] | None:
        return next((u for u in self._users.values() if u["username"] == username), None)

    def _find(self, name: str, workspace: str | None) -> _Dataset:
        matches = [d for d in self._datasets.values() if d.row["name"] == name and (
            workspace is None or self._workspaces[d.row["workspace_id"]]["name"] == workspace)]
        if not matches:
            where = f" in workspace {workspace!r}" if workspace else ""
            raise KeyError(f"no dataset {name!r}{where}")
        if len(matches) > 1:
            raise KeyError(f"several datasets are named {name!r}: pass workspace=")
        return matches[0]

    def _handle(self, request: _Request) -> _Response:
        try:
            route, match = self._match(request)
            body: Any = _ABSENT
            if route.body and request.body.strip():
                # FastAPI decodes the JSON before any dependency runs: before the key check.
                body = self._decode(request.body)
            with self._lock:
                actor = self._authenticate(request)
                invalid = _Invalid()
                params: dict[str, str | None] = {}
                for name, raw in match.groupdict().items():
                    params[name] = _v_uuid(invalid, unquote(raw), ("path", name))
                if route.body and (body is _ABSENT or body is None):
                    invalid.add("missing", ["body"], "Field required", None)
                call = _Call(request, actor, params, body, invalid)
                return getattr(self, route.handler)(call)
        except _Redirect as redirect:
            return _Response(307, b"", {"location": redirect.location})
        except _HttpError as error:
            return _Response(error.status, _json_bytes(error.body))

    def _match(self, request: _Request) -> tuple[_Route, re.Match[str]]:
        split = urlsplit(request.target)
        allowed = False
        for route in _ROUTES:
            match = route.pattern.fullmatch(split.path)
            if match is None:
                continue
            if route.method == request.method:
                return route, match
            allowed = True
        if allowed:
            raise _HttpError(405, {"detail": "Method Not Allowed"})
        # Starlette's redirect_slashes: the path with (or without) its trailing slash.
        other = split.path[:-1] if split.path.endswith("/") else split.path + "/"
        if any(route.pattern.fullmatch(other) for route in _ROUTES):
            host = request.headers.get("Host") or f"127.0.0.1:{self.port}"
            location = f"http://{host}{other}" + (f"?{split.query}" if split.query else "")
            raise _Redirect(location)
        raise _HttpError(404, {"detail": "Not Found"})

    def _decode(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except UnicodeDecodeError as exc:
            error = str(exc)
            position = 0
        except json.JSONDecodeError as exc:
            error, position = exc.msg, exc.pos
        invalid = _Invalid()
        invalid.add("json_invalid", ["body", position], "JSON decode error", {},
                    {"error": error})
        invalid.check()
        raise AssertionError("unreachable")

    def _authenticate(self, request: _Request) -> dict[str, Any]:
        key = request.headers.get(KEY_HEADER)
        user = next((u for u in self._users.values() if key and u["api_key"] == key), None)
        if user is None:
            raise _coded(401, "UnauthorizedError", {"detail": "Could not validate credentials"})
        return user

    # ---- policies (api/policies/v1)

    def _is_member(self, actor: Mapping[str, Any], workspace_id: str) -> bool:
        return workspace_id in self._members.get(actor["id"], set())

    def _may_read(self, actor: Mapping[str, Any], found: _Dataset) -> bool:
        return actor["role"] == "owner" or self._is_member(actor, found.row["workspace_id"])

    def _may_manage(self, actor: Mapping[str, Any], workspace_id: str) -> bool:
        return actor["role"] == "owner" or (actor["role"] == "admin"
                                            and self._is_member(actor, workspace_id))

    def _dataset_for(self, call: _Call, *, manage: bool) -> _Dataset:
        """The path's dataset (404 first), then the policy check (403)."""
        call.invalid.check()
        found = self._datasets.get(str(call.params["dataset_id"]))
        if found is None:
            raise _detail(404, f"Dataset with id `{call.params['dataset_id']}` not found")
        allowed = (self._may_manage(call.actor, found.row["workspace_id"]) if manage
                   else self._may_read(call.actor, found))
        if not allowed:
            raise _forbidden()
        return found

    # ---- users and workspaces

    def _me(self, call: _Call) -> _Response:
        # The server's User schema carries api_key, /me included.
        return _ok(_render_row(call.actor, _USER_KEYS))

    def _me_workspaces(self, call: _Call) -> _Response:
        workspaces = list(self._workspaces.values())
        if call.actor["role"] != "owner":
            workspaces = [w for w in workspaces if self._is_member(call.actor, w["id"])]
        return _ok({"items": [_render_row(w, _WORKSPACE_KEYS) for w in workspaces]})

    def _get_user(self, call: _Call) -> _Response:
        call.invalid.check()
        if call.actor["role"] != "owner":  # UserPolicy.get: owners only, before the lookup
            raise _forbidden()
        user = self._users.get(str(call.params["user_id"]))
        if user is None:
            raise _detail(404, f"User with id `{call.params['user_id']}` not found")
        return _ok(_render_row(user, _USER_KEYS))

    def _list_users(self, call: _Call) -> _Response:
        if call.actor["role"] != "owner":
            raise _forbidden()
        return _ok({"items": [_render_row(u, _USER_KEYS) for u in self._users.values()]})

    # ---- datasets

    def _me_datasets(self, call: _Call) -> _Response:
        inv = call.invalid
        workspace_id = call.request.param("workspace_id")
        if workspace_id is not None:
            workspace_id = _v_uuid(inv, workspace_id, ("query", "workspace_id"))
        status = call.request.param("status")
        if status is not None:
            _v_literal(inv, status, ("query", "status"), ("draft", "ready"), kind="enum")
        inv.check()
        actor = call.actor
        if workspace_id and actor["role"] != "owner" and not self._is_member(actor, workspace_id):
            raise _forbidden()
        name = call.request.param("name")
        listed = [d for d in self._datasets.values()
                  if (actor["role"] == "owner" or self._is_member(actor, d.row["workspace_id"]))
                  and (workspace_id is None or d.row["workspace_id"] == workspace_id)
                  and (name is None or d.row["name"] == name)
                  and (status is None or d.row["status"] == status)]
        listed.sort(key=lambda d: d.row["inserted_at"])
        return _ok({"items": [_render_row(d.row, _DATASET_KEYS) for d in listed]})

    def _distribution(self, inv: _Invalid, value: Any, loc: Sequence[Any]) -> dict | None:
        body = _v_dict(inv, value, loc, model=True)
        if body is None:
            return None
        strategy = _take(inv, body, "strategy", loc, required=True)
        if strategy is not _ABSENT:
            _v_literal(inv, strategy, (*loc, "strategy"), ("overlap",))
        minimum = _take(inv, body, "min_submitted", loc, required=True)
        if minimum is not _ABSENT:
            minimum = _v_int(inv, minimum, (*loc, "min_submitted"), ge=1)
        return {"strategy": "overlap", "min_submitted": minimum}

    def _create_dataset(self, call: _Call) -> _Response:
        inv = call.invalid
        body = call.body
        attrs: dict[str, Any] = {"guidelines": None, "allow_extra_metadata": True,
                                 "distribution": {"strategy": "overlap", "min_submitted": 1},
                                 "metadata": None}
        if body is not _ABSENT and body is not None and _v_dict(inv, body, ["body"], model=True):
            name = _take(inv, body, "name", ["body"], required=True)
            if name is not _ABSENT:
                attrs["name"] = _v_str(inv, name, ["body", "name"], min_length=1, max_length=200)
            self._dataset_options(inv, body, attrs)
            workspace_id = _take(inv, body, "workspace_id", ["body"], required=True)
            if workspace_id is not _ABSENT:
                attrs["workspace_id"] = _v_uuid(inv, workspace_id, ["body", "workspace_id"])
        inv.check()
        workspace_id = attrs["workspace_id"]
        if not self._may_manage(call.actor, workspace_id):
            raise _forbidden()
        if workspace_id not in self._workspaces:
            raise _detail(422, f"Workspace with id `{workspace_id}` not found")
        self._check_unique_name(attrs["name"], workspace_id)
        stamp = self._stamp()
        row = {"id": str(uuid.uuid4()), "name": attrs["name"], "guidelines": attrs["guidelines"],
               "allow_extra_metadata": attrs["allow_extra_metadata"], "status": "draft",
               "distribution": attrs["distribution"], "metadata": attrs["metadata"],
               "workspace_id": workspace_id, "last_activity_at": stamp, "inserted_at": stamp,
               "updated_at": stamp}
        self._datasets[row["id"]] = _Dataset(row=row)
        return _ok(_render_row(row, _DATASET_KEYS), 201)

    def _dataset_options(self, inv: _Invalid, body: Mapping[str, Any],
                         attrs: dict[str, Any]) -> None:
        """guidelines, allow_extra_metadata, distribution, metadata: shared by create/update."""
        if body.get("guidelines") is not None:
            attrs["guidelines"] = _v_str(inv, body["guidelines"], ["body", "guidelines"],
                                         min_length=1, max_length=10000)
        elif "guidelines" in body:
            attrs["guidelines"] = None
        if "allow_extra_metadata" in body and body["allow_extra_metadata"] is not None:
            attrs["allow_extra_metadata"] = _v_bool(inv, body["allow_extra_metadata"],
                                                    ["body", "allow_extra_metadata"])
        if "distribution" in body and body["distribution"] is not None:
            attrs["distribution"] = self._distribution(inv, body["distribution"],
                                                       ["body", "distribution"])
        if "metadata" in body:
            metadata = body["metadata"]
            attrs["metadata"] = (None if metadata is None
                                 else _v_dict(inv, metadata, ["body", "metadata"]))

    def _check_unique_name(self, name: str, workspace_id: str, *, but: str | None = None) -> None:
        for other in self._datasets.values():
            if (other.row["name"] == name and other.row["workspace_id"] == workspace_id
                    and other.id != but):
                raise _detail(409, f"Dataset with name `{name}` already exists for workspace "
                                   f"with id `{workspace_id}`")

    def _get_dataset(self, call: _Call) -> _Response:
        found = self._dataset_for(call, manage=False)
        return _ok(_render_row(found.row, _DATASET_KEYS))

    def _update_dataset(self, call: _Call) -> _Response:
        inv = call.invalid
        body = call.body
        attrs: dict[str, Any] = {}
        if (body is not _ABSENT and body is not None
                and _v_dict(inv, body, ["body"], model=True) is not None
                and _non_nullable(inv, body, ("name", "allow_extra_metadata", "distribution"))):
            if "name" in body:
                attrs["name"] = _v_str(inv, body["name"], ["body", "name"], min_length=1,
                                       max_length=200)
            self._dataset_options(inv, body, attrs)
        found = self._dataset_for(call, manage=True)
        if "name" in attrs:
            self._check_unique_name(attrs["name"], found.row["workspace_id"], but=found.id)
        stamp = self._stamp()
        found.row.update(attrs)
        found.row["updated_at"] = stamp
        if "distribution" in attrs:
            # The server recomputes every record's status in a background job (rq).
            for record in found.records.values():
                self._refresh_status(found, record, stamp)
        return _ok(_render_row(found.row, _DATASET_KEYS))

    def _delete_dataset(self, call: _Call) -> _Response:
        found = self._dataset_for(call, manage=True)
        del self._datasets[found.id]
        return _ok(_render_row(found.row, _DATASET_KEYS))

    def _vectors_settings(self, call: _Call) -> _Response:
        self._dataset_for(call, manage=False)
        return _ok({"items": []})

    def _publish(self, call: _Call) -> _Response:
        found = self._dataset_for(call, manage=True)
        if found.ready:
            raise _detail(422, "Dataset is already published")
        # Since 2.4 a dataset publishes with any field, required or not.
        if not found.fields:
            raise _detail(422, "Dataset cannot be published without fields")
        if not any(q["required"] for q in found.questions):
            raise _detail(422, "Dataset cannot be published without required questions")
        stamp = self._stamp()
        found.row.update(status="ready", updated_at=stamp)
        return _ok(_render_row(found.row, _DATASET_KEYS))

    # ---- settings: fields, questions, metadata properties

    def _list_fields(self, call: _Call) -> _Response:
        found = self._dataset_for(call, manage=False)
        return _ok({"items": [_render_row(f, _FIELD_KEYS) for f in found.fields]})

    def _name_title(self, inv: _Invalid, body: Mapping[str, Any]) -> tuple[Any, Any]:
        name = _take(inv, body, "name", ["body"], required=True)
        if name is not _ABSENT:
            name = _v_str(inv, name, ["body", "name"], min_length=1, max_length=200)
        title = _take(inv, body, "title", ["body"], required=True)
        if title is not _ABSENT:
            title = _v_str(inv, title, ["body", "title"], min_length=1, max_length=500)
        return name, title

    def _required_flag(self, inv: _Invalid, body: Mapping[str, Any]) -> bool:
        value = body.get("required")
        if value is None:
            return False  # the column's default
        return bool(_v_bool(inv, value, ["body", "required"]))

    def _create_field(self, call: _Call) -> _Response:
        inv = call.invalid
        body = call.body
        name = title = settings = None
        required = False
        if body is not _ABSENT and body is not None and _v_dict(inv, body, ["body"], model=True):
            name, title = self._name_title(inv, body)
            required = self._required_flag(inv, body)
            raw = _take(inv, body, "settings", ["body"], required=True)
            if raw is not _ABSENT:
                settings = self._field_settings(inv, raw, ["body", "settings"])
        found = self._dataset_for(call, manage=True)
        if found.ready:
            raise _detail(422, "Field cannot be created for a published dataset")
        if name in found.field_names():
            raise _detail(409, f"Field with name `{name}` already exists for dataset with id "
                               f"`{found.id}`")
        stamp = self._stamp()
        row = {"id": str(uuid.uuid4()), "name": name, "title": title, "required": required,
               "settings": settings, "dataset_id": found.id, "inserted_at": stamp,
               "updated_at": stamp}
        found.fields.append(row)
        return _ok(_render_row(row, _FIELD_KEYS), 201)

    def _field_settings(self, inv: _Invalid, raw: Any, loc: list[Any]) -> dict[str, Any] | None:
        settings = _v_dict(inv, raw, loc, model=True)
        if settings is None:
            return None
        kind = _v_tag(inv, settings, loc, ("text", "image", "chat", "custom"))
        if kind in ("text", "chat"):
            markdown = settings.get("use_markdown", kind == "chat")
            use_markdown = _v_bool(inv, markdown, [*loc, kind, "use_markdown"])
            return {"type": kind, "use_markdown": use_markdown}
        if kind == "image":
            return {"type": "image"}
        if kind == "custom":
            template = _take(inv, settings, "template", [*loc, "custom"], required=True)
            if template is not _ABSENT:
                template = _v_str(inv, template, [*loc, "custom", "template"], min_length=1)
            return {"type": "custom", "template": template,
                    "advanced_mode": bool(settings.get("advanced_mode", False))}
        return None

    def _list_questions(self, call: _Call) -> _Response:
        found = self._dataset_for(call, manage=False)
        return _ok({"items": [_render_row(q, _QUESTION_KEYS) for q in found.questions]})

    def _create_question(self, call: _Call) -> _Response:
        inv = call.invalid
        body = call.body
        name = title = settings = description = None
        required = False
        if body is not _ABSENT and body is not None and _v_dict(inv, body, ["body"], model=True):
            name, title = self._name_title(inv, body)
            if body.get("description") is not None:
                description = _v_str(inv, body["description"], ["body", "description"],
                                     min_length=1, max_length=1000)
            required = self._required_flag(inv, body)
            raw = _take(inv, body, "settings", ["body"], required=True)
            if raw is not _ABSENT:
                settings = self._question_settings(inv, raw, ["body", "settings"])
        found = self._dataset_for(call, manage=True)
        if any(q["name"] == name for q in found.questions):
            raise _detail(409, f"Question with name `{name}` already exists for dataset with id "
                               f"`{found.id}`")
        if found.ready:
            raise _detail(422, "questions cannot be created for a published dataset")
        stamp = self._stamp()
        row = {"id": str(uuid.uuid4()), "name": name, "title": title,
               "description": description, "required": required, "settings": settings,
               "dataset_id": found.id, "inserted_at": stamp, "updated_at": stamp}
        found.questions.append(row)
        return _ok(_render_row(row, _QUESTION_KEYS), 201)

    def _question_settings(self, inv: _Invalid, raw: Any, loc: list[Any]
                           ) -> dict[str, Any] | None:
        settings = _v_dict(inv, raw, loc, model=True)
        if settings is None:
            return None
        kinds = ("text", "rating", "label_selection", "multi_label_selection")
        kind = _v_tag(inv, settings, loc, kinds)
        if kind is None:
            return None
        where = [*loc, kind]
        if kind == "text":
            use_markdown = _v_bool(inv, settings.get("use_markdown", False),
                                   [*where, "use_markdown"])
            return {"type": "text", "use_markdown": use_markdown}
        raw_options = _take(inv, settings, "options", where, required=True)
        if raw_options is _ABSENT:
            return None
        if kind == "rating":
            options = _v_list(inv, raw_options, [*where, "options"], min_items=2, max_items=11)
            checked = []
            for index, option in enumerate(options or []):
                option_loc = [*where, "options", index]
                option = _v_dict(inv, option, option_loc, model=True)
                if option is None:
                    continue
                value = _take(inv, option, "value", option_loc, required=True)
                if value is not _ABSENT:
                    checked.append({"value": _v_int(inv, value, [*option_loc, "value"],
                                                    ge=0, le=10)})
            self._unique_options(inv, checked, where, settings)
            return {"type": "rating", "options": checked}
        options = _v_list(inv, raw_options, [*where, "options"], min_items=2, max_items=500)
        checked = []
        for index, option in enumerate(options or []):
            option_loc = [*where, "options", index]
            option = _v_dict(inv, option, option_loc, model=True)
            if option is None:
                continue
            item: dict[str, Any] = {}
            for key, limit in (("value", 200), ("text", 500)):
                value = _take(inv, option, key, option_loc, required=True)
                if value is not _ABSENT:
                    item[key] = _v_str(inv, value, [*option_loc, key], min_length=1,
                                       max_length=limit)
            description = option.get("description")
            if description is not None:
                description = _v_str(inv, description, [*option_loc, "description"],
                                     min_length=1, max_length=1000)
            item["description"] = description
            checked.append({"value": item.get("value"), "text": item.get("text"),
                            "description": item["description"]})
        visible = settings.get("visible_options")
        if visible is not None:
            visible = _v_int(inv, visible, [*where, "visible_options"], ge=3)
            if visible is not None and options is not None and visible > len(options):
                inv.value_error(where, "the value for 'visible_options' must be less or equal "
                                f"to the number of items in 'options' ({len(options)})", settings)
        self._unique_options(inv, checked, where, settings)
        out: dict[str, Any] = {"type": kind, "options": checked, "visible_options": visible}
        if kind == "multi_label_selection":
            out["options_order"] = _v_literal(inv, settings.get("options_order", "natural"),
                                              [*where, "options_order"],
                                              ("natural", "suggestion"), kind="enum")
        return out

    def _unique_options(self, inv: _Invalid, options: list[dict[str, Any]], loc: list[Any],
                        settings: Any) -> None:
        values = [o["value"] for o in options]
        duplicates = {v for v in values if values.count(v) > 1}
        if duplicates:
            inv.value_error(loc, f"Option values must be unique, found duplicates: {duplicates}",
                            settings)

    def _create_metadata_property(self, call: _Call) -> _Response:
        inv = call.invalid
        body = call.body
        name = title = settings = None
        visible = True
        if body is not _ABSENT and body is not None and _v_dict(inv, body, ["body"], model=True):
            name, title = self._name_title(inv, body)
            raw = _take(inv, body, "settings", ["body"], required=True)
            if raw is not _ABSENT:
                settings = self._metadata_settings(inv, raw, ["body", "settings"])
            if body.get("visible_for_annotators") is not None:
                visible = bool(_v_bool(inv, body["visible_for_annotators"],
                                       ["body", "visible_for_annotators"]))
        found = self._dataset_for(call, manage=True)
        # Unlike fields and questions, metadata properties may be added after publishing.
        if found.metadata_property(str(name)) is not None:
            raise _detail(409, f"Metadata property with name `{name}` already exists for "
                               f"dataset with id `{found.id}`")
        stamp = self._stamp()
        row = {"id": str(uuid.uuid4()), "name": name, "title": title, "settings": settings,
               "visible_for_annotators": visible, "dataset_id": found.id,
               "inserted_at": stamp, "updated_at": stamp}
        found.metadata_properties.append(row)
        return _ok(_render_row(row, _METADATA_KEYS), 201)

    def _metadata_settings(self, inv: _Invalid, raw: Any, loc: list[Any]
                           ) -> dict[str, Any] | None:
        settings = _v_dict(inv, raw, loc, model=True)
        if settings is None:
            return None
        kind = _v_tag(inv, settings, loc, ("terms", "integer", "float"))
        if kind == "terms":
            values = settings.get("values")
            if values is not None:
                values = _v_list(inv, values, [*loc, "terms", "values"], min_items=1,
                                 max_items=250)
            return {"type": "terms", "values": values}
        if kind in ("integer", "float"):
            check = _v_int if kind == "integer" else _v_float
            bounds: dict[str, Any] = {}
            for key in ("min", "max"):
                value = settings.get(key)
                bounds[key] = None if value is None else check(inv, value, [*loc, kind, key])
            low, high = bounds["min"], bounds["max"]
            if low is not None and high is not None and low >= high:
                inv.value_error([*loc, kind], f"'min' ({low}) must be lower than 'max' ({high})",
                                settings)
            return {"type": kind, "min": low, "max": high}
        return None

    def _me_metadata_properties(self, call: _Call) -> _Response:
        found = self._dataset_for(call, manage=False)
        listed = found.metadata_properties
        if call.actor["role"] == "annotator":  # MetadataPropertyPolicy.get
            listed = [p for p in listed if p["visible_for_annotators"]]
        return _ok({"items": [_render_row(p, _METADATA_KEYS) for p in listed]})

    # ---- records: bulk

    def _bulk_upsert(self, call: _Call) -> _Response:
        return self._bulk(call, upsert=True)

    def _bulk_create(self, call: _Call) -> _Response:
        return self._bulk(call, upsert=False)

    def _bulk(self, call: _Call, *, upsert: bool) -> _Response:
        items = self._bulk_items(call, upsert=upsert)
        found = self._dataset_for(call, manage=True)
        if not found.ready:
            action = "created or updated" if upsert else "created"
            raise _detail(422, f"records cannot be {action} for a non published dataset")
        existing: list[dict[str, Any] | None] = []
        for item in items:
            record_id = None
            if item.get("external_id") is not None:
                record_id = found.by_external_id.get(item["external_id"])
            if record_id is None and item.get("id") is not None:
                record_id = item["id"] if item["id"] in found.records else None
            existing.append(found.records.get(record_id) if record_id else None)
        if not upsert:
            taken = [str(item["external_id"])
                     for item, record in zip(items, existing, strict=True) if record is not None]
            if taken:
                raise _detail(422, f"found records with same external ids: {', '.join(taken)}")
        for index, (item, record) in enumerate(zip(items, existing, strict=True)):
            problem = self._record_problem(found, item, record)
            if problem:
                raise _detail(422, f"Record at position {index} is not valid because {problem}")
        # Every item is valid: apply them all (the server does it in one transaction).
        touched = []
        for item, record in zip(items, existing, strict=True):
            touched.append(self._apply(found, item, record))
        found.row["last_activity_at"] = self._last
        body = {"items": [_render_record(r, responses=True, suggestions=True, vectors=True)
                          for r in touched]}
        return _ok(body, 200 if upsert else 201)

    def _bulk_items(self, call: _Call, *, upsert: bool) -> list[dict[str, Any]]:
        """Validate the body as RecordsBulkUpsert / RecordsBulkCreate and normalise it."""
        inv = call.invalid
        body = call.body
        items: list[dict[str, Any]] = []
        if body is not _ABSENT and body is not None and _v_dict(inv, body, ["body"], model=True):
            raw_items = _take(inv, body, "items", ["body"], required=True)
            if raw_items is not _ABSENT:
                listed = _v_list(inv, raw_items, ["body", "items"], min_items=1,
                                 max_items=BULK_MAX_ITEMS)
                for index, raw in enumerate(listed or []):
                    items.append(self._record_item(inv, raw, ["body", "items", index],
                                                   upsert=upsert))
                external_ids = [i["external_id"] for i in items
                                if i.get("external_id") is not None]
                if listed is not None and len(external_ids) != len(set(external_ids)):
                    inv.value_error(["body", "items"], "External IDs must be unique", raw_items)
        inv.check()
        return items

    def _record_item(self, inv: _Invalid, raw: Any, loc: list[Any], *, upsert: bool
                     ) -> dict[str, Any]:
        item: dict[str, Any] = {}
        record = _v_dict(inv, raw, loc, model=True)
        if record is None:
            return item
        fields = _take(inv, record, "fields", loc, required=not upsert)
        if fields is not _ABSENT and (fields is not None or not upsert):
            checked = _v_dict(inv, fields, [*loc, "fields"])
            if checked is not None:
                for name, value in checked.items():
                    if value is not None and not isinstance(value, (str, list, dict)):
                        inv.add("string_type", [*loc, "fields", name],
                                "Input should be a valid string", value)
                item["fields"] = checked
        if "metadata" in record:  # set or not decides whether an update replaces metadata
            metadata = record["metadata"]
            if metadata is not None and _v_dict(inv, metadata, [*loc, "metadata"]) is not None:
                for key, value in metadata.items():
                    if isinstance(value, float) and math.isnan(value):
                        inv.value_error([*loc, "metadata"], "NaN is not allowed as metadata "
                                        f"value, found NaN for key {key!r}", metadata)
                        break
            item["metadata"] = metadata
        external_id = record.get("external_id")
        if external_id is not None:
            _v_str(inv, external_id, [*loc, "external_id"])
        item["external_id"] = external_id
        if upsert and record.get("id") is not None:
            item["id"] = _v_uuid(inv, record["id"], [*loc, "id"])
        suggestions = record.get("suggestions")
        item["suggestions"] = []
        if suggestions is not None:
            for index, raw_suggestion in enumerate(
                    _v_list(inv, suggestions, [*loc, "suggestions"]) or []):
                item["suggestions"].append(
                    self._suggestion_item(inv, raw_suggestion, [*loc, "suggestions", index]))
        responses = record.get("responses")
        item["responses"] = []
        if responses is not None:
            for index, raw_response in enumerate(
                    _v_list(inv, responses, [*loc, "responses"]) or []):
                item["responses"].append(
                    self._response_item(inv, raw_response, [*loc, "responses", index]))
            user_ids = [r.get("user_id") for r in item["responses"] if r.get("user_id")]
            duplicated = next((u for u in user_ids if user_ids.count(u) > 1), None)
            if duplicated:
                inv.value_error([*loc, "responses"], "'responses' contains several responses "
                                f"for the same user_id={duplicated!r}", responses)
        vectors = record.get("vectors")
        item["vectors"] = {}
        if vectors is not None and _v_dict(inv, vectors, [*loc, "vectors"]) is not None:
            item["vectors"] = vectors
        return item

    def _suggestion_item(self, inv: _Invalid, raw: Any, loc: list[Any]) -> dict[str, Any]:
        suggestion = _v_dict(inv, raw, loc, model=True)
        if suggestion is None:
            return {}
        out: dict[str, Any] = {}
        question_id = _take(inv, suggestion, "question_id", loc, required=True)
        if question_id is not _ABSENT:
            out["question_id"] = _v_uuid(inv, question_id, [*loc, "question_id"])
        value = _take(inv, suggestion, "value", loc, required=True)
        out["value"] = None if value is _ABSENT else value
        kind = suggestion.get("type")
        if kind is not None:
            kind = _v_literal(inv, kind, [*loc, "type"], ("model", "human"), kind="enum")
        out["type"] = kind
        agent = suggestion.get("agent")
        if agent is not None:
            agent = _v_str(inv, agent, [*loc, "agent"], min_length=1, max_length=200)
            if agent is not None and not _AGENT.match(agent):
                inv.add("string_pattern_mismatch", [*loc, "agent"],
                        f"String should match pattern '{AGENT_PATTERN}'", agent,
                        {"pattern": AGENT_PATTERN})
        out["agent"] = agent
        score = suggestion.get("score")
        if isinstance(score, list):
            score = [_v_float(inv, s, [*loc, "score", i], ge=0, le=1) for i, s in enumerate(score)]
        elif score is not None:
            score = _v_float(inv, score, [*loc, "score"], ge=0, le=1)
        out["score"] = score
        return out

    def _response_item(self, inv: _Invalid, raw: Any, loc: list[Any]) -> dict[str, Any]:
        response = _v_dict(inv, raw, loc, model=True)
        if response is None:
            return {}
        status = _v_tag(inv, response, loc, RESPONSE_STATUSES, discriminator="status")
        if status is None:
            return {}
        out: dict[str, Any] = {"status": status}
        user_id = _take(inv, response, "user_id", [*loc, status], required=True)
        if user_id is not _ABSENT:
            out["user_id"] = _v_uuid(inv, user_id, [*loc, status, "user_id"])
        values = _take(inv, response, "values", [*loc, status], required=status != "discarded")
        out["values"] = None
        if values is not _ABSENT and (values is not None or status != "discarded"):
            checked = _v_dict(inv, values, [*loc, status, "values"])
            if checked is not None:
                for name, answer in checked.items():
                    answer_loc = [*loc, status, "values", name]
                    if _v_dict(inv, answer, answer_loc, model=True) is not None:
                        _take(inv, answer, "value", answer_loc, required=True)
                out["values"] = checked
        return out

    def _record_problem(self, found: _Dataset, item: Mapping[str, Any],
                        record: Mapping[str, Any] | None) -> str | None:
        """What RecordUpsertValidator / RecordCreateValidator says of one item, or None."""
        if record is None:
            fields = item.get("fields")
            if not (isinstance(fields, dict) and fields):
                return "fields cannot be empty"
            for spec in found.fields:
                if spec["required"] and fields.get(spec["name"]) is None:
                    return f"missing required value for field: {spec['name']!r}"
            extra = [name for name in fields if name not in found.field_names()]
            if extra:
                return f"found fields values for non configured fields: {extra!r}"
            for spec in found.fields:
                value = fields.get(spec["name"])
                kind = spec["settings"]["type"]
                if value is None:
                    continue
                if kind == "chat" and not isinstance(value, list):
                    return f"chat field {spec['name']!r} value must be a list of messages"
                if kind == "custom" and not isinstance(value, dict):
                    return f"custom field {spec['name']!r} value must be a dictionary"
                if kind in ("text", "image") and not isinstance(value, str):
                    return f"field {spec['name']!r} expects a text value"
        problem = self._metadata_problem(found, item.get("metadata"))
        if problem:
            return problem
        for name in item.get("vectors") or {}:
            return (f"record does not have valid vectors: vector with name={name} does not "
                    f"exist for dataset_id={found.id}")
        problem = self._suggestions_problem(found, item.get("suggestions") or [])
        if problem:
            return f"record does not have valid suggestions: {problem}"
        for response in item.get("responses") or []:
            if response["user_id"] not in self._users:
                return (f"record does not have valid responses: user with id "
                        f"{response['user_id']} not found")
            problem = self._response_problem(found, record, response["values"],
                                             response["status"])
            if problem:
                return f"record does not have valid responses: {problem}"
        return None

    def _metadata_problem(self, found: _Dataset, metadata: Any) -> str | None:
        for name, value in (metadata or {}).items():
            prop = found.metadata_property(name)
            if prop is not None and value is not None:
                problem = _metadata_value_problem(prop["settings"], value)
                if problem:
                    return (f"metadata is not valid: '{name}' metadata property validation "
                            f"failed because {problem}")
            elif prop is None and not found.row["allow_extra_metadata"]:
                return (f"metadata is not valid: '{name}' metadata property does not exists "
                        f"for dataset '{found.id}' and extra metadata is not allowed for this "
                        "dataset")
        return None

    def _suggestions_problem(self, found: _Dataset, suggestions: list[dict[str, Any]]
                             ) -> str | None:
        question_ids = [s["question_id"] for s in suggestions]
        if len(question_ids) != len(set(question_ids)):
            return "found duplicate suggestions question IDs"
        for suggestion in suggestions:
            question = found.question(id=suggestion["question_id"])
            if question is None:
                return f"question id={suggestion['question_id']} does not exists"
            problem = _value_problem(question["settings"], suggestion["value"])
            if problem:
                return problem
            value, score = suggestion["value"], suggestion["score"]
            if not isinstance(value, list) and isinstance(score, list):
                return "a list of score values is not allowed for a suggestion with a single value"
            if isinstance(value, list) and score is not None and not isinstance(score, list):
                return ("a single score value is not allowed for a suggestion with a multiple "
                        "items value")
            if isinstance(value, list) and isinstance(score, list) and len(value) != len(score):
                return "number of items on value and score attributes doesn't match"
        return None

    def _response_problem(self, found: _Dataset, record: Mapping[str, Any] | None,
                          values: Mapping[str, Any] | None, status: str) -> str | None:
        """ResponseValidator's checks, in its order."""
        submitted = status == "submitted"
        if submitted and not values:
            return "missing response values for submitted response"
        for question in found.questions:
            if submitted and question["required"] and question["name"] not in values:
                return (f"missing response value for required question with "
                        f"name={question['name']!r}")
        names = [q["name"] for q in found.questions]
        for name in values or {}:
            if name not in names:
                return f"found response value for non configured question with name={name!r}"
        for question in found.questions:
            answer = (values or {}).get(question["name"])
            if answer:
                problem = _value_problem(question["settings"], answer.get("value"))
                if problem:
                    return problem
        return None

    def _apply(self, found: _Dataset, item: Mapping[str, Any],
               record: dict[str, Any] | None) -> dict[str, Any]:
        """Create or update one record, as UpsertRecordsBulk does. Hold the lock."""
        stamp = self._stamp()
        if record is None:
            record = {"id": str(uuid.uuid4()), "status": "pending",
                      "fields": copy.deepcopy(item["fields"]),
                      "metadata": copy.deepcopy(item.get("metadata")),
                      "external_id": item.get("external_id"), "dataset_id": found.id,
                      "suggestions": {}, "responses": {}, "vectors": {},
                      "inserted_at": stamp, "updated_at": stamp}
            found.records[record["id"]] = record
            if record["external_id"] is not None:
                found.by_external_id[record["external_id"]] = record["id"]
        elif "metadata" in item:
            # An existing record keeps its fields: only metadata (when sent) is replaced.
            record["metadata"] = copy.deepcopy(item["metadata"])
            record["updated_at"] = stamp
        for suggestion in item.get("suggestions") or []:
            current = record["suggestions"].get(suggestion["question_id"])
            if current is None:
                current = {"id": str(uuid.uuid4()), "record_id": record["id"],
                           "inserted_at": stamp}
                record["suggestions"][suggestion["question_id"]] = current
            current.update(question_id=suggestion["question_id"], type=suggestion["type"],
                           value=copy.deepcopy(suggestion["value"]), agent=suggestion["agent"],
                           score=copy.deepcopy(suggestion["score"]), updated_at=stamp)
        for response in item.get("responses") or []:
            self._put_response(record, response["user_id"], response["values"],
                               response["status"], stamp)
        self._refresh_status(found, record, stamp)
        # index_records writes the whole document again, updated_at included.
        record["indexed_updated_at"] = record["updated_at"]
        return record

    def _put_response(self, record: dict[str, Any], user_id: str,
                      values: Mapping[str, Any] | None, status: str, stamp: datetime
                      ) -> dict[str, Any]:
        response = record["responses"].get(user_id)
        if response is None:
            response = {"id": str(uuid.uuid4()), "record_id": record["id"], "user_id": user_id,
                        "inserted_at": stamp}
            record["responses"][user_id] = response
        response.update(values=copy.deepcopy(values), status=status, updated_at=stamp)
        return response

    def _refresh_status(self, found: _Dataset, record: dict[str, Any], stamp: datetime) -> None:
        """The overlap strategy: completed once min_submitted responses are submitted.

        A change of status is an UPDATE of the row, so SQLAlchemy's onupdate moves the stored
        updated_at; the search index only gets the new status (a partial update).
        """
        submitted = sum(1 for r in record["responses"].values() if r["status"] == "submitted")
        wanted = ("completed" if submitted >= found.row["distribution"]["min_submitted"]
                  else "pending")
        if wanted != record["status"]:
            record["status"] = wanted
            record["updated_at"] = stamp
        record.setdefault("indexed_updated_at", record["updated_at"])

    # ---- records: list, delete, search

    def _paging(self, call: _Call, *, offset_ge: int | None) -> tuple[int, int]:
        inv = call.invalid
        offset, limit = 0, SEARCH_LIMIT_DEFAULT
        raw = call.request.param("offset")
        if raw is not None:
            offset = _v_int(inv, raw, ("query", "offset"), ge=offset_ge) or 0
        raw = call.request.param("limit")
        if raw is not None:
            limit = _v_int(inv, raw, ("query", "limit"), ge=1, le=SEARCH_LIMIT_MAX) or 0
        return offset, limit

    def _include(self, call: _Call) -> set[str]:
        """The include query param: responses, suggestions, vectors (or vectors:a,b)."""
        include: set[str] = set()
        for index, raw in enumerate(call.request.query.get("include", [])):
            key = raw.split(":", 1)[0]
            if key in ("responses", "suggestions", "vectors"):
                include.add(key)
            else:
                call.invalid.add("enum", ("query", "include", index),
                                 "Input should be 'responses', 'suggestions' or 'vectors'", raw,
                                 {"expected": "'responses', 'suggestions' or 'vectors'"})
        return include

    def _list_records(self, call: _Call) -> _Response:
        include = self._include(call)
        offset, limit = self._paging(call, offset_ge=None)
        found = self._dataset_for(call, manage=True)
        ordered = _by_insertion(found.records.values())
        page = ordered[max(offset, 0): max(offset, 0) + limit]
        return _ok({"items": [_render_record(r, responses="responses" in include,
                                             suggestions="suggestions" in include,
                                             vectors="vectors" in include) for r in page],
                    "total": len(ordered)})

    def _delete_records(self, call: _Call) -> _Response:
        raw = call.request.param("ids")
        if raw is None:
            call.invalid.add("missing", ("query", "ids"), "Field required", None)
        found = self._dataset_for(call, manage=True)
        ids = [part.strip() for part in (raw or "").split(",") if part.strip()]
        try:
            ids = [str(uuid.UUID(part)) for part in ids]
        except ValueError as exc:
            raise _detail(422, str(exc)) from None
        if not ids:
            raise _detail(422, "No record IDs provided")
        if len(ids) > DELETE_RECORDS_LIMIT:
            raise _detail(422, f"Cannot delete more than {DELETE_RECORDS_LIMIT} records at once")
        for record_id in ids:
            record = found.records.pop(record_id, None)
            if record is not None and record["external_id"] is not None:
                found.by_external_id.pop(record["external_id"], None)
        return _Response(204)

    def _search(self, call: _Call) -> _Response:
        return self._run_search(call, me=False)

    def _me_search(self, call: _Call) -> _Response:
        return self._run_search(call, me=True)

    def _run_search(self, call: _Call, *, me: bool) -> _Response:
        include = self._include(call)
        offset, limit = self._paging(call, offset_ge=0)
        query = self._search_body(call)
        if me:
            found = self._dataset_for(call, manage=False)
        else:
            found = self._dataset_for(call, manage=True)  # search_records_with_all_responses
        self._check_search_scopes(found, query)
        user_id = call.actor["id"] if me else None
        hits = self._hits(found, query, user_id)
        page = hits[offset: offset + limit]
        items = [{"record": _render_record(record, responses="responses" in include,
                                           suggestions="suggestions" in include,
                                           vectors="vectors" in include, user_id=user_id),
                  "query_score": score}
                 for record, score in page]
        return _ok({"items": items, "total": len(hits)})

    def _search_body(self, call: _Call) -> dict[str, Any]:
        """Validate SearchRecordsQuery; returns {"text", "filters", "sort"}."""
        inv = call.invalid
        body = call.body
        parsed: dict[str, Any] = {"text": None, "filters": [], "sort": []}
        if body is _ABSENT or body is None or _v_dict(inv, body, ["body"], model=True) is None:
            inv.check()
            return parsed
        query = body.get("query")
        if query is not None and _v_dict(inv, query, ["body", "query"], model=True) is not None:
            text = query.get("text")
            if text is not None and _v_dict(inv, text, ["body", "query", "text"],
                                            model=True) is not None:
                q = _take(inv, text, "q", ["body", "query", "text"], required=True)
                if q is not _ABSENT:
                    q = _v_str(inv, q, ["body", "query", "text", "q"])
                text_field = text.get("field")
                if text_field is not None:
                    text_field = _v_str(inv, text_field, ["body", "query", "text", "field"])
                parsed["text"] = {"q": q, "field": text_field}
            if query.get("vector") is not None:
                parsed["vector"] = query["vector"]
        filters = body.get("filters")
        if filters is not None and _v_dict(inv, filters, ["body", "filters"],
                                           model=True) is not None:
            raw_and = _take(inv, filters, "and", ["body", "filters"], required=True)
            if raw_and is not _ABSENT:
                for index, raw in enumerate(_v_list(inv, raw_and, ["body", "filters", "and"],
                                                    min_items=1, max_items=FILTERS_MAX) or []):
                    parsed["filters"].append(
                        self._filter(inv, raw, ["body", "filters", "and", index]))
        sort = body.get("sort")
        if sort is not None:
            for index, raw in enumerate(_v_list(inv, sort, ["body", "sort"], min_items=1,
                                                max_items=SORT_MAX) or []):
                loc = ["body", "sort", index]
                order = _v_dict(inv, raw, loc, model=True)
                if order is None:
                    continue
                scope = _take(inv, order, "scope", loc, required=True)
                direction = _take(inv, order, "order", loc, required=True)
                if direction is not _ABSENT:
                    direction = _v_literal(inv, direction, [*loc, "order"], ("asc", "desc"),
                                           kind="enum")
                parsed["sort"].append({
                    "scope": None if scope is _ABSENT else self._scope(inv, scope,
                                                                       [*loc, "scope"]),
                    "order": direction})
        inv.check()
        return parsed

    def _filter(self, inv: _Invalid, raw: Any, loc: list[Any]) -> dict[str, Any]:
        flt = _v_dict(inv, raw, loc, model=True)
        if flt is None:
            return {}
        kind = _v_tag(inv, flt, loc, ("terms", "range"))
        if kind is None:
            return {}
        where = [*loc, kind]
        out: dict[str, Any] = {"type": kind}
        scope = _take(inv, flt, "scope", where, required=True)
        out["scope"] = None if scope is _ABSENT else self._scope(inv, scope, [*where, "scope"])
        if kind == "terms":
            values = _take(inv, flt, "values", where, required=True)
            if values is not _ABSENT:
                listed = _v_list(inv, values, [*where, "values"], min_items=1,
                                 max_items=TERMS_VALUES_MAX) or []
                out["values"] = [_v_str(inv, v, [*where, "values", i])
                                 for i, v in enumerate(listed)]
            return out
        for key in ("ge", "le"):
            value = flt.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float, str))):
                inv.add("float_type", [*where, key], "Input should be a valid number", value)
                value = None
            out[key] = value
        ge, le = out["ge"], out["le"]
        if ge is None and le is None:
            inv.value_error(where, "At least one of 'ge' or 'le' must be provided", flt)
        elif (ge is not None and le is not None and type(ge) is type(le) and ge > le):
            inv.value_error(where, "'ge' must have a value less than or equal to 'le'", flt)
        return out

    def _scope(self, inv: _Invalid, raw: Any, loc: list[Any]) -> dict[str, Any] | None:
        scope = _v_dict(inv, raw, loc, model=True)
        if scope is None:
            return None
        entity = _v_tag(inv, scope, loc, ("record", "response", "suggestion", "metadata"),
                        discriminator="entity")
        if entity is None:
            return None
        where = [*loc, entity]
        out: dict[str, Any] = {"entity": entity}
        if entity == "record":
            prop = _take(inv, scope, "property", where, required=True)
            if prop is not _ABSENT:
                out["property"] = _v_literal(inv, prop, [*where, "property"], (
                    "id", "external_id", "inserted_at", "updated_at", "status"))
        elif entity == "response":
            question = scope.get("question")
            out["question"] = (None if question is None
                               else _v_str(inv, question, [*where, "question"], min_length=1))
            prop = scope.get("property")
            # The only response property a filter may name: a response's own timestamps
            # are not in the search index.
            out["property"] = (None if prop is None
                               else _v_literal(inv, prop, [*where, "property"], ("status",)))
        elif entity == "suggestion":
            question = _take(inv, scope, "question", where, required=True)
            if question is not _ABSENT:
                out["question"] = _v_str(inv, question, [*where, "question"], min_length=1)
            prop = scope.get("property", "value")
            out["property"] = ("value" if prop is None else
                               _v_literal(inv, prop, [*where, "property"],
                                          ("value", "agent", "score")))
        else:
            name = _take(inv, scope, "metadata_property", where, required=True)
            if name is not _ABSENT:
                out["metadata_property"] = _v_str(inv, name, [*where, "metadata_property"],
                                                  min_length=1, max_length=200)
        return out

    def _check_search_scopes(self, found: _Dataset, query: Mapping[str, Any]) -> None:
        """SearchRecordsQueryValidator: named questions, properties and fields must exist."""
        scopes = [f["scope"] for f in query["filters"]] + [o["scope"] for o in query["sort"]]
        for scope in scopes:
            if scope["entity"] in ("response", "suggestion") and scope.get("question"):
                if found.question(name=scope["question"]) is None:
                    raise _detail(422, f"Question not found filtering by "
                                       f"name={scope['question']}, dataset_id={found.id}")
            elif scope["entity"] == "metadata":
                if found.metadata_property(scope["metadata_property"]) is None:
                    raise _detail(422, f"MetadataProperty not found filtering by "
                                       f"name={scope['metadata_property']}, dataset_id={found.id}")
        text = query.get("text")
        if text and text.get("field") and text["field"] not in found.field_names():
            raise _detail(422, f"Field `{text['field']}` not found in dataset `{found.id}`.")
        vector = query.get("vector")
        if vector is not None:
            name = vector.get("name") if isinstance(vector, dict) else None
            raise _detail(422, f"Vector `{name}` not found in dataset `{found.id}`.")

    def _hits(self, found: _Dataset, query: Mapping[str, Any], user_id: str | None
              ) -> list[tuple[dict[str, Any], float | None]]:
        """Matching records with their query_score, in the order the engine returns them."""
        predicates = [self._predicate(found, f, user_id) for f in query["filters"]]
        records = _by_insertion(found.records.values())
        text = query.get("text")
        scored: list[tuple[dict[str, Any], float]] = []
        for record in records:
            if not all(predicate(record) for predicate in predicates):
                continue
            score = 1.0  # match_all inside a bool query scores every hit 1.0
            if text is not None:
                score = _text_score(found, record, text)
                if score <= 0:
                    continue
            scored.append((record, score))
        if query["sort"]:
            ordered = [record for record, _ in scored]
            for order in reversed(query["sort"]):
                ordered = self._sorted(found, ordered, order, user_id)
            return [(record, None) for record in ordered]  # a sorted search has no _score
        if user_id is not None and text is None:
            # /me search scores with random_score seeded by the user id.
            def seeded(record: Mapping[str, Any]) -> float:
                digest = hashlib.sha256(f"{user_id}:{record['id']}".encode()).digest()
                return int.from_bytes(digest[:6], "big") / float(1 << 48)

            scored = [(record, seeded(record)) for record, _ in scored]
        if text is not None or user_id is not None:
            scored.sort(key=lambda pair: -pair[1])  # stable: ties keep insertion order
        return list(scored)

    def _predicate(self, found: _Dataset, flt: Mapping[str, Any], user_id: str | None
                   ) -> Callable[[Mapping[str, Any]], bool]:
        scope = flt["scope"]
        if scope["entity"] == "response":
            return self._response_predicate(found, flt, user_id)
        getter, kind = self._values_of(found, scope)
        return _match(flt, getter, kind)

    def _response_predicate(self, found: _Dataset, flt: Mapping[str, Any], user_id: str | None
                            ) -> Callable[[Mapping[str, Any]], bool]:
        scope = flt["scope"]

        def responses(record: Mapping[str, Any]) -> list[dict[str, Any]]:
            return [r for r in record["responses"].values()
                    if user_id is None or r["user_id"] == user_id]

        if scope.get("question"):
            question = found.question(name=scope["question"]) or {}
            kind = _question_kind(question.get("settings") or {})
            name = scope["question"]

            def answers(record: Mapping[str, Any]) -> list[Any]:
                values: list[Any] = []
                for response in responses(record):
                    answer = (response.get("values") or {}).get(name) or {}
                    values.extend(_as_list(answer.get("value")))
                return values

            return _match(flt, answers, kind)
        if scope.get("property") == "status" and flt["type"] == "terms":
            wanted = set(flt["values"])
            pending = "pending" in wanted

            def by_status(record: Mapping[str, Any]) -> bool:
                own = responses(record)
                if pending and not own:  # no response (by this user, in /me search)
                    return True
                return any(r["status"] in wanted for r in own)

            return by_status
        raise _engine_error(f"Cannot process filter scope {_scope_repr(scope)}")

    def _values_of(self, found: _Dataset, scope: Mapping[str, Any]
                   ) -> tuple[Callable[[Mapping[str, Any]], list[Any]], str]:
        """What the search index holds for a record under a scope, and its field type."""
        entity = scope["entity"]
        if entity == "record":
            prop = scope["property"]
            if prop == "inserted_at":
                return (lambda r: [r["inserted_at"]]), "date"
            if prop == "updated_at":
                # The indexed value: responses and status changes do not rewrite it.
                return (lambda r: [r["indexed_updated_at"]]), "date"
            return (lambda r: _as_list(r.get(prop))), "keyword"
        if entity == "metadata":
            prop = found.metadata_property(scope["metadata_property"]) or {}
            name = scope["metadata_property"]
            kind = {"integer": "number", "float": "number"}.get(
                (prop.get("settings") or {}).get("type"), "keyword")
            return (lambda r: _as_list((r.get("metadata") or {}).get(name))), kind
        question = found.question(name=scope["question"]) or {}
        prop = scope.get("property") or "value"
        kind = {"value": _question_kind(question.get("settings") or {}), "agent": "keyword",
                "score": "number"}[prop]
        question_id = question.get("id")

        def suggested(record: Mapping[str, Any]) -> list[Any]:
            suggestion = record["suggestions"].get(question_id)
            return [] if suggestion is None else _as_list(suggestion.get(prop))

        return suggested, kind

    def _sorted(self, found: _Dataset, records: list[dict[str, Any]], order: Mapping[str, Any],
                user_id: str | None) -> list[dict[str, Any]]:
        """One stable sort pass; records with no value go last either way, as in ES."""
        scope = order["scope"]
        descending = order["order"] == "desc"
        if scope["entity"] == "response":
            if not scope.get("question"):
                raise _engine_error("sorting on responses needs a question")
            name = scope["question"]

            def values(record: Mapping[str, Any]) -> list[Any]:
                found_values = []
                for response in record["responses"].values():
                    if user_id is None or response["user_id"] == user_id:
                        answer = (response.get("values") or {}).get(name) or {}
                        found_values.extend(_as_list(answer.get("value")))
                numbers = [v for v in found_values if isinstance(v, (int, float))]
                return [sum(numbers) / len(numbers)] if numbers else []  # mode avg

            kind = "number"
        else:
            values, kind = self._values_of(found, scope)
        present, missing = [], []
        for record in records:
            keys = [_sortable(v, kind) for v in values(record)]
            if keys:
                present.append(((max(keys) if descending else min(keys)), record))
            else:
                missing.append(record)
        present.sort(key=lambda pair: pair[0], reverse=descending)
        return [record for _, record in present] + missing


# --------------------------------------------------------------------------- value checks


def _metadata_value_problem(settings: Mapping[str, Any], value: Any) -> str | None:
    """check_metadata of the property's settings (models/metadata_properties.py)."""
    kind = settings["type"]
    if kind == "terms":
        allowed = settings.get("values")
        if allowed is None:
            return None  # any value, strings or not, since 2.4
        for item in value if isinstance(value, list) else [value]:
            if item not in allowed:
                return f"'{item}' is not an allowed term."
        return None
    # Python's isinstance: True passes as an integer, and 1 is not a float.
    if kind == "integer" and not isinstance(value, int):
        return f"'{value}' is not an integer."
    if kind == "float" and not isinstance(value, float):
        return f"'{value}' is not a float."
    if not isinstance(value, (int, float)):
        return f"'{value}' is not a number."
    if settings.get("min") is not None and value < settings["min"]:
        return f"'{value}' is less than the minimum value of '{settings['min']}'."
    if settings.get("max") is not None and value > settings["max"]:
        return f"'{value}' is greater than the maximum value of '{settings['max']}'."
    return None


def _value_problem(settings: Mapping[str, Any], value: Any) -> str | None:
    """ResponseValueValidator for the question types this double supports."""
    kind = settings["type"]
    if kind == "text":
        if not isinstance(value, str):
            return f"text question expects a text value, found {type(value)}"
        return None
    options = [option["value"] for option in settings.get("options") or []]
    if kind == "label_selection":
        if value not in options:
            return (f"{value!r} is not a valid label for label selection question.\n"
                    f"Valid labels are: {options!r}")
        return None
    if kind == "multi_label_selection":
        if not isinstance(value, list):
            return f"multi label selection questions expects a list of values, found {type(value)}"
        if not value:
            return "multi label selection questions expects a list of values, found empty list"
        if len(value) != len({_keyword(v) for v in value}):
            return ("multi label selection questions expect a list of unique values, but "
                    "duplicates were found")
        invalid = sorted({v for v in value if v not in options}, key=str)
        if invalid:
            return (f"{invalid!r} are not valid labels for multi label selection question.\n"
                    f"Valid labels are: {options!r}")
        return None
    if kind == "rating" and value not in options:
        return (f"{value!r} is not a valid rating for rating question.\n"
                f"Valid ratings are: {options!r}")
    return None


def _question_kind(settings: Mapping[str, Any]) -> str:
    """The index mapping of a question's values: rating integer, labels keyword, others off."""
    kind = settings.get("type")
    if kind == "rating":
        return "number"
    if kind in ("label_selection", "multi_label_selection"):
        return "keyword"
    return "disabled"


def _sortable(value: Any, kind: str) -> Any:
    if kind == "number":
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("inf")
    if kind == "date":
        return value
    return _keyword(value)


def _match(flt: Mapping[str, Any], values: Callable[[Mapping[str, Any]], list[Any]],
           kind: str) -> Callable[[Mapping[str, Any]], bool]:
    """A terms or range query over a field of the given type."""
    if kind == "disabled":
        return lambda record: False  # the field is not indexed: nothing matches
    if flt["type"] == "terms":
        if kind == "number":
            wanted_numbers = {_number(v) for v in flt["values"]}
            return lambda r: any(_as_float(v) in wanted_numbers for v in values(r))
        if kind == "date":
            moments = {_moment(v, upper=False) for v in flt["values"]}
            return lambda r: any(v in moments for v in values(r))
        wanted = set(flt["values"])
        return lambda r: any(_keyword(v) in wanted for v in values(r))
    ge, le = flt.get("ge"), flt.get("le")
    if kind == "date":
        low = None if ge is None else _moment(ge, upper=False)
        high = None if le is None else _moment(le, upper=True)
        convert: Callable[[Any], Any] = lambda v: v  # noqa: E731
    elif kind == "number":
        low = None if ge is None else _number(ge)
        high = None if le is None else _number(le)
        convert = _as_float
    else:
        low = None if ge is None else _keyword(ge)
        high = None if le is None else _keyword(le)
        convert = _keyword

    def within(record: Mapping[str, Any]) -> bool:
        for value in values(record):
            value = convert(value)
            if value is None:
                continue
            if (low is None or value >= low) and (high is None or value <= high):
                return True
        return False

    return within


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scope_repr(scope: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value!r}" for key, value in scope.items())


_QUERY_TERM = re.compile(r'-?"[^"]*"|\S+')


def _text_score(found: _Dataset, record: Mapping[str, Any], text: Mapping[str, Any]) -> float:
    """simple_query_string over fields.* (or one field), default operator AND; 0 = no match.

    Supported: words, "phrases", a trailing * for prefixes, a leading - to exclude. The
    score counts matching tokens: enough to order hits, not Elasticsearch's BM25.
    """
    names = [text["field"]] if text.get("field") else found.field_names()
    tokens: list[str] = []
    for name in names:
        value = (record.get("fields") or {}).get(name)
        if isinstance(value, str):
            tokens.extend(_tokens(value))
        elif isinstance(value, list):  # chat messages
            for message in value:
                if isinstance(message, dict):
                    tokens.extend(_tokens(str(message.get("content", ""))))
    score = 0.0
    terms = _QUERY_TERM.findall(text.get("q") or "")
    if not terms:
        return 0.0
    for term in terms:
        negate = term.startswith("-")
        term = term.lstrip("+-")
        if term in ("|", "") or term.upper() in ("AND", "OR"):
            continue
        prefix = term.endswith("*") and not term.startswith('"')
        words = _tokens(term)
        if not words:
            continue
        hits = 0
        for start in range(len(tokens) - len(words) + 1):
            window = tokens[start: start + len(words)]
            if prefix:
                matched = window[:-1] == words[:-1] and window[-1].startswith(words[-1])
            else:
                matched = window == words
            hits += matched
        if negate and hits:
            return 0.0
        if not negate:
            if not hits:
                return 0.0
            score += hits
    return score or 1.0
