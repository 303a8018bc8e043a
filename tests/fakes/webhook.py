"""A local webhook receiver that checks notify's signature: a real HTTP server for the real provider.

    with FakeWebhook(secret="s3cret") as fake:    # 127.0.0.1, ephemeral port, own thread
        fake.url                # http://127.0.0.1:<port>/hook
        ...
        fake.requests           # every POST that reached it, as `Received`s, in order (`at`: monotonic time)
        fake.connection_count   # TCP connections accepted (shows connection reuse)

    FakeWebhook(secret, tls=context)    # HTTPS, with the server-side ssl.SSLContext given
    FakeWebhook(secret, refuse_unverified=True)   # 401 to a request the secret does not verify

It is served by tests.fakes._http's JsonServer, and has its hold_answers(),
drop_answers(), request_count and the rest too.

Every POST is recorded, with `signature_ok` saying whether the standardwebhooks
library, as a receiver uses it, verifies its webhook-* headers with the secret
(`verifies(secret, headers, body)` checks another one), then answered 200
unless scripted:

    fake.answer_next(429, headers={"Retry-After": "2"})   # the next answers, in order
    fake.answer_next(500)
    fake.answer_next(200, stall=True)   # recorded, answered at release() (30 s at most; stop() drops it)
    fake.answer_next(200, drop=True)    # recorded, then the connection is cut without an answer
    fake.stop()                         # closes the port and open connections: connection refused
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.message import Message

from standardwebhooks import Webhook, WebhookVerificationError

from tests.fakes._http import HOLD_LIMIT, Answer, JsonFake, JsonServer

__all__ = ["STALL_LIMIT", "FakeWebhook", "Received", "Reply", "verifies"]

STALL_LIMIT = HOLD_LIMIT  # seconds a stalled answer waits at most, so no test thread leaks


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


class FakeWebhook(JsonFake):
    """A webhook receiver on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        secret: str = "webhook-test-secret",
        *,
        tls: ssl.SSLContext | None = None,
        refuse_unverified: bool = False,
    ) -> None:
        self.secret = secret
        self.refuse_unverified = refuse_unverified
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._script: deque[Reply] = deque()
        self._requests: list[Received] = []
        self._server = JsonServer("fake-webhook", self._answer, tls=tls)

    @property
    def scheme(self) -> str:
        return self._server.scheme

    @property
    def url(self) -> str:
        return f"{self._server.url}/hook"

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

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

    def _answer(self, method: str, path: str, message: Message, body: bytes) -> Answer:
        """Record one POST and pick its answer."""
        headers = {name.lower(): value for name, value in message.items()}
        received = Received(path, headers, body, verifies(self.secret, headers, body), time.monotonic())
        with self._lock:
            self._requests.append(received)
            self._arrived.notify_all()
            if self.refuse_unverified and not received.signature_ok:
                return Answer(401, {"error": "signature"}, {})
            reply = self._script.popleft() if self._script else Reply()
        return Answer(reply.status, {"ok": True}, reply.headers, hold=reply.stall, drop=reply.drop)


def verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether the standardwebhooks library verifies a request with `secret`, as a receiver calls it:
    a `whsec_` secret as it is, any other as its bytes (the library would take a str for base64)."""
    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    try:
        Webhook(key).verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True
