"""The values producers pass in and get back, and the checks on what they pass in."""

from __future__ import annotations

import enum
import functools
import json
import re
import reprlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, fields
from datetime import UTC, datetime
from typing import Any

import email_validator
import phonenumbers
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from notify.errors import ValidationError
from notify.limits import MAX_ADDRESS

MAX_DEPTH = 32  # levels of nesting in data

# C0 and C1 controls, DEL, Unicode line breaks, and lone surrogates (which no encoding can write).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


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

    @property
    def age_seconds(self) -> float:
        return (utcnow() - self.failed_at).total_seconds()


@dataclass(frozen=True)
class Replayed:
    """What a replay did: the ids put back to "queued", and the ids it could not replay."""

    replayed: list[str]
    not_found: list[str]  # unknown ids, or deliveries that are not failed


def mask(address: str) -> str:
    """Enough of an address to recognise it, not enough to harvest it.

    Args:
        address: an email address (keeps the first letter and the domain), an
            E.164 number (keeps the first four characters and the last two), or
            a push token (keeps the first six characters).
    """
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

    def delivery(self, channel: Channel | str) -> Delivery:
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


def recipient_from(to: object) -> Recipient:
    """The recipient `to` names, each address checked and in the form it is sent to."""
    if isinstance(to, Recipient):
        given: dict[object, object] = {f.name: getattr(to, f.name) for f in fields(Recipient)}
    elif isinstance(to, Mapping):
        given = dict(to)
    else:
        raise ValidationError("to", f"must be a Recipient or a mapping, not {type(to).__name__}")
    unknown = [kind for kind in given if kind not in _CHECKS]
    if unknown:
        raise ValidationError("to", f"unknown address kind {shown(unknown[0])} (email, phone, push_token)")
    return Recipient(**{str(k): _CHECKS[str(k)](v) for k, v in given.items() if v is not None})


def _email(value: object) -> str:
    """The address as SMTP without SMTPUTF8 can carry it: a domain in IDNA ASCII form."""
    if not isinstance(value, str):
        problem = f"must be a string, not {type(value).__name__}"
    elif len(value) > MAX_ADDRESS:
        problem = f"is {len(value)} characters, over the limit of {MAX_ADDRESS}"
    else:
        quick = _plain_address(value)
        if quick is not None:
            return quick
        try:  # it refuses control characters and lone surrogates too
            checked = email_validator.validate_email(value, check_deliverability=False)
        except email_validator.EmailNotValidError as exc:
            problem = str(exc)
        else:
            if checked.ascii_email is not None:
                return checked.ascii_email
            problem = "a user part outside ASCII can only be sent with SMTPUTF8, which notify does not use"
    raise ValidationError("to.email", f"not a valid email address {shown(value)}: {problem}")


# RFC 5322 dot-atom of ASCII atext: a user part email-validator always accepts as it is.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_LOCAL, _MAX_EMAIL = 64, 254  # RFC 5321's limits, as email-validator applies them


def _plain_address(value: str) -> str | None:
    """The common case without email-validator's per-character work: a plain user part at a
    domain it has already accepted (checked once per domain). None: ask email-validator."""
    local, at, domain = value.rpartition("@")
    if not at or len(local) > _MAX_LOCAL or not _DOT_ATOM.fullmatch(local):
        return None
    if local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES or len(value.encode()) > _MAX_EMAIL:
        return None  # email-validator lowercases RFC 2142 role names, and counts UTF-8 bytes
    ascii_domain = _checked_domain(domain)
    if ascii_domain is None or len(local) + 1 + len(ascii_domain) > _MAX_EMAIL:
        return None
    return f"{local}@{ascii_domain}"


@functools.lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> str | None:
    """`domain` in IDNA ASCII form if email-validator accepts it, else None."""
    try:
        checked = email_validator.validate_email(f"a@{domain}", check_deliverability=False)
    except email_validator.EmailNotValidError:
        return None
    return checked.ascii_domain


def _phone(value: object) -> str:
    """`value`, if it is a valid number in its country's numbering plan, written in E.164 form."""
    if isinstance(value, str) and _E164.fullmatch(value) and _is_valid_number(value):
        return value
    raise ValidationError("to.phone", f"not an E.164 number (like +14155550100): {shown(value)}")


def _is_valid_number(e164: str) -> bool:
    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return False
    written = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return written == e164 and phonenumbers.is_valid_number(number)


def _push_token(value: object) -> str:
    return check_text("to.push_token", value, MAX_ADDRESS)


_CHECKS: dict[str, Callable[[object], str]] = {"email": _email, "phone": _phone, "push_token": _push_token}


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
