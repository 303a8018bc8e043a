"""What the HTTP providers (Twilio, FCM) share.

One time budget per `deliver()` call, handed out as each request's timeout;
one `Retry-After` parser; the verdict on a network failure (did the request
reach the provider?); and the skeleton of classifying an answer: 408, 429
and 5xx are transient whoever sends them, the rest is each provider's table.
"""

from __future__ import annotations

import calendar
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError

from notify.errors import (
    ConfigurationError,
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "PERMANENT",
    "TRANSIENT",
    "Answer",
    "Budget",
    "BudgetSpent",
    "EnvironmentOnceSession",
    "Verdict",
    "configuration",
    "error_for",
    "judge",
    "network_error",
    "parse_retry_after",
    "reached_provider",
]

# Longer hints are capped, not refused: a provider asking for a day means
# "much later", and the channel's policy caps it lower still (backoff_max).
MAX_RETRY_AFTER: Final = 86400.0
_DELTA_SECONDS: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.I)


class BudgetSpent(requests.exceptions.ConnectTimeout):
    """The attempt's time ran out before a request started: nothing was sent."""


class Budget:
    """The time left of one `deliver()` call, handed out as per-request timeouts."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deadline = clock() + seconds

    @property
    def left(self) -> float:
        return max(0.0, self._deadline - self._clock())

    def timeout(self) -> tuple[float, float]:
        """`(connect, read)` for the next request: both what is left, never more."""
        left = self._deadline - self._clock()
        if left <= 0:
            raise BudgetSpent("the attempt's time budget was spent before the request")
        return (left, left)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a `Retry-After` header, within [0, MAX_RETRY_AFTER].

    Delta-seconds (decimals too) or an HTTP-date (RFC 9110 section 10.2.3);
    None for anything else.
    """
    text = (value or "").strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return _bounded(float(text))
    parts = parsedate_tz(text)
    if parts is None:
        return None
    try:  # a missing or -0000 zone is GMT, as HTTP dates always are
        when = calendar.timegm(parts[:6]) - (parts[9] or 0)
    except (ValueError, OverflowError):  # past datetime's year 9999, or no date at all
        return MAX_RETRY_AFTER if parts[0] > 9999 else None
    return _bounded(when - now())


def _bounded(seconds: float) -> float:
    if math.isnan(seconds):  # a number that says nothing: wait as long as we ever do
        return MAX_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def reached_provider(exc: requests.RequestException) -> bool:
    """Whether the request may have reached the provider before `exc`.

    Only a failure to connect (refused, unreachable, connect timeout, TLS or
    proxy handshake) proves nothing was sent. A read timeout or a connection
    dropped after sending leaves the provider free to have accepted it.
    """
    if isinstance(exc, requests.ReadTimeout | requests.exceptions.ChunkedEncodingError):
        return True
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return True
    if isinstance(
        exc, requests.ConnectTimeout | requests.exceptions.SSLError | requests.exceptions.ProxyError
    ):
        return False
    if isinstance(exc, requests.ConnectionError):
        return not _failed_to_connect(exc)
    return False  # InvalidURL and the like: raised before anything is sent


def _failed_to_connect(exc: requests.ConnectionError) -> bool:
    # requests wraps urllib3's MaxRetryError; its reason is what went wrong.
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, ConnectTimeoutError)  # NewConnectionError, NameResolutionError too


def network_error(
    exc: requests.RequestException, *, channel: str, provider: str
) -> TransientDeliveryError | OutcomeUnknownError:
    """Our error for a request that got no answer."""
    reason = f"{type(exc).__name__}: {exc}"
    if reached_provider(exc):
        return OutcomeUnknownError(
            f"no answer after the request was sent ({reason}); it may have been accepted",
            channel=channel,
            provider=provider,
        )
    return TransientDeliveryError(reason, channel=channel, provider=provider)


@dataclass(frozen=True)
class Verdict:
    """What an answer means for the delivery; `setting` says what to check."""

    kind: Literal["transient", "permanent", "configuration", "unknown"]
    setting: str | None = None
    hint: str | None = None  # what to check, when more than the setting


TRANSIENT: Final = Verdict("transient")
PERMANENT: Final = Verdict("permanent")
UNKNOWN: Final = Verdict("unknown")  # the provider may have taken it: not retried
# A gateway that gave up on (502) or timed out waiting for (504) the provider
# behind it, after our POST went through: the message may exist.
GATEWAY_GAVE_UP: Final = (502, 504)


def configuration(setting: str, hint: str | None = None) -> Verdict:
    return Verdict("configuration", setting, hint)


@dataclass(frozen=True)
class Answer:
    """A provider's error answer, as much of it as the classification needs."""

    status: int
    code: str | None  # the provider's own code, if it gave one
    reason: str
    retry_after: float | None = None


def judge(answer: Answer, by_code: Mapping[str, Verdict], by_status: Mapping[int, Verdict]) -> Verdict:
    """The provider's code first, then 502/504, 408/429/5xx, then its status table; else permanent."""
    if answer.code is not None and answer.code in by_code:
        return by_code[answer.code]
    if answer.status in GATEWAY_GAVE_UP:
        return UNKNOWN
    if answer.status in (408, 429) or answer.status >= 500:
        return TRANSIENT
    return by_status.get(answer.status, PERMANENT)


def error_for(verdict: Verdict, answer: Answer, *, channel: str, provider: str) -> NotifyError:
    """The error `verdict` calls for, carrying the answer's code and reason."""
    code = answer.code or str(answer.status)
    if verdict.kind == "configuration":
        return ConfigurationError(
            f"{provider} refused our sender or account ({code} {answer.reason}): "
            f"check {verdict.hint or verdict.setting} ({verdict.setting})",
            setting=verdict.setting,
        )
    if verdict.kind == "unknown":
        return OutcomeUnknownError(
            f"{answer.status} from a gateway after the request was sent ({answer.reason}); "
            "it may have been accepted",
            channel=channel,
            provider=provider,
        )
    if verdict.kind == "transient":
        return TransientDeliveryError(
            answer.reason, channel=channel, provider=provider, code=code, retry_after=answer.retry_after
        )
    return PermanentDeliveryError(answer.reason, channel=channel, provider=provider, code=code)


class EnvironmentOnceSession(requests.Session):
    """A requests session that reads the environment's proxy and CA settings once per origin.

    requests reads them (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE, and
    ~/.netrc) on every request: a quarter of an SMS delivery's worker CPU in
    a profile (benchmarks.provider_throughput --profile). This session takes
    the same settings, as requests would, on its first request to an origin
    and keeps them; a change to the environment after that is not seen.
    netrc is not read: Twilio and FCM requests carry their own credentials;
    nor are proxies re-read for a redirect to another origin (neither client
    follows one).
    """

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # the environment is read here, once, instead
        self._environment: dict[tuple[str, str], tuple[dict[str, str], str | None]] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        parts = urlsplit(str(url))
        origin = (parts.scheme, parts.netloc)
        found = self._environment.get(origin)
        if found is None:
            found = self._environment[origin] = (
                requests.utils.get_environ_proxies(str(url), no_proxy=(proxies or {}).get("no_proxy")),
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
            )
        env_proxies, ca_bundle = found
        proxies = {**env_proxies, **(proxies or {})}
        if (verify is True or verify is None) and ca_bundle:
            verify = ca_bundle
        settings: dict[str, Any] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        return settings
