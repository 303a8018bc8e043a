"""The values producers pass in and get back, and the checks on what they pass in."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import reprlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from notify.errors import ValidationError

MAX_DEPTH = 32  # levels of nesting in data

# C0 and C1 controls, DEL, Unicode line breaks, and lone surrogates (which no encoding can write).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class Priority(enum.StrEnum):
    """How urgent a delivery is; declared in the order workers drain them, high first.

    The one definition: queue names, RabbitMQ's message priorities, the order
    the store releases and sweeps in, the express lanes and the gate all read it.
    """

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent: the order queues are polled and released deliveries published."""
        return _PRIORITY_RANKS[self]

    @property
    def amqp(self) -> int:
        """The message priority in RabbitMQ's one `x-max-priority` queue per channel (higher first)."""
        return len(_PRIORITY_RANKS) - 1 - self.rank

    @property
    def urgent(self) -> bool:
        """Served by a worker's express lanes, and first through its priority gate."""
        return self.rank == 0


_PRIORITY_RANKS = {p: rank for rank, p in enumerate(Priority)}


class Status(enum.StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    DELIVERED = "delivered"  # after sent: the provider's receipt says it reached the recipient
    UNDELIVERED = "undelivered"  # after sent: the provider's receipt says it did not (its code kept)
    FAILED = "failed"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"  # its address is on the suppression list: recorded, never sent


FINAL_STATUSES = frozenset(
    {Status.SENT, Status.DELIVERED, Status.UNDELIVERED, Status.FAILED, Status.DUPLICATE, Status.SUPPRESSED}
)  # sent is final for notify's work; a receipt may still tell delivered or undelivered


class SuppressionReason(enum.StrEnum):
    """Why an address is on the suppression list."""

    BOUNCED = "bounced"  # a hard bounce: the mailbox does not exist (SMTP 5.1.1, 550 no such user)
    OPTED_OUT = "opted_out"  # the number replied STOP (Twilio 21610)
    UNREGISTERED = "unregistered"  # the push token is gone (FCM UNREGISTERED), the webhook answered 410
    UNSUBSCRIBED = "unsubscribed"  # a one-click unsubscribe, from one template category
    MANUAL = "manual"  # an operator or the application put it there


class Recipient:
    """Where to reach someone: an address per channel, any of them optional.

    Each channel names its address kind: `email`, `phone` (E.164, e.g.
    +14155550100), `push_token`, `webhook` (an http(s) URL), or the kind a
    registered channel of your own declares. A kind not given reads as None;
    `send()` refuses a kind no registered channel has.
    """

    __slots__ = ("_addresses",)
    _addresses: dict[str, object]

    def __init__(self, **addresses: object) -> None:
        object.__setattr__(self, "_addresses", {k: v for k, v in addresses.items() if v is not None})

    @property
    def addresses(self) -> dict[str, object]:
        """Every address given, by kind."""
        return dict(self._addresses)

    def __getattr__(self, kind: str) -> str | None:
        """The address of `kind`, or None if none was given (`send()` refuses kinds no channel has)."""
        if kind.startswith("_"):
            raise AttributeError(kind)
        value = self._addresses.get(kind)
        return value if isinstance(value, str) or value is None else str(value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Recipient cannot be changed")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipient) and other._addresses == self._addresses

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._addresses.items())))

    def __repr__(self) -> str:  # masked: a repr ends up in logs, and a webhook URL may carry a token
        return f"Recipient({masked_addresses(self._addresses)})"

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy, which would set the slot
        return (_recipient, (self._addresses,))


def _recipient(addresses: dict[str, object]) -> Recipient:
    return Recipient(**addresses)


def masked_addresses(addresses: Mapping[Any, object]) -> str:
    """`kind=address, ...`, each address masked (`mask`), anything not a string by its type only."""
    return ", ".join(
        f"{k}={mask(v) if isinstance(v, str) else type(v).__name__!r}" for k, v in addresses.items()
    )


