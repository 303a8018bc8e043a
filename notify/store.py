"""The store: notifications, deliveries, dedup claims and dead letters.

SQLAlchemy Core on SQLite (the default; WAL, one writer at a time) or
PostgreSQL. Every state change is one conditional UPDATE, so concurrent
workers and producers agree on who owns a delivery without locks held
across provider calls.

A claim is a lease with a token: the worker that holds it renews it while
it works (heartbeat), and only the holder of the current token can record
the outcome, so a worker that lost its claim cannot overwrite a newer one.
Time comes from one clock: the database's on PostgreSQL (workers on other
hosts may be skewed), the host's on SQLite (every process shares it).
Nothing outside this module speaks SQL; the driver's errors leave it as
`StoreUnavailable`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from notify.dlq import DeadLetter
from notify.errors import StoreUnavailable
from notify.models import Channel, Delivery, Status
from notify.schema import create_engine, dedup_claims, deliveries, metadata, notifications, utcnow

__all__ = ["Clock", "DeadLetter", "Job", "NewDelivery", "Queued", "Refusal", "Store", "utcnow"]

Clock = Callable[[], datetime]
BATCH = 500  # rows per maintenance statement: bounded transactions, bounded IN lists


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
    claim: str  # the token that fences this attempt's outcome


class Queued(NamedTuple):
    """A delivery that is (again) "queued", to publish on its channel and priority."""

    id: str
    channel: str
    priority: str


@dataclass(frozen=True)
class Refusal:
    """Why a claim was refused: done, held by the store, claimed by a live worker, or unknown."""

    status: str | None  # None: no such delivery


class DatabaseClock:
    """The database server's time, read once a minute and carried on by the monotonic clock.

    Immune to this host's wall clock being wrong or stepping, at one query a minute.
    """

    RESYNC_EVERY = 60.0

    def __init__(self, read: Callable[[], datetime]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._base: datetime | None = None
        self._at = 0.0

    def __call__(self) -> datetime:
        with self._lock:
            elapsed = time.monotonic() - self._at
            if self._base is None or elapsed > self.RESYNC_EVERY:
                self._base, self._at, elapsed = self._read(), time.monotonic(), 0.0
            return self._base + timedelta(seconds=elapsed)


class Store:
    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.engine = create_engine(url)
        postgres = self.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if postgres else sqlite.insert
        self.now: Clock = clock or (DatabaseClock(self._database_time) if postgres else utcnow)
        with self._guard():
            self._create_schema()

    def _create_schema(self) -> None:
        try:
            metadata.create_all(self.engine)
        except sa.exc.DatabaseError:  # another process created it at the same moment
            metadata.create_all(self.engine)
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns(deliveries.name)}
        if "claim_token" not in columns:  # a store made by notify 0.1
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {deliveries.name} ADD COLUMN claim_token VARCHAR(36)"))

    def _database_time(self) -> datetime:
        with self._guard(), self.engine.connect() as conn:
            value: datetime = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
        return value

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """The driver's connection errors, as ours: the caller may retry later."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"the store is unavailable: {type(exc.orig).__name__}") from exc
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise StoreUnavailable("the store is unavailable: connection lost") from exc

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with self._guard(), self.engine.begin() as conn:
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
        with self._tx() as conn:
            now = self.now()
            conn.execute(
                notifications.insert().values(
                    id=notification_id, template=template, locale=locale, data=data_json, created_at=now
                )
            )
            return [self._insert_delivery(conn, notification_id, d, now) for d in new]

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
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.notification_id == notification_id)
                .order_by(deliveries.c.channel)
            ).all()
        return [_delivery(row) for row in rows]

    def get(self, delivery_id: str) -> Delivery | None:
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(sa.select(deliveries).where(deliveries.c.id == delivery_id)).first()
        return _delivery(row) if row else None

    # -- workers -------------------------------------------------------------

    def claim(self, delivery_id: str, lease: float) -> Job | Refusal:
        """Take `delivery_id` for one try, or say why not (done, held, claimed by a live worker)."""
        d = deliveries.c
        n = notifications.c
        of_notification = n.id == d.notification_id
        token = str(uuid.uuid4())
        with self._tx() as conn:
            now = self.now()
            claimable = sa.or_(
                d.status == Status.QUEUED, sa.and_(d.status == Status.SENDING, d.lease_until < now)
            )
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
                    claim_token=token,
                    next_attempt_at=None,
                    release_at=None,
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
                status = conn.execute(sa.select(d.status).where(d.id == delivery_id)).scalar()
                return Refusal(status=status)
        return Job(
            delivery_id=row.id,
            channel=row.channel,
            address=row.address,
            priority=row.priority,
            attempts=row.attempts,
            template=row.template,
            locale=row.locale,
            data=json.loads(row.data),
            claim=token,
        )

    def renew(self, claims: Collection[str], lease: float) -> set[str]:
        """Extend these claims' leases (a heartbeat); return the ones still held."""
        if not claims:
            return set()
        d = deliveries.c
        held: set[str] = set()
        for chunk in _chunks(list(claims)):
            with self._tx() as conn:
                now = self.now()
                held.update(
                    conn.execute(
                        deliveries.update()
                        .where(d.claim_token.in_(chunk), d.status == Status.SENDING)
                        .values(lease_until=now + timedelta(seconds=lease))
                        .returning(d.claim_token)
                    ).scalars()
                )
        return held

    def mark_sent(self, job: Job, provider_id: str | None) -> bool:
        """Record that the provider accepted it; False if this claim was no longer current."""
        return self._finish(job, status=Status.SENT, provider_id=provider_id, sent_at=self.now())

    def mark_retrying(self, job: Job, reason: str, code: str | None, at: datetime) -> bool:
        """Record a failed try; the store holds the delivery until `at`, then releases it."""
        return self._finish(
            job, status=Status.RETRYING, last_error=reason, error_code=code, next_attempt_at=at, release_at=at
        )

    def mark_failed(self, job: Job, reason: str, code: str | None) -> bool:
        return self._finish(
            job,
            status=Status.FAILED,
            last_error=reason,
            error_code=code,
            failed_at=self.now(),
            next_attempt_at=None,
        )

    def _finish(self, job: Job, **values: Any) -> bool:
        """Record the outcome of a try and end its claim, only if the claim is still this one."""
        d = deliveries.c
        with self._tx() as conn:
            done = conn.execute(
                deliveries.update()
                .where(d.id == job.delivery_id, d.claim_token == job.claim, d.status == Status.SENDING)
                .values(lease_until=None, claim_token=None, updated_at=self.now(), **values)
            )
        return bool(done.rowcount)

    # -- maintenance (every worker runs it; see notify.maintenance) ------------

    def release_due(self, channels: Collection[str] | None = None) -> list[Queued]:
        """Held deliveries (send_at, retries) whose time has come, set back to "queued"."""
        d = deliveries.c

        def due(now: datetime) -> sa.ColumnElement[bool]:
            waiting = d.status.in_([Status.SCHEDULED, Status.RETRYING])
            return sa.and_(waiting, sa.or_(d.release_at <= now, d.release_at.is_(None)))

        return self._requeue(due, channels, release_at=None)

    def reclaim_expired(self, channels: Collection[str] | None = None) -> list[Queued]:
        """Deliveries whose worker stopped renewing its claim (it died), set back to "queued"."""
        d = deliveries.c

        def expired(now: datetime) -> sa.ColumnElement[bool]:
            return sa.and_(d.status == Status.SENDING, d.lease_until < now)

        return self._requeue(expired, channels, lease_until=None, claim_token=None)

    def queued_since(self, seconds: float, channels: Collection[str] | None = None) -> list[Queued]:
        """Deliveries "queued" for `seconds` with nobody claiming them: their message may be lost.

        Each is stamped as published now, so it is offered again only after
        another `seconds`: a sweep publishes a delivery once, not every tick.
        """
        d = deliveries.c

        def lost(now: datetime) -> sa.ColumnElement[bool]:
            return sa.and_(d.status == Status.QUEUED, d.updated_at < now - timedelta(seconds=seconds))

        return self._requeue(lost, channels)

    def _requeue(
        self,
        where: Callable[[datetime], sa.ColumnElement[bool]],
        channels: Collection[str] | None,
        **values: Any,
    ) -> list[Queued]:
        """Set up to BATCH deliveries matching `where(now)` to "queued" (with `values`); return them."""
        d = deliveries.c
        with self._tx() as conn:
            now = self.now()
            condition = where(now) if channels is None else sa.and_(where(now), d.channel.in_(channels))
            ids = conn.execute(sa.select(d.id).where(condition).limit(BATCH)).scalars().all()
            if not ids:
                return []
            rows = conn.execute(
                deliveries.update()
                .where(d.id.in_(ids), condition)  # re-checked: another process may have won
                .values(status=Status.QUEUED, updated_at=now, **values)
                .returning(d.id, d.channel, d.priority)
            ).all()
        return [Queued(*row) for row in rows]

    def purge_finished(self, older_than: float) -> int:
        """Delete sent and duplicate deliveries older than that, and expired dedup claims."""
        d = deliveries.c
        with self._tx() as conn:
            now = self.now()
            cutoff = now - timedelta(seconds=older_than)
            removed = conn.execute(
                deliveries.delete().where(
                    d.status.in_([Status.SENT, Status.DUPLICATE]), d.updated_at < cutoff
                )
            ).rowcount
            conn.execute(dedup_claims.delete().where(dedup_claims.c.expires_at < now))
            self._delete_orphan_notifications(conn, created_before=cutoff)
        return int(removed)

    def _delete_orphan_notifications(self, conn: sa.Connection, *, created_before: datetime) -> None:
        d = deliveries.c
        orphans = sa.select(d.notification_id).where(d.notification_id == notifications.c.id)
        conn.execute(
            notifications.delete().where(notifications.c.created_at < created_before, ~sa.exists(orphans))
        )

    # -- dead letters ----------------------------------------------------------

    def dead_letters(self, *, channel: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Failed deliveries, newest first."""
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
        with self._guard(), self.engine.connect() as conn:
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
                failed_at=r.failed_at,
            )
            for r in rows
        ]

    def replay(self, ids: Sequence[str] | None) -> list[Queued]:
        """Put failed deliveries (these, or all) back to "queued" for a fresh attempt cycle."""
        d = deliveries.c
        fresh = {"attempts": 0, "failed_at": None, "next_attempt_at": None, "release_at": None}
        replayed: list[Queued] = []
        if ids is None:
            while batch := self._requeue(lambda _: d.status == Status.FAILED, None, **fresh):
                replayed += batch
            return replayed
        for chunk in _chunks(list(dict.fromkeys(ids))):
            replayed += self._requeue(_failed_among(chunk), None, **fresh)
        return replayed

    def purge_dead_letters(self) -> int:
        """Delete every failed delivery, the dedup claims they held, and notifications left empty."""
        d = deliveries.c
        failed = sa.select(d.id).where(d.status == Status.FAILED)
        with self._tx() as conn:
            conn.execute(dedup_claims.delete().where(dedup_claims.c.delivery_id.in_(failed)))
            removed = conn.execute(deliveries.delete().where(d.status == Status.FAILED)).rowcount
            self._delete_orphan_notifications(conn, created_before=self.now() + timedelta(days=1))
        return int(removed)


def _failed_among(ids: list[str]) -> Callable[[datetime], sa.ColumnElement[bool]]:
    return lambda _now: sa.and_(deliveries.c.status == Status.FAILED, deliveries.c.id.in_(ids))


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


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
        next_attempt_at=row.next_attempt_at,
        sent_at=row.sent_at,
        duplicate_of=row.duplicate_of,
    )
