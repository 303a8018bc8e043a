"""A real SMTP server for tests (aiosmtpd), with scriptable replies and a down switch."""

from __future__ import annotations

import threading
import time
from collections import Counter
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from workers.mailcatcher import free_port


class _Handler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.failures: list[str] = []  # replies to give the next DATA commands
        self.rejected: dict[str, str] = {}  # address -> RCPT reply
        self.sessions = 0  # EHLO/HELO greetings: one per connection
        self.attempts: list[tuple[float, str]] = []  # (time.time(), delivery id) of every DATA

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.sessions += 1
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.rejected:
            return self.rejected[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            delivery_id = message_from_bytes(envelope.content)["X-Notify-Delivery-Id"]
            self.attempts.append((time.time(), str(delivery_id)))
            if self.failures:
                return self.failures.pop(0)
            message = message_from_bytes(envelope.content, policy=policy.default)
            self.messages.append(message)  # type: ignore[arg-type]
            return f"250 2.0.0 Ok: queued as Q{len(self.messages):06d}"


class SmtpServer:
    """Listens on 127.0.0.1:`port`; `messages` holds what it accepted."""

    def __init__(self) -> None:
        self.handler = _Handler()
        self.port = free_port()
        self.controller: Controller | None = None

    def start(self) -> SmtpServer:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
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
