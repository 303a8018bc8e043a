"""Standard Webhooks signatures, keyed with the secret (or secrets, during a rotation) of each URL.

Each request carries `webhook-id` (the delivery id), `webhook-timestamp`
(Unix seconds) and `webhook-signature`: "v1,<base64 of HMAC-SHA256 over
'<id>.<timestamp>.<body>'>" for each valid secret, space-separated, so that
receivers verify with the standardwebhooks libraries in any language
(https://www.standardwebhooks.com). Which secrets a URL is signed with is
asked of the NOTIFY_WEBHOOK_SECRETS hook at every attempt; without one, or
when it answers None, NOTIFY_WEBHOOK_SECRET signs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Final

from notify.channels.webhook import NAME
from notify.errors import ConfigurationError, TransientDeliveryError
from notify.settings import Secret

__all__ = ["SECRETS_VARIABLE", "SECRET_VARIABLE", "SecretsHook", "WebhookSecrets", "sign", "signing_key"]

SECRET_VARIABLE: Final = "NOTIFY_WEBHOOK_SECRET"
SECRETS_VARIABLE: Final = "NOTIFY_WEBHOOK_SECRETS"
_PREFIX: Final = "whsec_"

SecretsHook = Callable[[str], str | Sequence[str] | None]
"""(webhook URL) -> its secret, the list of its valid secrets during a rotation, or None: the default."""

log = logging.getLogger(__name__)


def signing_key(secret: str) -> bytes:
    """The HMAC key of `secret`: a `whsec_` secret's base64 after the prefix decoded (as the
    standardwebhooks libraries do), any other its UTF-8 bytes; ValueError, never showing it, if
    there is none."""
    if not isinstance(secret, str):
        raise ValueError(f"a secret must be a string, not {type(secret).__name__}")
    if not secret.startswith(_PREFIX):
        try:
            key = secret.encode()
        except UnicodeEncodeError:  # its message would quote a character of it
            raise ValueError("a secret must be UTF-8 text, without lone surrogates") from None
    else:
        encoded = secret.removeprefix(_PREFIX).rstrip("=")
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
            raise ValueError(f"a secret that starts with {_PREFIX} must be base64 after it") from None
    if not key:
        raise ValueError("a secret must not be empty")
    return key


def sign(keys: Sequence[bytes], delivery_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature value: "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>" per key,
    space-separated.

    The id is signed, so a captured request cannot be replayed under a fresh id
    past the receiver's deduplication.
    """
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digests = (hmac.new(key, signed, hashlib.sha256).digest() for key in keys)
    return " ".join(f"v1,{base64.b64encode(digest).decode('ascii')}" for digest in digests)


class WebhookSecrets:
    """The keys each webhook URL is signed with: the hook's answer for it, else the default secret.

    The hook is called at every attempt, not cached: a rotation applies from
    the next attempt after its answer changes (a hook that reads a slow store
    caches on its own side).
    """

    def __init__(self, default: Secret, hook: SecretsHook | None = None) -> None:
        try:
            self._default = (signing_key(default.reveal()),)
        except ValueError as exc:
            raise ConfigurationError(f"{SECRET_VARIABLE}: {exc}", setting=SECRET_VARIABLE) from None
        self._hook = hook

    def keys_for(self, url: str) -> tuple[bytes, ...]:
        """The keys to sign a request to `url` with, newest first; `TransientDeliveryError` (nothing
        sent) if the hook fails or answers something that is not a secret."""
        if self._hook is None:
            return self._default
        try:
            answer = self._hook(url)
        except Exception as exc:  # its message may quote a secret or the URL's token: the type only
            raise _hook_error(f"raised {type(exc).__name__}") from None
        if answer is None:
            return self._default
        secrets = [answer] if isinstance(answer, str) else answer
        if not isinstance(secrets, list | tuple) or not secrets:
            raise _hook_error(f"returned {type(answer).__name__}, not a secret or a non-empty list of them")
        try:
            return tuple(dict.fromkeys(signing_key(secret) for secret in secrets))
        except ValueError as exc:
            raise _hook_error(f"returned an unusable secret ({exc})") from None

    def __repr__(self) -> str:
        return f"WebhookSecrets(hook={self._hook is not None})"


def _hook_error(problem: str) -> TransientDeliveryError:
    reason = f"{SECRETS_VARIABLE} {problem} for this URL; nothing was sent"
    log.warning("webhook not signed: %s", reason)
    return TransientDeliveryError(reason, channel=NAME, provider="webhook", code="webhook_secret")
