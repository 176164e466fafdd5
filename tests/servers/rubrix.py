"""An in-process stand-in for a Rubrix 0.18 (or Argilla 1.0) server, for tests.

The real server needs Elasticsearch, which cannot run here, so this one keeps records in
memory and answers the REST calls that a text-classification client makes, with the paths,
headers, JSON shapes and status codes of Rubrix 0.18 as read from its source:

* ``GET /api/_info`` (no key), ``GET /api/me``;
* ``POST /api/datasets/{name}/TextClassification:bulk`` (creates the dataset, upserts by id);
* ``GET`` / ``DELETE /api/datasets/{name}``;
* ``POST /api/datasets/{name}/TextClassification/data?limit=&id_from=`` (chunked NDJSON);
* ``DELETE /api/datasets/{name}/data?mark_as_discarded=`` (``rb.delete_records``).

Behaviour that trips clients is reproduced on purpose: only the ``X-Rubrix-Api-Key`` header
carries the key (a bearer token alone is refused), a record logged without ``status`` is
``Default`` even with an annotation, ids that ``int()`` reads come back as integers, ids sort
as strings for ``id_from`` paging, metadata is flattened and long strings keep their last 128
characters, and a bad ``query_text`` is reported inside a 200 stream.

Tests drive it over real HTTP and play the human annotator through Python hooks::

    with RubrixServer(api_key="secret", workspaces=("rubrix", "team-a")) as server:
        ...  # point the client at server.url
        server.annotate("my-ds", "ex-1", label="pos", agent="alice")
        server.fail_every(3, status=503)  # every 3rd request from now on fails

Only the standard library is used, so the double adds no dependency.
"""

from __future__ import annotations

import calendar
import copy
import fnmatch
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from tests.servers.loopback import LoopbackHandler, LoopbackServer
from tests.servers.loopback import json_bytes as _json_bytes

__all__ = ["DATASET_NAME_PATTERN", "QueryError", "RubrixServer", "compile_query_text"]

TASK = "TextClassification"
DATASET_NAME_PATTERN = r"^(?!-|_)[a-z0-9-_]+$"
_DATASET_NAME = re.compile(DATASET_NAME_PATTERN)
STATUSES = ("Default", "Edited", "Discarded", "Validated")
# settings.metadata_field_length in Rubrix: longer strings keep their *last* characters.
METADATA_VALUE_LENGTH = 128
# scan_data_response groups records by 1000 per chunk of the stream.
STREAM_CHUNK_SIZE = 1000
# query_string's default_field in Rubrix's text_query helper.
DEFAULT_FIELD = "text"
DATE_FIELDS = frozenset({"last_updated", "event_timestamp"})
_UTC = timezone.utc
_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class _Flavor:
    """What differs between a Rubrix 0.18 server and an Argilla 1.0 one."""

    key_header: str
    workspace_header: str
    info: Mapping[str, str]
    error_prefix: str


_FLAVORS = {
    "rubrix": _Flavor("X-Rubrix-Api-Key", "X-Rubrix-Workspace",
                      {"rubrix_version": "0.18.0"}, "rubrix.api.errors"),
    # Argilla 1.0 is the same server renamed, error codes included.
    "argilla1": _Flavor("X-Argilla-Api-Key", "X-Argilla-Workspace",
                        {"version": "1.0.1"}, "argilla.api.errors"),
}


class QueryError(ValueError):
    """A ``query_text`` that Elasticsearch's query_string parser would reject."""


class _HttpError(Exception):
    """Ends a request with a JSON error response."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


@dataclass
class _Request:
    method: str
    target: str  # path with query, as sent
    path: str  # percent-decoded path
    query: dict[str, str]  # last value wins, as in Starlette's QueryParams
    headers: Any  # email.message.Message: case-insensitive get()
    body: bytes


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Iterable[bytes] | None = None  # set: sent with chunked transfer encoding
    content_type: str = "application/json"


@dataclass
class _Dataset:
    name: str
    owner: str
    created_at: str
    last_updated: str
    tags: dict[str, Any]
    metadata: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # keyed by str(id)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "task": TASK, "owner": self.owner,
                "created_at": self.created_at, "last_updated": self.last_updated,
                "tags": dict(self.tags), "metadata": dict(self.metadata)}


def _format_ms(ms: int) -> str:
    """``2022-10-02T09:13:00.123``: UTC, millisecond precision, no offset."""
    moment = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}"


def _now_ms(clock: Callable[[], datetime]) -> int:
    now = clock()
    if now.tzinfo is None:
        now = now.replace(tzinfo=_UTC)
    now = now.astimezone(_UTC)
    return calendar.timegm(now.timetuple()) * 1000 + now.microsecond // 1000


# --------------------------------------------------------------------------- record model


def _flatten(data: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    """Rubrix's flatten_dict(drop_empty=True): nested keys joined by dots, {} dropped."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{parent}.{key}" if parent else str(key)
        if isinstance(value, Mapping):
            if value:
                flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def _limit_length(value: Any, max_length: int = METADATA_VALUE_LENGTH) -> Any:
    """Rubrix's limit_value_length: strings keep their last ``max_length`` characters."""
    if isinstance(value, str):
        return value[-max_length:]
    if isinstance(value, Mapping):
        return {k: _limit_length(v, max_length) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_limit_length(v, max_length) for v in value]
    return value


def _public_id(stored_id: Any) -> int | str:
    """The record model's ``id: Union[int, str]``: whatever ``int()`` reads becomes an int."""
    if isinstance(stored_id, bool):
        return str(stored_id)
    if isinstance(stored_id, int):
        return stored_id
    text = str(stored_id)
    try:
        return int(text)
    except ValueError:
        return text


