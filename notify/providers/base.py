"""What every provider implements: one rendered message in, one receipt out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from notify.settings import Settings


@dataclass(frozen=True)
class EmailMessage:
    delivery_id: str
    to: str
    subject: str
    text: str
    html: str | None
    message_id: str  # stays the same across retries


@dataclass(frozen=True)
class SmsMessage:
    delivery_id: str
    to: str  # E.164
    body: str


@dataclass(frozen=True)
class PushMessage:
    delivery_id: str
    token: str
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)  # carries notify_delivery_id


Message = EmailMessage | SmsMessage | PushMessage


@dataclass(frozen=True)
class Receipt:
    """What a provider answered: its own id for the message, when it gives one."""

    provider_id: str | None = None


class Provider(Protocol):
    """A delivery backend for one channel.

    `from_settings` validates its settings and raises `ConfigurationError`
    naming the missing variable, so a worker refuses to start. `deliver`
    raises `TransientDeliveryError` or `PermanentDeliveryError` (and
    `ConfigurationError` for bad credentials), classified once, here.
    A provider is built once per worker process and may keep connections.
    """

    name: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Provider: ...

    def deliver(self, message: Message) -> Receipt: ...

    def close(self) -> None: ...
