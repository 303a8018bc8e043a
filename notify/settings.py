"""Settings, read from the environment (and a `.env` file) when first needed."""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import operator
import os
import re
import tempfile
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from dotenv import dotenv_values

from notify.constants import (
    HEARTBEAT_EVERY_MAX,
    LEASE_MAX,
    LEASE_MIN,
    RELEASE_EVERY,
    SWEEP_AFTER_MIN,
    SWEEP_EVERY_MAX,
    VISIBILITY_TIMEOUT_MIN,
)
from notify.errors import ConfigurationError, PermanentDeliveryError
from notify.policy import parse_duration

PermanentFailureHook = Callable[[str, str, PermanentDeliveryError], None]
StatusHook = Callable[[str, str, str, str | None], None]  # (delivery_id, channel, status, code)
T = TypeVar("T")

MIB = 1024 * 1024
SECRET_KEY_MIN = 32  # characters of NOTIFY_SECRET_KEY
WEB_PASSWORD_MIN = 12  # characters of NOTIFY_WEB_PASSWORD: it is guessed over the network
LOG_FORMATS = ("text", "json")
# Celery broker URL schemes notify's routing knows how to configure; "sqlite"
# selects the embedded broker (kombu's SQLAlchemy transport) at that path.
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "sqla+", "sqlalchemy+", "sqlite")
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg")


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


