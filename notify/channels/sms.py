"""The SMS channel: an E.164 number and one body, sent through Twilio (`notify.providers.twilio`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import phonenumbers

from notify.channels import ChannelSpec, Message
from notify.errors import ValidationError
from notify.models import shown
from notify.policy import ChannelPolicy
from notify.settings import Settings

MAX_SMS_CHARS = 1600  # Twilio's hard limit on a message body
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# GSM 03.38: the default alphabet (one septet each) and its extension table (an escape and a septet).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = frozenset("^{}\\[~]|€\f")
# Characters per message: (alone, in each part of a concatenated message, whose header takes the rest).
_GSM_UNITS, _UCS2_UNITS = (160, 153), (70, 67)


@dataclass(frozen=True)
class SmsMessage(Message):
    to: str  # E.164
    body: str
    channel: ClassVar[str] = "sms"


def check_address(value: object, settings: Settings) -> str:
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


def check_rendered(rendered: Mapping[str, str]) -> str | None:
    length = len(rendered["body"])
    if length <= MAX_SMS_CHARS:
        return None
    return f"renders {length} characters, over Twilio's limit of {MAX_SMS_CHARS}"


@dataclass(frozen=True)
class Segments:
    """How a body goes over the air: its encoding ("GSM-7" or "UCS-2") and how many messages."""

    encoding: str
    count: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)


def segments(body: str) -> Segments:
    """The SMS parts `body` is billed as: one character outside GSM-7 makes it all UCS-2.

    A GSM-7 extension character (an escape and a septet) and a UCS-2 surrogate pair
    are never split across two parts, as phones and carriers split them.
    """
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in body):
        sizes = [2 if c in _GSM_EXTENDED else 1 for c in body]
        return Segments("GSM-7", _count(sizes, *_GSM_UNITS), sum(sizes))
    sizes = [2 if ord(c) > 0xFFFF else 1 for c in body]
    return Segments("UCS-2", _count(sizes, *_UCS2_UNITS), sum(sizes))


def _count(sizes: list[int], alone: int, per_part: int) -> int:
    if sum(sizes) <= alone:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > per_part:
            parts, used = parts + 1, 0
        used += size
    return parts


def build(delivery_id: str, address: str, rendered: Mapping[str, str], settings: Settings) -> SmsMessage:
    return SmsMessage(delivery_id=delivery_id, to=address, body=rendered["body"])


CHANNEL = ChannelSpec(
    name="sms",
    address="phone",
    check_address=check_address,
    parts={"body": "sms.txt.j2"},
    check_rendered=check_rendered,
    build=build,
    policy=ChannelPolicy(max_attempts=5, backoff_initial=30.0, backoff_max=1800.0),
    backends={
        "twilio": "notify.providers.twilio:TwilioProvider",
        "outbox": "notify.providers.outbox:OutboxProvider",
    },
    default_backend="twilio",
    plural="sms",
    rank=20,
)
