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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from notify.models import Channel, Delivery, Status

metadata = sa.MetaData()
_ts = sa.DateTime(timezone=True)

notifications = sa.Table(
    "notify_notifications",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("template", sa.String(200), nullable=False),
    sa.Column("locale", sa.String(35)),
    sa.Column("data", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", _ts, nullable=False),
)

deliveries = sa.Table(
    "notify_deliveries",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "notification_id", sa.String(36), sa.ForeignKey(notifications.c.id), nullable=False, index=True
    ),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(512), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("dedup_key", sa.String(200)),
    sa.Column("duplicate_of", sa.String(36)),
    sa.Column("provider_id", sa.String(300)),
    sa.Column("last_error", sa.Text),
    sa.Column("error_code", sa.String(64)),
    sa.Column("created_at", _ts, nullable=False),
    sa.Column("updated_at", _ts, nullable=False),
    sa.Column("next_attempt_at", _ts),
    sa.Column("release_at", _ts),  # set while the store, not the broker, holds the next try
    sa.Column("lease_until", _ts),  # while "sending": the worker's claim
    sa.Column("sent_at", _ts),
    sa.Column("failed_at", _ts),
    sa.Index("ix_notify_deliveries_status_release", "status", "release_at"),
)

dedup_claims = sa.Table(
    "notify_dedup_claims",
    metadata,
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("address", sa.String(512), primary_key=True),
    sa.Column("dedup_key", sa.String(200), primary_key=True),
    sa.Column("delivery_id", sa.String(36), nullable=False),
    sa.Column("expires_at", _ts, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


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


@dataclass(frozen=True)
class Refusal:
    """Why a claim was refused: the delivery is done, or another worker holds it."""

    status: str | None  # None: no such delivery
    retry_in: float | None = None  # another worker's lease, or not yet due


def create_engine(url: str) -> sa.Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    database = sa.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let "begin" below emit BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sa.Connection) -> None:
        # Take the write lock up front: a deferred transaction that reads and
        # then writes fails with SQLITE_BUSY instead of waiting its turn.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


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
        data: dict[str, Any],
        new: Iterable[NewDelivery],
    ) -> list[Delivery]:
        """Record a notification and its deliveries; claim dedup keys atomically."""
        now = utcnow()
        result: list[Delivery] = []
        with self._tx() as conn:
            conn.execute(
                notifications.insert().values(
                    id=notification_id,
                    template=template,
                    locale=locale,
                    data=json.dumps(data),
                    created_at=now,
                )
            )
            for d in new:
                holder = self._claim_dedup(conn, d, now) if d.dedup_key else d.id
                status = d.status if holder == d.id else Status.DUPLICATE
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
                        duplicate_of=None if holder == d.id else holder,
                        created_at=now,
                        updated_at=now,
                        release_at=d.release_at,
                        next_attempt_at=d.release_at,
                    )
                )
                result.append(
                    Delivery(
                        id=d.id,
                        notification_id=notification_id,
                        channel=Channel(d.channel),
                        status=status,
                        next_attempt_at=d.release_at,
                        duplicate_of=None if holder == d.id else holder,
                    )
                )
        return result

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
        with self._tx() as conn:
            claimed = conn.execute(
                deliveries.update()
                .where(d.id == delivery_id, claimable)
                .values(
                    status=Status.SENDING,
                    attempts=d.attempts + 1,
                    updated_at=now,
                    lease_until=now + timedelta(seconds=lease),
                    next_attempt_at=None,
                )
            ).rowcount
            row = conn.execute(
                sa.select(deliveries, notifications.c.template, notifications.c.locale, notifications.c.data)
                .join(notifications)
                .where(d.id == delivery_id)
            ).first()
        if row is None:
            return Refusal(status=None)
        if not claimed:
            return _refusal(row, now)
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
        now = utcnow()
        self._finish(
            delivery_id,
            status=Status.SENT,
            provider_id=provider_id,
            sent_at=now,
            lease_until=None,
            updated_at=now,
        )

    def mark_retrying(
        self,
        delivery_id: str,
        reason: str,
        code: str | None,
        at: datetime,
        *,
        held: bool,
    ) -> None:
        """Record a failed try; `held`: the store (not the broker) releases the next one."""
        self._finish(
            delivery_id,
            status=Status.RETRYING,
            last_error=reason,
            error_code=code,
            next_attempt_at=at,
            release_at=at if held else None,
            lease_until=None,
            updated_at=utcnow(),
        )

    def mark_failed(self, delivery_id: str, reason: str, code: str | None) -> None:
        now = utcnow()
        self._finish(
            delivery_id,
            status=Status.FAILED,
            last_error=reason,
            error_code=code,
            failed_at=now,
            lease_until=None,
            next_attempt_at=None,
            updated_at=now,
        )

    def _finish(self, delivery_id: str, **values: Any) -> None:
        with self._tx() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id, deliveries.c.status == Status.SENDING)
                .values(**values)
            )

    # -- scheduler -----------------------------------------------------------

    def release_due(self, limit: int = 500) -> list[tuple[str, str, str]]:
        """Move held deliveries whose time has come to "queued": (id, channel, priority)."""
        now = utcnow()
        d = deliveries.c
        with self._tx() as conn:
            due = (
                conn.execute(
                    sa.select(d.id)
                    .where(d.release_at <= now, d.status.in_([Status.SCHEDULED, Status.RETRYING]))
                    .order_by(d.release_at)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            if not due:
                return []
            rows = conn.execute(
                deliveries.update()
                .where(d.id.in_(due), d.release_at <= now)
                .values(status=Status.QUEUED, release_at=None, updated_at=now)
                .returning(d.id, d.channel, d.priority)
            ).all()
        return [(r.id, r.channel, r.priority) for r in rows]

    def reclaim_stuck(self, queued_for: float, limit: int = 500) -> list[tuple[str, str, str]]:
        """Deliveries nobody is working on, set back to "queued": (id, channel, priority).

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
        with self._tx() as conn:
            ids = conn.execute(sa.select(d.id).where(lost).limit(limit)).scalars().all()
            if not ids:
                return []
            rows = conn.execute(
                deliveries.update()
                .where(d.id.in_(ids), lost)
                .values(status=Status.QUEUED, lease_until=None, updated_at=now)
                .returning(d.id, d.channel, d.priority)
            ).all()
        return [(r.id, r.channel, r.priority) for r in rows]

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
    if row.release_at is not None:
        return Refusal(row.status, retry_in=None)  # the store releases it when due
    return Refusal(row.status)


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