@dataclass(frozen=True, repr=False)
class Settings:
    """notify's own knobs; field metadata names its environment variable and bounds.

    Channels and providers declare theirs in their own modules (`SmtpSettings`,
    `WebhookSettings`, ...) and read them from `environ` with `provider_settings`.
    """

    home: Path = field(default=Path(".notify"), metadata={"env": "NOTIFY_HOME"})
    # Secrets (a URL may hold a password): neither repr nor dataclasses.asdict() shows them in clear.
    broker_url: Secret | None = field(default=None, metadata={"env": "NOTIFY_BROKER_URL"})
    database_url: Secret | None = field(default=None, metadata={"env": "NOTIFY_DATABASE_URL"})
    templates_dir: Path = field(default=Path("templates"), metadata={"env": "NOTIFY_TEMPLATES_DIR"})
    config_path: Path | None = field(default=None, metadata={"env": "NOTIFY_CONFIG"})
    max_data_bytes: int = field(
        default=65536, metadata={"env": "NOTIFY_MAX_DATA_BYTES", "bounds": (1, 16 * MIB)}
    )

    # How long Redis may hold an unacknowledged message before handing it to
    # another worker. Recovery does not depend on it (the store's leases do);
    # a message redelivered early is refused by the claim and dropped.
    visibility_timeout: float = field(
        default=120.0,
        metadata={"env": "NOTIFY_VISIBILITY_TIMEOUT", "bounds": (VISIBILITY_TIMEOUT_MIN, 86400.0)},
    )
    # The longest one attempt's provider calls may take (connect, requests,
    # token refresh). SMTP's wait for the reply to the end of DATA is the one
    # exception: RFC 5321 gives it 10 minutes, and abandoning it early resends.
    delivery_timeout: float = field(
        default=30.0, metadata={"env": "NOTIFY_DELIVERY_TIMEOUT", "bounds": (1.0, 3600.0)}
    )
    # How long a worker's heartbeat may stand still, as the other workers see
    # it, before they take it for dead and hand its deliveries on: it beats
    # every lease/3, and a dead one's deliveries go on within lease + sweep.
    lease_seconds: float = field(
        default=10.0, metadata={"env": "NOTIFY_LEASE", "bounds": (LEASE_MIN, LEASE_MAX)}
    )
    # Deliveries left "queued" this long are re-published even when their
    # channel's queues are not empty (a message the broker lost under a backlog).
    sweep_after: float = field(
        default=300.0, metadata={"env": "NOTIFY_SWEEP_AFTER", "bounds": (SWEEP_AFTER_MIN, 86400.0)}
    )
    # Sent and duplicate deliveries, and expired dedup claims, are purged after this.
    retention: float = field(
        default=30 * 86400.0, metadata={"env": "NOTIFY_RETENTION", "bounds": (60.0, 3650 * 86400.0)}
    )
    # "module:function" called as f(channel, address, error) when a delivery
    # fails for good, e.g. to delete a push token FCM calls UNREGISTERED.
    on_permanent_failure: str | None = field(default=None, metadata={"env": "NOTIFY_ON_PERMANENT_FAILURE"})
    # "module:function" called as f(delivery_id, channel, status, code) once for each status a
    # provider's answer or receipt sets: sent, failed, delivered, undelivered.
    on_status: str | None = field(default=None, metadata={"env": "NOTIFY_ON_STATUS"})
    # Where `notify web` is reachable from outside: receipts' callbacks and unsubscribe links.
    public_url: str | None = field(default=None, metadata={"env": "NOTIFY_PUBLIC_URL"})
    # Signs unsubscribe tokens: required by `notify web` and by unsubscribe = true templates.
    secret_key: Secret | None = field(default=None, metadata={"env": "NOTIFY_SECRET_KEY"})
    # Observability: the port a worker (or beat) serves Prometheus /metrics on (none: no server),
    # and the log lines' format, text or json (one object per line).
    metrics_port: int | None = field(
        default=None, metadata={"env": "NOTIFY_METRICS_PORT", "bounds": (1, 65535)}
    )
    log_format: str = field(default="text", metadata={"env": "NOTIFY_LOG_FORMAT"})
    # The console's basic-auth password (user admin); without it notify web listens only on loopback.
    web_password: Secret | None = field(default=None, metadata={"env": "NOTIFY_WEB_PASSWORD"})
    # Every NOTIFY_* variable as read, for the settings each provider declares
    # for itself (`provider_settings`); sorted pairs, so that Settings hashes.
    # Each value a Secret: some are passwords, and asdict() would show them.
    environ: tuple[tuple[str, Secret], ...] = field(default=(), repr=False)
    # Backends chosen in code (channel, backend), over NOTIFY_<CHANNEL>_BACKEND: notify.testing's.
    backends: tuple[tuple[str, str], ...] = ()

    @property
    def lease(self) -> float:
        """How long a worker's beats may stand still (as others observe them) before it counts as dead."""
        return self.lease_seconds

    @property
    def heartbeat_every(self) -> float:
        """How often a worker beats (and keeps its bursts' waiting deliveries from the sweep):
        a third of the lease, HEARTBEAT_EVERY_MAX at most."""
        return min(self.lease_seconds / 3, HEARTBEAT_EVERY_MAX)

    @property
    def release_every(self) -> float:
        """How often a worker releases what is due (send_at, retries): the lateness bound."""
        return RELEASE_EVERY

    @property
    def sweep_every(self) -> float:
        """How often a worker looks for deliveries nobody is working on."""
        return min(SWEEP_EVERY_MAX, self.lease_seconds / 2)

    def __post_init__(self) -> None:
        check_bounds(self)
        check_url("NOTIFY_BROKER_URL", revealed(self.broker_url), BROKER_SCHEMES)
        check_url("NOTIFY_DATABASE_URL", revealed(self.database_url), DATABASE_SCHEMES)
        _check_hook_name(self.on_permanent_failure)
        _check_hook_name(self.on_status, "NOTIFY_ON_STATUS")
        _check_public_url(self.public_url)
        object.__setattr__(self, "log_format", self.log_format.strip().lower())
        if self.log_format not in LOG_FORMATS:
            raise ConfigurationError(
                f"NOTIFY_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}",
                setting="NOTIFY_LOG_FORMAT",
            )
        if self.web_password is not None and len(self.web_password.reveal()) < WEB_PASSWORD_MIN:
            raise ConfigurationError(
                f"NOTIFY_WEB_PASSWORD must be at least {WEB_PASSWORD_MIN} characters",
                setting="NOTIFY_WEB_PASSWORD",
            )
        if self.secret_key is not None and len(self.secret_key.reveal()) < SECRET_KEY_MIN:
            raise ConfigurationError(
                f"NOTIFY_SECRET_KEY must be at least {SECRET_KEY_MIN} characters "
                '(python -c "import secrets; print(secrets.token_urlsafe(32))" makes one)',
                setting="NOTIFY_SECRET_KEY",
            )

    def __repr__(self) -> str:
        return masked_repr(self)

    def backend(self, channel: str) -> str | None:
        """The backend NOTIFY_<CHANNEL>_BACKEND (or `backends`) names for `channel`; None: its default."""
        chosen = dict(self.backends).get(channel) or self.variable(backend_variable(channel))
        return chosen or None

    def variable(self, name: str) -> str | None:
        """The NOTIFY_* variable `name` as read, or None if it was not set."""
        return revealed(dict(self.environ).get(name))

    def provider_settings(self, cls: type[T]) -> T:
        """A provider's own settings: the dataclass `cls`, each field read from the
        NOTIFY_* variable its metadata names (`field(metadata={"env": ...})`).

        Read once per settings and class (send() and each delivery ask again); a
        bad value raises every time it is asked for.
        """
        return cast(T, _provider_settings(self, cast(Hashable, cls)))

    def with_environ(self, **variables: str | None) -> Settings:
        """These settings with NOTIFY_* `variables` set (None: unset), as `provider_settings` reads them."""
        environ = dict(self.environ)
        environ.update({k: Secret(v) for k, v in variables.items() if v is not None})
        for name in (k for k, v in variables.items() if v is None):
            environ.pop(name, None)
        return replace(self, environ=tuple(sorted(environ.items())))

    def validate(self) -> None:
        """Check what a process needs beyond valid values: a NOTIFY_HOME it can write."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.home).close()
        except OSError as exc:
            raise ConfigurationError(
                f"NOTIFY_HOME {str(self.home)!r} cannot be created or written: {exc.strerror}",
                setting="NOTIFY_HOME",
            ) from None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: `.env` overlaid by os.environ)."""
        if environ is None:
            environ = {k: v for k, v in _dotenv().items() if v is not None}
            environ.update(os.environ)
        return read_env(
            cls,
            environ,
            environ=tuple(sorted((k, Secret(v)) for k, v in environ.items() if k.startswith("NOTIFY_"))),
        )

    @property
    def resolved_database_url(self) -> str:
        return revealed(self.database_url) or f"sqlite:///{(self.home / 'notify.db').resolve()}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None or _scheme(self.broker_url.reveal()) == "sqlite"

    @property
    def resolved_broker_url(self) -> str:
        return revealed(self.broker_url) or f"sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def resolved_config_path(self) -> Path | None:
        if self.config_path is not None:
            return self.config_path
        default = Path("notify.toml")
        return default if default.exists() else None


