"""The values producers pass in and get back."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Status(enum.StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    DUPLICATE = "duplicate"


FINAL_STATUSES = frozenset({Status.SENT, Status.FAILED, Status.DUPLICATE})


@dataclass(frozen=True)
class Recipient:
    """Where to reach someone: an address per channel, any of them optional."""

    email: str | None = None
    phone: str | None = None  # E.164, e.g. +14155550100
    push_token: str | None = None

    def address(self, channel: Channel | str) -> str | None:
        return {"email": self.email, "sms": self.phone, "push": self.push_token}[str(channel)]


@dataclass(frozen=True)
class Delivery:
    """One notification on one channel, as the store has it now."""

    id: str
    notification_id: str
    channel: Channel
    status: Status
    attempts: int = 0
    last_error: str | None = None
    error_code: str | None = None
    provider_id: str | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    duplicate_of: str | None = None  # for status "duplicate": the delivery it repeats


@dataclass(frozen=True)
class SendResult:
    """What `send()` recorded: the notification id and one delivery per channel."""

    id: str
    deliveries: tuple[Delivery, ...]

    def delivery(self, channel: Channel | str) -> Delivery:
        return next(d for d in self.deliveries if d.channel == channel)
