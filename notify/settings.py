"""Settings, read from the environment (and a `.env` file) when first needed."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from notify.errors import ConfigurationError
from notify.policy import parse_duration


class Secret:
    """A value that never shows in a repr, a log line or an error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Every knob of notify; field metadata names its environment variable."""

    home: Path = field(default=Path(".notify"), metadata={"env": "NOTIFY_HOME"})
    broker_url: str | None = field(default=None, metadata={"env": "NOTIFY_BROKER_URL"})
    database_url: str | None = field(default=None, metadata={"env": "NOTIFY_DATABASE_URL"})
    templates_dir: Path = field(default=Path("templates"), metadata={"env": "NOTIFY_TEMPLATES_DIR"})
    config_path: Path | None = field(default=None, metadata={"env": "NOTIFY_CONFIG"})
    max_data_bytes: int = field(default=65536, metadata={"env": "NOTIFY_MAX_DATA_BYTES"})

    email_backend: str = field(default="smtp", metadata={"env": "NOTIFY_EMAIL_BACKEND"})
    sms_backend: str = field(default="twilio", metadata={"env": "NOTIFY_SMS_BACKEND"})
    push_backend: str = field(default="fcm", metadata={"env": "NOTIFY_PUSH_BACKEND"})

    smtp_host: str = field(default="localhost", metadata={"env": "NOTIFY_SMTP_HOST"})
    smtp_port: int = field(default=25, metadata={"env": "NOTIFY_SMTP_PORT"})
    smtp_username: str | None = field(default=None, metadata={"env": "NOTIFY_SMTP_USERNAME"})
    smtp_password: Secret | None = field(default=None, metadata={"env": "NOTIFY_SMTP_PASSWORD"})
    smtp_tls: str = field(default="starttls", metadata={"env": "NOTIFY_SMTP_TLS"})
    smtp_timeout: float = field(default=30.0, metadata={"env": "NOTIFY_SMTP_TIMEOUT"})
    email_from: str | None = field(default=None, metadata={"env": "NOTIFY_EMAIL_FROM"})

    twilio_account_sid: str | None = field(default=None, metadata={"env": "NOTIFY_TWILIO_ACCOUNT_SID"})
    twilio_auth_token: Secret | None = field(default=None, metadata={"env": "NOTIFY_TWILIO_AUTH_TOKEN"})
    twilio_from: str | None = field(default=None, metadata={"env": "NOTIFY_TWILIO_FROM"})
    twilio_base_url: str = field(default="https://api.twilio.com", metadata={"env": "NOTIFY_TWILIO_BASE_URL"})

    fcm_credentials: Path | None = field(default=None, metadata={"env": "NOTIFY_FCM_CREDENTIALS"})
    fcm_project_id: str | None = field(default=None, metadata={"env": "NOTIFY_FCM_PROJECT_ID"})
    fcm_base_url: str = field(default="https://fcm.googleapis.com", metadata={"env": "NOTIFY_FCM_BASE_URL"})

    # How long Redis may hold an unacknowledged message before handing it to
    # another worker. Recovery does not depend on it (the store's leases do);
    # a message redelivered early is refused by the claim and dropped.
    visibility_timeout: float = field(default=120.0, metadata={"env": "NOTIFY_VISIBILITY_TIMEOUT"})
    # The longest one attempt's provider calls may take (connect, requests,
    # token refresh). SMTP's wait for the reply to the end of DATA is the one
    # exception: RFC 5321 gives it 10 minutes, and abandoning it early resends.
    delivery_timeout: float = field(default=30.0, metadata={"env": "NOTIFY_DELIVERY_TIMEOUT"})
    # How long a worker's claim on a delivery lives without a heartbeat. The
    # worker renews it every lease/3 while the attempt runs; when a worker
    # dies, another takes the delivery over within lease + sweep cadence.
    lease_seconds: float = field(default=10.0, metadata={"env": "NOTIFY_LEASE"})
    # Deliveries left "queued" this long are re-published even when their
    # channel's queues are not empty (a message the broker lost under a backlog).
    sweep_after: float = field(default=300.0, metadata={"env": "NOTIFY_SWEEP_AFTER"})
    # Sent and duplicate deliveries, and expired dedup claims, are purged after this.
    retention: float = field(default=30 * 86400.0, metadata={"env": "NOTIFY_RETENTION"})
    # "module:function" called as f(channel, address, error) when a delivery
    # fails for good, e.g. to delete a push token FCM calls UNREGISTERED.
    on_permanent_failure: str | None = field(default=None, metadata={"env": "NOTIFY_ON_PERMANENT_FAILURE"})

    @property
    def lease(self) -> float:
        """How long a worker's claim on a delivery lasts without a heartbeat."""
        return self.lease_seconds

    @property
    def heartbeat_every(self) -> float:
        """How often a worker renews the claims of the attempts it is running."""
        return self.lease_seconds / 3

    @property
    def release_every(self) -> float:
        """How often a worker releases what is due (send_at, retries): the lateness bound."""
        return 0.5

    @property
    def sweep_every(self) -> float:
        """How often a worker looks for deliveries nobody is working on."""
        return min(2.0, self.lease_seconds / 2)

    def __post_init__(self) -> None:
        if self.smtp_tls not in ("none", "starttls", "tls"):
            raise ConfigurationError(
                f"NOTIFY_SMTP_TLS must be none, starttls or tls, not {self.smtp_tls!r}",
                setting="NOTIFY_SMTP_TLS",
            )
        if self.max_data_bytes <= 0:
            raise ConfigurationError(
                "NOTIFY_MAX_DATA_BYTES must be a positive number of bytes",
                setting="NOTIFY_MAX_DATA_BYTES",
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: `.env` overlaid by os.environ)."""
        if environ is None:
            environ = {k: v for k, v in dotenv_values(".env").items() if v is not None}
            environ.update(os.environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f.metadata["env"], str(f.type), raw)
        return cls(**values)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'notify.db').resolve()}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def resolved_config_path(self) -> Path | None:
        if self.config_path is not None:
            return self.config_path
        default = Path("notify.toml")
        return default if default.exists() else None

    def require(self, *names: str) -> None:
        """Raise `ConfigurationError` naming the first of `names` that is unset."""
        by_name = {f.name: f for f in fields(self)}
        for name in names:
            if getattr(self, name) in (None, ""):
                variable = by_name[name].metadata["env"]
                raise ConfigurationError(f"{variable} is required but not set", setting=variable)


def _convert(variable: str, type_name: str, raw: str) -> Any:
    try:
        if "Secret" in type_name:
            return Secret(raw)
        if "Path" in type_name:
            return Path(raw)
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return parse_duration(raw, key=variable)
    except ValueError:
        raise ConfigurationError(f"{variable} must be a number, not {raw!r}", setting=variable) from None
    return raw


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built from the environment on first use."""
    return Settings.from_env()
