"""The JSON-over-HTTP server under the provider fakes: 127.0.0.1, ephemeral port, own thread.

    server = JsonServer("fake-x", answer)   # answer(method, path, headers, body) -> Answer | None
    server = JsonServer("fake-x", answer, tls=context)   # HTTPS, with this server-side ssl.SSLContext
    server.start()
    server.url                # http://127.0.0.1:<port>
    server.port
    server.request_count      # requests that reached `answer`
    server.connection_count   # TCP connections accepted (shows connection reuse)
    server.stop()             # closes the port and open connections: connection refused

    server.hold_answers()     # a slow provider: each request is answered (a message is
                              # recorded) but the answer is held until release() or stop()
    server.drop_answers()     # answered, then the connection is cut: the client never hears
    server.release()          # send the held answers, and answer at once from now on
    server.held_count         # answers that were held
    server.answer_count       # answers written to a client

Connections are HTTP/1.1 keep-alive. An `answer` of None sends nothing and
closes the connection; an `Answer(..., hold=True)` is held like hold_answers()
holds one, an `Answer(..., drop=True)` is dropped; a 204 or 304 has no body.
A method not in `methods` gets http.server's own 501.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["HOLD_LIMIT", "Answer", "JsonFake", "JsonServer", "Respond"]

HOLD_LIMIT = 30.0  # seconds an answer is held at most, so no test thread leaks
_NO_BODY = frozenset({204, 304})


@dataclass
class Answer:
    """One JSON response."""

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # held until release() or stop(), as under hold_answers()
    drop: bool = False  # the connection is cut instead


Respond = Callable[[str, str, Message, bytes], Answer | None]  # (method, path, headers, body)


class JsonServer:
    """A ThreadingHTTPServer on 127.0.0.1 that answers JSON and can cut its open connections."""

    def __init__(
        self,
        name: str,
        answer: Respond,
        *,
        methods: Collection[str] = ("POST",),
        content_type: str = "application/json",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answer = answer
        self.methods = frozenset(methods)
        self.content_type = content_type
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connection_count = 0
        self._request_count = 0
        self._held_count = 0
        self._answer_count = 0
        self._mode = "answer"  # or "hold" or "drop"
        self._released = threading.Event()
        self._httpd = _Httpd(self)
        self.scheme = "http" if tls is None else "https"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # so stop() returns quickly
            name=name,
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def connection_count(self) -> int:
        with self._lock:
            return self._connection_count

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._request_count

    @property
    def held_count(self) -> int:
        with self._lock:
            return self._held_count

    @property
    def answer_count(self) -> int:
        with self._lock:
            return self._answer_count

    def start(self) -> None:
        self._thread.start()

    def hold_answers(self) -> None:
        with self._lock:
            self._mode = "hold"
            self._released.clear()

    def drop_answers(self) -> None:
        with self._lock:
            self._mode = "drop"

    def release(self) -> None:
        with self._lock:
            self._mode = "answer"
        self._released.set()

    def stop(self) -> None:
        """Stop serving and cut open connections, so clients get refused."""
        with self._lock:
            self._mode = "drop"  # held answers are never sent
        self._released.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already gone
                connection.shutdown(socket.SHUT_RDWR)

    def connected(self, connection: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(connection)
                self._connection_count += 1
            else:
                self._connections.discard(connection)

    def respond(self, method: str, path: str, headers: Message, body: bytes) -> Answer | None:
        with self._lock:
            self._request_count += 1
        return self.answer(method, path, headers, body)

    def deliverable(self, answer: Answer) -> bool:
        """Whether to write the answer just computed: False drops the connection."""
        with self._lock:
            mode = "drop" if answer.drop else "hold" if answer.hold else self._mode
            self._held_count += mode == "hold"
        if mode == "hold":
            self._released.wait(HOLD_LIMIT)
            with self._lock:
                mode = self._mode
        return mode != "drop"

    def answered(self) -> None:
        with self._lock:
            self._answer_count += 1


class JsonFake:
    """The lifecycle of a fake served by one `JsonServer` (set as `_server`)."""

    _server: JsonServer

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def connection_count(self) -> int:
        return self._server.connection_count

    @property
    def request_count(self) -> int:
        return self._server.request_count

    @property
    def held_count(self) -> int:
        return self._server.held_count

    @property
    def answer_count(self) -> int:
        return self._server.answer_count

    def hold_answers(self) -> None:
        """Answer each request (recording it) but hold the answer until `release()`."""
        self._server.hold_answers()

    def drop_answers(self) -> None:
        """Answer each request (recording it), then cut the connection instead of replying."""
        self._server.drop_answers()

    def release(self) -> None:
        """Send held answers, and answer at once from now on."""
        self._server.release()

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections, so clients get refused."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Httpd(ThreadingHTTPServer):
    def __init__(self, owner: JsonServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs do
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Httpd

    def setup(self) -> None:
        super().setup()
        self.server.owner.connected(self.connection, alive=True)

    def finish(self) -> None:
        self.server.owner.connected(self.connection, alive=False)
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self.server.owner
        if self.command not in owner.methods:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = owner.respond(self.command, self.path, self.headers, body)
        if answer is not None and not owner.deliverable(answer):
            answer = None
        with contextlib.suppress(OSError):  # a client that gave up has gone
            self._send(answer)

    def _send(self, answer: Answer | None) -> None:
        if answer is None:
            self.close_connection = True
            return
        self.server.owner.answered()
        payload = b"" if answer.status in _NO_BODY else json.dumps(answer.payload).encode()
        self.send_response(answer.status)
        if answer.status not in _NO_BODY:
            self.send_header("Content-Type", self.server.owner.content_type)
            self.send_header("Content-Length", str(len(payload)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean
