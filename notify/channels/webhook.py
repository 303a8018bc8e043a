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
    from urllib3 import BaseHTTPResponse, HTTPConnectionPool

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
_MAX_POOLS: Final = 64  # receivers with a warm connection; the least recently used is closed
_LABEL: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_HEX_NUMBER: Final = re.compile(r"0x[0-9a-f]*")
_SHARED: Final = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
_LOCAL_NAT64: Final = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use
_COMPATIBLE: Final = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible ::a.b.c.d

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
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


def sign(secret: Secret, timestamp: int, body: bytes) -> str:
    """The X-Notify-Signature value: HMAC-SHA256 over "<timestamp>." and the body."""
    digest = hmac.new(secret.reveal().encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _host(parts: SplitResult) -> str:
    """The URL's host, normalised: an IP literal in its canonical form, a name in IDNA ASCII."""
    raw = parts.hostname  # lowercased, without brackets
    if not raw:
        raise ValidationError(FIELD, "must name a host")
    if ":" in raw:  # only a bracketed IPv6 literal gets here with a colon
        return f"[{_ipv6_literal(raw)}]"
    try:
        name = raw.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValidationError(FIELD, f"has an invalid host name {raw!r}") from None
    labels = name.removesuffix(".").split(".")
    if _is_number(labels[-1]):
        return str(_legacy_ipv4(labels, raw))
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValidationError(FIELD, f"has an invalid host name {raw!r}")
    return name


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
    site-local, NAT64 and IPv4-compatible addresses of a private IPv4 one.
    """
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
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4, compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if (address in _NAT64 or address in _COMPATIBLE) and int(address) > 1:
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

    Not behind a proxy: the connection goes to the pinned address itself.
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
        self._pools: OrderedDict[tuple[str, str, int, str], HTTPConnectionPool] = OrderedDict()

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
            "X-Notify-Signature": sign(self._secret, timestamp, body),
        }
        response = self._post(addresses, target, body, headers, budget)
        _release(response)
        if 200 <= response.status < 300:
            return Receipt()
        raise _answer_error(response)

    def close(self) -> None:
        """Close every warm connection; later deliveries open new ones."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.close()

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
    ) -> BaseHTTPResponse:
        """The answer from the first address that takes the connection."""
        from urllib3 import Timeout
        from urllib3.exceptions import HTTPError, NewConnectionError

        from notify.providers.http import BudgetSpent

        failure = "no address"
        for address in addresses:
            try:
                connect, read = budget.timeout()
            except BudgetSpent:
                break
            try:
                return self._pool(address, target).urlopen(
                    "POST",
                    target.path,
                    body=body,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=Timeout(connect=connect, read=read),
                    preload_content=False,
                )
            except NewConnectionError as exc:  # refused, unreachable: try the next address
                failure = f"{address}: {exc}"
            except HTTPError as exc:
                raise _network_error(exc) from None
        raise _transient(f"cannot connect to {target.host} within the time budget ({failure})", None)

    def _pool(self, address: str, target: _Target) -> HTTPConnectionPool:
        key = (address, target.scheme, target.port, target.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = self._pools[key] = self._new_pool(address, target)
            evicted = self._pools.popitem(last=False)[1] if len(self._pools) > _MAX_POOLS else None
        if evicted is not None:
            evicted.close()
        return pool

    def _new_pool(self, address: str, target: _Target) -> HTTPConnectionPool:
        import urllib3

        if target.scheme == "http":
            return urllib3.HTTPConnectionPool(address, target.port, maxsize=4)
        import certifi

        host = target.host.strip("[]").removesuffix(".")
        return urllib3.HTTPSConnectionPool(
            address,
            target.port,
            maxsize=4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=self._ca_certs or certifi.where(),
            server_hostname=host,
            assert_hostname=host,
        )


def _release(response: BaseHTTPResponse) -> None:
    """Keep the connection warm when the answer's body is small; else drop it. The status is what counts."""
    from urllib3.exceptions import HTTPError

    remaining = response.length_remaining
    try:
        if remaining is not None and remaining <= 64 * 1024:
            response.drain_conn()
            response.release_conn()
            return
    except (HTTPError, OSError):
        pass
    response.close()
    response.release_conn()


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


def _network_error(exc: Exception) -> TransientDeliveryError | OutcomeUnknownError:
    """No answer: transient if the connection was never made, else the POST may have been taken."""
    from urllib3.exceptions import ConnectTimeoutError, ProxyError, SSLError

    reason = f"{type(exc).__name__}: {exc}"
    # A TLS failure is taken as the handshake's, before anything was sent, as http.py does.
    if isinstance(exc, ConnectTimeoutError | SSLError | ProxyError):
        return _transient(reason, None)
    return OutcomeUnknownError(  # ReadTimeoutError, ProtocolError (reset, closed): after sending
        f"no answer after the request was sent ({reason}); it may have been accepted",
        channel=NAME,
        provider=PROVIDER,
    )


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
