"""The statements a send or a delivery runs, built once per store with placeholders."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from notify.errors import CoreCode
from notify.models import Status
from notify.store.schema import (
    UTCDateTime,
    attempts,
    dedup_claims,
    deliveries,
    notifications,
    receipts,
    suppressions,
    workers,
)

_UTC = UTCDateTime()

# The columns a new delivery's row sets (the one-statement send binds each by name).
DELIVERY_ROW_KEYS = (
    "id", "notification_id", "channel", "address", "priority", "status", "attempts", "dedup_key",
    "duplicate_of", "created_at", "updated_at", "release_at", "next_attempt_at",
)  # fmt: skip


def _param(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


class Statements:
    """Every statement a send or a delivery runs, built once with placeholders.

    Building a statement and its cache key costs more than running it (about
    70% of a claim's CPU when rebuilt per call); built once, SQLAlchemy
    memoizes the key and finds the compiled form in its cache.
    """

    def __init__(self, insert: Callable[[sa.Table], Any]) -> None:
        d = deliveries.c
        self.add_notification = notifications.insert()
        self.add_delivery = deliveries.insert()
        self.claim_key, self.key_holder = _dedup_statements(insert)
        self.add_receipt = (
            insert(receipts)
            .values(
                {c: _param(c) for c in ("delivery_id", "provider_id", "status", "provider", "code", "detail")}
            )
            .values(received_at=_param("received_at", _UTC))
            .on_conflict_do_nothing(index_elements=["delivery_id", "provider_id", "status"])
            .returning(receipts.c.delivery_id)  # psycopg's rowcount of an INSERT here is -1: no answer
        )
        self.suppress = (
            insert(suppressions)
            .values(
                channel=_param("b_channel"),
                address=_param("b_address"),
                category=_param("b_category"),
                reason=_param("b_reason"),
                detail=_param("b_detail"),
                created_at=_param("b_now", _UTC),
            )
            .on_conflict_do_nothing(index_elements=["channel", "address", "category"])
            .returning(suppressions.c.channel)  # psycopg's rowcount of an INSERT here is -1: no answer
        )
        # What a Delivery shows, named: a producer on a store one revision behind still reads it.
        shown = (
            d.id, d.notification_id, d.channel, d.status, d.attempts, d.last_error, d.error_code,
            d.provider_id, d.next_attempt_at, d.sent_at, d.duplicate_of,
        )  # fmt: skip
        self.get = sa.select(*shown).where(d.id == _param("b_id"))
        self.deliveries_of = sa.select(*shown).where(d.notification_id == _param("b_id")).order_by(d.channel)
        self.status_of = sa.select(d.status).where(d.id == _param("b_id"))
        self.end_suppressed = (
            deliveries.update()
            .where(d.id == _param("b_id"), d.status == Status.QUEUED, suppressed(d.channel, d.address))
            .values(status=Status.SUPPRESSED, updated_at=_param("b_now", _UTC), release_at=None)
        )
        self.claim = _claim_statement()
        w = workers.c
        self.beat = (
            workers.update()
            .where(w.id == _param("b_id"), ~w.dead)
            .values(beats=w.beats + 1, beat_at=_param("b_now", _UTC))
        )
        self.handing_over = (
            deliveries.update()
            .where(
                d.id == _param("b_id"),
                d.claim_token == _param("b_token"),
                d.status == Status.SENDING,
                worker_alive(d.worker_id),
            )
            .values(handed_over_at=_param("b_now", _UTC))
        )
        self.keep_queued = (
            deliveries.update()
            .where(d.id.in_(sa.bindparam("b_ids", expanding=True)), d.status == Status.QUEUED)
            .values(updated_at=_param("b_now", _UTC))
        )
        corrected = d.status == Status.FAILED  # an unknown outcome, replaced by what its worker learnt
        self.add_attempt = _attempt_upsert(
            insert(attempts).values(
                delivery_id=_param("b_id"),
                number=_param("b_number"),
                **{column: _param(name, t) for column, (name, t) in _ATTEMPT_VALUES.items()},
            )
        )
        ending = functools.partial(_ending, insert)
        self.sent = ending(
            status=Status.SENT,
            provider_id=_param("b_provider_id"),
            sent_at=_param("b_now", _UTC),
            failed_at=None,
            error_code=sa.case((corrected, None), else_=d.error_code),
            last_error=sa.case((corrected, None), else_=d.last_error),
        )
        at = _param("b_at", _UTC)
        reason, code = _param("b_reason"), _param("b_code")
        self.retrying = ending(
            status=Status.RETRYING,
            last_error=reason,
            error_code=code,
            next_attempt_at=at,
            release_at=at,
            failed_at=None,
        )
        self.given_back = _outcome(
            status=Status.RETRYING,
            attempts=d.attempts - 1,
            last_error=reason,
            error_code=sa.case((corrected, None), else_=d.error_code),
            failed_at=None,
            next_attempt_at=_param("b_now", _UTC),
            release_at=_param("b_now", _UTC),
        )
        self.unknown = ending(  # its claim's token kept: an answer that comes after all replaces it
            claim_token=_param("b_token"),
            status=Status.FAILED,
            last_error=reason,
            error_code=CoreCode.OUTCOME_UNKNOWN.value,
            failed_at=_param("b_now", _UTC),
            next_attempt_at=None,
        )
        self.suppressed = _outcome(  # its template's category was unsubscribed from since it was queued
            status=Status.SUPPRESSED, attempts=d.attempts - 1, next_attempt_at=None, release_at=None
        )
        self.suppressed_in = sa.select(sa.literal(1)).where(
            suppressed(_param("b_channel"), _param("b_address"), _param("b_category"))
        )
        self.failed = ending(
            status=Status.FAILED,
            last_error=reason,
            error_code=code,
            failed_at=_param("b_now", _UTC),
            next_attempt_at=None,
        )


def record_one_statement(deliveries_count: int, *, suppressions: bool = True) -> sa.Insert:
    """A notification and its deliveries, in one INSERT with a data-modifying CTE (PostgreSQL)."""
    notification = (
        notifications.insert()
        .values({c.name: _param(f"n_{c.name}", c.type) for c in notifications.c})
        .cte("new_notification")
    )
    columns = [c for c in deliveries.c if c.name in DELIVERY_ROW_KEYS]
    rows: list[dict[str, Any]] = [
        {c.name: _param(f"d{i}_{c.name}", c.type) for c in columns} for i in range(deliveries_count)
    ]
    for i, row in enumerate(rows if suppressions else []):  # one to a suppressed address: so recorded
        listed = suppressed(_param(f"d{i}_channel"), _param(f"d{i}_address"), _param("s_category"))
        # Constants written out: the statement runs compiled, its parameters bound by name.
        row["status"] = sa.case(
            (listed, sa.literal_column(f"'{Status.SUPPRESSED.value}'")), else_=row["status"]
        )
    d = deliveries.c
    return deliveries.insert().values(rows).add_cte(notification).returning(d.id, d.status)


def suppressed(
    channel: sa.ColumnElement[Any],
    address: sa.ColumnElement[Any],
    category: sa.ColumnElement[Any] | None = None,
) -> sa.Exists:
    """Whether (channel, address) is on the suppression list for every category (or for `category`)."""
    s = suppressions.c
    every = s.category == sa.literal_column("''")  # written out: record_one_statement runs compiled
    if category is not None:
        every = sa.or_(every, s.category == category)
    return sa.exists(sa.select(s.channel).where(s.channel == channel, s.address == address, every))


def _dedup_statements(insert: Callable[[sa.Table], Any]) -> tuple[Any, sa.Select[Any]]:
    """Claim (channel, address, key) unless a live claim holds it; and who holds it."""
    c = dedup_claims.c
    stmt = insert(dedup_claims).values(
        channel=_param("b_channel"),
        address=_param("b_address"),
        dedup_key=_param("b_key"),
        delivery_id=_param("b_id"),
        expires_at=_param("b_expires", _UTC),
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=["channel", "address", "dedup_key"],
        set_={"delivery_id": stmt.excluded.delivery_id, "expires_at": stmt.excluded.expires_at},
        where=c.expires_at <= _param("b_now", _UTC),
    ).returning(c.delivery_id)
    holder = sa.select(c.delivery_id).where(
        c.channel == _param("b_channel"), c.address == _param("b_address"), c.dedup_key == _param("b_key")
    )
    return upsert, holder


def _claim_statement() -> sa.UpdateBase:
    d, n = deliveries.c, notifications.c
    of_notification = n.id == d.notification_id
    now = _param("b_now", _UTC)
    worker = _param("b_worker")
    alive = worker_alive(worker)  # a dead worker claims nothing
    # One round trip: update and read back, the notification's fields by
    # subquery (SQLite's RETURNING cannot name a joined table's columns).
    return (
        deliveries.update()
        # Suppressed since it was recorded (a bounce, an opt-out): not claimed, ended `suppressed`.
        .where(d.id == _param("b_id"), d.status == Status.QUEUED, alive, ~suppressed(d.channel, d.address))
        .values(
            status=Status.SENDING,
            attempts=d.attempts + 1,
            updated_at=now,
            lease_until=None,
            claim_token=_param("b_token"),
            worker_id=worker,
            handed_over_at=None,
            next_attempt_at=None,
            release_at=None,
        )
        .returning(
            d.id,
            d.notification_id,
            d.channel,
            d.address,
            d.priority,
            d.attempts,
            d.created_at,
            sa.select(n.template).where(of_notification).scalar_subquery().label("template"),
            sa.select(n.locale).where(of_notification).scalar_subquery().label("locale"),
            sa.select(n.data).where(of_notification).scalar_subquery().label("data"),
        )
    )


def worker_alive(worker: sa.ColumnElement[Any]) -> sa.Exists:
    """Whether `worker` (a column or a parameter) is registered and not declared dead."""
    w = workers.c
    return sa.exists(sa.select(w.id).where(w.id == worker, ~w.dead))


# An attempt row's columns a try's outcome binds: (parameter, type) of each. Its delivery_id
# is b_id; its number the delivery's earlier_attempts + attempts once the outcome is written.
_ATTEMPT_VALUES: dict[str, tuple[str, sa.types.TypeEngine[Any]]] = {
    "provider": ("b_provider", sa.String()),
    "outcome": ("b_outcome", sa.String()),
    "code": ("b_code", sa.String()),
    "reason": ("b_reason", sa.String()),
    "started_at": ("b_started_at", _UTC),
    "ended_at": ("b_now", _UTC),
}


@dataclass(frozen=True)
class Ending:
    """A try's outcome, fenced by its claim, with the attempt row that records it.

    `numbered` writes the outcome and returns the try's number, for SQLite to
    write the row next in its transaction; `with_row` does both as one
    statement with a data-modifying CTE (PostgreSQL: one round trip), the row
    written only from what the fenced UPDATE returned, so a lost claim writes
    none.
    """

    numbered: sa.UpdateBase
    with_row: sa.Insert


def _ending(insert: Callable[[sa.Table], Any], **values: Any) -> Ending:
    d = deliveries.c
    update = _outcome(**values)
    number = (d.earlier_attempts + d.attempts).label("number")
    done = update.returning(d.id.label("delivery_id"), number).cte("ended")
    row = sa.select(
        done.c.delivery_id,
        done.c.number,
        *[_param(name, t).label(column) for column, (name, t) in _ATTEMPT_VALUES.items()],
    )
    columns = ["delivery_id", "number", *_ATTEMPT_VALUES]
    # Returning: psycopg's rowcount of this INSERT is -1, no answer to whether the fence matched.
    with_row = _attempt_upsert(insert(attempts).from_select(columns, row)).returning(attempts.c.delivery_id)
    return Ending(numbered=update.returning(number), with_row=with_row)


def _attempt_upsert(stmt: Any) -> Any:
    """An attempt row, replacing the row of the same try: an unknown outcome (the sweep's or the
    heartbeat's) that its worker's late answer corrects, as it corrects the delivery."""
    a = attempts.c
    return stmt.on_conflict_do_update(
        index_elements=["delivery_id", "number"],
        set_={
            "provider": sa.func.coalesce(stmt.excluded.provider, a.provider),
            "outcome": stmt.excluded.outcome,
            "code": stmt.excluded.code,
            "reason": stmt.excluded.reason,
            "started_at": sa.func.coalesce(stmt.excluded.started_at, a.started_at),
            "ended_at": stmt.excluded.ended_at,
        },
    )


def _outcome(**values: Any) -> sa.Update:
    """The outcome of a try, recorded only by the claim that made it (the fence).

    Its claim may have been ended already as an unknown outcome, by the sweep
    (its worker was taken for dead mid-handover: cut off from the store, not
    killed); the outcome it brings back is the truth, and replaces that.
    """
    d = deliveries.c
    ended_unknown = sa.and_(d.status == Status.FAILED, d.error_code == CoreCode.OUTCOME_UNKNOWN.value)
    return (
        deliveries.update()
        .where(
            d.id == _param("b_id"),
            d.claim_token == _param("b_token"),
            sa.or_(d.status == Status.SENDING, ended_unknown),
        )
        .values(
            **{
                "claim_token": None,
                "worker_id": None,
                "handed_over_at": None,  # the claim is over
                "updated_at": _param("b_now", _UTC),
                **values,
            }
        )
    )