@dataclass(frozen=True)
class Intent:
    """One notification to send: `send()`'s arguments, for `send_many()`."""

    template: str
    to: Recipient | Mapping[str, str]
    _: KW_ONLY
    data: Mapping[str, Any] | None = None
    channels: Iterable[str] | None = None
    priority: str = "normal"
    dedup_key: str | None = None
    send_at: datetime | None = None
    locale: str | None = None

    def __repr__(self) -> str:  # the recipient masked, as Recipient's own repr does
        to = self.to
        if isinstance(to, Mapping):
            return _repr_with(self, to="{" + masked_addresses(to) + "}")
        return _repr_with(self, to=repr(to) if isinstance(to, Recipient) else f"<{type(to).__name__}>")


@dataclass(frozen=True)
class Delivery:
    """One notification on one channel, as the store has it now."""

    id: str
    notification_id: str
    channel: str
    status: Status
    attempts: int = 0
    last_error: str | None = None
    error_code: str | None = None
    provider_id: str | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    duplicate_of: str | None = None  # for status "duplicate": the delivery it repeats


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that failed for good, as `notify.dlq.letters()` lists it."""

    id: str
    notification_id: str
    channel: str
    address: str
    template: str
    reason: str | None
    code: str | None
    attempts: int
    failed_at: datetime

    @property
    def masked_address(self) -> str:
        return mask(self.address)

    def __repr__(self) -> str:  # a webhook URL's path may carry a token
        return _repr_with(self, address=repr(self.masked_address))

    @property
    def age_seconds(self) -> float:
        return (utcnow() - self.failed_at).total_seconds()


@dataclass(frozen=True)
class Suppression:
    """An address notify sends nothing more to on a channel (`notify suppressions list`)."""

    channel: str
    address: str
    category: str | None  # None: every category; else the template category unsubscribed from
    reason: SuppressionReason
    detail: str | None  # what the provider said, or the operator wrote
    created_at: datetime

    @property
    def masked_address(self) -> str:
        return mask(self.address)

    def __repr__(self) -> str:
        return _repr_with(self, address=repr(self.masked_address))


@dataclass(frozen=True)
class Replayed:
    """What a replay did: the ids put back to "queued", and the ids it could not replay."""

    replayed: list[str]
    not_found: list[str]  # unknown ids, or deliveries that are not failed
    suppressed: list[str] = dataclasses.field(default_factory=list)  # left failed: the address is suppressed


def _repr_with(instance: Any, **shown: str) -> str:
    """The dataclass `instance`'s repr, with the fields named in `shown` shown as given."""
    parts = (f"{f.name}={shown.get(f.name) or repr(getattr(instance, f.name))}" for f in fields(instance))
    return f"{type(instance).__name__}({', '.join(parts)})"


def mask(address: str) -> str:
    """Enough of an address to recognise it, not enough to harvest it.

    Args:
        address: an email address (keeps the first letter and the domain), an
            E.164 number (keeps the first four characters and the last two), a
            URL (keeps the scheme and host: paths often carry tokens), or a
            push token (keeps the first six characters).
    """
    scheme, sep, rest = address.partition("://")
    if sep and scheme.isalpha():
        host = rest.split("/", 1)[0].rpartition("@")[2]
        return f"{scheme}://{host}/…"
    if "@" in address:
        user, _, domain = address.rpartition("@")
        return f"{user[:1]}***@{domain}"
    if address.startswith("+"):
        return address[:4] + "*" * max(len(address) - 6, 0) + address[-2:]
    return address[:6] + "…" if len(address) > 6 else "***"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SendResult:
    """What `send()` recorded: the notification id and one delivery per channel."""

    id: str
    deliveries: tuple[Delivery, ...]

    def delivery(self, channel: str) -> Delivery:
        return next(d for d in self.deliveries if d.channel == channel)


def shown(value: object) -> str:
    """`value`'s repr, cut short: a message stays small whatever a caller passed."""
    try:
        return reprlib.repr(value)
    except Exception:  # the caller's own __repr__ failed
        return f"<{type(value).__name__}>"


