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
