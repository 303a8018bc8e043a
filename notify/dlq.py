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
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from notify.models import Status
from notify.schema import _aware, deliveries, notifications, utcnow
from notify.store import Queued, Store


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
    d = deliveries.c
    query = (
        sa.select(
            d.id,
            d.notification_id,
            d.channel,
            d.address,
            notifications.c.template,
            d.last_error,
            d.error_code,
            d.attempts,
            d.failed_at,
        )
        .join(notifications)
        .where(d.status == Status.FAILED)
        .order_by(d.failed_at.desc())
        .limit(limit)
    )
    if channel is not None:
        query = query.where(d.channel == channel)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        DeadLetter(
            id=r.id,
            notification_id=r.notification_id,
            channel=r.channel,
            address=r.address,
            template=r.template,
            reason=r.last_error,
            code=r.error_code,
            attempts=r.attempts,
            failed_at=_aware(r.failed_at) or utcnow(),
        )
        for r in rows
    ]


def reset_for_replay(store: Store, ids: builtins.list[str] | None) -> builtins.list[Queued]:
    """Put failed deliveries (these, or all) back to "queued" with no attempts."""
    d = deliveries.c
    failed = d.status == Status.FAILED
    where = failed if ids is None else sa.and_(failed, d.id.in_(ids))
    return store.requeue(
        where, limit=100_000, attempts=0, failed_at=None, next_attempt_at=None, release_at=None
    )


def purge_dead_letters(store: Store) -> int:
    with store.engine.begin() as conn:
        return conn.execute(deliveries.delete().where(deliveries.c.status == Status.FAILED)).rowcount


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