def _annotated_labels(record: Mapping[str, Any]) -> list[str]:
    annotation = record.get("annotation") or {}
    return [str(label.get("class")) for label in annotation.get("labels") or []
            if isinstance(label, Mapping) and label.get("class") is not None]


def _predicted_labels(record: Mapping[str, Any]) -> list[str]:
    """Top label, or every label scored over 0.5 for multi-label records."""
    labels = [label for label in (record.get("prediction") or {}).get("labels") or []
              if isinstance(label, Mapping) and label.get("class") is not None]
    if not labels:
        return []
    if record.get("multi_label"):
        return [str(label["class"]) for label in labels if (label.get("score") or 0) > 0.5]
    return [str(max(labels, key=lambda label: label.get("score") or 0)["class"])]


def _scores(record: Mapping[str, Any]) -> list[float]:
    labels = (record.get("prediction") or {}).get("labels") or []
    scores = [float(label.get("score") or 0) for label in labels if isinstance(label, Mapping)]
    if not scores:
        return []
    return scores if record.get("multi_label") else [max(scores)]


def _predicted(record: Mapping[str, Any]) -> str | None:
    """``ok``/``ko``: whether prediction and annotation agree; None when either is missing."""
    if not record.get("annotation") or not record.get("prediction"):
        return None
    agree = set(_predicted_labels(record)) == set(_annotated_labels(record))
    return "ok" if agree else "ko"


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _public_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as ``/data`` serialises it: ``json(by_alias=True, exclude_none=True)``.

    exclude_none drops None fields of the record and of its nested models (prediction,
    annotation and their labels), but not None values inside free dicts like metadata.
    """
    out: dict[str, Any] = {}
    for key in ("id", "inputs", "prediction", "annotation", "multi_label", "explanation",
                "status", "metadata", "event_timestamp", "last_updated", "metrics",
                "search_keywords"):
        value = record.get(key)
        if value is None:
            continue
        if key == "id":
            value = _public_id(value)
        elif key in ("prediction", "annotation"):
            value = _drop_none(value)
        out[key] = copy.deepcopy(value)
    predicted = _predicted(record)
    if predicted is not None:
        out["predicted"] = predicted
    return out


# --------------------------------------------------------------------------- dates


_ES_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?)?)?)?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?"
)


def _tz(text: str | None) -> timezone:
    if not text or text == "Z":
        return _UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
    return timezone(sign * timedelta(minutes=minutes))


def _date_bounds_ns(text: str, now_ms: int) -> tuple[int, int]:
    """Earliest and latest instant (ns since epoch, UTC) that an ES date string names.

    Elasticsearch (strict_date_optional_time||epoch_millis) fills the missing parts of a date
    with their minimum, or with their maximum when rounding up: ``2022-10-01`` runs from
    00:00:00.000 to 23:59:59.999 that day. Dates without an offset are UTC.

    Raises:
        QueryError: not a date Elasticsearch would parse.
    """
    text = text.strip()
    if text == "now":
        return now_ms * _NS_PER_MS, now_ms * _NS_PER_MS
    match = _ES_DATE.fullmatch(text)
    if match is None:
        if text.isdigit():  # epoch_millis
            return int(text) * _NS_PER_MS, int(text) * _NS_PER_MS + _NS_PER_MS - 1
        raise QueryError(f"failed to parse date field [{text}]")
    part = match.groupdict()
    try:
        start = datetime(int(part["y"]), int(part["mo"] or 1), int(part["d"] or 1),
                         int(part["h"] or 0), int(part["mi"] or 0), int(part["s"] or 0),
                         tzinfo=_tz(part["tz"]))
    except ValueError as exc:
        raise QueryError(f"failed to parse date field [{text}]: {exc}") from None
    fraction = part["f"] or ""
    start_ns = (calendar.timegm(start.astimezone(_UTC).timetuple()) * 10**9
                + int(fraction.ljust(9, "0") or 0))
    if fraction:
        span = 10 ** (9 - len(fraction))
    elif part["s"]:
        span = 10**9
    elif part["mi"]:
        span = 60 * 10**9
    elif part["h"]:
        span = 3600 * 10**9
    elif part["d"]:
        span = 86400 * 10**9
    else:
        if part["mo"]:
            year, month = divmod(start.year * 12 + start.month, 12)  # the next month
            month += 1
        else:
            year, month = start.year + 1, 1
        end = start.replace(year=year, month=month)
        span = (calendar.timegm(end.astimezone(_UTC).timetuple())
                - calendar.timegm(start.astimezone(_UTC).timetuple())) * 10**9
    return start_ns, start_ns + span - 1


def _stored_date_ms(value: Any) -> int | None:
    """A stored date as ES indexes it: milliseconds since epoch, or None if unreadable."""
    if value is None:
        return None
    try:
        return _date_bounds_ns(str(value), 0)[0] // _NS_PER_MS
    except QueryError:
        return None


# --------------------------------------------------------------------------- query_string

_Predicate = Callable[[Mapping[str, Any]], bool]
_TOKEN = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    """A rough standard analyzer: lower-cased word characters."""
    return _TOKEN.findall(text.lower())


def _field_values(record: Mapping[str, Any], name: str) -> list[Any]:
    """The values an ES field holds for a record, per Rubrix's text-classification mapping."""
    annotation = record.get("annotation") or {}
    prediction = record.get("prediction") or {}
    if name == "id":
        return [str(record.get("id"))]
    if name == "status":
        return [record.get("status")]
    if name == "annotated_by":
        return [annotation["agent"]] if annotation.get("agent") else []
    if name == "predicted_by":
        return [prediction["agent"]] if prediction.get("agent") else []
    if name == "annotated_as":
        return _annotated_labels(record)
    if name == "predicted_as":
        return _predicted_labels(record)
    if name == "predicted":
        predicted = _predicted(record)
        return [predicted] if predicted else []
    if name == "score":
        return list(_scores(record))
    if name == "multi_label":
        return [bool(record.get("multi_label"))]
    if name in DATE_FIELDS:
        return [record[name]] if record.get(name) is not None else []
    if name in (DEFAULT_FIELD, "words"):
        values = []
        for value in (record.get("inputs") or {}).values():
            values.extend(value if isinstance(value, list) else [value])
        return [str(v) for v in values]
    for prefix, source in (("inputs.", "inputs"), ("metadata.", "metadata")):
        if name.startswith(prefix):
            value = (record.get(source) or {}).get(name[len(prefix):])
            if value is None:
                return []
            return list(value) if isinstance(value, list) else [value]
    return []  # an unmapped field matches nothing, as in ES


def _is_text(name: str) -> bool:
    return name in (DEFAULT_FIELD, "words") or name.startswith("inputs.")


def _as_number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise QueryError(f"failed to create query: For input string: \"{text}\" "
                         f"on field [{name}]") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass(frozen=True)
class _Word:
    text: str  # with escapes resolved
    pattern: str | None  # fnmatch pattern when unescaped * or ? appear


class _QueryStringParser:
    """Recursive descent over the query_string subset labelfix and rb.load use.

    Grammar (Lucene classic syntax, ``default_operator: AND``)::

        query   := or EOF
        or      := and (("OR" | "||") and)*
        and     := unary (("AND" | "&&")? unary)*
        unary   := ("NOT" | "!") unary | "-" primary | "+" primary | primary
        primary := "(" or ")" | '"' phrase '"' | range | field ":" value | word
        value   := "(" or ")" | '"' phrase '"' | range | (">=" | ">" | "<=" | "<") word | word
        range   := ("[" | "{") bound "TO" bound ("]" | "}")     bound "*" is open

    A bare word or phrase searches ``text`` (all inputs). Keyword fields (status,
    annotated_by, ...) match exactly and case-sensitively; dates compare at millisecond
    precision with Elasticsearch's rounding of partial dates.
    """

    def __init__(self, text: str, now_ms: int) -> None:
        self.text = text
        self.pos = 0
        self.now_ms = now_ms

    def parse(self) -> _Predicate:
        node = self._or(None)
        self._skip_ws()
        if self.pos < len(self.text):
            raise self._error(f'Encountered "{self.text[self.pos]}"')
        return node

    # ---- helpers

    def _error(self, reason: str) -> QueryError:
        return QueryError(f"Failed to parse query [{self.text}]: {reason} "
                          f"at column {self.pos + 1}")

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _at_operator(self, *words: str) -> str | None:
        for word in words:
            if not self.text.startswith(word, self.pos):
                continue
            end = self.pos + len(word)
            # Operators are whole upper-case words: "ORANGE" and "and" are plain terms.
            if word.isalpha() and end < len(self.text) and not (
                    self.text[end].isspace() or self.text[end] in '("'):
                continue
            return word
        return None

    def _expect(self, char: str) -> None:
        self._skip_ws()
        if self._peek() != char:
            found = self._peek() or "<EOF>"
            raise self._error(f'Encountered "{found}", expected "{char}"')
        self.pos += 1

    def _word(self) -> tuple[_Word, bool]:
        """Read a term up to whitespace, a parenthesis, a quote or an unescaped colon.

        Returns the word and whether it ended at a colon (then it names a field).
        """
        literal: list[str] = []
        pattern: list[str] = []
        wildcard = False
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char.isspace() or char in '()"':
                break
            if char == ":":
                self.pos += 1
                return _Word("".join(literal), None), True
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    raise self._error("Lexical error: escape at end of query")
                char = self.text[self.pos + 1]
                self.pos += 2
                literal.append(char)
                pattern.append(f"[{char}]" if char in "*?[" else char)
                continue
            self.pos += 1
            literal.append(char)
            if char in "*?":
                wildcard = True
                pattern.append(char)
            else:
                pattern.append("[[]" if char == "[" else char)
        return _Word("".join(literal), "".join(pattern) if wildcard else None), False

    def _quoted(self) -> str:
        self.pos += 1  # opening quote
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if char == '"':
                return "".join(chars)
            chars.append(char)
        raise self._error("Lexical error: unterminated quoted string")

    # ---- grammar

    def _or(self, field_name: str | None) -> _Predicate:
        parts = [self._and(field_name)]
        while True:
            self._skip_ws()
            operator = self._at_operator("OR", "||")
            if operator is None:
                break
            self.pos += len(operator)
            parts.append(self._and(field_name))
        if len(parts) == 1:
            return parts[0]
        return lambda record: any(part(record) for part in parts)

    def _and(self, field_name: str | None) -> _Predicate:
        parts = [self._unary(field_name)]
        while True:
            self._skip_ws()
            if self.pos >= len(self.text) or self._peek() == ")" or self._at_operator("OR", "||"):
                break
            operator = self._at_operator("AND", "&&")
            if operator is not None:
                self.pos += len(operator)
            parts.append(self._unary(field_name))  # no operator: default_operator AND
        if len(parts) == 1:
            return parts[0]
        return lambda record: all(part(record) for part in parts)

    def _unary(self, field_name: str | None) -> _Predicate:
        self._skip_ws()
        operator = self._at_operator("NOT", "!")
        if operator is not None:
            self.pos += len(operator)
            inner = self._unary(field_name)
            return lambda record: not inner(record)
        if self._peek() == "-":
            self.pos += 1
            inner = self._primary(field_name)
            return lambda record: not inner(record)
        if self._peek() == "+":
            self.pos += 1
        return self._primary(field_name)

    def _primary(self, field_name: str | None) -> _Predicate:
        self._skip_ws()
        char = self._peek()
        default = field_name or DEFAULT_FIELD
        if not char:
            raise self._error('Encountered "<EOF>"')
        if char == ")":
            raise self._error('Encountered ")"')
        if char == "(":
            self.pos += 1
            node = self._or(field_name)
            self._expect(")")
            return node
        if char == '"':
            return self._term(default, _Word(self._quoted(), None), phrase=True)
        if char in "[{":
            return self._range(default)
        operator = self._at_operator("AND", "OR", "&&", "||")
        if operator is not None:
            raise self._error(f'Encountered "{operator}"')
        word, is_field = self._word()
        if not is_field:
            if not word.text:
                raise self._error(f'Encountered "{char}"')
            return self._term(default, word)
        name = word.text
        if not name:
            raise self._error('Encountered ":"')
        return self._field_value(name)

    def _field_value(self, name: str) -> _Predicate:
        char = self._peek()
        if not char or char.isspace():
            raise self._error(f'Encountered "{"<EOF>" if not char else "<WHITESPACE>"}" '
                              f"after field {name}:")
        if char == "(":
            self.pos += 1
            node = self._or(name)
            self._expect(")")
            return node
        if char == '"':
            return self._term(name, _Word(self._quoted(), None), phrase=True)
        if char in "[{":
            return self._range(name)
        for operator in (">=", "<=", ">", "<"):
            if self.text.startswith(operator, self.pos):
                self.pos += len(operator)
                bound, is_field = self._word()
                if is_field or not bound.text:
                    raise self._error(f"Encountered a bad bound after {name}:{operator}")
                if operator[0] == ">":
                    return self._make_range(name, bound.text, None, operator == ">=", True)
                return self._make_range(name, None, bound.text, True, operator == "<=")
        word, is_field = self._word()
        if is_field:
            raise self._error('Encountered ":" (escape it, or quote the value)')
        if not word.text:
            raise self._error(f'Encountered "{char}"')
        return self._term(name, word)

    def _range(self, name: str) -> _Predicate:
        include_lower = self.text[self.pos] == "["
        start = self.pos + 1
        end = start
        while end < len(self.text) and self.text[end] not in "]}":
            end += 1
        if end >= len(self.text):
            self.pos = end
            raise self._error('Encountered "<EOF>" in a range')
        include_upper = self.text[end] == "]"
        inner = self.text[start:end]
        self.pos = end + 1
        parts = re.split(r"\s+TO\s+", inner.strip())
        if len(parts) != 2 or not all(parts):
            raise self._error(f"Bad range [{inner}]: expected [A TO B]")
        lower, upper = (part.strip().strip('"') for part in parts)
        return self._make_range(name, None if lower == "*" else lower,
                                None if upper == "*" else upper, include_lower, include_upper)

    # ---- leaves

    def _term(self, name: str, word: _Word, *, phrase: bool = False) -> _Predicate:
        value = word.text
        if name == "_exists_":
            return lambda record: bool(_field_values(record, value)) or record.get(value) not in (
                None, {}, [])
        if word.pattern == "*":
            return lambda record: bool(_field_values(record, name))
        if name in DATE_FIELDS:
            return self._make_range(name, value, value, True, True)
        if _is_text(name):
            return self._text_term(name, value, word.pattern, phrase)
        if name == "score":
            number = _as_number(value, name)
            return lambda record: any(v == number for v in _field_values(record, name))
        pattern = word.pattern

        def keyword(record: Mapping[str, Any]) -> bool:
            for stored in _field_values(record, name):
                if isinstance(stored, bool):
                    stored = "true" if stored else "false"
                number = _number(stored)
                if number is not None:  # numeric metadata: ES maps it as a number
                    try:
                        if float(value) == number:
                            return True
                    except ValueError:
                        pass
                    continue
                text = str(stored)
                if fnmatch.fnmatchcase(text, pattern) if pattern else text == value:
                    return True
            return False

        return keyword

    @staticmethod
    def _text_term(name: str, value: str, pattern: str | None, phrase: bool) -> _Predicate:
        if pattern is not None and not phrase:
            lowered = pattern.lower()
            return lambda record: any(
                fnmatch.fnmatchcase(token, lowered)
                for text in _field_values(record, name) for token in _tokens(text))
        wanted = _tokens(value)
        if not wanted:
            return lambda record: False  # analysed to nothing: ES matches no document

        def text_match(record: Mapping[str, Any]) -> bool:
            for text in _field_values(record, name):
                tokens = _tokens(text)
                for i in range(len(tokens) - len(wanted) + 1):
                    if tokens[i : i + len(wanted)] == wanted:
                        return True
            return False

        return text_match

    def _make_range(self, name: str, lower: str | None, upper: str | None,
                    include_lower: bool, include_upper: bool) -> _Predicate:
        def inside(value: Any, low: Any, high: Any) -> bool:
            if low is not None and (value < low or (value == low and not include_lower)):
                return False
            return not (high is not None
                        and (value > high or (value == high and not include_upper)))

        if name in DATE_FIELDS:
            # ES rounding: gte floors, gt rounds up, lte rounds up, lt floors; then to ms.
            low_ms = high_ms = None
            if lower is not None:
                floor, ceil = _date_bounds_ns(lower, self.now_ms)
                low_ms = (floor if include_lower else ceil) // _NS_PER_MS
            if upper is not None:
                floor, ceil = _date_bounds_ns(upper, self.now_ms)
                high_ms = (ceil if include_upper else floor) // _NS_PER_MS

            def date_range(record: Mapping[str, Any]) -> bool:
                for stored in _field_values(record, name):
                    ms = _stored_date_ms(stored)
                    if ms is None:
                        continue
                    if inside(ms, low_ms, high_ms):
                        return True
                return False

            return date_range

        numeric_field = name == "score"
        low_number = _as_number(lower, name) if numeric_field and lower is not None else None
        high_number = _as_number(upper, name) if numeric_field and upper is not None else None

        def plain_range(record: Mapping[str, Any]) -> bool:
            for stored in _field_values(record, name):
                number = _number(stored)
                if numeric_field or number is not None:
                    if number is None:
                        continue
                    try:
                        low = low_number if numeric_field else (
                            float(lower) if lower is not None else None)
                        high = high_number if numeric_field else (
                            float(upper) if upper is not None else None)
                    except ValueError:
                        continue
                    if inside(number, low, high):
                        return True
                elif _is_text(name):
                    low_text = lower.lower() if lower is not None else None
                    high_text = upper.lower() if upper is not None else None
                    if any(inside(token, low_text, high_text) for token in _tokens(str(stored))):
                        return True
                elif inside(str(stored), lower, upper):
                    return True
            return False

        return plain_range


