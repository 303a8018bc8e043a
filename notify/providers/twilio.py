"""SMS over Twilio's Messages API, through the official `twilio` client."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from twilio.base.exceptions import (
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http import HttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from notify.channels.sms import SmsMessage
from notify.errors import ConfigurationError, NotifyError, PermanentDeliveryError
from notify.providers import http
from notify.providers.base import Message, Receipt
from notify.providers.http import Budget, RequestsProvider, Verdict, configuration, parse_retry_after
from notify.settings import Secret, Settings, check_url, masked_repr, required

__all__ = [
    "BY_CODE",
    "DEFAULT_BASE_URL",
    "MAX_BODY_CHARS",
    "TwilioProvider",
    "TwilioSettings",
    "build_request",
    "callback_url",
    "classify",
    "parse_retry_after",
    "rebase_url",
]

CHANNEL: Final = "sms"
PROVIDER: Final = "twilio"
DEFAULT_BASE_URL: Final = "https://api.twilio.com"
MAX_BODY_CHARS: Final = 1600  # Twilio's hard limit; longer bodies fail with code 21617
_MESSAGING_SERVICE_SID: Final = re.compile(r"MG[0-9a-fA-F]{32}")
_CREATE_PREFIX: Final = "Unable to create record: "  # twilio's wording, not Twilio's reason
_SID: Final = "NOTIFY_TWILIO_ACCOUNT_SID"
_TOKEN: Final = "NOTIFY_TWILIO_AUTH_TOKEN"
_FROM: Final = "NOTIFY_TWILIO_FROM"
_BASE_URL: Final = "NOTIFY_TWILIO_BASE_URL"
STATUS_PATH: Final = "/hooks/twilio/status"  # notify web's, for Twilio's status callbacks

# Twilio's error codes (twilio.com/docs/api/errors) that are not the
# recipient's fault. A sender or account problem fails every message alike:
# it must not fail them one by one and blame each good address.
BY_CODE: Final[dict[str, Verdict]] = {
    "21610": http.gone("opted_out"),  # the number replied STOP: nothing more to it until it says START
    "20003": configuration(_TOKEN),  # authentication failed
    "20404": configuration(_SID),  # no such account (or Messaging Service) at this URL
    "21408": configuration(_SID),  # the account may not send to this region (geo permissions)
    "21608": configuration(_SID),  # a trial account may send only to verified numbers
    "21212": configuration(_FROM),  # invalid From number
    "21603": configuration(_FROM),  # From is required
    "21606": configuration(_FROM),  # From is not a message-capable Twilio number
    "21659": configuration(_FROM),  # From is not a Twilio number
    "21660": configuration(_FROM),  # From does not belong to the account
    "20429": http.TRANSIENT,  # too many requests, whatever the HTTP status
    "21611": http.TRANSIENT,  # From's queue is full: it drains at the sender's rate
}
_BY_STATUS: Final = {401: configuration(_TOKEN)}


@dataclass(frozen=True, repr=False)
class TwilioSettings:
    """The Twilio provider's own settings, from NOTIFY_TWILIO_*."""

    account_sid: str | None = field(default=None, metadata={"env": _SID})
    auth_token: Secret | None = field(default=None, metadata={"env": _TOKEN})
    sender: str | None = field(default=None, metadata={"env": _FROM})
    base_url: str = field(default=DEFAULT_BASE_URL, metadata={"env": _BASE_URL})

    def __post_init__(self) -> None:
        check_url(_BASE_URL, self.base_url, ("http", "https"))
        _check_base_url(self.base_url)

    def __repr__(self) -> str:
        return masked_repr(self)


def build_request(message: SmsMessage, sender: str) -> dict[str, str]:
    """The keyword arguments of twilio's `messages.create()` for `message`.

    `sender` is a phone number or alphanumeric ID (sent as `from_`) or a
    Messaging Service SID (`MG` + 32 hex digits).
    """
    if len(message.body) > MAX_BODY_CHARS:
        raise PermanentDeliveryError(
            f"body is {len(message.body)} characters, Twilio accepts {MAX_BODY_CHARS}",
            channel=CHANNEL,
            provider=PROVIDER,
            code="21617",
        )
    key = "messaging_service_sid" if _MESSAGING_SERVICE_SID.fullmatch(sender) else "from_"
    return {"to": message.to, key: sender, "body": message.body}


def callback_url(public_url: str, delivery_id: str) -> str:
    """Where Twilio reports on delivery `delivery_id`'s message: `notify web` (notify.receipts.twilio)."""
    return f"{public_url.rstrip('/')}{STATUS_PATH}?delivery_id={quote(delivery_id, safe='')}"


def classify(exc: Exception, retry_after: float | None = None) -> NotifyError:
    """Turn what the twilio client raised into notify's error.

    An answer is judged by `BY_CODE`, then by its HTTP status (408, 429, 5xx
    transient with `retry_after`; 401 the credentials; anything else the
    recipient's, permanent). No answer is transient if nothing was sent and
    `OutcomeUnknownError` if the request was out.
    """
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        code = str(exc.code) if exc.code else None
        answer = http.Answer(int(exc.status), code, _twilio_reason(exc), retry_after)
        verdict = http.judge(answer, BY_CODE, _BY_STATUS)
        return http.error_for(verdict, answer, channel=CHANNEL, provider=PROVIDER)
    if isinstance(exc, requests.RequestException):
        return http.network_error(exc, channel=CHANNEL, provider=PROVIDER)
    reason = f"unexpected {type(exc).__name__} from the twilio client"
    return PermanentDeliveryError(reason, channel=CHANNEL, provider=PROVIDER)


