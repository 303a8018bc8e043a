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

With notify installed, pytest has the `notify_outbox` fixture (notify.pytest_plugin),
the same outbox for the whole test:

    def test_signup_sends_a_welcome(notify_outbox):
        myapp.sign_up("ada@example.com")
        assert notify_outbox.emails[0].to == "ada@example.com"
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
from notify.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
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
        self._failures: list[DeliveryError | _Scripted] = []
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

    def fail_next(
        self,
        error: DeliveryError | None = None,
        *,
        permanent: bool = False,
        reason: str = "failed by notify.testing",
        code: str | None = None,
    ) -> None:
        """Make the next delivery fail: with `error`, or with a transient failure (retried by
        the channel's policy) or, `permanent=True`, a permanent one (a dead letter), its `reason`
        and `code` as a provider would give them.

            outbox.fail_next(permanent=True, reason="550 5.1.1 no such user", code="550")
        """
        with self._lock:
            self._failures.append(error or _Scripted(permanent, reason, code))

    def _take(self, message: Message) -> Receipt:
        with self._lock:
            if self._failures:
                failure = self._failures.pop(0)
                if isinstance(failure, _Scripted):
                    raise failure.error(message.channel)
                raise failure
            self.messages.append(message)
            return Receipt(provider_id=f"memory:{len(self.messages)}")


@dataclasses.dataclass(frozen=True)
class _Scripted:
    """A failure `fail_next` was asked for by its kind: made for the message it meets."""

    permanent: bool
    reason: str
    code: str | None

    def error(self, channel: str) -> DeliveryError:
        kind = PermanentDeliveryError if self.permanent else TransientDeliveryError
        return kind(self.reason, channel=channel, provider=MemoryProvider.name, code=self.code)


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
