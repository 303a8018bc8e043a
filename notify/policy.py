"""Per-channel delivery policies: retries, backoff, dedup window, rate limit."""

from __future__ import annotations

import math
import random
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from notify.constants import MAX_RETRY_AFTER
from notify.errors import ConfigurationError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RATE = re.compile(r"^\d+(?:\.\d+)?(/[smh])?$")


def parse_duration(value: object, *, key: str = "duration") -> float:
    """Seconds from a number or a string like "500ms", "10s", "5m", "24h"."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{key}: expected a duration, got {value!r}", setting=key)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise ConfigurationError(
            f'{key}: expected seconds or a string like "500ms", "10s", "5m", "24h", got {value!r}',
            setting=key,
        )
    if not math.isfinite(seconds):
        raise ConfigurationError(f"{key}: must be a finite number of seconds, got {value!r}", setting=key)
    if seconds < 0:
        raise ConfigurationError(f"{key}: must not be negative, got {value!r}", setting=key)
    return seconds


@dataclass(frozen=True)
class ChannelPolicy:
    max_attempts: int = 6
    backoff_initial: float = 10.0
    backoff_multiplier: float = 2.0
    backoff_max: float = 1800.0
    jitter: bool = True
    dedup_window: float = 86400.0
    rate_limit: str | None = None  # Celery syntax ("100/s", "10/m", "1/h"; a bare number is per second)

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based).

        A provider's `retry_after` hint wins when longer, in full: retrying
        before the provider said it would accept is never right. Only a hint
        past `MAX_RETRY_AFTER` (a day) and `backoff_max` is cut there, so a hint
        of years cannot park the delivery outside the dead letters.
        """
        try:
            base = self.backoff_initial * self.backoff_multiplier ** max(attempt - 1, 0)
        except OverflowError:
            base = self.backoff_max
        delay = min(base, self.backoff_max)
        if self.jitter:
            delay = random.uniform(0, delay)
        if retry_after is not None and not math.isnan(retry_after):
            delay = max(delay, min(max(retry_after, 0.0), max(MAX_RETRY_AFTER, self.backoff_max)))
        return delay

    @property
    def rate_per_second(self) -> float | None:
        """`rate_limit` as deliveries per second; None for no limit (unset, or 0 as in Celery)."""
        if self.rate_limit is None:
            return None
        number, _, unit = self.rate_limit.partition("/")
        per_second = float(number) / _UNIT_SECONDS[unit or "s"]
        return per_second or None


_DURATION_KEYS = {"backoff_initial", "backoff_max", "dedup_window"}


def load_policies(path: Path | None, defaults: Mapping[str, ChannelPolicy]) -> dict[str, ChannelPolicy]:
    """Each channel's policy: `defaults` (by channel), overridden by `[channels.<name>]` tables of `path`."""
    if path is None:
        return dict(defaults)
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}", setting="NOTIFY_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}", setting="NOTIFY_CONFIG") from None
    channels = document.get("channels", {})
    if not isinstance(channels, dict):
        raise ConfigurationError(f"{path}: channels must be a table", setting="NOTIFY_CONFIG")
    unknown = set(document) - {"channels"} | set(channels) - set(defaults)
    if unknown:
        raise ConfigurationError(f"{path}: unknown section {sorted(unknown)[0]!r}", setting="NOTIFY_CONFIG")
    return {
        name: _policy(f"{path}: channels.{name}", default, channels.get(name, {}))
        for name, default in defaults.items()
    }


def _policy(where: str, base: ChannelPolicy, table: object) -> ChannelPolicy:
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: must be a table", setting="NOTIFY_CONFIG")
    known = {f.name for f in fields(ChannelPolicy)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigurationError(
                f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})", setting="NOTIFY_CONFIG"
            )
        values[key] = _value(f"{where}.{key}", key, value)
    policy = replace(base, **values)
    _check_bounds(where, policy)
    return policy


def _check_bounds(where: str, policy: ChannelPolicy) -> None:
    """Refuse the values that parse but make no sense together."""
    problems = [
        ("max_attempts", policy.max_attempts < 1, "must be at least 1"),
        ("backoff_initial", policy.backoff_initial <= 0, "must be more than 0 (a retry loop with no pause)"),
        (
            "backoff_max",
            policy.backoff_max < policy.backoff_initial,
            f"must be at least backoff_initial ({policy.backoff_initial:g}s)",
        ),
    ]
    for key, wrong, reason in problems:
        if wrong:
            raise ConfigurationError(f"{where}.{key}: {reason}", setting="NOTIFY_CONFIG")


def _value(where: str, key: str, value: object) -> object:
    if key in _DURATION_KEYS:
        try:
            return parse_duration(value, key=where)
        except ConfigurationError as exc:
            raise ConfigurationError(str(exc), setting="NOTIFY_CONFIG") from None
    expected: dict[str, type | tuple[type, ...]] = {
        "max_attempts": int,
        "backoff_multiplier": (int, float),
        "jitter": bool,
        "rate_limit": str,
    }
    if not isinstance(value, expected[key]) or (key != "jitter" and isinstance(value, bool)):
        raise ConfigurationError(f"{where}: wrong type {type(value).__name__}", setting="NOTIFY_CONFIG")
    if key == "backoff_multiplier" and float(value) < 1:  # type: ignore[arg-type]
        raise ConfigurationError(f"{where}: must be at least 1", setting="NOTIFY_CONFIG")
    if key == "rate_limit" and not _RATE.match(str(value)):
        raise ConfigurationError(
            f'{where}: expected Celery rate syntax like "100/s", got {value!r}', setting="NOTIFY_CONFIG"
        )
    return float(value) if key == "backoff_multiplier" else value  # type: ignore[arg-type]
