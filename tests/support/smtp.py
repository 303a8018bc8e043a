"""A real SMTP server for tests (aiosmtpd), with scriptable replies and a down switch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from notify.channels.email import EmailMessage as Email
from notify.cli.mailcatcher import free_port
from notify.providers.smtp import SmtpConfig, SmtpProvider

SENDER = "Notify Tests <notify@example.com>"


class _Handler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.failures: list[str] = []  # replies to give the next DATA commands
        self.rejected: dict[str, str] = {}  # address -> RCPT reply
        self.sessions = 0  # EHLO/HELO greetings: one per connection
        self.attempts: list[tuple[float, str]] = []  # (time.time(), delivery id) of every DATA
        self.rcpt_delay = 0.0  # seconds before answering RCPT
        self.data_reply_delay = 0.0  # seconds between receiving a message and answering it
        self.held_for: set[str] = set()  # recipients whose messages are answered only once released
        self.drop_after_data = False  # hang up instead of answering a received message

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.sessions += 1
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        await asyncio.sleep(self.rcpt_delay)
        if address in self.rejected:
            return self.rejected[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self._receive(envelope.content)
        await asyncio.sleep(self.data_reply_delay)
        while self.held_for & set(envelope.rcpt_tos):
            await asyncio.sleep(0.05)
        if self.drop_after_data:
            server.transport.close()  # the reply below goes nowhere
        return reply

    def _receive(self, content: bytes) -> str:
        """Record one message's DATA; the reply it gets (a scripted failure, else queued)."""
        with self.lock:
            delivery_id = message_from_bytes(content)["X-Notify-Delivery-Id"]
            self.attempts.append((time.time(), str(delivery_id)))
            if self.failures:
                return self.failures.pop(0)
            message = message_from_bytes(content, policy=policy.default)
            self.messages.append(message)
            return f"250 2.0.0 Ok: queued as Q{len(self.messages):06d}"


class SmtpServer:
    """Listens on 127.0.0.1:`port`; `messages` holds what it accepted."""

    def __init__(self, *, auth_required: bool = False) -> None:
        self.handler = _Handler()
        self.port = free_port()
        self.auth_required = auth_required  # MAIL before AUTH gets 530 5.7.0
        self.controller: Controller | None = None

    def start(self) -> SmtpServer:
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            auth_required=self.auth_required,  # AUTH itself is never offered: no TLS here
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[EmailMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def sessions(self) -> int:
        with self.handler.lock:
            return self.handler.sessions

    def attempts_of(self, delivery_id: str) -> list[float]:
        """When each DATA for `delivery_id` arrived, accepted or not."""
        with self.handler.lock:
            return [t for t, i in self.handler.attempts if i == delivery_id]

    def delivery_ids(self) -> Counter[str]:
        """How often each X-Notify-Delivery-Id arrived."""
        return Counter(str(m["X-Notify-Delivery-Id"]) for m in self.messages)

    def fail_next(self, count: int, reply: str = "451 4.3.0 Try again later") -> None:
        with self.handler.lock:
            self.handler.failures += [reply] * count

    def reject(self, address: str, reply: str = "550 5.1.1 No such user") -> None:
        self.handler.rejected[address] = reply

    def delay_rcpt(self, seconds: float) -> None:
        """Answer every RCPT only after `seconds`: a server slow before the handover."""
        self.handler.rcpt_delay = seconds

    def delay_data_reply(self, seconds: float) -> None:
        """Answer every received message only after `seconds` (it counts as arrived at once)."""
        self.handler.data_reply_delay = seconds

    def hold_replies_for(self, address: str) -> None:
        """Answer messages to `address` only after `release_replies` (they count as arrived at once)."""
        self.handler.held_for.add(address)

    def release_replies(self) -> None:
        self.handler.held_for.clear()

    def drop_after_data(self) -> None:
        """Hang up on every received message instead of answering (it counts as arrived)."""
        self.handler.drop_after_data = True


def provider_for(server: SmtpServer, **config: Any) -> SmtpProvider:
    """An SmtpProvider for `server`, as a worker builds it; `config` overrides SmtpConfig."""
    options = {"tls": "none", "timeout": 5.0, "deadline": 5.0, **config}
    return SmtpProvider(SmtpConfig(host="127.0.0.1", port=server.port, sender=SENDER, **options))


def email(delivery_id: str = "d-1", **fields: Any) -> Email:
    """A rendered email, as the worker hands it to a provider; `fields` override."""
    values = {
        "to": "ada@example.com",
        "subject": "Welcome, Ada!",
        "text": "Hello Ada,",
        "html": "<p>Hello</p>",
        "message_id": f"<{delivery_id}@example.com>",
    }
    return Email(delivery_id=delivery_id, **{**values, **fields})
