"""Twilio's status callbacks: SMS receipts, verified with X-Twilio-Signature.

With NOTIFY_PUBLIC_URL set, every SMS goes out with `StatusCallback` set to
`notify.providers.twilio.callback_url`: `notify web`'s `POST /hooks/twilio/status`, the delivery's
id in the query. Twilio signs each callback: HMAC-SHA1, keyed with the auth
token of the account that sent the message, over the exact URL it called
followed by every form field's name and value in name order
(twilio.request_validator, the client library's own check, computes it). The
URL is the public one, as the provider saw it: `notify web` rebuilds it from
NOTIFY_PUBLIC_URL, whatever proxy stands between.

MessageStatus `delivered` moves the delivery to delivered; `undelivered` and
`failed` to undelivered, with ErrorCode kept; every other status (queued,
sending, sent, ...) is acknowledged and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from twilio.request_validator import RequestValidator

from notify.constants import MAX_ID
from notify.models import Status, SuppressionReason
from notify.providers.twilio import STATUS_PATH as PATH
from notify.providers.twilio import TwilioSettings
from notify.receipts import Judgement
from notify.settings import Settings
from notify.store import NewReceipt

__all__ = ["PATH", "BadReceipt", "Unverified", "judge", "read"]

PROVIDER: Final = "twilio"
_STATUSES: Final = {
    "delivered": Status.DELIVERED,
    "undelivered": Status.UNDELIVERED,
    "failed": Status.UNDELIVERED,
}
_RETRY_ONCE: Final = frozenset({"30003"})  # the handset was unreachable (off, out of coverage)
_SUPPRESS: Final = {"21610": SuppressionReason.OPTED_OUT}  # the number replied STOP
_MAX_FIELD: Final = 4096


class Unverified(Exception):
    """The request is not a receipt Twilio signed for this URL and account: 403, nothing changes."""


class BadReceipt(Exception):
    """A signed request notify cannot read as a receipt: 400, nothing changes."""


def accounts(settings: Settings) -> dict[str, str]:
    """Account SID -> auth token, for each Twilio account notify sends with."""
    own = settings.provider_settings(TwilioSettings)
    if own.account_sid is None or own.auth_token is None:
        return {}
    return {own.account_sid: own.auth_token.reveal()}


def read(
    settings: Settings, url: str, signature: str | None, form: Sequence[tuple[str, str]]
) -> NewReceipt | None:
    """The receipt a callback carries (None: a status that changes nothing), after its signature
    is checked; `Unverified` or `BadReceipt` if it is not one to act on."""
    fields: dict[str, str] = {}
    for name, value in form:
        if name in fields or len(value) > _MAX_FIELD:
            raise BadReceipt(f"field {name[:40]!r} repeated or too long")
        fields[name] = value
    token = accounts(settings).get(fields.get("AccountSid", ""))
    if token is None or not signature or not RequestValidator(token).validate(url, fields, signature):
        raise Unverified("the signature does not verify for this URL and account")
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    delivery_id, sid = query.get("delivery_id", ""), fields.get("MessageSid") or fields.get("SmsSid", "")
    status = fields.get("MessageStatus") or fields.get("SmsStatus", "")
    if not delivery_id or len(delivery_id) > MAX_ID or not sid or not status:
        raise BadReceipt("a receipt needs delivery_id in its URL, and MessageSid and MessageStatus")
    final = _STATUSES.get(status.lower())
    if final is None:
        return None
    return NewReceipt(
        delivery_id=delivery_id,
        provider=PROVIDER,
        provider_id=sid,
        status=final,
        code=fields.get("ErrorCode") or None,
        detail=fields.get("ErrorMessage") or f"Twilio MessageStatus {status}",
    )


def judge(receipt: NewReceipt) -> Judgement:
    code = receipt.code or ""
    return Judgement(retry_once=code in _RETRY_ONCE, suppress=_SUPPRESS.get(code))