def _twilio_reason(exc: Any) -> str:
    # TwilioRestException has .msg; RFC 9457 TwilioServiceException .detail/.title.
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or exc.title
    return str(text).removeprefix(_CREATE_PREFIX)


def rebase_url(url: str, base_url: str) -> str:
    """`url` with its origin replaced by `base_url`'s, whose path prefixes `url`'s."""
    target, base = urlsplit(url), urlsplit(base_url)
    path = base.path.rstrip("/") + target.path
    return urlunsplit((base.scheme, base.netloc, path, target.query, target.fragment))


class _HttpClient(HttpClient):  # type: ignore[misc]  # twilio ships no types
    """twilio's documented custom-client hook: our session, budget and base URL.

    twilio builds absolute https://api.twilio.com URLs (rewritten by
    TWILIO_EDGE/TWILIO_REGION) and its exceptions carry no headers, so this
    is the one place that sees the final URL and the response headers. Each
    request goes through the provider's `request`, within the attempt's budget.
    """

    def __init__(self, provider: TwilioProvider, base_url: str | None) -> None:
        super().__init__(logging.getLogger(__name__), is_async=False)
        self.provider = provider
        self.base_url = base_url
        self.budget = Budget(0.0)  # set by deliver() before each attempt
        self.retry_after: str | None = None

    def request(
        self,
        method: str,
        uri: str,
        params: Any = None,  # twilio passes dicts of str, int and lists
        data: Any = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # twilio's own, replaced by the budget
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        self.retry_after = None
        url = rebase_url(uri, self.base_url) if self.base_url is not None else uri
        response = self.provider.request(
            method.upper(),
            url,
            self.budget,
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            allow_redirects=allow_redirects,
        )
        self.retry_after = response.headers.get("Retry-After")
        return TwilioResponse(response.status_code, response.text, response.headers)


@dataclass(frozen=True)
class _ThreadClient:
    http: _HttpClient
    messages: Any  # twilio's MessageList for the account


class TwilioProvider(RequestsProvider):
    """SMS delivery through Twilio, with one twilio client per thread (each attempt's budget and
    Retry-After live on its HTTP client)."""

    name = PROVIDER
    channel = CHANNEL

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: Secret,
        sender: str,
        base_url: str = DEFAULT_BASE_URL,
        delivery_timeout: float = 30.0,
        public_url: str | None = None,
    ) -> None:
        """`public_url`: NOTIFY_PUBLIC_URL; with it, each message asks Twilio for receipts there."""
        super().__init__(delivery_timeout=delivery_timeout)
        self.public_url = public_url
        self.account_sid = account_sid
        self.sender = sender
        self.base_url = base_url
        self._auth_token = auth_token

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioProvider:
        """A provider from NOTIFY_TWILIO_*; raise `ConfigurationError` naming a gap."""
        own = settings.provider_settings(TwilioSettings)
        return cls(
            account_sid=required(own.account_sid, _SID),
            auth_token=required(own.auth_token, _TOKEN),
            sender=required(own.sender, _FROM),
            base_url=own.base_url,
            delivery_timeout=settings.delivery_timeout,
            public_url=settings.public_url,
        )

    def deliver(self, message: Message) -> Receipt:
        """Send `message` within `delivery_timeout`; raise a classified error if not accepted."""
        if not isinstance(message, SmsMessage):
            raise TypeError(f"TwilioProvider sends SMS, not {type(message).__name__}")
        request = build_request(message, self.sender)
        if self.public_url is not None:
            request["status_callback"] = callback_url(self.public_url, message.delivery_id)
        client = self._thread_client()
        client.http.budget = self.budget()
        try:
            created = client.messages.create(**request)
        except TwilioException as exc:
            raise classify(exc, parse_retry_after(client.http.retry_after)) from exc
        return Receipt(provider_id=created.sid)

    def __repr__(self) -> str:
        return (
            f"TwilioProvider(account_sid={self.account_sid!r}, "
            f"sender={self.sender!r}, base_url={self.base_url!r})"
        )

    def _thread_client(self) -> _ThreadClient:
        local = self._local  # the base class's: closing drops these with the sessions
        client: _ThreadClient | None = getattr(local, "twilio", None)
        if client is None:
            client = local.twilio = self._new_client()
        return client

    def _new_client(self) -> _ThreadClient:
        # The default base URL is left alone so TWILIO_EDGE/TWILIO_REGION still apply.
        rebase = self.base_url.rstrip("/") != DEFAULT_BASE_URL
        http_client = _HttpClient(self, self.base_url if rebase else None)
        twilio = Client(self.account_sid, self._auth_token.reveal(), http_client=http_client)
        return _ThreadClient(http=http_client, messages=twilio.messages)


def _check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            # The value is not echoed: a URL may carry user:password.
            f"{_BASE_URL} must be an http(s) URL like https://api.twilio.com",
            setting=_BASE_URL,
        )
