"""A local webhook receiver that checks notify's signature: a real HTTP server for the real provider.

    with FakeWebhook(secret="s3cret") as fake:    # 127.0.0.1, ephemeral port, own thread
        fake.url                # http://127.0.0.1:<port>/hook
        ...
        fake.requests           # every POST that reached it, as `Received`s, in order (`at`: monotonic time)
        fake.connection_count   # TCP connections accepted (shows connection reuse)

    FakeWebhook(secret, tls=context)    # HTTPS, with the server-side ssl.SSLContext given

Every POST is recorded, with `signature_ok` saying whether X-Notify-Signature
is HMAC-SHA256(secret, "<X-Notify-Timestamp>." + body), then answered 200
unless scripted:

    fake.answer_next(429, headers={"Retry-After": "2"})   # the next answers, in order
    fake.answer_next(500)
    fake.answer_next(200, stall=True)   # recorded, answered only at release() or stop() (30 s at most)
    fake.answer_next(200, drop=True)    # recorded, then the connection is cut without an answer
    fake.stop()                         # closes the port and open connections: connection refused
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["STALL_LIMIT", "FakeWebhook", "Received", "Reply"]

STALL_LIMIT = 30.0  # seconds a stalled answer waits at most, so no test thread leaks
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True)
class Received:
    """One POST as the receiver saw it."""

    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes
    signature_ok: bool
    at: float = 0.0  # time.monotonic() when it was recorded


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall: bool = False
    drop: bool = False


class FakeWebhook:
    """A webhook receiver on 127.0.0.1; see the module docstring."""

    def __init__(self, secret: str = "webhook-test-secret", *, tls: ssl.SSLContext | None = None) -> None:
        self.secret = secret
        self.scheme = "https" if tls is not None else "http"
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._requests: list[Received] = []
        self._arrived = threading.Condition(self._lock)
        self._released = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connection_count = 0
        self._httpd = _Httpd(self)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-webhook", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hook"

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return self._connection_count

    def answer_next(
        self,
        status: int = 200,
        *,
        headers: dict[str, str] | None = None,
        stall: bool = False,
        drop: bool = False,
    ) -> None:
        """Answer the next request so (after those already scripted)."""
        with self._lock:
            self._script.append(Reply(status, dict(headers or {}), stall, drop))

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[Received]:
        """The requests, once `n` have arrived; AssertionError after `timeout` seconds."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= n, timeout):
                raise AssertionError(f"{len(self._requests)} requests arrived in {timeout} s, not {n}")
            return list(self._requests)

    def release(self) -> None:
        """Send the stalled answers."""
        self._released.set()

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections, so clients get refused."""
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def connected(self, connection: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(connection)
                self._connection_count += 1
            else:
                self._connections.discard(connection)

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        """Record one POST and pick its answer."""
        received = Received(path, headers, body, self._signature_ok(headers, body), time.monotonic())
        with self._lock:
            self._requests.append(received)
            self._arrived.notify_all()
            return self._script.popleft() if self._script else Reply()

    def wait_for_release(self) -> None:
        self._released.wait(STALL_LIMIT)

    def _signature_ok(self, headers: dict[str, str], body: bytes) -> bool:
        timestamp = headers.get("x-notify-timestamp", "")
        signed = f"{timestamp}.".encode() + body
        expected = "sha256=" + hmac.new(self.secret.encode(), signed, hashlib.sha256).hexdigest()
        return timestamp.isdigit() and hmac.compare_digest(headers.get("x-notify-signature", ""), expected)


class _Httpd(ThreadingHTTPServer):
    def __init__(self, owner: FakeWebhook) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
    server: _Httpd

    def setup(self) -> None:
        super().setup()
        self.server.owner.connected(self.connection, alive=True)

    def finish(self) -> None:
        self.server.owner.connected(self.connection, alive=False)
        super().finish()

    def do_POST(self) -> None:
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = owner.receive(self.path, headers, body)
        if reply.stall:
            owner.wait_for_release()
        if reply.drop:
            self.close_connection = True
            return
        with contextlib.suppress(OSError):  # a client that gave up has gone
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        payload = b"" if reply.status in _NO_BODY else b'{"ok": true}'
        self.send_response(reply.status)
        if reply.status not in _NO_BODY:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean
