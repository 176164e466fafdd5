"""One HTTP layer for every review server: timeouts, retries with backoff, auth, clear errors.

Retries (tenacity) cover connection failures, timeouts, 429 (honouring Retry-After), 5xx and
bodies that are not the JSON they claim to be. Errors name the server and the call, never the
API key: headers are not part of any message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from labelfix.errors import UsageError, WorkError

log = logging.getLogger("labelfix.http")
RETRY_STATUSES = {429, 500, 502, 503, 504}
# Query parameters: a mapping, or pairs where a name repeats (include=a&include=b).
Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None


class BackendError(WorkError):
    """A review server failed or refused a call (exit 1)."""


class _Retryable(Exception):
    """A failure worth another try; carries the message to show if tries run out."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class HttpSettings:
    """Network behaviour; each can be set from the environment for slow or flaky links."""

    timeout: float = 30.0
    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 20.0
    verify: bool = True

    @classmethod
    def from_env(cls, *, insecure: bool = False) -> HttpSettings:
        """Read LABELFIX_HTTP_TIMEOUT, LABELFIX_HTTP_ATTEMPTS and LABELFIX_HTTP_BACKOFF.

        Raises:
            UsageError: a value is not a positive number.
        """

        def number(name: str, default: float) -> float:
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"{name}={raw!r} is not a number") from None
            if value < 0:
                raise UsageError(f"{name}={raw!r} must not be negative")
            return value

        return cls(
            timeout=number("LABELFIX_HTTP_TIMEOUT", cls.timeout),
            attempts=max(1, int(number("LABELFIX_HTTP_ATTEMPTS", cls.attempts))),
            backoff=number("LABELFIX_HTTP_BACKOFF", cls.backoff),
            verify=not insecure,
        )


class HttpClient:
    """A JSON client for one server, e.g. ``HttpClient("rubrix", url, headers={...})``."""

    def __init__(
        self,
        server: str,
        base_url: str,
        *,
        headers: Mapping[str, str],
        settings: HttpSettings | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"{server} URL {base_url!r} must start with http:// or https://")
        self.server = server
        self.base_url = base_url.rstrip("/")
        self.settings = settings or HttpSettings()
        self._client = httpx.Client(
            base_url=self.base_url, headers=dict(headers), timeout=self.settings.timeout,
            verify=self.settings.verify, follow_redirects=True,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self, method: str, path: str) -> str:
        return f"{self.server} at {self.base_url}: {method} {path.split('?')[0]}"

    def _retrying(self, method: str, path: str) -> Any:
        from tenacity import (
            RetryCallState,
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        backoff = wait_exponential_jitter(
            initial=self.settings.backoff, max=self.settings.max_backoff,
            jitter=self.settings.backoff,
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                delay = min(exc.retry_after, self.settings.max_backoff)
            else:
                delay = float(backoff(state))
            log.info("%s failed (%s); attempt %d of %d in %.1f s", self._where(method, path),
                     exc, state.attempt_number + 1, self.settings.attempts, delay)
            return delay

        def give_up(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            raise BackendError(
                f"{self._where(method, path)} failed after {state.attempt_number} attempts: {exc}"
            )

        return Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self.settings.attempts),
            wait=wait, retry_error_callback=give_up, reraise=False,
        )

    def request_json(self, method: str, path: str, *, json_body: Any = None,
                     params: Params = None) -> Any:
        """Send a request and return its JSON body, retrying what is worth retrying.

        Raises:
            BackendError: the server refused the call, or kept failing.
        """
        for attempt in self._retrying(method, path):
            with attempt:
                response = self._send(method, path, json_body=json_body, params=params)
                try:
                    return response.json() if response.content else None
                except ValueError:
                    raise _Retryable(
                        f"answered {response.status_code} with a body that is not JSON: "
                        f"{_snippet(response.text)}"
                    ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def stream_ndjson(self, method: str, path: str, *, json_body: Any = None,
                      params: Params = None) -> list[dict[str, Any]]:
        """POST/GET a newline-delimited JSON stream and return its objects (retried whole).

        Raises:
            BackendError: the server refused the call, kept failing, or reported an error
                inside the stream.
        """
        for attempt in self._retrying(method, path):
            with attempt:
                with self._stream(method, path, json_body=json_body, params=params) as response:
                    items = []
                    try:
                        for line in response.iter_lines():
                            if line.strip():
                                items.append(json.loads(line))
                    except (httpx.TransportError, ValueError) as exc:
                        raise _Retryable(f"stream broke off: {_describe_exc(exc)}") from None
                if items and set(items[-1]) == {"detail"}:
                    raise BackendError(f"{self._where(method, path)} reported an error in its "
                                       f"stream: {_detail(items[-1])}")
                return items
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, path: str, *, json_body: Any,
              params: Params) -> httpx.Response:
        try:
            response = self._client.request(method, path, json=json_body, params=params)
        except httpx.TransportError as exc:
            raise _Retryable(_describe_exc(exc)) from None
        self._check(response, method, path)
        return response

    @contextmanager
    def _stream(self, method: str, path: str, *, json_body: Any,
                params: Params) -> Iterator[httpx.Response]:
        try:
            with self._client.stream(method, path, json=json_body, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                self._check(response, method, path)
                yield response
        except httpx.TransportError as exc:
            raise _Retryable(_describe_exc(exc)) from None

    def _check(self, response: httpx.Response, method: str, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        body = _snippet(response.text)
        if status in RETRY_STATUSES:
            raise _Retryable(f"answered {status} {body}", retry_after=_retry_after(response))
        if status in (401, 403):
            raise BackendError(f"{self._where(method, path)} answered {status}: {body}; check "
                               "the API key and workspace in the environment")
        raise BackendError(f"{self._where(method, path)} answered {status}: {body}")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the exponential backoff is a fine stand-in


def _describe_exc(exc: BaseException) -> str:
    kind = {
        httpx.ConnectError: "cannot connect",
        httpx.ConnectTimeout: "connection timed out",
        httpx.ReadTimeout: "no answer within the timeout",
        httpx.RemoteProtocolError: "the connection was closed mid-answer",
    }.get(type(exc), type(exc).__name__)
    text = str(exc).strip()
    return f"{kind} ({text})" if text else kind


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _detail(body: Mapping[str, Any]) -> str:
    return _snippet(json.dumps(body.get("detail")))
