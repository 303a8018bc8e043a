"""Providers, one module each, picked by `NOTIFY_<CHANNEL>_BACKEND`.

Named by dotted path and imported only when a worker asks for one, so a
producer never imports aiosmtplib, twilio or pyfcm. A backend may also be a
dotted path of your own ("mypackage.providers:MyProvider").
"""

from __future__ import annotations

from notify.errors import ConfigurationError
from notify.providers.base import Provider
from notify.settings import Settings, import_named

PROVIDERS: dict[str, dict[str, str]] = {
    "email": {
        "smtp": "notify.providers.smtp:SmtpProvider",
        "outbox": "notify.providers.outbox:OutboxProvider",
    },
    "sms": {
        "twilio": "notify.providers.twilio:TwilioProvider",
        "outbox": "notify.providers.outbox:OutboxProvider",
    },
    "push": {"fcm": "notify.providers.fcm:FcmProvider", "outbox": "notify.providers.outbox:OutboxProvider"},
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
    provider: Provider = import_named(path, setting=variable).from_settings(settings)
    return provider
