"""The store: notifications, deliveries, dedup claims and dead letters.

SQLAlchemy Core on SQLite (the default; WAL, one writer at a time) or
PostgreSQL. Every state change is one conditional UPDATE, so concurrent
workers and producers agree on who owns a delivery without locks held
across provider calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from notify.models import Channel, Delivery, Status
from notify.schema import _aware, create_engine, dedup_claims, deliveries, metadata, notifications, utcnow

__all__ = ["Job", "NewDelivery", "Queued", "Refusal", "Store", "utcnow"]


@dataclass(frozen=True)
class NewDelivery:
    id: str
    channel: str
    address: str
    priority: str
    status: Status  # queued or scheduled
    dedup_key: str | None = None
    dedup_window: float = 0.0
    release_at: datetime | None = None


@dataclass(frozen=True)
class Job:
    """What a worker needs to attempt one delivery it has claimed."""

    delivery_id: str
    channel: str
    address: str
    priority: str
    attempts: int  # this try included
    template: str
    locale: str | None
    data: dict[str, Any]


class Queued(NamedTuple):
    """A delivery set back to "queued", to publish on its channel and priority."""

    id: str
    channel: str
    priority: str


@dataclass(frozen=True)
class Refusal:
    """Why a claim was refused: the delivery is done, or another worker holds it."""

    status: str | None  # None: no such delivery
    retry_in: float | None = None  # seconds left on another worker's lease


class Store:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        self._create_schema()

    def _create_schema(self) -> None:
        try:
            metadata.create_all(self.engine)
        except sa.exc.DatabaseError:  # another process created it at the same moment
            metadata.create_all(self.engine)

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- producers -----------------------------------------------------------

    def record(
        self,
        notification_id: str,
        template: str,
        locale: str | None,
        data_json: str,
        new: Iterable[NewDelivery],
    ) -> list[Delivery]:
        """Record a notification (its data already JSON) and its deliveries; claim dedup keys atomically."""
        now = utcnow()
        with self._tx() as conn:
            conn.execute(
                notifications.insert().values(
                    id=notification_id,
                    template=template,
                    locale=locale,
                    data=data_json,
                    created_at=now,
                )
            )
            recorded = [self._insert_delivery(conn, notification_id, d, now) for d in new]
        return recorded

    def _insert_delivery(
        self, conn: sa.Connection, notification_id: str, d: NewDelivery, now: datetime
    ) -> Delivery:
        holder = self._claim_dedup(conn, d, now) if d.dedup_key else d.id
        duplicate_of = None if holder == d.id else holder
        status = Status.DUPLICATE if duplicate_of else d.status
        conn.execute(
            deliveries.insert().values(
                id=d.id,
                notification_id=notification_id,
                channel=d.channel,
                address=d.address,
                priority=d.priority,
                status=status,
                attempts=0,
                dedup_key=d.dedup_key,
                duplicate_of=duplicate_of,
                created_at=now,
                updated_at=now,
                release_at=d.release_at,
                next_attempt_at=d.release_at,
            )
        )
        return Delivery(
            id=d.id,
            notification_id=notification_id,
            channel=Channel(d.channel),
            status=status,
            next_attempt_at=d.release_at,
            duplicate_of=duplicate_of,
        )

    def _claim_dedup(self, conn: sa.Connection, d: NewDelivery, now: datetime) -> str:
        """The id of the delivery holding (channel, address, key): ours if we won it."""
        expires = now + timedelta(seconds=d.dedup_window)
        stmt = self._insert(dedup_claims).values(
            channel=d.channel, address=d.address, dedup_key=d.dedup_key, delivery_id=d.id, expires_at=expires
        )
        upsert = stmt.on_conflict_do_update(
            index_elements=["channel", "address", "dedup_key"],
            set_={"delivery_id": stmt.excluded.delivery_id, "expires_at": stmt.excluded.expires_at},
            where=dedup_claims.c.expires_at <= now,
        ).returning(dedup_claims.c.delivery_id)
        won = conn.execute(upsert).scalar()
        if won is not None:
            return str(won)
        holder = conn.execute(
            sa.select(dedup_claims.c.delivery_id).where(
                dedup_claims.c.channel == d.channel,
                dedup_claims.c.address == d.address,
                dedup_claims.c.dedup_key == d.dedup_key,
            )
        ).scalar_one()
        return str(holder)

    def deliveries_of(self, notification_id: str) -> list[Delivery]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.notification_id == notification_id)
                .order_by(deliveries.c.channel)
            ).all()
        return [_delivery(row) for row in rows]

    def get(self, delivery_id: str) -> Delivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(deliveries).where(deliveries.c.id == delivery_id)).first()
        return _delivery(row) if row else None

    # -- workers -------------------------------------------------------------

    def claim(self, delivery_id: str, lease: float) -> Job | Refusal:
        """Take `delivery_id` for one try, or say why not (sent, held, not due)."""
        now = utcnow()
        d = deliveries.c
        claimable = sa.or_(
            d.status == Status.QUEUED,
            sa.and_(d.status == Status.RETRYING, d.release_at.is_(None)),
            sa.and_(d.status == Status.SENDING, d.lease_until < now),
        )
        n = notifications.c
        of_notification = n.id == d.notification_id
        with self._tx() as conn:
            # One round trip: update and read back, the notification's fields by
            # subquery (SQLite's RETURNING cannot name a joined table's columns).
            row = conn.execute(
                deliveries.update()
                .where(d.id == delivery_id, claimable)
                .values(
                    status=Status.SENDING,
                    attempts=d.attempts + 1,
                    updated_at=now,
                    lease_until=now + timedelta(seconds=lease),
                    next_attempt_at=None,
                )
                .returning(
                    d.id,
                    d.channel,
                    d.address,
                    d.priority,
                    d.attempts,
                    sa.select(n.template).where(of_notification).scalar_subquery().label("template"),
                    sa.select(n.locale).where(of_notification).scalar_subquery().label("locale"),
                    sa.select(n.data).where(of_notification).scalar_subquery().label("data"),
                )
            ).first()
            if row is None:
                held = conn.execute(sa.select(deliveries).where(d.id == delivery_id)).first()
                return Refusal(status=None) if held is None else _refusal(held, now)
        return Job(
            delivery_id=row.id,
            channel=row.channel,
            address=row.address,
            priority=row.priority,
            attempts=row.attempts,
            template=row.template,
            locale=row.locale,
            data=json.loads(row.data),
        )

    def mark_sent(self, delivery_id: str, provider_id: str | None) -> None:
        self._finish(delivery_id, status=Status.SENT, provider_id=provider_id, sent_at=utcnow())

    def mark_retrying(
        self, delivery_id: str, reason: str, code: str | None, at: datetime, *, held: bool
    ) -> None:
        """Record a failed try; `held`: the store (not the broker) releases the next one."""
        self._finish(
            delivery_id,
            status=Status.RETRYING,
            last_error=reason,
            error_code=code,
            next_attempt_at=at,
            release_at=at if held else None,
        )

    def mark_failed(self, delivery_id: str, reason: str, code: str | None) -> None:
        self._finish(
            delivery_id,
            status=Status.FAILED,
            last_error=reason,
            error_code=code,
            failed_at=utcnow(),
            next_attempt_at=None,
        )

    def _finish(self, delivery_id: str, **values: Any) -> None:
        """Record the outcome of a try, and end its claim; only while it is "sending"."""
        with self._tx() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id, deliveries.c.status == Status.SENDING)
                .values(lease_until=None, updated_at=utcnow(), **values)
            )

    # -- scheduler -----------------------------------------------------------

    def requeue(self, where: sa.ColumnElement[bool], *, limit: int = 500, **values: Any) -> list[Queued]:
        """Set deliveries matching `where` back to "queued" (with `values`); return them."""
        d = deliveries.c
        with self._tx() as conn:
            ids = conn.execute(sa.select(d.id).where(where).limit(limit)).scalars().all()
            if not ids:
                return []
            rows = conn.execute(
                deliveries.update()
                .where(d.id.in_(ids), where)  # re-checked: another process may have won
                .values(status=Status.QUEUED, updated_at=utcnow(), **values)
                .returning(d.id, d.channel, d.priority)
            ).all()
        return [Queued(*row) for row in rows]

    def release_due(self) -> list[Queued]:
        """Held deliveries (send_at, long retry delays) whose time has come."""
        d = deliveries.c
        due = sa.and_(d.release_at <= utcnow(), d.status.in_([Status.SCHEDULED, Status.RETRYING]))
        return self.requeue(due, release_at=None)

    def reclaim_stuck(self, queued_for: float) -> list[Queued]:
        """Deliveries nobody is working on.

        That is, queued for `queued_for` seconds (a broker lost the message, or
        send() could not enqueue it), or claimed by a worker whose lease ran out
        (it died mid-delivery).
        """
        now = utcnow()
        d = deliveries.c
        lost = sa.or_(
            sa.and_(d.status == Status.QUEUED, d.updated_at < now - timedelta(seconds=queued_for)),
            sa.and_(d.status == Status.SENDING, d.lease_until < now),
        )
        return self.requeue(lost, lease_until=None)

    def purge_finished(self, older_than: float) -> int:
        """Delete sent and duplicate deliveries older than that, and expired dedup claims."""
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than)
        d = deliveries.c
        with self._tx() as conn:
            removed = conn.execute(
                deliveries.delete().where(
                    d.status.in_([Status.SENT, Status.DUPLICATE]), d.updated_at < cutoff
                )
            ).rowcount
            conn.execute(dedup_claims.delete().where(dedup_claims.c.expires_at < now))
            orphans = sa.select(d.notification_id).where(d.notification_id == notifications.c.id)
            conn.execute(
                notifications.delete().where(notifications.c.created_at < cutoff, ~sa.exists(orphans))
            )
        return int(removed)


def _refusal(row: Any, now: datetime) -> Refusal:
    if row.status == Status.SENDING and row.lease_until is not None:
        return Refusal(row.status, retry_in=(_aware(row.lease_until) - now).total_seconds())  # type: ignore[operator]
    return Refusal(row.status)  # done, or held by the store until it releases it


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        notification_id=row.notification_id,
        channel=Channel(row.channel),
        status=Status(row.status),
        attempts=row.attempts,
        last_error=row.last_error,
        error_code=row.error_code,
        provider_id=row.provider_id,
        next_attempt_at=_aware(row.next_attempt_at),
        sent_at=_aware(row.sent_at),
        duplicate_of=row.duplicate_of,
    )
