"""The webhook channel: a signed HTTPS POST of a rendered JSON body to the recipient's URL.

A webhook URL is chosen by whoever registers it, so the worker must not be
turned against its own network (SSRF): `check_url` refuses IP literals and
names that are not public when `send()` is called, and the provider
(`notify.providers.webhook`) resolves the host once, refuses it if any
address is not public (`not_public`), and connects to the address it checked.

Producers import this module (the channel registry loads it in `send()`): it
imports only the standard library and light notify modules.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, NoReturn
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from notify.channels import ChannelSpec, Message
from notify.channels.special_addresses import special_kind
from notify.constants import MAX_ADDRESS
from notify.errors import TemplateError, ValidationError
from notify.models import check_text
from notify.policy import ChannelPolicy
from notify.settings import Settings

__all__ = [
    "ALLOW_PRIVATE_VARIABLE",
    "CHANNEL",
    "MAX_BODY_BYTES",
    "WebhookMessage",
    "WebhookSettings",
    "build_message",
    "check_body",
    "check_url",
    "not_public",
]

NAME: Final = "webhook"
FIELD: Final = "to.webhook"
ALLOW_PRIVATE_VARIABLE: Final = "NOTIFY_WEBHOOK_ALLOW_PRIVATE"
# A notification, not a file transfer: the body is rendered in send() to be
# checked and held in memory per delivery, and receivers commonly cap request
# bodies at 1 MiB or less. 256 KiB leaves room for any event payload.
MAX_BODY_BYTES: Final = 256 * 1024
_LABEL: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_HEX_NUMBER: Final = re.compile(r"0x[0-9a-f]*")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
_COMPATIBLE: Final = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible ::a.b.c.d
_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated

# The WHATWG URL standard's path and (special-scheme) query percent-encode sets, as browsers
# encode them: everything outside printable ASCII, and the ASCII that would end or break the part.
# "%" is not in them: an escape already made is kept as it is, never encoded twice.
_PATH_ESCAPED: Final = re.compile(r'[^\x21-\x7e]|["#<>?^`{}]')
_QUERY_ESCAPED: Final = re.compile(r"[^\x21-\x7e]|[\"#<>']")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class WebhookMessage(Message):
    url: str  # as check_url returned it
    body: str  # JSON text
    channel: ClassVar[str] = NAME


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook channel's own setting: which hosts a URL may name (its provider checks them again)."""

    # For development and private networks: lets webhooks reach this host and its LAN.
    allow_private: bool = field(default=False, metadata={"env": ALLOW_PRIVATE_VARIABLE})


def check_url(value: object, settings: Settings) -> str:
    """`value` as it will be POSTed, if it is an http(s) URL a worker may call; else `ValidationError`.

    As it will be POSTed: the host in its canonical or IDNA ASCII form, the path and query
    percent-encoded as browsers do, no fragment; and that form within `MAX_ADDRESS`, which the
    store keeps. Messages never echo the URL (a webhook URL often carries a token), only its host.
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
    path, query = _PATH_ESCAPED.sub(_escape, parts.path or "/"), _QUERY_ESCAPED.sub(_escape, parts.query)
    normalised = urlunsplit((parts.scheme.lower(), netloc, path, query, ""))
    if len(normalised) > MAX_ADDRESS:  # a longer host, an added "/", escapes: the store keeps this form
        raise ValidationError(
            FIELD, f"is {len(normalised)} characters once normalised, over the limit of {MAX_ADDRESS}"
        )
    return normalised


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


def _escape(match: re.Match[str]) -> str:
    return quote(match.group(), safe="")  # its UTF-8 bytes, as %XX in upper case


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

    The blocks are IANA's special-purpose registries written out
    (`channels.special_addresses`), not the interpreter's tables, which move with
    its patch release; an IPv6 address standing for an IPv4 one is judged as that.
    """
    if address in _COMPATIBLE and int(address) > 1:  # :: and ::1 are told apart below
        return "deprecated IPv4-compatible"
    embedded = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    if embedded is not None:
        return not_public(embedded)
    return special_kind(address)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4, translated), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


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
        "webhook": "notify.providers.webhook:WebhookProvider",
        "outbox": "notify.providers.outbox:OutboxProvider",
    },
    default_backend="webhook",
    plural="webhooks",
    rank=40,
)
