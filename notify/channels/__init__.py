"""The channel registry: every channel is declared once, by a `ChannelSpec` in its own module.

notify's own channels are the modules of this package named in `BUILTIN`
(each defines `CHANNEL`); another package adds one through the entry point
group `notify.channels`, naming its spec:

    [project.entry-points."notify.channels"]
    fax = "mypackage.fax:CHANNEL"

The core (`send()`, rendering, policies, delivery, the outbox, `notify.testing`,
the CLI) iterates the registry and names no channel. A spec's module is
imported by producers, so it never imports a provider (nor its library):
providers are named by dotted path and loaded by the worker
(`notify.providers.load_provider`); a provider may import its channel.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from notify.errors import ConfigurationError
from notify.policy import ChannelPolicy
from notify.settings import Settings, backend_variable, import_named

__all__ = [
    "BUILTIN",
    "ENTRY_POINTS",
    "ChannelSpec",
    "Message",
    "by_address",
    "channel",
    "channels",
    "default_policies",
    "names",
]

ENTRY_POINTS = "notify.channels"
BUILTIN = ("email", "sms", "push", "webhook")  # modules of this package: listed, not scanned


@dataclass(frozen=True)
class Message:
    """One rendered message for one delivery; each channel subclasses it (`EmailMessage`, ...)."""

    delivery_id: str
    channel: ClassVar[str]  # the channel whose message it is


AddressCheck = Callable[[object, Settings], str]
MessageBuilder = Callable[[str, str, Mapping[str, str], Settings], Message]
RenderedCheck = Callable[[Mapping[str, str]], str | None]
OutboxFiles = Callable[[Message, Settings], Mapping[str, bytes]]


@dataclass(frozen=True)
class ChannelSpec:
    """Everything the core knows about one channel.

    Args:
        name: the channel's name, in `channels=[...]`, queue names and `NOTIFY_<NAME>_BACKEND`.
        address: the `to` key (and `Recipient` attribute) that addresses it, e.g. "phone".
        check_address: `(value, settings) -> address as sent`; raises `ValidationError`
            naming `to.<address>` for a value the channel cannot send to.
        parts: template part -> file name under `templates/<name>/`, e.g. {"body": "sms.txt.j2"}.
            A template has the channel when every required part's file exists.
        build: `(delivery_id, address, rendered parts, settings) -> Message`, in the worker.
        policy: the retry and dedup policy `notify.toml` overrides.
        backends: backend name -> "module:Class" of a `Provider`; `NOTIFY_<NAME>_BACKEND`
            picks one of these or names a dotted path of its own.
        default_backend: the backend used when `NOTIFY_<NAME>_BACKEND` is unset.
        rank: where the channel sorts among the others (listings, defaults, CLI).
        optional_parts: parts a template may leave out (an email's HTML).
        single_line_parts: parts whose whitespace is folded into one line (headers, titles).
        check_rendered: `(rendered parts) -> problem or None`, at `send()`: the provider's
            size limits, a body's format; a problem is refused before anything is recorded.
        outbox_files: `(message, settings) -> {suffix: content}`, files the outbox backend
            writes beside `<id>.json` (an email's `.eml`); or its "module:function" path, for a
            function that lives with the providers (imported by the worker only).
        plural: the `notify.testing.Outbox` attribute listing this channel's messages.
        check_settings: `(settings) -> anything`, reads the channel's own settings (not its
            provider's) and raises `ConfigurationError` for a bad one: called when a worker
            loads the provider, so a bad setting stops the start whatever the backend.
    """

    name: str
    address: str
    check_address: AddressCheck
    parts: Mapping[str, str]
    build: MessageBuilder
    policy: ChannelPolicy
    backends: Mapping[str, str]
    default_backend: str
    rank: int
    optional_parts: frozenset[str] = frozenset()
    single_line_parts: frozenset[str] = frozenset()
    check_rendered: RenderedCheck | None = None
    outbox_files: OutboxFiles | str | None = None
    plural: str = ""
    check_settings: Callable[[Settings], object] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", MappingProxyType(dict(self.parts)))
        object.__setattr__(self, "backends", MappingProxyType(dict(self.backends)))
        if not self.plural:
            object.__setattr__(self, "plural", self.name)

    @property
    def backend_variable(self) -> str:
        """`NOTIFY_<NAME>_BACKEND`, which picks the channel's provider."""
        return backend_variable(self.name)

    @property
    def required_parts(self) -> dict[str, str]:
        return {p: f for p, f in self.parts.items() if p not in self.optional_parts}


def channels() -> Mapping[str, ChannelSpec]:
    """Every registered channel by name, in rank order."""
    return _registry()


def names() -> tuple[str, ...]:
    """The registered channels' names, in rank order."""
    return tuple(_registry())


def channel(name: str) -> ChannelSpec:
    """The spec of channel `name`; `KeyError` if none is registered."""
    return _registry()[name]


def by_address() -> Mapping[str, ChannelSpec]:
    """Every registered channel by the address kind that reaches it ("phone" -> sms)."""
    return _by_address()


@functools.cache
def _by_address() -> Mapping[str, ChannelSpec]:
    return MappingProxyType({spec.address: spec for spec in _registry().values()})


def default_policies() -> dict[str, ChannelPolicy]:
    """Each channel's own policy, before `notify.toml` overrides it."""
    return {name: spec.policy for name, spec in _registry().items()}


@functools.cache
def _registry() -> Mapping[str, ChannelSpec]:
    found: dict[str, ChannelSpec] = {}
    for spec, origin in [*_builtin(), *_entry_points()]:
        _check(spec, origin)
        if spec.name in found:
            raise ConfigurationError(f"{origin}: a channel named {spec.name!r} is already registered")
        for other in found.values():
            if other.address == spec.address:
                raise ConfigurationError(
                    f"{origin}: the {other.name} channel already uses the address {spec.address!r}"
                )
            shared = sorted(set(other.parts.values()) & set(spec.parts.values()))
            if shared:
                raise ConfigurationError(f"{origin}: the {other.name} channel already reads {shared[0]}")
        found[spec.name] = spec
    ordered = sorted(found.values(), key=lambda s: (s.rank, s.name))
    return MappingProxyType({s.name: s for s in ordered})


def _builtin() -> list[tuple[ChannelSpec, str]]:
    return [
        (import_named(f"{__name__}.{name}:CHANNEL", setting="CHANNEL"), f"{__name__}.{name}")
        for name in BUILTIN
    ]


def _entry_points() -> list[tuple[ChannelSpec, str]]:
    specs = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        origin = f"entry point {ENTRY_POINTS}:{entry.name} ({entry.value})"
        try:
            specs.append((entry.load(), origin))
        except Exception as exc:
            raise ConfigurationError(f"{origin} does not import ({type(exc).__name__}: {exc})") from None
    return specs


def _check(spec: object, origin: str) -> None:
    if not isinstance(spec, ChannelSpec):
        raise ConfigurationError(f"{origin} is a {type(spec).__name__}, not a notify.channels.ChannelSpec")
    if not spec.name.isidentifier() or not spec.name.islower():
        raise ConfigurationError(f"{origin}: channel name {spec.name!r} must be a lowercase identifier")
    if not spec.address.isidentifier() or spec.address.startswith("_"):
        raise ConfigurationError(f"{origin}: address {spec.address!r} must be an identifier")
    if spec.default_backend not in spec.backends or not spec.required_parts:
        raise ConfigurationError(f"{origin}: needs a default backend among its backends and a required part")