def revealed(secret: Secret | None) -> str | None:
    """The value of `secret`, or None."""
    return None if secret is None else secret.reveal()


def _dotenv() -> dict[str, str | None]:
    """The variables of `.env`, if there is one; a `ConfigurationError` if it cannot be read."""
    try:
        return dotenv_values(".env", encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f".env is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})", setting=".env"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f".env cannot be read: {exc.strerror or exc}", setting=".env") from None


def backend_variable(channel: str) -> str:
    """The variable that picks `channel`'s backend: NOTIFY_<CHANNEL>_BACKEND."""
    return f"NOTIFY_{channel.upper()}_BACKEND"


@functools.lru_cache(maxsize=64)
def _provider_settings(settings: Settings, cls: Any) -> Any:
    _read_classes.add(cls)
    return read_env(cls, {name: value.reveal() for name, value in settings.environ})


_read_classes: set[Any] = set()  # every settings class provider_settings has read in this process


def declared_variables(*classes: Any) -> set[str]:
    """The environment variables the settings dataclasses `classes` read (their fields' "env")."""
    return {f.metadata["env"] for cls in classes for f in fields(cls) if "env" in f.metadata}


def unknown_variables(settings: Settings, known: Iterable[str] = ()) -> list[str]:
    """The NOTIFY_* variables set that nothing reads, each with a guess at what was meant:
    `known`, Settings' own, and every settings class a provider of this process has read."""
    known = {*known, *declared_variables(Settings, *_read_classes)}
    unknown = []
    for name, _ in settings.environ:
        if name in known:
            continue
        guess = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        shown = repr(name)[1:-1] if not name.isprintable() else name  # a name is any bytes but = and NUL
        unknown.append(f"{shown} (did you mean {guess[0]}?)" if guess else shown)
    return unknown


