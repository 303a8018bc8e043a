"""The webhook channel: a signed HTTPS POST of a rendered JSON body to the recipient's URL.

Producers import this module (the channel registry loads it in `send()`), so
at module level it imports only the standard library and light notify
modules; urllib3 and the shared HTTP helpers are imported by the provider.

A webhook URL is chosen by whoever registers it, so the worker must not be
turned against its own network (SSRF): `check_url` refuses IP literals and
names that are not public when `send()` is called, and the provider resolves
the host once, refuses it if any address is not public, and connects to the
address it checked (a second lookup could answer differently: DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import TYPE_CHECKING, ClassVar, Final, NoReturn
from urllib.parse import SplitResult, urlsplit, urlunsplit

from notify.channels import ChannelSpec
from notify.errors import (
    ConfigurationError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from notify.limits import MAX_ADDRESS
from notify.models import check_text
from notify.policy import ChannelPolicy
from notify.providers.base import Message, Receipt
from notify.settings import Secret, Settings

if TYPE_CHECKING:
    from urllib3 import BaseHTTPResponse
    from urllib3.connection import HTTPConnection

    from notify.providers.http import Budget

__all__ = [
    "CHANNEL",
    "MAX_BODY_BYTES",
    "WebhookMessage",
    "WebhookProvider",
    "WebhookSettings",
    "build_message",
    "check_body",
    "check_url",
    "sign",
]

NAME: Final = "webhook"
PROVIDER: Final = "webhook"
FIELD: Final = "to.webhook"
SECRET_VARIABLE: Final = "NOTIFY_WEBHOOK_SECRET"
ALLOW_PRIVATE_VARIABLE: Final = "NOTIFY_WEBHOOK_ALLOW_PRIVATE"
# A notification, not a file transfer: the body is rendered in send() to be
# checked and held in memory per delivery, and receivers commonly cap request
# bodies at 1 MiB or less. 256 KiB leaves room for any event payload.
MAX_BODY_BYTES: Final = 256 * 1024
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
_LABEL: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_HEX_NUMBER: Final = re.compile(r"0x[0-9a-f]*")
_SHARED: Final = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
_LOCAL_NAT64: Final = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use
_COMPATIBLE: Final = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible ::a.b.c.d
_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Key = tuple[str, str, int, str]  # address, scheme, port, host
Resolve = Callable[[str, int], Sequence[str]]
"""(host, port) -> the host's addresses, as IP strings; raises OSError when it cannot."""


@dataclass(frozen=True)
class WebhookMessage(Message):
    url: str  # as check_url returned it
    body: str  # JSON text
    channel: ClassVar[str] = NAME


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook provider's own settings, from NOTIFY_WEBHOOK_*."""

    secret: Secret | None = field(default=None, metadata={"env": SECRET_VARIABLE})
    # For development and private networks: lets webhooks reach this host and its LAN.
    allow_private: bool = field(default=False, metadata={"env": ALLOW_PRIVATE_VARIABLE})


def check_url(value: object, settings: Settings) -> str:
    """`value` as it will be POSTed, if it is an http(s) URL a worker may call; else `ValidationError`.

    Messages never echo the URL (a webhook URL often carries a token), only its host.
    """
    url = check_text(FIELD, value, MAX_ADDRESS)
    if any(c.isspace() for c in url):
        raise ValidationError(FIELD, "must not contain spaces")
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracketed host that is not an IPv6 address, an unclosed bracket
        raise ValidationError(FIELD, "is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(FIELD, "must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValidationError(FIELD, "must not carry a user name or password (user:pass@)")
    host = _host(parts)
    port = _port(parts)
    allow_private = settings.provider_settings(WebhookSettings).allow_private
    if not allow_private:
        _check_public_host(host)
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))


