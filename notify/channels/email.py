"""The email channel: an address checked as SMTP carries it, a subject, a text part and
an optional HTML part, sent over SMTP (`notify.providers.smtp`, as `notify.providers.mime` builds it)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.policy import default as email_policy
from email.utils import parseaddr
from typing import ClassVar

import email_validator
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from notify.channels import ChannelSpec, Message
from notify.constants import MAX_ADDRESS, UNSUBSCRIBE_URL
from notify.errors import ConfigurationError, ValidationError
from notify.models import shown
from notify.policy import ChannelPolicy
from notify.settings import Settings

SENDER_VARIABLE = "NOTIFY_EMAIL_FROM"


@dataclass(frozen=True)
class EmailMessage(Message):
    to: str
    subject: str
    text: str
    html: str | None
    message_id: str  # stays the same across retries
    # The one-click unsubscribe link of an unsubscribe = true template (List-Unsubscribe, RFC 8058).
    unsubscribe_url: str | None = None
    channel: ClassVar[str] = "email"


@dataclass(frozen=True)
class EmailSettings:
    """The email channel's own setting: the From address, for every email provider."""

    sender: str | None = field(default=None, metadata={"env": SENDER_VARIABLE})

    def __post_init__(self) -> None:
        _check_sender(self.sender)


def email_settings(settings: Settings) -> EmailSettings:
    """`settings`' NOTIFY_EMAIL_FROM (its check runs when a worker loads the provider)."""
    return settings.provider_settings(EmailSettings)


def _check_sender(value: str | None) -> None:
    """NOTIFY_EMAIL_FROM: one ASCII address, with or without a display name."""
    if value is None:
        return
    try:
        reason = _sender_problem(value)
    except (ValueError, HeaderParseError) as exc:  # EmailNotValidError is a ValueError
        reason = str(exc)
    if reason:
        raise ConfigurationError(
            f"{SENDER_VARIABLE} must be one address like 'Notify <notify@example.com>', "
            f"not {value!r}: {reason}",
            setting=SENDER_VARIABLE,
        )


def _sender_problem(value: str) -> str | None:
    if "\r" in value or "\n" in value:
        return "it spans lines"
    header = email_policy.header_factory("From", value)
    if len(header.addresses) != 1 or header.defects:
        return "it does not parse as one address"
    spec = header.addresses[0].addr_spec
    if not spec.isascii():
        return "write it in ASCII (an international domain as xn--...)"
    email_validator.validate_email(spec, check_deliverability=False)
    return None


def check_address(value: object, settings: Settings) -> str:
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


def build(delivery_id: str, address: str, rendered: Mapping[str, str], settings: Settings) -> EmailMessage:
    return EmailMessage(
        delivery_id=delivery_id,
        to=address,
        subject=rendered["subject"],
        text=rendered["text"],
        html=rendered.get("html"),
        message_id=message_id(delivery_id, email_settings(settings).sender),
        unsubscribe_url=rendered.get(UNSUBSCRIBE_URL),
    )


def message_id(delivery_id: str, sender: str | None) -> str:
    """A Message-ID that is the same on every try of a delivery."""
    return f"<{delivery_id}@{_domain_of(sender or '')}>"


@functools.lru_cache(maxsize=16)
def _domain_of(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "notify.invalid"


CHANNEL = ChannelSpec(
    name="email",
    address="email",
    check_address=check_address,
    parts={"subject": "email.subject.j2", "text": "email.txt.j2", "html": "email.html.j2"},
    optional_parts=frozenset({"html"}),
    single_line_parts=frozenset({"subject"}),
    build=build,
    policy=ChannelPolicy(),
    backends={
        "smtp": "notify.providers.smtp:SmtpProvider",
        "outbox": "notify.providers.outbox:OutboxProvider",
    },
    default_backend="smtp",
    outbox_files="notify.providers.mime:outbox_files",  # the MIME message SMTP would carry
    plural="emails",
    check_settings=email_settings,
    rank=10,
)
