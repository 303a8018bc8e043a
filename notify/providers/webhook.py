"""Signed webhook POSTs, to the address each host was checked to have (the webhook channel's provider).

The channel (`notify.channels.webhook`) checks a URL when `send()` is called;
this provider resolves the host once, refuses it if any address is not
public, and connects to the address it checked: a second lookup could answer
differently (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Final
from urllib.parse import urlsplit

import certifi
from urllib3 import BaseHTTPResponse
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError
from urllib3.util.ssl_match_hostname import CertificateError

from notify.channels.webhook import ALLOW_PRIVATE_VARIABLE, NAME, WebhookMessage, WebhookSettings, not_public
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notify.providers import http
from notify.providers.base import Message, Receipt
from notify.providers.http import Budget
from notify.providers.webhook_signing import (
    SECRET_VARIABLE,
    SECRETS_VARIABLE,
    SecretsHook,
    WebhookSecrets,
    sign,
)
from notify.settings import Secret, Settings, import_hook

__all__ = ["WebhookProvider", "WebhookProviderSettings", "resolve"]

PROVIDER: Final = "webhook"
_MAX_WARM_ADDRESSES: Final = 64  # addresses with warm connections; the least recently used are closed
_IDLE_PER_ADDRESS: Final = 4
# An idle connection older than this is closed, not reused: receivers close idle keep-alive
# connections after their own timeout (Node's default is 5 s), and a POST written onto one the
# receiver is closing gets no answer, an unknown outcome. Shorter than the common timeouts.
MAX_IDLE_SECONDS: Final = 4.0
_DRAIN_LIMIT: Final = 64 * 1024  # an answer's body read to keep its connection warm; a longer one closes it
# A connect timeout per address, so a blackholed first address leaves time for the next:
# a live host answers a SYN within a round trip (well under a second), and 5 s still
# covers one lost SYN (Linux resends it after 1 s, then 3 s) and the TLS handshake.
CONNECT_TIMEOUT_PER_ADDRESS: Final = 5.0

log = logging.getLogger(__name__)

_Key = tuple[str, str, int, str]  # address, scheme, port, host
Resolve = Callable[[str, int], Sequence[str]]
"""(host, port) -> the host's addresses, as IP strings; raises OSError when it cannot."""


@dataclass(frozen=True)
class WebhookProviderSettings:
    """The webhook provider's own settings, from NOTIFY_WEBHOOK_SECRET and NOTIFY_WEBHOOK_SECRETS."""

    secret: Secret | None = field(default=None, metadata={"env": SECRET_VARIABLE})
    secrets_hook: str | None = field(default=None, metadata={"env": SECRETS_VARIABLE})  # "module:function"


