"""What the Rubrix and Argilla test servers share: real HTTP on 127.0.0.1, a request log,
connection tracking for a clean stop, and deterministic fault injection.

A server subclasses :class:`LoopbackServer` (and calls its ``__init__``), names its request
handler (a :class:`LoopbackHandler` subclass that builds the server's request objects and
writes its responses) and answers requests in ``_handle``.
"""

from __future__ import annotations

import http
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    from typing_extensions import Self

FAULT_MODES = ("status", "reset", "slow", "bad_json")


@dataclass(frozen=True)
class Fault:
    every: int
    mode: str
    status: int
    delay: float


def json_bytes(content: Any) -> bytes:
    """Render like Starlette's JSONResponse: compact, UTF-8."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def fault_body(status: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an injected ``status`` answer."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:  # a status code with no standard name
        phrase = f"Status {status}"
    headers = {"Retry-After": "0"} if status == 429 else {}
    return json_bytes({"detail": f"{phrase} (injected fault)"}), headers


class LoopbackServer:
    """Serving, the request log and fault injection of an in-memory API server."""

    handler: ClassVar[type[LoopbackHandler]]

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.injected_faults = 0
        self._lock = threading.RLock()
        self._fault: Fault | None = None
        self._fault_counter = 0
        self._connections: set[socket.socket] = set()
        self._httpd: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handle(self, request: Any) -> Any:
        raise NotImplementedError

    # ---- lifecycle

    def start(self) -> Self:
        """Listen on 127.0.0.1 at a free port and serve from a background thread."""
        if self._httpd is not None:
            return self
        httpd = LoopbackHTTPServer(("127.0.0.1", 0), self.handler)
        httpd.double = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (clients see them closed)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not running: use it as a context "
                               "manager")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    # ---- test hooks

    def fail_every(self, n: int, status: int = 500, *, mode: str = "status",
                   delay: float = 2.0) -> None:
        """Make every ``n``-th request from now on fail; ``n=0`` turns faults off.

        Modes: ``"status"`` answers ``status`` (429 comes with ``Retry-After: 0``),
        ``"reset"`` drops the connection without a response, ``"slow"`` waits ``delay``
        seconds and then answers normally, ``"bad_json"`` answers 200 with a cut-off JSON
        body. Requests answered by a fault (other than slow) change nothing on the server.
        The count is deterministic and covers every request, unauthenticated ones included.
        """
        if n < 0:
            raise ValueError("n must be 0 (off) or positive")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode {mode!r}: choose one of {FAULT_MODES}")
        if mode == "status" and not 400 <= status <= 599:
            raise ValueError(f"status {status}: an injected fault must be 4xx or 5xx")
        with self._lock:
            self._fault = Fault(n, mode, status, delay) if n else None
            self._fault_counter = 0

    # ---- internals used by the handler

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _log(self, method: str, target: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, target, headers))

    def _draw_fault(self) -> Fault | None:
        with self._lock:
            if self._fault is None:
                return None
            self._fault_counter += 1
            if self._fault_counter % self._fault.every:
                return None
            self.injected_faults += 1
            return self._fault


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its double and keeps client hang-ups quiet."""

    daemon_threads = True
    double: LoopbackServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away (or a fault test reset it): not our failure
        super().handle_error(request, client_address)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Turns HTTP/1.1 requests into the double's ``_handle`` calls and writes the answers.

    Subclasses set ``response`` (the server's response type, built as ``(status, body,
    headers)``) and ``bad_json`` (a cut-off body in the server's own JSON shape), and define
    ``_request`` and ``_send``.
    """

    protocol_version = "HTTP/1.1"  # keep-alive (and chunked streams), like uvicorn
    server: LoopbackHTTPServer
    response: ClassVar[Callable[..., Any]]
    bad_json: ClassVar[bytes]

    def _request(self, split: SplitResult, body: bytes) -> Any:
        raise NotImplementedError

    def _send(self, response: Any) -> None:
        raise NotImplementedError

    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest output stays readable; server.requests has the log

    def setup(self) -> None:
        super().setup()
        # Headers, body and stream chunks are separate writes: without this, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.double._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        double = self.server.double
        body = self._read_body()
        double._log(self.command, self.path, dict(self.headers.items()))
        fault = double._draw_fault()
        if fault is not None:
            if fault.mode == "reset":
                self._reset()
                return
            if fault.mode == "slow":
                time.sleep(fault.delay)
            elif fault.mode == "bad_json":
                # Cut mid-value: what a proxy hiccup or a dying worker leaves behind.
                self._send(self.response(200, self.bad_json))
                return
            else:
                self._send(self.response(fault.status, *fault_body(fault.status)))
                return
        request = self._request(urlsplit(self.path), body)
        try:
            response = double._handle(request)
        except Exception as exc:  # a bug in the double must fail the test, not hang it
            response = self.response(500, json_bytes({"detail": {
                "code": "builtins." + type(exc).__name__, "params": {"message": str(exc)}}}))
        self._send(response)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST and no response at all."""
        self.close_connection = True
        try:
            # Linger 0 turns close() into a reset instead of an orderly FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.rfile.close()  # drops the makefile reference so close() really closes
        self.connection.close()