def compile_query_text(text: str | None, *, now_ms: int = 0) -> _Predicate:
    """Turn ``query_text`` into a record predicate; empty text matches every record.

    Raises:
        QueryError: Elasticsearch would fail to parse the query.
    """
    if text is None or not text.strip():
        return lambda record: True
    return _QueryStringParser(text, now_ms).parse()


# --------------------------------------------------------------------------- the server


class _Handler(LoopbackHandler):
    """RubrixServer's requests (the last query value wins) and answers, streams chunked."""

    response = _Response
    bad_json = b'{"detail": {"code": "rubrix.api.err'

    def _request(self, split: SplitResult, body: bytes) -> _Request:
        return _Request(
            method=self.command, target=self.path, path=unquote(split.path),
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=self.headers, body=body,
        )

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.chunks is None:
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in response.chunks:
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: str  # RubrixServer method name
    body: str = "none"  # none | optional | required
    auth: bool = True


_NAME = r"(?P<name>[^/]+)"
_ROUTES = (
    _Route("GET", re.compile(r"/api/_info"), "_info", auth=False),
    _Route("GET", re.compile(r"/api/me"), "_me"),
    _Route("POST", re.compile(rf"/api/datasets/{_NAME}/{TASK}:bulk"), "_bulk", "required"),
    _Route("POST", re.compile(rf"/api/datasets/{_NAME}/{TASK}/data"), "_data", "optional"),
    _Route("DELETE", re.compile(rf"/api/datasets/{_NAME}/data"), "_delete_records", "optional"),
    _Route("GET", re.compile(rf"/api/datasets/{_NAME}"), "_get_dataset"),
    _Route("DELETE", re.compile(rf"/api/datasets/{_NAME}"), "_delete_dataset"),
)


