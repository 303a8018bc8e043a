"""Providers: one module per service a channel delivers through, and what they share.

    base.py     the contract: `deliver(message) -> Receipt`
    http.py     what the HTTP providers share: the time budget, Retry-After, which
                client errors mean "nothing was sent", one requests base
    smtp.py     email over SMTP (aiosmtplib); mime.py builds the message it carries
    twilio.py   SMS through Twilio
    fcm.py      push through FCM HTTP v1
    webhook.py  signed webhook POSTs (urllib3, the address pinned after its check);
                webhook_signing.py signs them the Standard Webhooks way, with each URL's secrets
    outbox.py   the development backend: files instead of sends

A channel's spec names its providers by dotted path; the worker loads the
configured one with `load_provider`. Producers import none of this.
"""

from __future__ import annotations

from notify import channels as registry
from notify.errors import ConfigurationError, NotifyError
from notify.providers.base import Provider
from notify.settings import Settings, import_named

__all__ = ["VARIABLES", "load_provider"]

# Every NOTIFY_* variable the built-in channels and providers read (their settings classes:
# EmailSettings, SmtpSettings, TwilioSettings, FcmSettings, WebhookSettings, WebhookProviderSettings),
# written out so that a worker names a misspelt one without importing every provider's client
# library; tests/test_settings.py checks it against the classes.
VARIABLES = frozenset(
    {
        "NOTIFY_EMAIL_FROM",
        *(f"NOTIFY_SMTP_{s}" for s in ("HOST", "PORT", "USERNAME", "PASSWORD", "TLS", "TIMEOUT")),
        *(f"NOTIFY_TWILIO_{s}" for s in ("ACCOUNT_SID", "AUTH_TOKEN", "FROM", "BASE_URL")),
        *(f"NOTIFY_FCM_{s}" for s in ("CREDENTIALS", "PROJECT_ID", "BASE_URL")),
        *(f"NOTIFY_WEBHOOK_{s}" for s in ("SECRET", "SECRETS", "ALLOW_PRIVATE")),
    }
)


def load_provider(name: str, settings: Settings) -> Provider:
    """Build channel `name`'s configured provider; raise `ConfigurationError` if it cannot."""
    spec = registry.channel(name)
    if spec.check_settings is not None:
        spec.check_settings(settings)
    backend = settings.backend(spec.name) or spec.default_backend
    path = spec.backends.get(backend, backend if ":" in backend else None)
    if path is None:
        known = ", ".join(spec.backends)
        raise ConfigurationError(
            f"{spec.backend_variable}={backend!r} is not a backend ({known}, or a dotted path module:Class)",
            setting=spec.backend_variable,
        )
    cls = import_named(path, setting=spec.backend_variable)
    try:
        provider: Provider = cls.from_settings(settings)
    except NotifyError:
        raise
    except Exception as exc:  # a provider's bug is still one line naming what to look at
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigurationError(
            f"{spec.backend_variable} {path!r} cannot be built from its settings ({reason})",
            setting=spec.backend_variable,
        ) from None
    return provider
