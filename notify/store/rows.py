"""The rows the store takes and hands back: what producers record, what workers claim and publish."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from notify.models import Status


@dataclass(frozen=True)
class NewDelivery:
    id: str
    channel: str
    address: str
    priority: str
    status: Status  # queued or scheduled
    dedup_key: str | None = None
    dedup_window: float = 0.0
    release_at: datetime | None = None


@dataclass(frozen=True)
class NewNotification:
    """A notification to record, its data already JSON, with its deliveries."""

    id: str
    template: str
    locale: str | None
    data_json: str
    deliveries: tuple[NewDelivery, ...]
    category: str | None = None  # its template's (template.toml); None: transactional


@dataclass(frozen=True)
class Claim:
    """A delivery a worker has claimed for one try, and what it needs to make it.

    The claim lasts as long as its lease, renewed by the heartbeat; only the
    current `token` records an outcome (`Store.mark_sent` and the like).
    """

    delivery_id: str
    channel: str
    address: str
    priority: str
    attempts: int  # this try included
    template: str
    locale: str | None
    data: dict[str, Any]
    token: str  # fences this try's outcome: a claim taken over records nothing
    worker_id: str = ""  # the worker process that holds it
    notification_id: str = ""  # the send() it came from: named in the logs
    created_at: datetime | None = None  # when send() recorded it, by the store's clock
    claimed_at: datetime | None = None  # when this claim was made, by the store's clock


@dataclass(frozen=True)
class NewReceipt:
    """What a provider said about a message it accepted: delivered or undelivered, and its code."""

    delivery_id: str
    provider: str  # "twilio"
    provider_id: str  # the provider's id of the message (Twilio's MessageSid)
    status: Status  # DELIVERED or UNDELIVERED
    code: str | None = None  # the provider's error code (Twilio's ErrorCode)
    detail: str | None = None


@dataclass(frozen=True)
class ReceiptTarget:
    """The delivery a receipt is about, as the store has it when the receipt is applied."""

    delivery_id: str
    channel: str
    address: str
    status: Status
    provider_id: str | None
    attempts: int
    error_code: str | None  # its last error's code (outcome_unknown: maybe sent, maybe not)
    earlier_codes: frozenset[str]  # codes of receipts for earlier sends of this delivery (a retry's memory)


class Queued(NamedTuple):
    """A delivery that is (again) "queued", to publish on its channel and priority."""

    id: str
    channel: str
    priority: str


@dataclass(frozen=True)
class Refusal:
    """Why a claim was refused: done, held by the store, claimed by a live worker, or unknown."""

    status: Status | None  # None: no such delivery
    ended: bool = False  # this claim found it suppressed and recorded that (status SUPPRESSED)


@dataclass(frozen=True)
class DeliveryRecord:
    """One delivery with its notification's template, as the operator console shows it."""

    id: str
    notification_id: str
    channel: str
    address: str
    priority: str
    status: Status
    attempts: int
    template: str
    locale: str | None
    dedup_key: str | None
    duplicate_of: str | None
    provider_id: str | None
    last_error: str | None
    error_code: str | None
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    handed_over_at: datetime | None
    sent_at: datetime | None
    failed_at: datetime | None


@dataclass(frozen=True)
class AttemptRecord:
    """One try of a delivery and what it came to, as `notify_attempts` keeps it.

    `number` counts over the delivery's whole history (a replay's tries go on
    from the old ones); `outcome` is sent, retry, failed or unknown.
    """

    delivery_id: str
    number: int
    provider: str | None  # None: not known (an unknown outcome the sweep recorded)
    outcome: str
    code: str | None
    reason: str | None
    started_at: datetime | None  # its claim's time; None: not known
    ended_at: datetime

    @property
    def took(self) -> float | None:
        """Seconds from its claim to its outcome, if both are known."""
        if self.started_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()
