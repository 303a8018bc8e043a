"""The Store: every read and write of notifications, deliveries, dedup claims and dead letters.

SQLAlchemy Core on SQLite (the default; WAL, one writer at a time) or
PostgreSQL. Every state change is one conditional UPDATE, so concurrent
workers and producers agree on who owns a delivery without locks held
across provider calls; on PostgreSQL each runs autocommitted, one round
trip (a send() too, as one INSERT with a CTE, and a try's outcome with its
attempt row, as one UPDATE and INSERT with a CTE).

A claim is a lease with a token: the worker that holds it renews it while
it works (heartbeat), and only the holder of the current token can record
the outcome, so a worker that lost its claim cannot overwrite a newer one.
Time comes from one clock: the database's on PostgreSQL (workers on other
hosts may be skewed), the host's on SQLite (every process shares it).
Nothing outside this package speaks SQL; the driver's errors leave it as
`StoreUnavailable`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from notify.constants import MAX_CODE, MAX_PROVIDER_ID, MAX_REASON
from notify.errors import CoreCode, SchemaOutdated, StoreUnavailable
from notify.models import DeadLetter, Delivery, Priority, Status, Suppression, SuppressionReason, utcnow
from notify.settings import mask_url
from notify.store.clock import Clock, DatabaseClock
from notify.store.engines import create_engine, unavailable, write_lock
from notify.store.rows import (
    AttemptRecord,
    Claim,
    DeliveryRecord,
    NewDelivery,
    NewNotification,
    NewReceipt,
    Queued,
    ReceiptTarget,
    Refusal,
)
from notify.store.schema import (
    ATTEMPTS_SINCE,
    REVISION,
    SCHEMA_LOCK,
    SUPPRESSIONS_SINCE,
    attempts,
    dedup_claims,
    deliveries,
    metadata,
    notifications,
    receipts,
    revision_of,
    schema_version,
    suppressions,
    workers,
)
from notify.store.statements import Ending, Statements, record_one_statement, suppressed, worker_alive
from notify.store.text import storable

log = logging.getLogger("notify.store")

MAX_PROVIDER_NAME = 32  # an attempt row's provider (its column's size)
REVISION_RECHECK = 10.0  # seconds: how often a producer on an older schema looks again
BATCH = 500  # rows per maintenance statement: bounded transactions, bounded IN lists
# PostgreSQL errors that say the store cannot take this now, not that the statement is wrong:
# a read-only transaction (a failover's demoted primary), a server shutting down or starting.
_PURGED = (Status.SENT, Status.DELIVERED, Status.UNDELIVERED, Status.DUPLICATE, Status.SUPPRESSED)
# What a try came to, in an attempt row: notify.observability.metrics.AttemptOutcome's words
# (the store sits below it). A try found suppressed, or given back, is uncounted: no row.
SENT, RETRY, FAILED, UNKNOWN = "sent", "retry", "failed", "unknown"
_UNAVAILABLE_STATES = frozenset({"25006", "57P01", "57P02", "57P03", "08000", "08003", "08006"})


class Store:
    """`require_current`: refuse to work (SchemaOutdated) on a store whose schema is not this
    release's revision, as workers and `notify web` do; a producer's store takes any and never
    changes an existing schema (it only makes a new one)."""

    def __init__(self, url: str, *, clock: Clock | None = None, require_current: bool = False) -> None:
        self.engine = create_engine(url)
        self.require_current = require_current
        self.revision: str | None = None  # the schema's, once seen; None: made before revisions
        postgres = self.engine.dialect.name == "postgresql"
        # SQLite writes go through an engine of their own (BEGIN IMMEDIATE, short
        # retries, one writer per process); on PostgreSQL one engine does both.
        self._writer = self.engine if postgres else create_engine(url, writer=True)
        self._write_lock = write_lock(self._writer)
        self.now: Clock = clock or (DatabaseClock(self._database_time) if postgres else utcnow)
        self._sql = Statements(postgresql.insert if postgres else sqlite.insert)
        # PostgreSQL records a send() in one autocommitted statement (_record_in_one_statement).
        self._compiled: dict[tuple[int, bool], str] = {}  # that statement's SQL, by number of deliveries
        self._one_statement = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT") if postgres else None
        )
        # Created on first use, not here: a worker that starts while the database is away
        # starts (its attempts and maintenance wait the outage out), as a producer does.
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._warned = False
        self._revision_read_at = time.monotonic()  # made or read on first use

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self.revision = self._create_schema()
                self._schema_ready = True
        self.check_revision()

    def check_revision(self) -> None:
        """SchemaOutdated if this store must be current and is not; a producer's is only warned about."""
        if self.revision == REVISION:
            return
        outdated = SchemaOutdated(self.revision, REVISION)
        if self.require_current:
            raise outdated
        if not self._warned:
            self._warned = True
            log.warning("%s (producers go on; workers refuse to start)", outdated)

    def schema_revision(self) -> str | None:
        """The schema's revision, making the schema first if the database has none (StoreUnavailable
        if it does not answer; SchemaOutdated if this store must be current and is not)."""
        with self._guard():
            return self.revision

    def _create_schema(self) -> str | None:
        """Make the tables at this release's revision if the database has none; the revision found."""
        # Not under this process's write lock: the caller may hold it (a write's first statement).
        with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":  # one process makes it; the others wait, then see it
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK)))
            tables = set(sa.inspect(conn).get_table_names())
            if deliveries.name not in tables:
                metadata.create_all(conn)
                schema_version.create(conn, checkfirst=True)
                conn.execute(schema_version.delete())
                conn.execute(schema_version.insert().values(version_num=REVISION))
                return REVISION
            return revision_of(conn)

    def _database_time(self) -> datetime:
        with self._guard(), self.engine.connect() as conn:
            value: datetime = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
        return value

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """The driver's connection errors, as ours: the caller may retry later (the schema is made first)."""
        try:
            self._ensure_schema()
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise self._unavailable(exc) from exc
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in _UNAVAILABLE_STATES:
                raise self._unavailable(exc) from exc
            raise
        except sa.exc.TimeoutError as exc:  # every pooled connection busy for the pool's timeout
            raise StoreUnavailable(f"the store is unavailable ({self.where}): no connection free") from exc

    @functools.cached_property
    def where(self) -> str:
        """The store's URL as people may see it: its password and secret query values masked."""
        return mask_url(self.engine.url.render_as_string(hide_password=False))

    def _unavailable(self, exc: sa.exc.DBAPIError) -> StoreUnavailable:
        return unavailable(self.engine.url, exc)

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        """A write transaction; its statements are prepared before it starts, to keep it short."""
        with self._write_lock, self._guard(), self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _single(self) -> Iterator[sa.Connection]:
        """A write of one statement: autocommitted on PostgreSQL (one round trip, atomic as any
        statement), a write transaction on SQLite (its write lock taken up front)."""
        if self._one_statement is None:
            with self._tx() as conn:
                yield conn
            return
        with self._guard(), self._one_statement.connect() as conn:
            yield conn

    def _read(self, statement: sa.Executable, params: dict[str, Any]) -> Sequence[sa.Row[Any]]:
        with self._guard(), self.engine.connect() as conn:
            return conn.execute(statement, params).all()

    def close(self) -> None:
        self.engine.dispose()
        self._writer.dispose()

    # -- producers -----------------------------------------------------------

    def record_many(self, batch: Sequence[NewNotification]) -> list[list[Delivery]]:
        """Record notifications and their deliveries in one transaction, each table in one statement.

        Dedup keys are claimed one by one inside it: a key repeated within the
        batch makes the later delivery a duplicate of the earlier one.
        """
        now = self.now()  # the time of the call: taken before the lock, not inside it
        if self._one_statement is not None and len(batch) == 1 and not _has_dedup_keys(batch[0]):
            return [self._record_in_one_statement(batch[0], now)]
        rows = [_notification_row(n, now) for n in batch]
        with self._tx() as conn:
            listed = self._suppressed_among(
                conn,
                {
                    (d.channel, d.address, category)
                    for n in batch
                    for d in n.deliveries
                    for category in ("", n.category)
                    if category is not None
                },
            )
            batch = [_suppressing(n, listed) for n in batch]
            holders = self._claim_dedup_keys(conn, batch, now)
            recorded = [[_recorded(n.id, d, holders.get(d.id, d.id)) for d in n.deliveries] for n in batch]
            conn.execute(self._sql.add_notification, rows)
            delivery_rows = [
                _delivery_row(d, r, now)
                for n, rs in zip(batch, recorded, strict=True)
                for d, r in zip(n.deliveries, rs, strict=True)
            ]
            if delivery_rows:
                conn.execute(self._sql.add_delivery, delivery_rows)
        return recorded

    def _record_in_one_statement(self, n: NewNotification, now: datetime) -> list[Delivery]:
        """A send() on PostgreSQL: the notification and its deliveries in one statement, one round trip.

        A data-modifying CTE in autocommit mode: atomic as any statement,
        without BEGIN and COMMIT's round trips (a third of a send() there).
        """
        recorded = [_recorded(n.id, d, d.id) for d in n.deliveries]
        params = {f"n_{k}": v for k, v in _notification_row(n, now).items()}
        for i, (d, r) in enumerate(zip(n.deliveries, recorded, strict=True)):
            params.update({f"d{i}_{k}": _plain(v) for k, v in _delivery_row(d, r, now).items()})
        with self._single() as conn:
            listing = self._has_suppressions  # read once (the schema made): statement and parameters agree
            if listing:
                params["s_category"] = n.category
            statuses: dict[str, str] = dict(
                conn.exec_driver_sql(self._record_one_sql(len(n.deliveries), listing), params).all()
            )
        return [dataclasses.replace(r, status=Status(statuses[r.id])) for r in recorded]

    @property
    def _has_suppressions(self) -> bool:
        """Whether the schema has the suppression list (a producer goes on with an older one, and
        looks again every REVISION_RECHECK seconds: `notify db upgrade` may have run since)."""
        if self.revision is not None and self.revision >= SUPPRESSIONS_SINCE:
            return True
        if time.monotonic() - self._revision_read_at < REVISION_RECHECK:
            return False
        self._revision_read_at = time.monotonic()
        with self._guard(), self.engine.connect() as conn:
            self.revision = revision_of(conn)
        return self.revision is not None and self.revision >= SUPPRESSIONS_SINCE

    def _has_attempts(self) -> bool:
        """Whether the schema has attempt rows; read again each time while it has not (a
        producer's store is upgraded under it by `notify db upgrade`, never by itself)."""
        if self.schema_revision() is not None and str(self.revision) >= ATTEMPTS_SINCE:
            return True
        with self._guard(), self.engine.connect() as conn:
            self.revision = revision_of(conn)
        return self.revision is not None and self.revision >= ATTEMPTS_SINCE

    def _suppressed_among(
        self, conn: sa.Connection, entries: Collection[tuple[str, str, str]]
    ) -> set[tuple[str, str, str]]:
        """Which of these (channel, address, category) are on the suppression list: one query per
        BATCH. Category '' is the entry for every category."""
        found = set[tuple[str, str, str]]()
        if not self._has_suppressions:
            return found
        ordered = sorted(entries)
        for start in range(0, len(ordered), BATCH):
            chunk = ordered[start : start + BATCH]
            # Plain SQL through the driver: built by SQLAlchemy, this read cost more than the
            # send it serves (0.27 ms on SQLite's 0.22 ms record).
            placeholder = "%s" if conn.dialect.paramstyle in ("format", "pyformat") else "?"
            rows = ", ".join([f"({placeholder}, {placeholder}, {placeholder})"] * len(chunk))
            query = (
                f"SELECT channel, address, category FROM {suppressions.name} "
                f"WHERE (channel, address, category) IN (VALUES {rows})"
            )
            params = tuple(value for entry in chunk for value in entry)
            found.update((row[0], row[1], row[2]) for row in conn.exec_driver_sql(query, params))
        return found

    # -- the suppression list -------------------------------------------------

    def suppress(
        self, channel: str, address: str, reason: str, detail: str | None = None, *, category: str = ""
    ) -> bool:
        """Put (channel, address) on the suppression list for every category ('') or for one
        template category (an unsubscribe); False if it was there (its first reason is kept)."""
        params = {"b_channel": channel, "b_address": address, "b_reason": reason, "b_category": category}
        with self._single() as conn:
            done = conn.execute(
                self._sql.suppress, {**params, "b_detail": storable(detail, MAX_REASON), "b_now": self.now()}
            ).first()
        return done is not None

    def is_suppressed(self, channel: str, address: str, category: str | None) -> bool:
        """Whether (channel, address) is suppressed for every category or for `category`."""
        params = {"b_channel": channel, "b_address": address, "b_category": category}
        return bool(self._read(self._sql.suppressed_in, params))

    def unsuppress(self, channel: str, address: str) -> int:
        """Take (channel, address) off the suppression list, every category; how many entries went."""
        s = suppressions.c
        with self._single() as conn:
            done = conn.execute(suppressions.delete().where(s.channel == channel, s.address == address))
        return int(done.rowcount)

    def suppressions(self, *, channel: str | None = None, limit: int = 100) -> list[Suppression]:
        """The suppression list, newest first."""
        s = suppressions.c
        query = sa.select(suppressions).order_by(s.created_at.desc(), s.channel, s.address).limit(limit)
        if channel is not None:
            query = query.where(s.channel == channel)
        return [
            Suppression(
                channel=r.channel,
                address=r.address,
                category=r.category or None,
                reason=SuppressionReason(r.reason),
                detail=r.detail,
                created_at=r.created_at,
            )
            for r in self._read(query, {})
        ]

    def _record_one_sql(self, deliveries_count: int, listing: bool) -> str:
        """The statement compiled once: a multi-row INSERT with a CTE has no SQLAlchemy cache key."""
        key = (deliveries_count, listing)
        sql = self._compiled.get(key)
        if sql is None:
            statement = record_one_statement(deliveries_count, suppressions=key[1])
            sql = self._compiled[key] = str(statement.compile(dialect=self.engine.dialect))
        return sql

    def _claim_dedup_keys(
        self, conn: sa.Connection, batch: Sequence[NewNotification], now: datetime
    ) -> dict[str, str]:
        """For each delivery with a dedup key, the id of the delivery holding its key."""
        holders: dict[str, str] = {}
        first: dict[tuple[str, str, str], str] = {}
        for d in (d for n in batch for d in n.deliveries if d.dedup_key):
            key = (d.channel, d.address, str(d.dedup_key))
            if key not in first:
                first[key] = self._claim_dedup(conn, d, now)
            holders[d.id] = first[key]
        return holders

    def _claim_dedup(self, conn: sa.Connection, d: NewDelivery, now: datetime) -> str:
        """The id of the delivery holding (channel, address, key): ours if we won it."""
        key = {"b_channel": d.channel, "b_address": d.address, "b_key": d.dedup_key}
        expires = now + timedelta(seconds=d.dedup_window)
        won = conn.execute(self._sql.claim_key, {**key, "b_id": d.id, "b_expires": expires, "b_now": now})
        holder = won.scalar()
        if holder is None:
            holder = conn.execute(self._sql.key_holder, key).scalar_one()
        return str(holder)

    def deliveries_of(self, notification_id: str) -> list[Delivery]:
        return [_delivery(row) for row in self._read(self._sql.deliveries_of, {"b_id": notification_id})]

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._read(self._sql.get, {"b_id": delivery_id})
        return _delivery(rows[0]) if rows else None

    # -- workers -------------------------------------------------------------

    def claim(self, delivery_id: str, worker_id: str, token: str | None = None) -> Claim | Refusal:
        """Take `delivery_id` for one try by worker `worker_id`, or say why not (done, held,
        claimed, not in the store; a worker declared dead claims nothing).

        `token` (default: a new one) fences the try's outcome; a caller that chose
        it can end the claim even if the answer to this call never came (`abandon`).
        """
        token = token or str(uuid.uuid4())
        params: dict[str, Any] = {"b_id": delivery_id, "b_token": token, "b_worker": worker_id}
        with self._single() as conn:
            params.update(b_now=self.now())
            row = conn.execute(self._sql.claim, params).first()
            if row is None:
                ended = conn.execute(self._sql.end_suppressed, params)  # suppressed since it was queued?
                if ended.rowcount:
                    return Refusal(status=Status.SUPPRESSED, ended=True)
                found = conn.execute(self._sql.status_of, params).scalar()
                return Refusal(status=None if found is None else Status(found))
        return Claim(
            delivery_id=row.id,
            channel=row.channel,
            address=row.address,
            priority=row.priority,
            attempts=row.attempts,
            template=row.template,
            locale=row.locale,
            data=json.loads(row.data),
            token=token,
            worker_id=worker_id,
            notification_id=row.notification_id,
            created_at=row.created_at,
            claimed_at=params["b_now"],
        )

    def keep_queued(self, delivery_ids: Collection[str]) -> None:
        """Stamp these "queued" deliveries as published now: a worker holds their message (a burst)."""
        for chunk in _chunks(list(delivery_ids)):
            with self._single() as conn:
                conn.execute(self._sql.keep_queued, {"b_ids": chunk, "b_now": self.now()})

    def handing_over(self, claim: Claim) -> bool:
        """Record that this claim's worker hands the message to the provider now; False (hand
        nothing over) if the claim is no longer current or its worker was declared dead.

        From here on, if the worker is taken for dead (killed, or cut off from
        the store), the sweep ends the claim as an unknown outcome instead of
        handing the delivery to another worker (`end_unknown_from_dead`).
        """
        params = {"b_id": claim.delivery_id, "b_token": claim.token}
        with self._single() as conn:
            done = conn.execute(self._sql.handing_over, {**params, "b_now": self.now()})
        return bool(done.rowcount)

    def mark_sent(self, claim: Claim, provider_id: str | None, *, provider: str | None = None) -> bool:
        """Record that the provider accepted it (`provider`: its short name, for the attempt row);
        False if this claim was no longer current."""
        return self._finish(
            self._sql.sent,
            claim,
            _attempt(provider, SENT, None, None),
            b_provider_id=storable(provider_id, MAX_PROVIDER_ID),
        )

    def mark_suppressed(self, claim: Claim) -> bool:
        """End a claim whose address was unsubscribed from its template's category since it was
        queued: nothing handed over, its try uncounted; False if this claim was no longer current."""
        return self._finish(self._sql.suppressed, claim, None)  # no attempt row: an uncounted try

    def mark_retrying(
        self, claim: Claim, reason: str, code: str | None, at: datetime, *, provider: str | None = None
    ) -> bool:
        """Record a failed try; the store holds the delivery until `at`, then releases it."""
        return self._finish(self._sql.retrying, claim, _attempt(provider, RETRY, reason, code), b_at=at)

    def mark_failed(
        self, claim: Claim, reason: str, code: str | None, *, provider: str | None = None
    ) -> bool:
        """Record a try that failed for good (an unknown outcome if `code` says so)."""
        outcome = UNKNOWN if code == CoreCode.OUTCOME_UNKNOWN else FAILED
        return self._finish(self._sql.failed, claim, _attempt(provider, outcome, reason, code))

    def give_back(self, claim: Claim, reason: str) -> bool:
        """End a claim whose try never reached the provider: its try uncounted, released at once."""
        return self.abandon(claim.delivery_id, claim.token, reason, handed_over=False)

    def abandon(self, delivery_id: str, token: str, reason: str, *, handed_over: bool) -> bool:
        """End a claim its attempt left without an outcome: given back for another try if nothing
        was handed over, else failed with an unknown outcome (it may have been sent)."""
        params: dict[str, Any] = {"b_id": delivery_id, "b_token": token}
        if not handed_over:  # uncounted: no attempt row
            params["b_reason"] = storable(reason, MAX_REASON)
            with self._single() as conn:
                done = conn.execute(self._sql.given_back, {**params, "b_now": self.now()})
            return bool(done.rowcount)
        row = {**_attempt(None, UNKNOWN, reason, CoreCode.OUTCOME_UNKNOWN.value), "b_started_at": None}
        return self._end(self._sql.unknown, {**params, **row})

    # -- workers' liveness (see notify.delivery.liveness) ----------------------------

    def register_worker(self, worker_id: str, *, host: str, pid: int) -> None:
        """A worker process that will claim deliveries, alive from now on."""
        now = self.now()
        row = {"id": worker_id, "beats": 0, "dead": False, "host": host[:255], "pid": pid}
        with self._single() as conn:
            conn.execute(workers.insert(), {**row, "started_at": now, "beat_at": now})

    def beat(self, worker_id: str) -> bool:
        """One heartbeat of worker `worker_id`; False if it was declared dead (or is unknown)."""
        with self._single() as conn:
            done = conn.execute(self._sql.beat, {"b_id": worker_id, "b_now": self.now()})
        return bool(done.rowcount)

    def worker_beats(self) -> dict[str, int]:
        """Each live worker's heartbeat count, for an observer to see which ones move on.

        Read in a transaction that could write: a store that answers reads but
        takes no writes (a failover's demoted primary) is unavailable here too,
        since no worker's beat could land in it.
        """
        w = workers.c
        with self._tx() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.txid_current()))  # refused where writes are
            rows = conn.execute(sa.select(w.id, w.beats).where(~w.dead)).all()
        return {row.id: row.beats for row in rows}

    def declare_dead(self, worker_id: str, beats: int) -> bool:
        """Mark a worker dead if its count is still `beats`: its claims are handed on (reclaim)."""
        w = workers.c
        with self._single() as conn:
            done = conn.execute(
                workers.update().where(w.id == worker_id, w.beats == beats, ~w.dead).values(dead=True)
            )
        return bool(done.rowcount)

    def retire_worker(self, worker_id: str) -> None:
        """A worker that stops: dead from now on; the row goes once it holds nothing."""
        with self._single() as conn:
            conn.execute(workers.update().where(workers.c.id == worker_id).values(dead=True))

    def forget_dead_workers(self) -> int:
        """Delete the rows of dead workers whose deliveries have all been handed on."""
        d, w = deliveries.c, workers.c
        holding = sa.select(d.id).where(d.status == Status.SENDING, d.worker_id == w.id)
        with self._single() as conn:
            return int(conn.execute(workers.delete().where(w.dead, ~sa.exists(holding))).rowcount)

    def _finish(
        self, statement: Ending | sa.Update, claim: Claim, row: dict[str, Any] | None, **params: Any
    ) -> bool:
        """Record the outcome of a try and end its claim, only if the claim is still this one;
        with its attempt row (`row`'s values) unless the try goes uncounted."""
        params.update(b_id=claim.delivery_id, b_token=claim.token)
        if isinstance(statement, Ending):
            return self._end(statement, {**params, **(row or {}), "b_started_at": claim.claimed_at})
        with self._single() as conn:
            done = conn.execute(statement, {**params, "b_now": self.now()})
        return bool(done.rowcount)

    def _end(self, ending: Ending, params: dict[str, Any]) -> bool:
        """An outcome and its attempt row, written together only if the fence matched: one
        statement on PostgreSQL, one transaction on SQLite."""
        if self._one_statement is not None:
            with self._single() as conn:
                return conn.execute(ending.with_row, {**params, "b_now": self.now()}).first() is not None
        with self._tx() as conn:
            params["b_now"] = self.now()
            number = conn.execute(ending.numbered, params).scalar()
            if number is None:  # the claim was no longer this one: nothing recorded
                return False
            conn.execute(self._sql.add_attempt, {**params, "b_number": number})
        return True

    # -- receipts (see notify.receipts) -----------------------------------------------

    def add_receipt(self, r: NewReceipt) -> bool:
        """Keep a receipt as it came, unsettled; False if the same one came before (a provider's retry)."""
        row = {
            "delivery_id": r.delivery_id,
            "provider_id": r.provider_id,
            "status": r.status,
            "provider": r.provider,
            "code": storable(r.code, MAX_CODE),
            "detail": storable(r.detail, MAX_REASON),
        }
        with self._single() as conn:
            done = conn.execute(self._sql.add_receipt, {**row, "received_at": self.now()}).first()
        return done is not None

    def receipt_target(self, delivery_id: str) -> ReceiptTarget | None:
        """The delivery a receipt is about, with the codes of receipts for its earlier sends."""
        d, r = deliveries.c, receipts.c
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    d.id, d.channel, d.address, d.status, d.provider_id, d.attempts, d.error_code
                ).where(d.id == delivery_id)
            ).first()
            if row is None:
                return None
            earlier = conn.execute(
                sa.select(r.code).where(
                    r.delivery_id == delivery_id,
                    r.provider_id != (row.provider_id or ""),
                    r.code.is_not(None),
                )
            ).scalars()
            codes = frozenset(str(c) for c in earlier)
        return ReceiptTarget(
            delivery_id=row.id,
            channel=row.channel,
            address=row.address,
            status=Status(row.status),
            provider_id=row.provider_id,
            attempts=row.attempts,
            error_code=row.error_code,
            earlier_codes=codes,
        )

    def settle_receipt(
        self,
        r: NewReceipt,
        becomes: Status | None = None,
        retry_at: datetime | None = None,
        *,
        proven: bool = False,
    ) -> bool:
        """Settle receipt `r`: move its delivery from `sent` (by the message `r` is about) to
        `becomes` (RETRYING: released at `retry_at`), and say so; False if it did not move (it
        was not `sent` by that message any more: an earlier receipt or a newer send won).

        `proven`: `r` says the recipient has the message, whichever send it was about: the
        delivery becomes `delivered` from sent, retrying, queued or failed (a retry of a send
        that did arrive is not made; an unknown outcome is known), never from sending.
        """
        d, rc = deliveries.c, receipts.c
        values: dict[str, Any] = {}
        moving = sa.and_(d.provider_id == r.provider_id, d.status == Status.SENT)
        if proven:
            becomes = Status.DELIVERED
            moving = d.status.in_([Status.SENT, Status.RETRYING, Status.QUEUED, Status.FAILED])
            values = {
                "provider_id": sa.func.coalesce(d.provider_id, r.provider_id),
                "error_code": None,
                "last_error": None,
                "failed_at": None,
                "release_at": None,
                "next_attempt_at": None,
                "claim_token": None,  # an unknown outcome's late answer can tell nothing more
                "worker_id": None,
                "handed_over_at": None,
            }
        if becomes is Status.RETRYING:
            values = {"release_at": retry_at, "next_attempt_at": retry_at}
        if becomes in (Status.RETRYING, Status.UNDELIVERED):
            values.update(error_code=storable(r.code, MAX_CODE), last_error=storable(r.detail, MAX_REASON))
        with self._tx() as conn:
            now = self.now()
            moved = False
            if becomes is not None:
                moved = bool(
                    conn.execute(
                        deliveries.update()
                        .where(d.id == r.delivery_id, moving)
                        .values(status=becomes, updated_at=now, **values)
                    ).rowcount
                )
            conn.execute(
                receipts.update()
                .where(
                    rc.delivery_id == r.delivery_id,
                    rc.provider_id == r.provider_id,
                    rc.status == r.status,
                    rc.settled_at.is_(None),  # settled once: a racing second settler keeps the first's effect
                )
                .values(settled_at=now, effect=becomes if moved else None)
            )
        return moved

    def unsettled_receipts(self, limit: int = BATCH) -> list[tuple[NewReceipt, datetime]]:
        """Receipts that came before their delivery's `sent` was recorded, oldest first, with
        when each came."""
        rc = receipts.c
        query = sa.select(receipts).where(rc.settled_at.is_(None)).order_by(rc.received_at).limit(limit)
        return [
            (
                NewReceipt(
                    delivery_id=row.delivery_id,
                    provider=row.provider,
                    provider_id=row.provider_id,
                    status=Status(row.status),
                    code=row.code,
                    detail=row.detail,
                ),
                row.received_at,
            )
            for row in self._read(query, {})
        ]

    def receipts_of(self, delivery_id: str) -> list[dict[str, Any]]:
        """Every receipt kept for `delivery_id`, as they came (for `notify status` and the console)."""
        rc = receipts.c
        query = sa.select(receipts).where(rc.delivery_id == delivery_id).order_by(rc.received_at)
        return [dict(row._mapping) for row in self._read(query, {})]

    # -- maintenance (every worker runs it; see notify.delivery.maintenance) ------------

    def release_due(self, channels: Collection[str] | None = None) -> list[Queued]:
        """Held deliveries (send_at, retries) whose time has come, set back to "queued"."""
        d = deliveries.c

        def due(now: datetime) -> sa.ColumnElement[bool]:
            waiting = d.status.in_([Status.SCHEDULED, Status.RETRYING])
            return sa.and_(waiting, sa.or_(d.release_at <= now, d.release_at.is_(None)))

        return self._requeue(due, channels, release_at=None)

    def reclaim_from_dead(self, channels: Collection[str] | None = None) -> list[Queued]:
        """Deliveries claimed by a worker declared dead (or gone) that it had not started to
        hand over, set back to "queued".

        A claim made by a worker of notify 0.3 or older carries a lease instead
        of a worker, and is taken back once the lease has lapsed, as it was then.
        """
        d = deliveries.c

        def orphaned(now: datetime) -> sa.ColumnElement[bool]:
            by_worker = sa.and_(_of_dead_worker(), d.handed_over_at.is_(None))
            by_lease = sa.and_(d.worker_id.is_(None), d.lease_until < now)
            return sa.and_(d.status == Status.SENDING, sa.or_(by_worker, by_lease))

        return self._requeue(
            orphaned, channels, lease_until=None, claim_token=None, worker_id=None, handed_over_at=None
        )

    def end_unknown_from_dead(self, channels: Collection[str] | None = None) -> list[str]:
        """Deliveries a worker declared dead was handing over: failed, `outcome_unknown`.

        Its worker may have been killed after the provider accepted, or cut off
        from the store and still waiting for the answer: handed to another
        worker, either would be a second copy. The claim's token is kept, so an
        outcome its worker brings back once it reaches the store again replaces
        the unknown one.
        """
        d = deliveries.c
        reason = (
            "its worker stopped beating while handing it over (killed, or cut off from the store): "
            "it may have been sent"
        )
        with self._tx() as conn:
            now = self.now()
            condition = sa.and_(d.status == Status.SENDING, _of_dead_worker(), d.handed_over_at.is_not(None))
            if channels is not None:
                condition = sa.and_(condition, d.channel.in_(channels))
            # When each was claimed (its updated_at while "sending"), read before it changes.
            claimed = dict(conn.execute(sa.select(d.id, d.updated_at).where(condition)).all())
            if not claimed:
                return []
            ended = conn.execute(
                deliveries.update()
                .where(condition)
                .values(
                    status=Status.FAILED,
                    last_error=reason,
                    error_code=CoreCode.OUTCOME_UNKNOWN.value,
                    failed_at=now,
                    updated_at=now,
                    next_attempt_at=None,
                    worker_id=None,
                    handed_over_at=None,
                )
                .returning(d.id, (d.earlier_attempts + d.attempts).label("number"))
            ).all()
            # Their attempt rows, outcome unknown: the sweep does not know which provider was
            # called (the worker that did is gone). A late answer from it replaces the row.
            row = _attempt(None, UNKNOWN, reason, CoreCode.OUTCOME_UNKNOWN.value)
            rows = [
                {**row, "b_id": e.id, "b_number": e.number, "b_started_at": claimed.get(e.id), "b_now": now}
                for e in ended
            ]
            if rows:
                conn.execute(self._sql.add_attempt, rows)
            return [e.id for e in ended]

    def queued_since(
        self,
        seconds: float,
        channels: Collection[str] | None = None,
        *,
        as_of: datetime | None = None,
        priority: str | None = None,
    ) -> list[Queued]:
        """Deliveries "queued" for `seconds` (before `as_of`, default now) that nobody claimed,
        of `priority` only if given.

        Their message may be lost. Each is stamped as published now, so it is
        offered again only after another `seconds`; a sweep that passes one
        `as_of` to every batch ends, however long its publishing takes.
        """
        d = deliveries.c

        def lost(now: datetime) -> sa.ColumnElement[bool]:
            cutoff = (as_of or now) - timedelta(seconds=seconds)
            waited = sa.and_(d.status == Status.QUEUED, d.updated_at < cutoff)
            return waited if priority is None else sa.and_(waited, d.priority == priority)

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
            ids = (
                conn.execute(sa.select(d.id).where(condition).order_by(_URGENCY, d.updated_at).limit(BATCH))
                .scalars()
                .all()
            )
            if not ids:
                return []
            rows = conn.execute(
                deliveries.update()
                .where(d.id.in_(ids), condition)  # re-checked: another process may have won
                .values(status=Status.QUEUED, updated_at=now, **values)
                .returning(d.id, d.channel, d.priority)
            ).all()
        return sorted((Queued(*row) for row in rows), key=lambda q: Priority(q.priority).rank)

    def purge_finished(self, older_than: float) -> int:
        """Delete finished deliveries older than that (sent, delivered, undelivered, duplicate,
        suppressed), receipts as old, and expired dedup claims."""
        d = deliveries.c
        with self._tx() as conn:
            now = self.now()
            cutoff = now - timedelta(seconds=older_than)
            removed = conn.execute(
                deliveries.delete().where(d.status.in_(_PURGED), d.updated_at < cutoff).returning(d.id)
            )
            ids = list(removed.scalars().all())
            self._delete_attempts(conn, ids)
            conn.execute(receipts.delete().where(receipts.c.received_at < cutoff))
            conn.execute(dedup_claims.delete().where(dedup_claims.c.expires_at < now))
            self._delete_orphan_notifications(conn, created_before=cutoff)
        return len(ids)

    def _delete_attempts(self, conn: sa.Connection, delivery_ids: list[str]) -> None:
        """The attempt rows of deliveries just deleted (exactly those: no foreign key does it);
        none on a schema older than ATTEMPTS_SINCE (`notify dlq purge` of a producer's store)."""
        if not delivery_ids or not self._has_attempts():
            return
        for chunk in _chunks(delivery_ids):
            conn.execute(attempts.delete().where(attempts.c.delivery_id.in_(chunk)))

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

    def dead_letter_ids(self) -> list[str]:
        """Every failed delivery's id, oldest failure first: what `dlq replay --all` works through."""
        d = deliveries.c
        query = sa.select(d.id).where(d.status == Status.FAILED).order_by(d.failed_at, d.id)
        with self._guard(), self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def replay(self, ids: Sequence[str] | None) -> list[Queued]:
        """Put failed deliveries (these, or all) back to "queued" for a fresh attempt cycle.

        Their attempt rows stay: they are history. The new cycle counts its
        tries from 0 (`attempts`, which max_attempts bounds), and numbers them
        on from the old ones (earlier_attempts + attempts): try 5 after four
        failed ones, never a second try 1, so every row has one number.
        """
        d = deliveries.c
        fresh: dict[str, Any] = {
            "attempts": 0,
            "failed_at": None,
            "next_attempt_at": None,
            "release_at": None,
            "claim_token": None,  # an unknown outcome's, kept for its worker: replayed, it is no one's
            "handed_over_at": None,
        }
        replayed: list[Queued] = []
        self.schema_revision()  # known: an older schema has no suppression list to consult
        if self._has_attempts():  # a new attempt cycle: its tries numbered on from the old ones
            fresh["earlier_attempts"] = d.earlier_attempts + d.attempts
        replayable = d.status == Status.FAILED
        if self._has_suppressions:
            replayable = sa.and_(replayable, ~suppressed(d.channel, d.address))
        if ids is None:
            while batch := self._requeue(lambda _: replayable, None, **fresh):
                replayed += batch
            return replayed
        for chunk in _chunks(list(dict.fromkeys(ids))):
            replayed += self._requeue(_among(replayable, chunk), None, **fresh)
        return replayed

    def failed_and_suppressed(self, ids: Sequence[str] | None) -> list[str]:
        """The dead letters among `ids` (all if None) whose address is suppressed: not replayed."""
        d = deliveries.c
        self.schema_revision()
        if not self._has_suppressions:
            return []
        query = sa.select(d.id).where(d.status == Status.FAILED, suppressed(d.channel, d.address))
        if ids is None:
            return [row.id for row in self._read(query.order_by(d.id), {})]
        found: list[str] = []
        for chunk in _chunks(list(dict.fromkeys(ids))):
            found += [row.id for row in self._read(query.where(d.id.in_(chunk)), {})]
        return found

    def purge_dead_letters(self) -> int:
        """Delete every failed delivery, the dedup claims they held, and notifications left empty."""
        d = deliveries.c
        with self._tx() as conn:
            # The deliveries first, then exactly their claims: a late outcome may turn an unknown
            # one into `sent` meanwhile (its worker came back), and keeps its claim then.
            removed = conn.execute(deliveries.delete().where(d.status == Status.FAILED).returning(d.id))
            ids = list(removed.scalars().all())
            for chunk in _chunks(ids):
                conn.execute(dedup_claims.delete().where(dedup_claims.c.delivery_id.in_(chunk)))
            self._delete_attempts(conn, ids)
            self._delete_orphan_notifications(conn, created_before=self.now() + timedelta(days=1))
        return len(ids)

    # -- the operator console (notify.web.console) -----------------------------------

    def status_counts(self) -> dict[tuple[str, str], int]:
        """How many deliveries each (channel, status) has now: one GROUP BY."""
        d = deliveries.c
        count = sa.func.count().label("how_many")
        query = sa.select(d.channel, d.status, count).group_by(d.channel, d.status)
        return {(row.channel, row.status): int(row.how_many) for row in self._read(query, {})}

    def oldest_queued(self) -> dict[str, datetime]:
        """When send() recorded the oldest "queued" delivery of each channel that has one."""
        d = deliveries.c
        oldest = sa.func.min(d.created_at).label("oldest")
        query = sa.select(d.channel, oldest).where(d.status == Status.QUEUED).group_by(d.channel)
        return {row.channel: row.oldest for row in self._read(query, {})}

    def records(
        self,
        *,
        key: str | None = None,
        addresses: Collection[str] = (),
        status: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Deliveries whose id or notification id is `key`, or whose address is one of `addresses`
        (as the store keeps them), or whose status is `status`; newest first, at most `limit`."""
        d = deliveries.c
        found: list[sa.ColumnElement[bool]] = []
        if key is not None:
            found += [d.id == key, d.notification_id == key]
        if addresses:
            found.append(d.address.in_(list(addresses)))
        if status is not None:
            found.append(d.status == status)
        if not found:
            return []
        query = _records().where(sa.or_(*found)).order_by(d.created_at.desc(), d.id).limit(limit)
        return [_record(row) for row in self._read(query, {})]

    def attempts_of(self, delivery_id: str) -> list[AttemptRecord]:
        """Every try recorded for `delivery_id`, first first (for `notify status` and the console);
        none on a schema older than ATTEMPTS_SINCE (a producer's store is not upgraded by itself)."""
        if not self._has_attempts():
            return []
        a = attempts.c
        query = sa.select(attempts).where(a.delivery_id == delivery_id).order_by(a.number)
        return [AttemptRecord(**row._mapping) for row in self._read(query, {})]

    def record(self, delivery_id: str) -> DeliveryRecord | None:
        """Delivery `delivery_id` with its notification's template, or None if the store has none."""
        rows = self._read(_records().where(deliveries.c.id == delivery_id), {})
        return _record(rows[0]) if rows else None


def _attempt(provider: str | None, outcome: str, reason: str | None, code: str | None) -> dict[str, Any]:
    """An attempt row's values, bound by name; its reason and code as the delivery keeps them."""
    return {
        "b_provider": storable(provider, MAX_PROVIDER_NAME),
        "b_outcome": outcome,
        "b_reason": storable(reason, MAX_REASON),
        "b_code": storable(code, MAX_CODE),
    }


def _among(condition: sa.ColumnElement[bool], ids: list[str]) -> Callable[[datetime], sa.ColumnElement[bool]]:
    return lambda _now: sa.and_(condition, deliveries.c.id.in_(ids))


def _of_dead_worker() -> sa.ColumnElement[bool]:
    """A delivery claimed by a worker that is declared dead, retired, or forgotten."""
    d = deliveries.c
    return sa.and_(d.worker_id.is_not(None), ~worker_alive(d.worker_id))


# High first: what is released or swept in one batch is published in this order.
_URGENCY = sa.case({p.value: p.rank for p in Priority}, value=deliveries.c.priority, else_=len(Priority))


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        notification_id=row.notification_id,
        channel=row.channel,
        status=Status(row.status),
        attempts=row.attempts,
        last_error=row.last_error,
        error_code=row.error_code,
        provider_id=row.provider_id,
        next_attempt_at=row.next_attempt_at,
        sent_at=row.sent_at,
        duplicate_of=row.duplicate_of,
    )


def _plain(value: Any) -> Any:
    """A value as the driver should see it when SQLAlchemy's types do not process it (enums as text)."""
    return value.value if isinstance(value, enum.Enum) else value


def _has_dedup_keys(n: NewNotification) -> bool:
    return any(d.dedup_key for d in n.deliveries)


def _notification_row(n: NewNotification, now: datetime) -> dict[str, Any]:
    return {"id": n.id, "template": n.template, "locale": n.locale, "data": n.data_json, "created_at": now}


def _suppressing(n: NewNotification, listed: set[tuple[str, str, str]]) -> NewNotification:
    """`n`, its deliveries to a suppressed address recorded `suppressed` (and claiming no dedup key):
    suppressed for every category, or for `n`'s."""
    if not listed:
        return n

    def off(d: NewDelivery) -> bool:
        return (d.channel, d.address, "") in listed or (d.channel, d.address, n.category or "") in listed

    if not any(off(d) for d in n.deliveries):
        return n
    kept = tuple(
        dataclasses.replace(d, status=Status.SUPPRESSED, dedup_key=None) if off(d) else d
        for d in n.deliveries
    )
    return dataclasses.replace(n, deliveries=kept)


def _recorded(notification_id: str, d: NewDelivery, holder: str) -> Delivery:
    duplicate_of = None if holder == d.id else holder
    return Delivery(
        id=d.id,
        notification_id=notification_id,
        channel=d.channel,
        status=Status.DUPLICATE if duplicate_of else d.status,
        next_attempt_at=d.release_at,
        duplicate_of=duplicate_of,
    )


def _delivery_row(d: NewDelivery, recorded: Delivery, now: datetime) -> dict[str, Any]:
    return {
        "id": d.id,
        "notification_id": recorded.notification_id,
        "channel": d.channel,
        "address": d.address,
        "priority": d.priority,
        "status": recorded.status,
        "attempts": 0,
        "dedup_key": d.dedup_key,
        "duplicate_of": recorded.duplicate_of,
        "created_at": now,
        "updated_at": now,
        "release_at": d.release_at,
        "next_attempt_at": d.release_at,
    }


def _records() -> sa.Select[Any]:
    d, n = deliveries.c, notifications.c
    return sa.select(deliveries, n.template, n.locale).join(notifications, d.notification_id == n.id)


def _record(row: Any) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        notification_id=row.notification_id,
        channel=row.channel,
        address=row.address,
        priority=row.priority,
        status=Status(row.status),
        attempts=row.attempts,
        template=row.template,
        locale=row.locale,
        dedup_key=row.dedup_key,
        duplicate_of=row.duplicate_of,
        provider_id=row.provider_id,
        last_error=row.last_error,
        error_code=row.error_code,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_attempt_at=row.next_attempt_at,
        handed_over_at=row.handed_over_at,
        sent_at=row.sent_at,
        failed_at=row.failed_at,
    )