def read_env(cls: type[T], variables: Mapping[str, str], /, **given: Any) -> T:
    """An instance of the dataclass `cls`: `given`, and each field whose metadata names an
    environment variable set (not empty) in `variables`, converted to the field's type."""
    values: dict[str, Any] = dict(given)
    for f in fields(cls):  # type: ignore[arg-type]
        variable = f.metadata.get("env")
        raw = variables.get(variable) if variable else None
        if variable and raw is not None and raw != "":
            values[f.name] = _convert(variable, str(f.type), raw)
    return cls(**values)


def required(value: T | None, variable: str) -> T:
    """`value`, if set; else `ConfigurationError` saying `variable` is required but not set."""
    if value is None or value == "":
        raise ConfigurationError(f"{variable} is required but not set", setting=variable)
    return value


def masked_repr(instance: Any) -> str:
    """The repr of the settings dataclass `instance`: Secrets masked, and passwords in `*_url` fields."""
    shown = (f"{f.name}={_masked(f.name, getattr(instance, f.name))!r}" for f in fields(instance) if f.repr)
    return f"{type(instance).__name__}({', '.join(shown)})"


def check_bounds(instance: Any) -> None:
    """Raise `ConfigurationError` for a field of the dataclass `instance` outside its metadata's bounds."""
    for f in fields(instance):
        if "bounds" in f.metadata and getattr(instance, f.name) is not None:
            _check_bounds(f.metadata["env"], str(f.type), getattr(instance, f.name), *f.metadata["bounds"])


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(variable: str, type_name: str, raw: str) -> Any:
    if type_name.startswith("bool"):
        if raw.strip().lower() not in _TRUE + _FALSE:
            raise ConfigurationError(
                f"{variable} must be 1 or 0 (true or false), not {raw!r}", setting=variable
            )
        return raw.strip().lower() in _TRUE
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


def mask_url(url: str) -> str:
    """`url` with the password in it, and password-like query values, shown as ****."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a "port" that may really be a password)
    except ValueError:
        return f"{_scheme(url)}://****"
    user, at, host = parts.netloc.rpartition("@")
    if at and ":" in user:
        url = parts._replace(netloc=f"{user.split(':', 1)[0]}:****@{host}").geturl()
    return _SECRET_QUERY.sub(r"\1****", url)


_SECRET_QUERY = re.compile(r"(?i)([?&;][^=&;#]*(?:password|passwd|pwd|secret|token|key)[^=&;#]*=)[^&;#]*")
_HOOK_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _masked(name: str, value: object) -> object:
    if isinstance(value, Secret) and name.endswith("_url"):
        value = value.reveal()  # a URL says where it points; mask_url hides its password
    return mask_url(value) if name.endswith("_url") and isinstance(value, str) else value


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def _duration(seconds: float) -> str:
    """`seconds` as a duration setting is written: 500ms, 90s, 10m, 30d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _check_bounds(variable: str, type_name: str, value: float, low: float, high: float) -> None:
    show = _duration if type_name.startswith("float") else str
    if not value >= low:  # written so that NaN fails too
        problem = f"at least {show(low)}"
    elif value > high:
        problem = f"at most {show(high)}"
    else:
        return
    raise ConfigurationError(f"{variable} must be {problem}, not {show(value)}", setting=variable)