def check_body(rendered: Mapping[str, str]) -> str | None:
    """What is wrong with the rendered part "body" (webhook.json.j2), or None if it is strict JSON."""
    body = rendered.get("body")
    if body is None:
        return "is missing"
    try:
        size = len(body.encode())
    except UnicodeEncodeError:
        return "is not valid JSON: it holds a lone surrogate"
    if size > MAX_BODY_BYTES:
        return f"is {size} bytes, over the limit of {MAX_BODY_BYTES}"
    try:
        json.loads(body, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError too
        return f"is not valid JSON: {exc}"
    return None


def build_message(
    delivery_id: str, address: str, rendered: Mapping[str, str], settings: Settings
) -> WebhookMessage:
    """The message for one delivery; `TemplateError` if the body no longer checks."""
    url = check_url(address, settings)
    problem = check_body(rendered)
    if problem is not None:
        raise TemplateError("template", f"webhook.json.j2 {problem}")
    return WebhookMessage(delivery_id=delivery_id, url=url, body=rendered["body"])


def sign(secret: Secret, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The X-Notify-Signature value: HMAC-SHA256 over "<delivery id>.<timestamp>." and the body.

    The id is signed (as Standard Webhooks does) so that a captured request
    cannot be replayed under a fresh id past the receiver's deduplication.
    """
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.reveal().encode(), signed, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _host(parts: SplitResult) -> str:
    """The URL's host, normalised: an IP literal in its canonical form, a name in IDNA ASCII."""
    raw = parts.hostname  # lowercased, without brackets
    if not raw:
        raise ValidationError(FIELD, "must name a host")
    if "[" in parts.netloc:  # an IPv6 literal, or an IPvFuture one ("[v1.x]"), which we refuse
        return f"[{_ipv6_literal(raw)}]"
    name = raw if raw.isascii() else _idna(raw)  # ASCII keeps "_", which IDNA 2008 refuses
    labels = name.removesuffix(".").split(".")
    if _is_number(labels[-1]):
        return str(_legacy_ipv4(labels, raw))
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValidationError(FIELD, f"has an invalid host name {raw!r}")
    return name


def _idna(raw: str) -> str:
    """The ASCII form of an international name, by IDNA 2008 with UTS 46 as browsers map it
    (the standard library's IDNA 2003 would map "straße.de" to "strasse.de", another name)."""
    import idna

    try:
        return idna.encode(raw, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise ValidationError(FIELD, f"has an invalid host name {raw!r}") from None


def _ipv6_literal(raw: str) -> ipaddress.IPv6Address:
    if "%" in raw:
        raise ValidationError(FIELD, "must not carry an IPv6 zone (%...)")
    try:
        return ipaddress.IPv6Address(raw)
    except ValueError:
        raise ValidationError(FIELD, f"has an invalid IPv6 address [{raw}]") from None


def _is_number(label: str) -> bool:
    return label.isdigit() or bool(_HEX_NUMBER.fullmatch(label))


def _legacy_ipv4(labels: list[str], raw: str) -> ipaddress.IPv4Address:
    """A host that ends in a number is an IPv4 address, read as browsers and inet_aton read it:
    1 to 4 parts, each decimal, 0x hex or 0-led octal, the last filling the remaining bytes
    ("127.1", "0x7f.1", "2130706433" and "0177.0.0.1" are all 127.0.0.1)."""
    try:
        numbers = [_ipv4_part(label) for label in labels]
    except ValueError:
        numbers = []
    last_limit = 256 ** (5 - len(numbers))
    if not 1 <= len(numbers) <= 4 or any(n > 255 for n in numbers[:-1]) or numbers[-1] >= last_limit:
        raise ValidationError(FIELD, f"has an invalid IPv4 address {raw!r}")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_part(label: str) -> int:
    if label.startswith("0x"):
        return int(label[2:] or "0", 16)
    if len(label) > 1 and label.startswith("0"):
        return int(label, 8)
    if not label.isdigit():  # int() would take "+1" or "1_0"
        raise ValueError(label)
    return int(label)


def _port(parts: SplitResult) -> int | None:
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValidationError(FIELD, "has an invalid port (1 to 65535)")
    return port


def _check_public_host(host: str) -> None:
    name = host.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        raise ValidationError(FIELD, f"host {host} is this machine; {ALLOW_PRIVATE_VARIABLE}=1 allows it")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a name: its addresses are checked when the worker resolves it
    kind = not_public(address)
    if kind is not None:
        raise ValidationError(
            FIELD, f"host {host} is a {kind} address, not a public one; {ALLOW_PRIVATE_VARIABLE}=1 allows it"
        )


def not_public(address: IPAddress) -> str | None:
    """What kind of address `address` is if it is not a public unicast one, else None.

    `is_global` alone is not enough on Python 3.11: it passes multicast,
    site-local, and NAT64 or IPv4-translated addresses of a private IPv4 one.
    """
    if address in _COMPATIBLE and int(address) > 1:  # :: and ::1 are told apart below
        return "deprecated IPv4-compatible"
    embedded = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    if embedded is not None:
        return not_public(embedded)
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address in _SHARED, "shared (carrier-grade NAT)"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "site-local"),
        (address in _LOCAL_NAT64, "local NAT64"),
        (not address.is_global, "reserved"),
    )
    return next((kind for failed, kind in checks if failed), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4, translated), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


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

    Not behind a proxy: the connection goes to the pinned address itself. It
    holds its own urllib3 connections rather than a pool, so that connecting
    (nothing sent: try the next address, or retry) is a step apart from
    sending (the receiver may have the POST: never resend blindly).
    """

    name = "webhook"

    def __init__(
        self,
        secret: Secret,
        *,
        allow_private: bool = False,
        delivery_timeout: float = 30.0,
        resolver: Resolve = resolve,
        ca_certs: str | None = None,  # default: certifi's bundle, as requests uses
    ) -> None:
        self.allow_private = allow_private
        self.delivery_timeout = delivery_timeout
        self._secret = secret
        self._resolve = resolver
        self._ca_certs = ca_certs
        self._lock = threading.Lock()
        self._idle: OrderedDict[_Key, list[tuple[HTTPConnection, float]]] = (
            OrderedDict()
        )  # (conn, idle since)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookProvider:
        """A provider from NOTIFY_WEBHOOK_*; `ConfigurationError` if the secret is not set."""
        own = settings.provider_settings(WebhookSettings)
        if own.secret is None:
            raise ConfigurationError(f"{SECRET_VARIABLE} is required but not set", setting=SECRET_VARIABLE)
        return cls(own.secret, allow_private=own.allow_private, delivery_timeout=settings.delivery_timeout)

    def deliver(self, message: Message) -> Receipt:
        """POST `message` within `delivery_timeout`; raise a classified error if it is not accepted."""
        from notify.providers.http import Budget

        if not isinstance(message, WebhookMessage):
            raise TypeError(f"WebhookProvider sends webhooks, not {type(message).__name__}")
        budget = Budget(self.delivery_timeout)
        target = _target(message.url)
        addresses = self._checked_addresses(target)
        body = message.body.encode()
        timestamp = int(time.time())
        headers = {
            "Host": target.netloc,
            "Content-Type": "application/json",
            "User-Agent": "notify-webhook",
            "X-Notify-Delivery-Id": message.delivery_id,
            "X-Notify-Timestamp": str(timestamp),
            "X-Notify-Signature": sign(self._secret, message.delivery_id, timestamp, body),
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
        """The host's addresses, once; `PermanentDeliveryError` if one is not public."""
        try:
            addresses = list(self._resolve(target.host.strip("[]"), target.port))
        except OSError as exc:  # socket.gaierror: nothing was sent
            raise _transient(f"cannot resolve {target.host}: {exc}", "dns") from None
        if not addresses:
            raise _transient(f"{target.host} has no address", "dns")
        for address in addresses:
            kind = self._refused_kind(address)
            if kind is not None:
                raise PermanentDeliveryError(
                    f"{target.host} resolves to {address}, a {kind} address, not a public one; "
                    f"{ALLOW_PRIVATE_VARIABLE}=1 allows it",
                    channel=NAME,
                    provider=PROVIDER,
                    code="private_address",
                )
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
        from urllib3.exceptions import HTTPError
        from urllib3.util.ssl_match_hostname import CertificateError

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
                except (HTTPError, OSError, CertificateError) as exc:  # refused, timed out, TLS: next
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
        from urllib3.connection import HTTPConnection, HTTPSConnection

        if target.scheme == "http":
            return HTTPConnection(address, target.port)
        import certifi

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

    Each read waits at most what was left of the budget when the request went
    out, so a receiver trickling its status line a byte at a time can hold the
    thread longer than the budget; the claim's heartbeat keeps another worker
    from taking the delivery over meanwhile, so it cannot cause a duplicate.
    """
    from urllib3.exceptions import HTTPError

    left = budget.left
    if left <= 0:
        conn.close()
        raise _transient("the time budget was spent before the request was sent", None)
    conn.timeout = left
    try:
        conn.request("POST", target.path, body=body, headers=headers, preload_content=False)
        return conn.getresponse()
    except (HTTPError, HTTPException, OSError) as exc:  # ssl.SSLError too: the request was written
        conn.close()
        raise OutcomeUnknownError(
            f"no answer after the request was sent ({type(exc).__name__}: {exc}); it may have been accepted",
            channel=NAME,
            provider=PROVIDER,
        ) from None


def _drained(conn: HTTPConnection, response: BaseHTTPResponse, budget: Budget) -> bool:
    """Whether the rest of a small answer was read within the budget, leaving `conn` reusable."""
    from urllib3.exceptions import HTTPError

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
    from notify.providers import http

    status = response.status
    reason = f"the receiver answered {status} {response.reason or ''}".rstrip()
    if 300 <= status < 400:
        reason += " (redirects are not followed: the webhook URL needs updating)"
    answer = http.Answer(
        status, f"http_{status}", reason, http.parse_retry_after(response.headers.get("Retry-After"))
    )
    return http.error_for(http.judge(answer, {}, {}), answer, channel=NAME, provider=PROVIDER)


def _transient(reason: str, code: str | None) -> TransientDeliveryError:
    return TransientDeliveryError(reason, channel=NAME, provider=PROVIDER, code=code)


CHANNEL = ChannelSpec(
    name=NAME,
    address="webhook",
    check_address=check_url,
    parts={"body": "webhook.json.j2"},
    check_rendered=check_body,
    build=build_message,
    # A receiver that is down for a deploy comes back within minutes: retry for about an hour.
    policy=ChannelPolicy(max_attempts=8, backoff_initial=10.0, backoff_max=900.0),
    backends={
        "webhook": "notify.channels.webhook:WebhookProvider",
        "outbox": "notify.providers.outbox:OutboxProvider",
    },
    default_backend="webhook",
    plural="webhooks",
    rank=40,
)
