"""Providers, one module each, picked by `NOTIFY_<CHANNEL>_BACKEND`.

Named by dotted path and imported only when a worker asks for one, so a
producer never imports aiosmtplib, twilio or pyfcm. A backend may also be a
dotted path of your own ("mypackage.providers:MyProvider").
"""

from __future__ import annotations

import importlib
from typing import Any

from notify.channels.base import Provider
from notify.errors import ConfigurationError
from notify.settings import Settings

PROVIDERS: dict[str, dict[str, str]] = {
    "email": {
        "smtp": "notify.channels.email:SmtpProvider",
        "outbox": "notify.channels.outbox:OutboxProvider",
    },
    "sms": {
        "twilio": "notify.channels.sms:TwilioProvider",
        "outbox": "notify.channels.outbox:OutboxProvider",
    },
    "push": {"fcm": "notify.channels.push:FcmProvider", "outbox": "notify.channels.outbox:OutboxProvider"},
}


def load_provider(channel: str, settings: Settings) -> Provider:
    """Build `channel`'s configured provider; raise `ConfigurationError` if it cannot."""
    variable = f"NOTIFY_{channel.upper()}_BACKEND"
    backend: str = getattr(settings, f"{channel}_backend")
    path = PROVIDERS[channel].get(backend, backend if ":" in backend else None)
    if path is None:
        known = ", ".join(PROVIDERS[channel])
        raise ConfigurationError(
            f"{variable}={backend!r} is not a backend ({known}, or a dotted path module:Class)",
            setting=variable,
        )
    provider: Provider = _import(path, variable).from_settings(settings)
    return provider


def _import(path: str, variable: str) -> Any:
    """The object a "module:attribute" path names; `ConfigurationError` naming `variable` if none."""
    module_name, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:  # ValueError: an empty module name
        raise ConfigurationError(
            f"{variable} {path!r} does not import ({type(exc).__name__}: {exc})", setting=variable
        ) from None