def resolve(host: str, port: int) -> list[str]:
    """The host's TCP addresses, in getaddrinfo's order, each once."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # as the URL names it, for Host, SNI and the certificate check
    port: int
    netloc: str  # host[:port], the Host header
    path: str  # with the query


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, parts.hostname or "", port, parts.netloc, path)


class WebhookProvider:
    """Signed webhook POSTs, to the address each host was checked to have, with warm connections.

    Each URL is signed with `secret`, or with what `secrets_for(url)` answers
    (`notify.providers.webhook_signing`). Not behind a proxy: the connection
    goes to the pinned address itself. It holds its own urllib3 connections
    rather than a pool, so that connecting (nothing sent: try the next
    address, or retry) is a step apart from sending (the receiver may have
    the POST: never resend blindly).
    """

    name = "webhook"

    def __init__(
        self,
        secret: Secret,
        *,
        secrets_for: SecretsHook | None = None,
        allow_private: bool = False,
        delivery_timeout: float = 30.0,
        resolver: Resolve = resolve,
        ca_certs: str | None = None,  # default: certifi's bundle, as requests uses
    ) -> None:
        self.allow_private = allow_private
        self.delivery_timeout = delivery_timeout
        self._secrets = WebhookSecrets(secret, secrets_for)
        self._resolve = resolver
        self._ca_certs = ca_certs
        self._lock = threading.Lock()
        self._idle: OrderedDict[_Key, list[tuple[HTTPConnection, float]]] = (
            OrderedDict()
        )  # (conn, idle since)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookProvider:
        """A provider from NOTIFY_WEBHOOK_*; `ConfigurationError` if the secret is not set or not
        usable, or the secrets hook does not import."""
        own = settings.provider_settings(WebhookProviderSettings)
        if own.secret is None:
            raise ConfigurationError(f"{SECRET_VARIABLE} is required but not set", setting=SECRET_VARIABLE)
        hook = None if own.secrets_hook is None else import_hook(own.secrets_hook, setting=SECRETS_VARIABLE)
        return cls(
            own.secret,
            secrets_for=hook,
            allow_private=settings.provider_settings(WebhookSettings).allow_private,
            delivery_timeout=settings.delivery_timeout,
        )

    def deliver(self, message: Message) -> Receipt:
        """POST `message` within `delivery_timeout`; raise a classified error if it is not accepted."""
        if not isinstance(message, WebhookMessage):
            raise TypeError(f"WebhookProvider sends webhooks, not {type(message).__name__}")
        budget = Budget(self.delivery_timeout)
        keys = self._secrets.keys_for(message.url)
        target = _target(message.url)
        addresses = self._checked_addresses(target)
        body = message.body.encode()
        timestamp = int(time.time())
        headers = {
            "Host": target.netloc,
            "Content-Type": "application/json",
            "User-Agent": "notify-webhook",
            "webhook-id": message.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(keys, message.delivery_id, timestamp, body),
            "X-Notify-Delivery-Id": message.delivery_id,  # as notify's emails carry it
        }
        key, conn, response = self._post(addresses, target, body, headers, budget)
        if response.status < 200:
            conn.close()  # the final answer is still unread on it
            raise _interim_error(response)
        if _drained(conn, response, budget):
            self._keep(key, conn)
        else:
            conn.close()
        if response.status < 300:
            return Receipt()
        raise _answer_error(response)

    def close(self) -> None:
        """Close every warm connection; later deliveries open new ones."""
        with self._lock:
            idle, self._idle = list(self._idle.values()), OrderedDict()
        for conn, _since in (warm for conns in idle for warm in conns):
            conn.close()

    def __repr__(self) -> str:
        shown = f"allow_private={self.allow_private!r}, delivery_timeout={self.delivery_timeout!r}"
        return f"WebhookProvider({shown})"

    def _checked_addresses(self, target: _Target) -> list[str]:
        """The host's addresses, once: a transient error if there are none, permanent if one is not public.

        Both read the same to the sender (`_refused`): the addresses and the lookup's error go to
        the worker's log only, or a sender could map the names the worker's DNS knows.
        """
        try:
            addresses = list(self._resolve(target.host.strip("[]"), target.port))
        except OSError as exc:  # socket.gaierror: nothing was sent
            detail = f"cannot resolve {target.host}: {exc}"
            raise _refused(target, TransientDeliveryError, "dns", detail) from None
        if not addresses:
            raise _refused(target, TransientDeliveryError, "dns", f"{target.host} has no address")
        for address in addresses:
            kind = self._refused_kind(address)
            if kind is not None:
                detail = f"{target.host} resolves to {address}, a {kind} address, not a public one"
                raise _refused(target, PermanentDeliveryError, "private_address", detail)
        return addresses

    def _refused_kind(self, address: str) -> str | None:
        try:
            parsed = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return "malformed"
        return None if self.allow_private else not_public(parsed)

    def _post(
        self, addresses: list[str], target: _Target, body: bytes, headers: dict[str, str], budget: Budget
    ) -> tuple[_Key, HTTPConnection, BaseHTTPResponse]:
        """The answer from the first address that takes the connection, with its key and connection."""
        failure = "no address"
        for address in addresses:
            key = (address, target.scheme, target.port, target.host)
            conn = self._warm(key)
            if conn is None:
                if budget.left <= 0:
                    break
                conn = self._new_connection(address, target)
                conn.timeout = min(budget.left, CONNECT_TIMEOUT_PER_ADDRESS)
                try:
                    conn.connect()  # TCP, then TLS: nothing is sent before it returns
                # Whatever connect() raises (refused, timed out, TLS), no byte of the request
                # has left: the next address may take it.
                except (HTTPError, OSError, CertificateError) as exc:
                    conn.close()
                    failure = f"{address}: {type(exc).__name__}: {exc}"
                    continue
            return key, conn, _send(conn, target, body, headers, budget)
        raise _transient(f"cannot connect to {target.host} within the time budget ({failure})", None)

    def _warm(self, key: _Key) -> HTTPConnection | None:
        """An idle connection to `key` that the receiver has not closed, if there is one."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn, since = idle.pop()
            if conn.is_connected and time.monotonic() - since < MAX_IDLE_SECONDS:
                return conn
            conn.close()

    def _keep(self, key: _Key, conn: HTTPConnection) -> None:
        """Keep `conn` warm, closing the least recently used addresses' connections past the limit."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            closing = [conn] if len(idle) >= _IDLE_PER_ADDRESS else []
            if not closing:
                idle.append((conn, time.monotonic()))
            while len(self._idle) > _MAX_WARM_ADDRESSES:
                closing += [old for old, _since in self._idle.popitem(last=False)[1]]
        for old in closing:
            old.close()

    def _new_connection(self, address: str, target: _Target) -> HTTPConnection:
        if target.scheme == "http":
            return HTTPConnection(address, target.port)
        host = target.host.strip("[]").removesuffix(".")
        return HTTPSConnection(
            address,
            target.port,
            cert_reqs="CERT_REQUIRED",
            ca_certs=self._ca_certs or certifi.where(),
            server_hostname=host,
            assert_hostname=host,
        )


def _send(
    conn: HTTPConnection, target: _Target, body: bytes, headers: dict[str, str], budget: Budget
) -> BaseHTTPResponse:
    """POST on a connected `conn` and read the answer's head: from here on, the receiver may have it.

    The budget ends it, whatever the receiver does: each read waits at most
    what is left, and the watchdog closes the socket at the deadline under a
    receiver that trickles its answer a byte at a time (each byte in time).
    """
    left = budget.left
    if left <= 0:
        conn.close()
        raise _transient("the time budget was spent before the request was sent", None)
    conn.timeout = left
    with _WATCHDOG.guard(time.monotonic() + left, lambda: _cut(conn)) as call:
        try:
            conn.request("POST", target.path, body=body, headers=headers, preload_content=False)
            response = conn.getresponse()
        except (HTTPError, HTTPException, OSError, ValueError) as exc:  # ValueError: TLS cut mid-read
            conn.close()
            if call.cut:
                raise OutcomeUnknownError(
                    f"no complete answer within the time budget ({type(exc).__name__}); "
                    "it may have been accepted",
                    channel=NAME,
                    provider=PROVIDER,
                ) from None
            table = http.URLLIB3_ERRORS
            raise http.network_error(exc, channel=NAME, provider=PROVIDER, table=table) from None
    if call.cut:  # the answer came just as the deadline cut the socket: read, but never reuse it
        conn.close()
    return response


_WATCHDOG = http.Watchdog()  # one thread for every webhook in flight in this process


def _cut(conn: HTTPConnection) -> None:
    """End a call on `conn` now: a read blocked on its socket returns at once."""
    sock = conn.sock
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _drained(conn: HTTPConnection, response: BaseHTTPResponse, budget: Budget) -> bool:
    """Whether the rest of a small answer was read within the budget, leaving `conn` reusable."""
    remaining = response.length_remaining
    if conn.sock is None or remaining is None or remaining > _DRAIN_LIMIT:
        return False  # no sock: the answer said "Connection: close"
    try:
        while response.length_remaining:
            left = budget.left
            if left <= 0 or conn.sock is None:
                return False
            conn.sock.settimeout(left)  # one recv per read1: a trickle cannot outlast the budget
            if not response.read1(_DRAIN_LIMIT, decode_content=False):
                return False
        response.read(decode_content=False)  # nothing left: lets http.client mark the answer done
    except (HTTPError, HTTPException, OSError):
        return False
    return True


def _interim_error(response: BaseHTTPResponse) -> OutcomeUnknownError:
    # http.client skips only "100 Continue"; its public API cannot read on past a 102 or 103
    # to the final answer, which may well be a 2xx.
    status = f"{response.status} {response.reason or ''}".rstrip()
    return OutcomeUnknownError(
        f"the receiver answered an interim {status} and its final answer was not read; "
        "it may have been accepted",
        channel=NAME,
        provider=PROVIDER,
    )


def _answer_error(response: BaseHTTPResponse) -> Exception:
    """408, 429 and 5xx transient (with Retry-After); 502 and 504 outcome unknown, as for the
    other HTTP providers (a gateway may have passed our POST on); 3xx and other 4xx permanent."""
    status = response.status
    reason = f"the receiver answered {status} {response.reason or ''}".rstrip()
    if 300 <= status < 400:
        reason += " (redirects are not followed: the webhook URL needs updating)"
    answer = http.Answer(
        status, f"http_{status}", reason, http.parse_retry_after(response.headers.get("Retry-After"))
    )
    return http.error_for(http.judge(answer, {}, _BY_STATUS), answer, channel=NAME, provider=PROVIDER)


_BY_STATUS = {410: http.gone("unregistered")}  # the receiver says this URL is gone for good


def _refused(target: _Target, error: type[DeliveryError], code: str, detail: str) -> DeliveryError:
    """The one text a sender reads for any refusal after the DNS lookup; `detail` only in the log."""
    log.warning("webhook refused: %s", detail)
    reason = (
        f"{target.host} has no public address that this worker may call "
        f"(the worker's log says why); {ALLOW_PRIVATE_VARIABLE}=1 allows it for private ones"
    )
    return error(reason, channel=NAME, provider=PROVIDER, code=code)


def _transient(reason: str, code: str | None) -> TransientDeliveryError:
    return TransientDeliveryError(reason, channel=NAME, provider=PROVIDER, code=code)