class RubrixServer(LoopbackServer):
    """A Rubrix 0.18 (``flavor="rubrix"``) or Argilla 1.0 (``"argilla1"``) server in memory.

    Args:
        api_key: the one key the user has.
        workspaces: the user's workspaces, as ``/api/me`` lists them. The user's own
            workspace (``username``) is always allowed and is used when a request names none.
        flavor: ``"rubrix"`` reads ``X-Rubrix-*`` headers and answers ``_info`` with
            ``rubrix_version``; ``"argilla1"`` reads ``X-Argilla-*`` and answers ``version``.
        username: the user the key belongs to.
        clock: returns now (UTC if naive); tests can pass a fake one to control
            ``last_updated``. Defaults to the wall clock.
        stream_chunk_size: records per chunk of the ``/data`` stream.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    handler = _Handler

    def __init__(
        self,
        api_key: str = "rubrix.apikey",
        workspaces: Sequence[str] = ("rubrix",),
        flavor: str = "rubrix",
        *,
        username: str = "rubrix",
        clock: Callable[[], datetime] | None = None,
        stream_chunk_size: int = STREAM_CHUNK_SIZE,
    ) -> None:
        if flavor not in _FLAVORS:
            raise ValueError(f"flavor {flavor!r}: choose one of {sorted(_FLAVORS)}")
        if stream_chunk_size < 1:
            raise ValueError("stream_chunk_size must be at least 1")
        super().__init__()
        self.api_key = api_key
        self.workspaces: tuple[str, ...] = tuple(workspaces)
        self.flavor = flavor
        self.username = username
        self.stream_chunk_size = stream_chunk_size
        self._flavor = _FLAVORS[flavor]
        self._clock = clock or (lambda: datetime.now(_UTC))
        self._datasets: dict[tuple[str, str], _Dataset] = {}
        self._last_ms = 0

    # ---- connecting

    @property
    def key_header(self) -> str:
        """``X-Rubrix-Api-Key`` or, for argilla1, ``X-Argilla-Api-Key``."""
        return self._flavor.key_header

    @property
    def workspace_header(self) -> str:
        """``X-Rubrix-Workspace`` or, for argilla1, ``X-Argilla-Workspace``."""
        return self._flavor.workspace_header

    # ---- test hooks

    def records(self, dataset: str, workspace: str | None = None) -> list[dict[str, Any]]:
        """Copies of a dataset's records as stored, sorted by id as strings.

        Raises:
            KeyError: no such dataset in that workspace.
        """
        with self._lock:
            found = self._find(dataset, workspace)
            return [copy.deepcopy(found.records[key]) for key in sorted(found.records)]

    def datasets(self, workspace: str | None = None) -> list[str]:
        """Names of the datasets in a workspace (the user's own one by default), sorted."""
        owner = workspace or self.username
        with self._lock:
            return sorted(name for ws, name in self._datasets if ws == owner)

    def seed(self, dataset: str, records: Sequence[Mapping[str, Any]], *,
             workspace: str | None = None) -> None:
        """Store records as one bulk call would, without HTTP (for arranging a test).

        Raises:
            ValueError: a record would fail the bulk endpoint's validation.
        """
        prepared = []
        for index, raw in enumerate(records):
            record, errors = self._prepare_record(raw, index)
            if errors:
                raise ValueError(f"record {index} is invalid: {errors}")
            prepared.append(record)
        with self._lock:
            stamp = self._stamp(strictly_later=False)
            self._upsert(dataset, workspace or self.username, prepared, stamp, {}, {})

    def annotate(self, dataset: str, record_id: int | str, *, label: str | Sequence[str] | None,
                 agent: str, status: str = "Validated", workspace: str | None = None) -> str:
        """Play the annotator: set a record's annotation and status, bump ``last_updated``.

        ``label=None`` clears the annotation (as a discard does). The new ``last_updated``
        is strictly later than every earlier one, even when the clock has not moved.

        Returns:
            The record's new ``last_updated``.

        Raises:
            KeyError: no such dataset or record.
            ValueError: ``status`` is not a Rubrix status.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r}: choose one of {STATUSES}")
        labels = [label] if isinstance(label, str) else list(label or [])
        with self._lock:
            found = self._find(dataset, workspace)
            record = found.records.get(str(record_id))
            if record is None:
                raise KeyError(f"no record {record_id!r} in dataset {dataset!r}")
            stamp = self._stamp(strictly_later=True)
            record["annotation"] = ({"agent": agent,
                                     "labels": [{"class": name, "score": 1.0} for name in labels]}
                                    if labels else None)
            record["status"] = status
            record["last_updated"] = stamp
            found.last_updated = stamp
            return stamp

    def _stamp(self, *, strictly_later: bool) -> str:
        """Now, never earlier than the last stamp (and later than it when asked). Hold the lock."""
        floor = self._last_ms + 1 if strictly_later else self._last_ms
        self._last_ms = max(_now_ms(self._clock), floor)
        return _format_ms(self._last_ms)

    def _error(self, status: int, name: str, params: Mapping[str, Any]) -> _HttpError:
        """Rubrix's own error body: ``{"detail": {"code": "rubrix.api.errors::Name", ...}}``."""
        return _HttpError(status, {"detail": {"code": f"{self._flavor.error_prefix}::{name}",
                                              "params": dict(params)}})

    def _invalid(self, errors: list[dict[str, Any]], *, model: str = "Request") -> _HttpError:
        return self._error(422, "ValidationError", {"model": model, "errors": errors})

    def _find(self, name: str, workspace: str | None) -> _Dataset:
        found = self._datasets.get((workspace or self.username, name))
        if found is None:
            raise KeyError(f"no dataset {name!r} in workspace {workspace or self.username!r}")
        return found

    def _handle(self, request: _Request) -> _Response:
        try:
            route, match = self._route(request)
            body = None
            if route.body != "none" and request.body.strip():
                # FastAPI decodes the JSON before any dependency runs, so this comes before auth.
                body = self._decode(request.body)
            if route.auth:
                self._authenticate(request)
            if route.body == "required" and body is None:
                raise self._invalid([{"loc": ["body"], "msg": "field required",
                                      "type": "value_error.missing"}])
            handler = getattr(self, route.handler)
            return handler(request, unquote(match.groupdict().get("name") or ""), body)
        except _HttpError as error:
            return _Response(error.status, _json_bytes(error.body), error.headers)

    def _route(self, request: _Request) -> tuple[_Route, re.Match[str]]:
        allowed = False
        # Match on the raw path so that a %2F in a name stays inside the name.
        path = urlsplit(request.target).path
        for route in _ROUTES:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method == request.method:
                return route, match
            allowed = True
        if allowed:
            raise _HttpError(405, {"detail": "Method Not Allowed"})
        raise _HttpError(404, {"detail": "Not Found"})

    def _decode(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if isinstance(exc, UnicodeDecodeError):
                raise self._invalid([{"loc": ["body", 0], "msg": str(exc),
                                      "type": "value_error.jsondecode"}]) from None
            raise self._invalid([{
                "loc": ["body", exc.pos], "msg": str(exc), "type": "value_error.jsondecode",
                "ctx": {"msg": exc.msg, "doc": exc.doc, "pos": exc.pos,
                        "lineno": exc.lineno, "colno": exc.colno},
            }]) from None

    def _authenticate(self, request: _Request) -> None:
        # Only the API-key header counts: Rubrix reads Authorization as a login token.
        key = request.headers.get(self._flavor.key_header)
        if key is None or key != self.api_key:
            raise self._error(401, "UnauthorizedError",
                              {"detail": "Could not validate credentials"})

    def _workspace(self, request: _Request) -> str:
        """The query param wins over the header; neither means the user's own workspace."""
        name = request.query.get("workspace") or request.headers.get(self._flavor.workspace_header)
        if not name or name == self.username:
            return self.username
        if name not in self.workspaces:
            raise self._error(403, "ForbiddenOperationError",
                              {"detail": f"Missing or protected workspace {name}"})
        return name

    def _not_found(self, name: str) -> _HttpError:
        return self._error(404, "EntityNotFoundError", {"name": name, "type": "ServiceDataset"})

    # ---- endpoints

    def _info(self, request: _Request, name: str, body: Any) -> _Response:
        return _Response(200, _json_bytes(dict(self._flavor.info)))

    def _me(self, request: _Request, name: str, body: Any) -> _Response:
        # email and full_name are None for an API-key user and the response drops nulls.
        return _Response(200, _json_bytes({"username": self.username, "disabled": False,
                                           "workspaces": list(self.workspaces)}))

    def _get_dataset(self, request: _Request, name: str, body: Any) -> _Response:
        owner = self._workspace(request)
        with self._lock:
            found = self._datasets.get((owner, name))
            if found is None:
                raise self._not_found(name)
            return _Response(200, _json_bytes(found.public()))

    def _delete_dataset(self, request: _Request, name: str, body: Any) -> _Response:
        owner = self._workspace(request)
        with self._lock:
            self._datasets.pop((owner, name), None)
        return _Response(200, _json_bytes(None))  # the handler returns None: body "null"

    def _bulk(self, request: _Request, name: str, body: Any) -> _Response:
        if not isinstance(body, Mapping):
            raise self._invalid([{"loc": ["body"], "msg": "value is not a valid dict",
                                  "type": "type_error.dict"}])
        raw_records = body.get("records")
        errors: list[dict[str, Any]] = []
        prepared: list[dict[str, Any]] = []
        if raw_records is None:
            errors.append({"loc": ["body", "records"], "msg": "field required",
                           "type": "value_error.missing"})
        elif not isinstance(raw_records, list):
            errors.append({"loc": ["body", "records"], "msg": "value is not a valid list",
                           "type": "type_error.list"})
        else:
            for index, raw in enumerate(raw_records):
                record, record_errors = self._prepare_record(raw, index)
                errors.extend(record_errors)
                prepared.append(record)
        for key in ("tags", "metadata"):
            if body.get(key) is not None and not isinstance(body.get(key), Mapping):
                errors.append({"loc": ["body", key], "msg": "value is not a valid dict",
                               "type": "type_error.dict"})
        if errors:
            raise self._invalid(errors)
        owner = self._workspace(request)
        with self._lock:
            if (owner, name) not in self._datasets and not _DATASET_NAME.match(name):
                # The handler builds CreateDatasetRequest(name=...) only for a new dataset.
                raise self._invalid([{
                    "loc": ["name"], "msg": f'string does not match regex "{DATASET_NAME_PATTERN}"',
                    "type": "value_error.str.regex", "ctx": {"pattern": DATASET_NAME_PATTERN},
                }], model="CreateDatasetRequest")
            stamp = self._stamp(strictly_later=False)  # one last_updated per bulk call
            self._upsert(name, owner, prepared, stamp, body.get("tags") or {},
                         body.get("metadata") or {})
        return _Response(200, _json_bytes({"dataset": name, "processed": len(prepared),
                                           "failed": 0}))

    def _prepare_record(self, raw: Any, index: int) -> tuple[dict[str, Any], list[dict]]:
        """Validate one bulk record and shape it as the server stores it."""
        loc = ["body", "records", index]
        if not isinstance(raw, Mapping):
            return {}, [{"loc": loc, "msg": "value is not a valid dict", "type": "type_error.dict"}]
        errors: list[dict[str, Any]] = []
        inputs = raw.get("inputs")
        if inputs is None and raw.get("text") is not None:
            inputs = raw["text"]
        if isinstance(inputs, str):
            inputs = {"text": inputs}
        if inputs is None:
            errors.append({"loc": [*loc, "inputs"], "msg": "field required",
                           "type": "value_error.missing"})
        elif not isinstance(inputs, Mapping):
            errors.append({"loc": [*loc, "inputs"], "msg": "value is not a valid dict",
                           "type": "type_error.dict"})
        status = raw.get("status")
        if status is not None and status not in STATUSES:
            permitted = ", ".join(f"'{s}'" for s in STATUSES)
            errors.append({"loc": [*loc, "status"], "msg": "value is not a valid enumeration "
                           f"member; permitted: {permitted}",
                           "type": "type_error.enum", "ctx": {"enum_values": list(STATUSES)}})
        for key in ("prediction", "annotation", "metadata", "metrics"):
            if raw.get(key) is not None and not isinstance(raw[key], Mapping):
                errors.append({"loc": [*loc, key], "msg": "value is not a valid dict",
                               "type": "type_error.dict"})
        record_id = raw.get("id")
        if record_id is not None and not isinstance(record_id, (int, str)):
            errors.append({"loc": [*loc, "id"], "msg": "str type expected",
                           "type": "type_error.str"})
        if errors:
            return {}, errors
        metadata = _limit_length(_flatten(raw.get("metadata") or {}))
        return {
            # No id: the server makes a uuid4, as Rubrix's record DAO does.
            "id": record_id if record_id is not None else str(uuid.uuid4()),
            "inputs": copy.deepcopy(dict(inputs or {})),
            "prediction": copy.deepcopy(raw.get("prediction")),
            "annotation": copy.deepcopy(raw.get("annotation")),
            "multi_label": bool(raw.get("multi_label") or False),
            "explanation": copy.deepcopy(raw.get("explanation")),
            # The client, not the server, turns "annotated" into Validated.
            "status": status or "Default",
            "metadata": metadata,
            "event_timestamp": raw.get("event_timestamp"),
            "metrics": copy.deepcopy(raw.get("metrics") or {}),
            "search_keywords": copy.deepcopy(raw.get("search_keywords")),
            "last_updated": None,
        }, []

    def _upsert(self, name: str, owner: str, records: list[dict[str, Any]], stamp: str,
                tags: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        """Create the dataset if needed; index records by id, same id overwrites. Hold the lock."""
        found = self._datasets.get((owner, name))
        if found is None:
            found = _Dataset(name=name, owner=owner, created_at=stamp, last_updated=stamp,
                             tags={}, metadata={})
            self._datasets[(owner, name)] = found
        found.tags.update(tags)
        found.metadata.update(metadata)
        found.last_updated = stamp
        for record in records:
            record["last_updated"] = stamp
            found.records[str(record["id"])] = record

    def _limit_param(self, request: _Request) -> int | None:
        raw = request.query.get("limit")
        if raw is None:
            return None
        try:
            limit = int(raw)
        except ValueError:
            raise self._invalid([{"loc": ["query", "limit"], "msg": "value is not a valid integer",
                                  "type": "type_error.integer"}]) from None
        if limit <= 0:
            raise self._invalid([{"loc": ["query", "limit"],
                                  "msg": "ensure this value is greater than 0",
                                  "type": "value_error.number.not_gt", "ctx": {"limit_value": 0}}])
        return limit

    def _query_filters(self, query: Any) -> list[_Predicate]:
        """The structured TextClassificationQuery filters (query_text is compiled apart)."""
        if query is None:
            return []
        if not isinstance(query, Mapping):
            raise self._invalid([{"loc": ["body"], "msg": "value is not a valid dict",
                                  "type": "type_error.dict"}])
        errors = []
        for key in ("ids", "status", "annotated_by", "predicted_by", "annotated_as",
                    "predicted_as", "uncovered_by_rules"):
            if query.get(key) is not None and not isinstance(query[key], list):
                errors.append({"loc": ["body", key], "msg": "value is not a valid list",
                               "type": "type_error.list"})
        statuses = query.get("status") if isinstance(query.get("status"), list) else []
        for index, status in enumerate(statuses):
            if status not in STATUSES:
                errors.append({"loc": ["body", "status", index],
                               "msg": "value is not a valid enumeration member",
                               "type": "type_error.enum", "ctx": {"enum_values": list(STATUSES)}})
        if query.get("query_text") is not None and not isinstance(query["query_text"], str):
            errors.append({"loc": ["body", "query_text"], "msg": "str type expected",
                           "type": "type_error.str"})
        if errors:
            raise self._invalid(errors)

        filters: list[_Predicate] = []
        if query.get("ids"):
            wanted_ids = {str(i) for i in query["ids"]}
            filters.append(lambda r: str(r["id"]) in wanted_ids)
        for key in ("status", "annotated_by", "predicted_by", "annotated_as", "predicted_as"):
            if query.get(key):
                wanted = {str(v) for v in query[key]}
                filters.append(lambda r, key=key, wanted=wanted: any(
                    str(v) in wanted for v in _field_values(r, key)))
        if query.get("predicted"):
            predicted = query["predicted"]
            filters.append(lambda r: _predicted(r) == predicted)
        for key, values in (query.get("metadata") or {}).items():
            wanted = {str(v) for v in (values if isinstance(values, list) else [values])}
            filters.append(lambda r, key=key, wanted=wanted: any(
                str(v) in wanted for v in _field_values(r, f"metadata.{key}")))
        score = query.get("score")
        if isinstance(score, Mapping):
            low, high = score.get("from"), score.get("to")
            filters.append(lambda r: any(
                (low is None or s >= low) and (high is None or s <= high) for s in _scores(r)))
        return filters

    def _matching(self, request: _Request, name: str, query: Any) -> tuple[str, list[dict]]:
        """Validate a query and return the dataset's records that match it, sorted by id."""
        filters = self._query_filters(query)
        owner = self._workspace(request)
        text = query.get("query_text") if isinstance(query, Mapping) else None
        with self._lock:
            found = self._datasets.get((owner, name))
            if found is None:
                raise self._not_found(name)
            snapshot = [copy.deepcopy(found.records[key]) for key in sorted(found.records)]
            now_ms = _now_ms(self._clock)
        predicate = compile_query_text(text, now_ms=now_ms)  # may raise QueryError
        return owner, [r for r in snapshot if predicate(r) and all(f(r) for f in filters)]

    def _data(self, request: _Request, name: str, body: Any) -> _Response:
        limit = self._limit_param(request)
        id_from = request.query.get("id_from")
        try:
            _, matched = self._matching(request, name, body)
        except QueryError as exc:
            # ES runs the query lazily inside the stream, after the 200 has gone out.
            error = {"detail": {"code": f"{self._flavor.error_prefix}::InvalidTextSearchError",
                                "params": {"message": str(exc)}}}
            return _Response(200, chunks=[_json_bytes(error)])
        if id_from is not None:
            matched = [r for r in matched if str(r["id"]) > id_from]  # search_after on id
        if limit is not None:
            matched = matched[:limit]
        return _Response(200, chunks=self._ndjson(matched))

    def _ndjson(self, records: list[dict[str, Any]]) -> Iterator[bytes]:
        for start in range(0, len(records), self.stream_chunk_size):
            batch = records[start : start + self.stream_chunk_size]
            yield ("\n".join(json.dumps(_public_record(r)) for r in batch) + "\n").encode()

    def _delete_records(self, request: _Request, name: str, body: Any) -> _Response:
        discard = (request.query.get("mark_as_discarded") or "false").lower() in ("true", "1")
        try:
            owner, matched = self._matching(request, name, body)
        except QueryError as exc:
            raise self._error(400, "InvalidTextSearchError", {"message": str(exc)}) from None
        with self._lock:
            found = self._datasets.get((owner, name))
            if found is None:
                raise self._not_found(name)
            stamp = self._stamp(strictly_later=False)
            for record in matched:
                key = str(record["id"])
                if key not in found.records:
                    continue
                if discard:
                    found.records[key]["status"] = "Discarded"
                    found.records[key]["last_updated"] = stamp
                else:
                    del found.records[key]
        return _Response(200, _json_bytes({"matched": len(matched), "processed": len(matched)}))
