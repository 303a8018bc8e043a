"""What the HTTP providers (Twilio, FCM, webhooks) share.

One time budget per `deliver()` call, handed out as each request's timeout;
one `Retry-After` parser; one table per client library (requests, urllib3)
deciding whether a failed request may have reached the provider; the
skeleton of classifying an answer (408, 429 and 5xx are transient whoever
sends them, the rest is each provider's table); and `RequestsProvider`, the
base of the providers built on requests.
"""

from __future__ import annotations

import calendar
import contextlib
import enum
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from notify.constants import MAX_RETRY_AFTER
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
    "Handover",
    "Verdict",
    "Watchdog",
    "configuration",
    "error_for",
    "handover",
    "judge",
    "network_error",
    "parse_retry_after",
]

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


class Handover(enum.Enum):
    """What a failed request says about the message: whether a retry could be a second copy."""

    NONE = "nothing was handed over"
    """It failed before a byte of the request left: retrying is safe."""
    MAYBE = "it may have been sent"
    """The request went out (or may have) and no answer came: never resent blindly."""


ErrorTable = tuple[tuple[type[BaseException], "Handover | ErrorTable"], ...]

# urllib3's errors, as a request that connects and then sends raises them (alone, or as the
# reason requests' ConnectionError carries): only a failure to connect proves nothing was sent.
# First match wins; anything else may have been sent.
URLLIB3_ERRORS: Final[ErrorTable] = (
    (urllib3.exceptions.ConnectTimeoutError, Handover.NONE),  # NewConnectionError, NameResolutionError too
    (urllib3.exceptions.ProxyError, Handover.NONE),  # the proxy refused the tunnel
)

# requests' errors, from Session.request (which connects, sends and reads in one call).
REQUESTS_ERRORS: Final[ErrorTable] = (
    (requests.ConnectTimeout, Handover.NONE),  # BudgetSpent too: no time left before the request
    (requests.exceptions.SSLError, Handover.NONE),  # the TLS handshake, before the request
    (requests.exceptions.ProxyError, Handover.NONE),
    (requests.ReadTimeout, Handover.MAYBE),
    (requests.exceptions.ChunkedEncodingError, Handover.MAYBE),
    (requests.exceptions.ContentDecodingError, Handover.MAYBE),
    (requests.ConnectionError, URLLIB3_ERRORS),  # refused or reset: urllib3's reason tells
    (requests.RequestException, Handover.NONE),  # InvalidURL and the like: raised before sending
)


def handover(exc: BaseException, table: ErrorTable = REQUESTS_ERRORS) -> Handover:
    """What `exc` says about the request, by the first entry of `table` it is an instance of.

    An entry that is itself a table reads the error's cause (requests wraps
    urllib3's error, in a MaxRetryError or as it is); no entry: `MAYBE`.
    """
    for cls, meaning in table:
        if isinstance(exc, cls):
            return meaning if isinstance(meaning, Handover) else handover(_cause(exc), meaning)
    return Handover.MAYBE


def _cause(exc: BaseException) -> BaseException:
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    reason = getattr(cause, "reason", None)  # urllib3's MaxRetryError
    return reason if isinstance(reason, BaseException) else cause


def network_error(
    exc: BaseException, *, channel: str, provider: str, table: ErrorTable = REQUESTS_ERRORS
) -> TransientDeliveryError | OutcomeUnknownError:
    """Our error for a request that got no answer: retried if nothing was handed over (`table`)."""
    reason = f"{type(exc).__name__}: {exc}"
    if handover(exc, table) is Handover.MAYBE:
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
    suppress: str | None = None  # permanent, and the address gone for good: why (a SuppressionReason)


TRANSIENT: Final = Verdict("transient")
PERMANENT: Final = Verdict("permanent")
UNKNOWN: Final = Verdict("unknown")  # the provider may have taken it: not retried


def gone(reason: str) -> Verdict:
    """Permanent, and the address is gone for good: put it on the suppression list for `reason`."""
    return Verdict("permanent", suppress=reason)


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
    return PermanentDeliveryError(
        answer.reason, channel=channel, provider=provider, code=code, suppress=verdict.suppress
    )


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


