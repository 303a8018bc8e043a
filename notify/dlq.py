"""Dead letters: deliveries that failed for good, to list, replay and purge.

from notify import dlq
for letter in dlq.list():
    print(letter.id, letter.channel, letter.reason)
dlq.replay([letter.id])      # a fresh attempt cycle, same delivery id
dlq.replay_all()
dlq.purge()
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from notify.schema import utcnow

if TYPE_CHECKING:
    from notify.store import Queued, Store

__all__ = ["DeadLetter", "Replayed", "mask", "purge", "replay", "replay_all"]


@dataclass(frozen=True)
class DeadLetter:
    id: str
    notification_id: str
    channel: str
    address: str
    template: str
    reason: str | None
    code: str | None
    attempts: int
    failed_at: datetime

    @property
    def masked_address(self) -> str:
        return mask(self.address)

    @property
    def age_seconds(self) -> float:
        return (utcnow() - self.failed_at).total_seconds()


@dataclass(frozen=True)
class Replayed:
    replayed: builtins.list[str]
    not_found: builtins.list[str]  # unknown ids, or deliveries that are not failed


def mask(address: str) -> str:
    """Enough of an address to recognise it, not enough to harvest it."""
    if "@" in address:
        user, _, domain = address.rpartition("@")
        return f"{user[:1]}***@{domain}"
    if address.startswith("+"):
        return address[:4] + "*" * max(len(address) - 6, 0) + address[-2:]
    return address[:6] + "…" if len(address) > 6 else "***"


def list_dead_letters(
    store: Store, *, channel: str | None = None, limit: int = 100
) -> builtins.list[DeadLetter]:
    return store.dead_letters(channel=channel, limit=limit)


def reset_for_replay(store: Store, ids: Sequence[str] | None) -> builtins.list[Queued]:
    """Put failed deliveries (these, or all) back to "queued" with no attempts."""
    return store.replay(ids)


def purge_dead_letters(store: Store) -> int:
    return store.purge_dead_letters()


# -- the module-level API, on the process-wide settings -------------------------


def list(*, channel: str | None = None, limit: int = 100) -> builtins.list[DeadLetter]:
    """Failed deliveries, newest first."""
    from notify.api import default_notifier

    return list_dead_letters(default_notifier().store, channel=channel, limit=limit)


def replay(ids: builtins.list[str]) -> Replayed:
    """Start a fresh attempt cycle for these failed deliveries (same ids)."""
    from notify.api import default_notifier

    return default_notifier().replay(ids)


def replay_all() -> Replayed:
    from notify.api import default_notifier

    return default_notifier().replay(None)


def purge() -> int:
    """Delete every dead letter; returns how many."""
    from notify.api import default_notifier

    return purge_dead_letters(default_notifier().store)