def check_text(field: str, value: object, limit: int) -> str:
    """`value`, if it is a non-blank string of at most `limit` characters and no control characters."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValidationError(field, "must not be empty")
    if len(value) > limit:
        raise ValidationError(field, f"is {len(value)} characters, over the limit of {limit}")
    if _CONTROL.search(value):
        raise ValidationError(field, "must not contain control characters, line breaks or lone surrogates")
    return value


def check_ids(field: str, values: object, limit: int) -> list[str]:
    """`values` as a list, if it is a collection (not one string) of ids each passing `check_text`."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValidationError(field, f"must be a list of ids, not {type(values).__name__}")
    return [check_text(f"{field}[{i}]", value, limit) for i, value in enumerate(values)]


def check_count(field: str, value: object, low: int, high: int) -> int:
    """`value`, if it is an int (not a bool) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"must be an integer, not {type(value).__name__}")
    if value < low:
        raise ValidationError(field, f"must be at least {low}")
    if value > high:  # not shown: a huge int has no str()
        raise ValidationError(field, f"must be at most {high}")
    return value


def data_from(data: object, limit: int) -> tuple[dict[str, Any], str]:
    """The data as the worker will see it, and as strict JSON for the store."""
    if data is None:
        return {}, "{}"
    if not isinstance(data, Mapping):
        raise ValidationError("data", f"must be a mapping, not {type(data).__name__}")
    _check_tree(data, limit)
    try:  # strict: no NaN or Infinity, no lone surrogates (UnicodeEncodeError)
        encoded = json.dumps(dict(data), ensure_ascii=False, allow_nan=False)
        size = len(encoded.encode())
    except (TypeError, ValueError) as exc:
        raise ValidationError("data", f"must be JSON-serializable: {exc}") from None
    if size > limit:
        raise _too_large(f"is {size} bytes as JSON", limit)
    loaded: dict[str, Any] = json.loads(encoded)  # render what the worker will see
    return loaded, encoded


def _check_tree(data: object, limit: int) -> None:
    """Keys are strings at every level and nesting is at most MAX_DEPTH deep.

    Walked with a stack, not recursion. Each value takes a byte of JSON at
    least, so holding more values than `limit` bytes is over the limit: that
    bounds the walk over containers shared many times over, or cyclic.
    """
    values = 0
    pending: list[tuple[object, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        children = _children(value)
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise ValidationError("data", f"is nested more than {MAX_DEPTH} levels deep")
        values += len(children)
        if values > limit:
            raise _too_large(f"holds more than {limit} values", limit)
        pending.extend((child, depth + 1) for child in children)


def _children(value: object) -> Collection[object] | None:
    """A container's values (None for a scalar); its keys must be strings, as JSON's are."""
    if isinstance(value, list | tuple):
        return value
    if not isinstance(value, Mapping):
        return None
    for key in value:
        if not isinstance(key, str):
            raise ValidationError("data", f"keys must be strings, not {type(key).__name__} ({shown(key)})")
    return value.values()


def _too_large(measured: str, limit: int) -> ValidationError:
    return ValidationError("data", f"{measured}, over the limit of {limit} (NOTIFY_MAX_DATA_BYTES)")


def utc_send_at(send_at: object) -> datetime | None:
    """`send_at` in UTC, as the store keeps it."""
    if send_at is None:
        return None
    if not isinstance(send_at, datetime):
        raise ValidationError("send_at", f"must be a datetime, not {type(send_at).__name__}")
    try:
        offset = send_at.utcoffset()
    except ValueError as exc:  # a tzinfo whose offset is a day or more
        raise ValidationError("send_at", f"has an impossible UTC offset: {exc}") from None
    except TypeError as exc:  # a tzinfo whose offset is not a timedelta
        raise ValidationError("send_at", f"has no usable UTC offset: {exc}") from None
    if send_at.tzinfo is None or offset is None:
        raise ValidationError(
            "send_at", "must be timezone-aware (e.g. datetime.now(UTC)); a naive datetime is ambiguous"
        )
    try:
        return send_at.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            "send_at", f"{send_at.isoformat()} is outside the years 1 to 9999 in UTC"
        ) from None
    except (TypeError, ValueError) as exc:  # a tzinfo whose offset changed since it was asked
        raise ValidationError("send_at", f"has no usable UTC offset: {exc}") from None