class RequestsProvider:
    """What the providers built on requests share (django-anymail's `base_requests` is the model).

    A session per thread (requests does not promise that a `Session` is
    thread-safe), each reading the environment's proxy and CA settings once;
    one time budget per `deliver()`, given out as each request's timeout; and
    one translation of requests' errors (`network_error`). A subclass keeps
    only its request building, its code tables and the parsing of answers.
    """

    name: str  # the provider, as errors name it
    channel: str  # the channel it delivers

    def __init__(self, *, delivery_timeout: float, adapter: HTTPAdapter | None = None) -> None:
        """`adapter`: one connection pool for every thread's session (default: requests' own per session)."""
        self.delivery_timeout = delivery_timeout
        self._adapter = adapter
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []

    def budget(self) -> Budget:
        """The time one `deliver()` may take."""
        return Budget(self.delivery_timeout)

    def session(self) -> requests.Session:
        """This thread's session."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = EnvironmentOnceSession()
            adapter = self._adapter or WatchedAdapter()  # without one, requests' own per session
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            with self._lock:
                self._sessions.append(session)
        return session

    def request(self, method: str, url: str, budget: Budget, **kwargs: Any) -> requests.Response:
        """One request within what is left of `budget`; a request that got no answer raises
        `TransientDeliveryError` (nothing was handed over) or `OutcomeUnknownError`.

        The budget ends it whatever the peer does: requests' timeout bounds each
        read, so past the deadline the watchdog shuts the connection's socket
        (a peer that trickles its answer a byte at a time cannot hold the thread).
        """
        timeout = budget.timeout()
        session = self.session()
        sending = _Sending()
        _CALL.sending = sending
        try:
            with _WATCHDOG.guard(time.monotonic() + timeout[1] + WATCHDOG_SLACK, sending.cut) as call:
                try:
                    return session.request(method, url, timeout=timeout, **kwargs)
                except requests.RequestException as exc:
                    if call.cut and sending.connection is not None:
                        raise OutcomeUnknownError(
                            f"no complete answer within the time budget ({type(exc).__name__}); "
                            "it may have been accepted",
                            channel=self.channel,
                            provider=self.name,
                        ) from exc
                    raise network_error(exc, channel=self.channel, provider=self.name) from exc
        finally:
            _CALL.sending = None

    def close(self) -> None:
        """Close every thread's connections; later deliveries open new ones."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
            self._local = threading.local()
        for session in sessions:
            session.close()
        if self._adapter is not None:
            self._adapter.close()


WATCHDOG_SLACK: Final = 0.5
"""The watchdog cuts a request this long after its budget: a peer silent since its last byte is
ended by the read timeout first, as a `ReadTimeout` (what operators recognise); only a trickle
needs the cut."""


class _Sending:
    """The connection a request of this thread is being sent on, once it has one."""

    def __init__(self) -> None:
        self.connection: urllib3.connection.HTTPConnection | None = None

    def cut(self) -> None:
        """End the request now: a read blocked on the connection's socket returns at once."""
        sock = self.connection.sock if self.connection is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)


_CALL = threading.local()  # .sending: the _Sending of the request this thread is making


def _sending_on(connection: urllib3.connection.HTTPConnection) -> None:
    sending: _Sending | None = getattr(_CALL, "sending", None)
    if sending is not None:
        sending.connection = connection


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _sending_on(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _sending_on(self)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: Final = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter, its connections known to `RequestsProvider.request`'s watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.PoolManager):  # a SOCKS proxy's manager keeps its own
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


@dataclass
class Guarded:
    """A call under a watchdog: `cut` says whether its deadline ended it (read after it, too)."""

    deadline: float
    close: Callable[[], object]
    cut: bool = False


class Watchdog:
    """Ends a call at its deadline whatever the peer does: at the deadline, its `close` is called.

    A socket timeout bounds each read, not the call: a peer that trickles its
    answer a byte at a time, each within the timeout, holds the thread for as
    long as it likes. One thread per watchdog calls `close` (shutting the
    socket down, so the blocked read fails at once) for every guarded call
    still running at its deadline; a call that ends while its close runs waits
    for it, so no close ever reaches a connection after its call.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[int, Guarded] = {}
        self._closing: set[int] = set()
        self._next = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, deadline: float, close: Callable[[], object]) -> Iterator[Guarded]:
        """Around a call that must end by `deadline` (on this watchdog's clock)."""
        call = Guarded(deadline, close)
        with self._changed:
            self._next += 1
            key = self._next
            self._calls[key] = call
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="notify-watchdog", daemon=True)
                self._thread.start()
            self._changed.notify_all()
        try:
            yield call
        finally:
            with self._changed:
                self._calls.pop(key, None)
                self._changed.wait_for(lambda: key not in self._closing)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = self._clock()
                due = {key: call for key, call in self._calls.items() if call.deadline <= now}
                if not due:
                    soonest = min((call.deadline for call in self._calls.values()), default=None)
                    self._changed.wait(None if soonest is None else soonest - now)
                    continue
                for key, call in due.items():
                    del self._calls[key]
                    call.cut = True
                self._closing.update(due)
            for call in due.values():
                with contextlib.suppress(Exception):  # the call ends anyway, with what its read raises
                    call.close()
            with self._changed:
                self._closing.difference_update(due)
                self._changed.notify_all()


_WATCHDOG = Watchdog()  # one thread for every request in flight through a RequestsProvider
