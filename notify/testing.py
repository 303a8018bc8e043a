"""Test doubles for applications that call `notify.send()`.

    import notify.testing

    def test_signup_sends_a_welcome():
        with notify.testing.capture() as outbox:
            myapp.sign_up("ada@example.com")
        [email] = outbox.emails
        assert email.subject == "Welcome, Ada!"

Inside `capture()`, `notify.send()` validates exactly as in production, then
renders and "delivers" every delivery at once, in the calling thread, into
`outbox` (no broker, no worker, a throwaway SQLite store). `notify.status()`
shows the outcomes. Provider failures can be scripted with `outbox.fail_next`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from notify import api
from notify import channels as registry
from notify.api import Notifier
from notify.delivery.attempt import Deliverer
from notify.errors import DeliveryError
from notify.providers.base import Message, Receipt
from notify.settings import Secret, Settings, get_settings
from notify.store import Queued

__all__ = ["MemoryProvider", "Outbox", "capture"]

MEMORY_BACKEND = "notify.testing:MemoryProvider"


class Outbox:
    """What was delivered while capturing, in order.

    `outbox.of("sms")` lists one channel's messages; each channel's plural
    (`ChannelSpec.plural`) reads the same: `outbox.emails`, `outbox.sms`,
    `outbox.pushes`, `outbox.webhooks`.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._failures: list[DeliveryError] = []
        self._lock = threading.Lock()

    def of(self, channel: str) -> list[Message]:
        """The messages delivered on `channel`, in order; `KeyError` for an unknown channel."""
        registry.channel(channel)
        return [m for m in self.messages if m.channel == channel]

    def __getattr__(self, plural: str) -> list[Any]:
        for spec in registry.channels().values():
            if spec.plural == plural:
                return self.of(spec.name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {plural!r}")

    def fail_next(self, error: DeliveryError) -> None:
        """Make the next delivery raise `error` (e.g. a `PermanentDeliveryError`)."""
        with self._lock:
            self._failures.append(error)

    def _take(self, message: Message) -> Receipt:
        with self._lock:
            if self._failures:
                raise self._failures.pop(0)
            self.messages.append(message)
            return Receipt(provider_id=f"memory:{len(self.messages)}")


_outboxes: list[Outbox] = []


class MemoryProvider:
    """The provider `capture()` configures for every channel."""

    name = "memory"

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryProvider:
        return cls()

    def deliver(self, message: Message) -> Receipt:
        return _outboxes[-1]._take(message)

    def close(self) -> None:
        pass


class _InlineNotifier(Notifier):
    """Delivers in the calling thread instead of enqueueing."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.deliverer = Deliverer(settings)

    def _publish(self, queued: Iterable[Queued], *, grouped: bool) -> None:
        for delivery_id, _channel, _priority in list(queued):
            self.deliverer.attempt(delivery_id)

    def close(self) -> None:
        self.deliverer.close()
        super().close()


@contextmanager
def capture(settings: Settings | None = None) -> Iterator[Outbox]:
    """Route `notify.send()` to an in-memory outbox for the duration of the block."""
    base = settings or get_settings()
    with tempfile.TemporaryDirectory(prefix="notify-testing-") as home:
        settings = dataclasses.replace(
            base,
            home=Path(home),
            broker_url=None,
            database_url=Secret(f"sqlite:///{home}/notify.db"),
            backends=tuple((name, MEMORY_BACKEND) for name in registry.names()),
        )
        if not base.variable("NOTIFY_EMAIL_FROM"):
            settings = settings.with_environ(NOTIFY_EMAIL_FROM="notify@example.com")
        inline = _InlineNotifier(settings)
        outbox = Outbox()
        _outboxes.append(outbox)
        api._installed.append(inline)
        try:
            yield outbox
        finally:
            api._installed.remove(inline)
            _outboxes.remove(outbox)
            inline.close()
