"""SMS over Twilio's Messages API, through the official `twilio` client."""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import (
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from notify.channels.base import Message, Receipt, SmsMessage
from notify.errors import (
    ConfigurationError,
    NotifyError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

if TYPE_CHECKING:
    from notify.settings import Secret, Settings

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BODY_CHARS",
    "TIMEOUT_SECONDS",
    "TwilioProvider",
    "build_request",
    "classify",
    "parse_retry_after",
    "rebase_url",
]

CHANNEL = "sms"
PROVIDER = "twilio"
DEFAULT_BASE_URL = "https://api.twilio.com"
MAX_BODY_CHARS = 1600  # Twilio's hard limit; longer bodies fail with code 21617
TIMEOUT_SECONDS = 30.0  # connect and read, so a hung Twilio cannot hold a worker thread
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_CREATE_PREFIX = "Unable to create record: "  # twilio's wording, not Twilio's reason
_TRANSIENT_NETWORK = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


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


def classify(exc: Exception, retry_after: float | None = None) -> NotifyError:
    """Turn what the twilio client raised into notify's error.

    408, 429 and 5xx are transient (with the provider's `retry_after` in seconds),
    as are network failures; 401 (code 20003) is a `ConfigurationError`;
    any other answer (21211 invalid number, 21610 unsubscribed, ...) is permanent.
    """
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        return _classify_answer(int(exc.status), exc.code, _twilio_reason(exc), retry_after)
    if isinstance(exc, _TRANSIENT_NETWORK):
        reason = f"{type(exc).__name__}: {exc}"
        return TransientDeliveryError(reason, channel=CHANNEL, provider=PROVIDER)
    reason = f"unexpected {type(exc).__name__} from the twilio client"
    return PermanentDeliveryError(reason, channel=CHANNEL, provider=PROVIDER)


def _classify_answer(status: int, code: int | None, reason: str, retry_after: float | None) -> NotifyError:
    provider_code = str(code or status)
    if status == 401 or code == 20003:
        return ConfigurationError(
            f"Twilio rejected the credentials ({provider_code} {reason}): check "
            "NOTIFY_TWILIO_ACCOUNT_SID and NOTIFY_TWILIO_AUTH_TOKEN",
            setting="NOTIFY_TWILIO_AUTH_TOKEN",
        )
    if status in (408, 429) or code == 20429 or status >= 500:
        return TransientDeliveryError(
            reason,
            channel=CHANNEL,
            provider=PROVIDER,
            code=provider_code,
            retry_after=retry_after,
        )
    return PermanentDeliveryError(reason, channel=CHANNEL, provider=PROVIDER, code=provider_code)


def _twilio_reason(exc: Any) -> str:
    # TwilioRestException has .msg; RFC 9457 TwilioServiceException .detail/.title.
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or exc.title
    return str(text).removeprefix(_CREATE_PREFIX)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return _seconds_until(value)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def rebase_url(url: str, base_url: str) -> str:
    """`url` with its origin replaced by `base_url`'s, whose path prefixes `url`'s."""
    target, base = urlsplit(url), urlsplit(base_url)
    path = base.path.rstrip("/") + target.path
    return urlunsplit((base.scheme, base.netloc, path, target.query, target.fragment))


class _HttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no types
    """twilio's HTTP client, sent to another base URL, keeping `Retry-After`.

    twilio builds absolute https://api.twilio.com URLs (rewritten by
    TWILIO_EDGE/TWILIO_REGION) and its exceptions carry no headers, so this
    is the one place that sees both the final URL and the response headers.
    """

    def __init__(self, base_url: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url
        self.retry_after: str | None = None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        self.retry_after = None
        if self.base_url is not None:
            url = rebase_url(url, self.base_url)
        response = super().request(method, url, *args, **kwargs)
        self.retry_after = (response.headers or {}).get("Retry-After")
        return response


@dataclass(frozen=True)
class _ThreadClient:
    http: _HttpClient
    messages: Any  # twilio's MessageList for the account


class TwilioProvider:
    """SMS delivery through Twilio, with one twilio client per thread.

    Per thread because twilio's HTTP client keeps the last response on
    itself and requests does not promise a `Session` is thread-safe.
    """

    name = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: Secret,
        sender: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.account_sid = account_sid
        self.sender = sender
        self.base_url = base_url
        self.timeout = timeout
        self._auth_token = auth_token
        self._local = threading.local()
        self._lock = threading.Lock()
        self._http_clients: list[_HttpClient] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioProvider:
        """A provider from NOTIFY_TWILIO_*; raise `ConfigurationError` naming a gap."""
        settings.require("twilio_account_sid", "twilio_auth_token", "twilio_from")
        _check_base_url(settings.twilio_base_url)
        return cls(  # the casts hold: require() has checked these are set
            account_sid=cast(str, settings.twilio_account_sid),
            auth_token=cast("Secret", settings.twilio_auth_token),
            sender=cast(str, settings.twilio_from),
            base_url=settings.twilio_base_url,
        )

    def deliver(self, message: Message) -> Receipt:
        """Send `message`; raise a classified error if Twilio does not accept it."""
        if not isinstance(message, SmsMessage):
            raise TypeError(f"TwilioProvider sends SMS, not {type(message).__name__}")
        request = build_request(message, self.sender)
        client = self._thread_client()
        try:
            created = client.messages.create(**request)
        except (TwilioException, requests.RequestException) as exc:
            retry_after = parse_retry_after(client.http.retry_after)
            raise classify(exc, retry_after) from exc
        return Receipt(provider_id=created.sid)

    def close(self) -> None:
        """Close every thread's connections; later deliveries open new ones."""
        with self._lock:
            http_clients, self._http_clients = self._http_clients, []
            self._local = threading.local()
        for http in http_clients:
            if http.session is not None:
                http.session.close()

    def __repr__(self) -> str:
        return (
            f"TwilioProvider(account_sid={self.account_sid!r}, "
            f"sender={self.sender!r}, base_url={self.base_url!r})"
        )

    def _thread_client(self) -> _ThreadClient:
        local = self._local
        client: _ThreadClient | None = getattr(local, "client", None)
        if client is None:
            client = self._new_client()
            local.client = client
        return client

    def _new_client(self) -> _ThreadClient:
        # The default base URL is left alone so TWILIO_EDGE/TWILIO_REGION still apply.
        rebase = self.base_url.rstrip("/") != DEFAULT_BASE_URL
        http = _HttpClient(self.base_url if rebase else None, self.timeout)
        twilio = Client(self.account_sid, self._auth_token.reveal(), http_client=http)
        with self._lock:
            self._http_clients.append(http)
        return _ThreadClient(http=http, messages=twilio.messages)


def _check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            # The value is not echoed: a URL may carry user:password.
            "NOTIFY_TWILIO_BASE_URL must be an http(s) URL like https://api.twilio.com",
            setting="NOTIFY_TWILIO_BASE_URL",
        )
