"""One-click unsubscribe links (RFC 8058): signed tokens for (channel, address, category).

A token carries what it unsubscribes, readable, and an HMAC-SHA256 over it
keyed with NOTIFY_SECRET_KEY: `notify web` needs no lookup to act on it (a
link in a mail read years later still works after its delivery was purged),
and without the key no one can make one for another address or category.
A token that does not verify reads as None, and `notify web` answers it as it
answers a good one: the endpoint tells nobody which tokens are real.

    url = unsubscribe_url(settings, "email", "ada@example.com", "marketing")
    target = read_token(settings, url.rpartition("/")[2])   # Target(...) or None
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from notify.errors import ConfigurationError
from notify.settings import Settings

__all__ = ["PATH", "Target", "check_settings", "read_token", "token", "unsubscribe_url"]

PATH = "/u/"  # where `notify web` answers unsubscribe links: PATH + token
_VERSION = "1"
_PURPOSE = b"notify unsubscribe v1\x00"  # the key signs other things too (the console's forms)
_MAC_BYTES = 16  # 128 bits: not guessable, and a link short enough for a mail client
MAX_TOKEN = 2048  # longer is not one of ours: refused before any decoding


@dataclass(frozen=True)
class Target:
    """What a token unsubscribes: `address` on `channel` from template `category`."""

    channel: str
    address: str
    category: str


def check_settings(settings: Settings, template: str) -> None:
    """`ConfigurationError` unless unsubscribe links can be made: NOTIFY_PUBLIC_URL and NOTIFY_SECRET_KEY."""
    missing = [
        name
        for name, value in (
            ("NOTIFY_PUBLIC_URL", settings.public_url),
            ("NOTIFY_SECRET_KEY", settings.secret_key),
        )
        if value is None
    ]
    if missing:
        raise ConfigurationError(
            f"template {template!r} has unsubscribe = true: set {' and '.join(missing)} "
            "(its emails carry a signed one-click unsubscribe link to notify web)",
            setting=missing[0],
        )


def token(settings: Settings, channel: str, address: str, category: str) -> str:
    """The signed token for (channel, address, category)."""
    payload = json.dumps([channel, address, category], ensure_ascii=False, separators=(",", ":")).encode()
    return f"{_VERSION}.{_b64(payload)}.{_b64(_mac(_key(settings), payload))}"


def unsubscribe_url(settings: Settings, channel: str, address: str, category: str) -> str:
    """The one-click link: NOTIFY_PUBLIC_URL + /u/ + token."""
    if settings.public_url is None:
        raise ConfigurationError("unsubscribe links need NOTIFY_PUBLIC_URL", setting="NOTIFY_PUBLIC_URL")
    return settings.public_url.rstrip("/") + PATH + token(settings, channel, address, category)


def read_token(settings: Settings, value: str) -> Target | None:
    """What `value` unsubscribes if it is a token this key signed, else None (never raises for it)."""
    if len(value) > MAX_TOKEN or not value.isascii():
        return None
    version, _, rest = value.partition(".")
    encoded, _, mac = rest.partition(".")
    if version != _VERSION:
        return None
    try:
        payload, given = _unb64(encoded), _unb64(mac)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(given, _mac(_key(settings), payload)):
        return None
    try:
        channel, address, category = json.loads(payload)
    except (ValueError, TypeError):  # signed by us, so never; but not worth a 500
        return None
    if not all(isinstance(x, str) for x in (channel, address, category)):
        return None
    return Target(channel, address, category)


def _key(settings: Settings) -> bytes:
    if settings.secret_key is None:
        raise ConfigurationError("unsubscribe tokens need NOTIFY_SECRET_KEY", setting="NOTIFY_SECRET_KEY")
    return settings.secret_key.reveal().encode()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _PURPOSE + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or any(c in text for c in "=+/"):
        raise ValueError("not unpadded base64url")
    standard = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(standard + "=" * (-len(text) % 4), validate=True)