def check_url(variable: str, url: str | None, schemes: tuple[str, ...]) -> None:
    """Refuse a URL notify cannot use, naming only its scheme: the rest may hold a password."""
    if url is None:
        return
    # A NUL, even percent-encoded, cuts the rest off in the driver (libpq): another host, silently.
    if not url.isprintable() or "%00" in url:
        raise ConfigurationError(f"{variable} holds a control character or %00", setting=variable)
    scheme = _scheme(url)
    if not any(scheme.startswith(s) and scheme != s if s.endswith("+") else scheme == s for s in schemes):
        expected = ", ".join(s if s.endswith("+") else f"{s}://" for s in schemes)
        got = f"{scheme}://" if scheme else "no scheme"
        raise ConfigurationError(f"{variable} must start with one of {expected}; got {got}", setting=variable)
    try:
        urlsplit(url).port  # noqa: B018
    except ValueError:
        raise ConfigurationError(f"{variable} has an invalid host or port", setting=variable) from None


_PUBLIC_URL = re.compile(r"https?://[!-;=?-~]+")


def _check_public_url(url: str | None) -> None:
    """NOTIFY_PUBLIC_URL: an absolute http(s) base URL, nothing after its path."""
    if url is None:
        return
    check_url("NOTIFY_PUBLIC_URL", url, ("http", "https"))
    parts = urlsplit(url)
    if not _PUBLIC_URL.fullmatch(url):  # it goes into List-Unsubscribe as it is: one plain header token
        raise ConfigurationError(
            "NOTIFY_PUBLIC_URL must be printable ASCII without spaces, < or > "
            "(write an international domain as xn--...)",
            setting="NOTIFY_PUBLIC_URL",
        )
    if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            # The value is not echoed: it may carry user:password.
            "NOTIFY_PUBLIC_URL must be a base URL like https://notify.example.com "
            "(no user, password, query or fragment)",
            setting="NOTIFY_PUBLIC_URL",
        )


def _check_hook_name(name: str | None, setting: str = "NOTIFY_ON_PERMANENT_FAILURE") -> None:
    if name is not None and not _HOOK_NAME.fullmatch(name):
        raise ConfigurationError(f"{setting} must be 'module:function', not {name!r}", setting=setting)


def import_named(path: str, *, setting: str) -> Any:
    """What a "module:attribute" path names, imported now; `ConfigurationError` naming `setting` if it fails.

    Importing runs the module, so whatever it raises makes the path unusable.
    """
    module_name, _, attribute = path.partition(":")
    try:
        return operator.attrgetter(attribute)(importlib.import_module(module_name))
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigurationError(f"{setting} {path!r} does not import ({reason})", setting=setting) from None


def import_hook(path: str, *, setting: str) -> Callable[..., Any]:
    """The function a "module:function" `path` names, imported now, so a bad one stops a worker's start;
    `ConfigurationError` naming `setting` if it is not that."""
    _check_hook_name(path, setting)
    hook = import_named(path, setting=setting)
    if not callable(hook):
        raise ConfigurationError(f"{setting} {path!r} is not callable", setting=setting)
    return cast(Callable[..., Any], hook)


def load_hook(settings: Settings) -> PermanentFailureHook | None:
    """Import the NOTIFY_ON_PERMANENT_FAILURE hook now, so a bad one stops the worker's start."""
    if settings.on_permanent_failure is None:
        return None
    return import_hook(settings.on_permanent_failure, setting="NOTIFY_ON_PERMANENT_FAILURE")


def load_status_hook(settings: Settings) -> StatusHook | None:
    """Import the NOTIFY_ON_STATUS hook now, so a bad one stops the process's start."""
    if settings.on_status is None:
        return None
    return import_hook(settings.on_status, setting="NOTIFY_ON_STATUS")


def tell_status(
    hook: StatusHook | None, delivery_id: str, channel: str, status: str, code: str | None
) -> None:
    """Call the NOTIFY_ON_STATUS hook, if any; what it raises is logged, never the caller's."""
    if hook is None:
        return
    try:
        hook(delivery_id, channel, str(status), code)
    except Exception:
        logging.getLogger("notify").exception("on_status hook raised")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built from the environment on first use."""
    return Settings.from_env()
