"""The store on SQLite and on PostgreSQL: ownership of deliveries, dedup, scheduling."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from notify.delivery.maintenance import Maintenance
from notify.errors import StoreUnavailable
from notify.models import Status, utcnow
from notify.settings import Settings
from notify.store import Claim, NewDelivery, Queued, Refusal, Store
from notify.store.clock import DatabaseClock
from notify.store.schema import deliveries
from tests.support.records import a_worker, record_one


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    yield store
    store.close()


def new(channel: str = "email", address: str = "ada@example.com", **kwargs: object) -> NewDelivery:
    return NewDelivery(
        id=str(uuid.uuid4()),
        channel=channel,
        address=address,
        priority="normal",
        status=Status(kwargs.pop("status", Status.QUEUED)),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def worker(store: Store) -> str:
    """A worker process, registered (alive) in the store."""
    worker_id = str(uuid.uuid4())
    store.register_worker(worker_id, host="test-host", pid=1)
    return worker_id


def claimed(store: Store, delivery_id: str, worker_id: str | None = None) -> Claim:
    claim = store.claim(delivery_id, worker_id or worker(store))
    assert isinstance(claim, Claim), claim
    return claim


def declared_dead(store: Store, worker_id: str) -> None:
    """What the sweep does once the worker's beats stood still for a lease."""
    assert store.declare_dead(worker_id, store.worker_beats()[worker_id])


def record(store: Store, *deliveries: NewDelivery) -> list[str]:
    recorded = record_one(store, str(uuid.uuid4()), "welcome", None, '{"name": "Ada"}', deliveries)
    return [d.id for d in recorded]


def test_a_recorded_notification_reads_back_with_its_deliveries(store: Store) -> None:
    email, sms = new(), new("sms", "+14155550100")
    notification_id = str(uuid.uuid4())
    record_one(store, notification_id, "welcome", "de", '{"name": "Ada"}', [email, sms])

    found = store.deliveries_of(notification_id)

    assert {(d.id, d.channel, d.status, d.attempts) for d in found} == {
        (email.id, "email", Status.QUEUED, 0),
        (sms.id, "sms", Status.QUEUED, 0),
    }


def test_a_claim_hands_the_worker_everything_it_needs(store: Store) -> None:
    [delivery_id] = record(store, new())

    claim = store.claim(delivery_id, worker(store))

    assert isinstance(claim, Claim)
    assert (claim.template, claim.channel, claim.address, claim.attempts, claim.data) == (
        "welcome",
        "email",
        "ada@example.com",
        1,
        {"name": "Ada"},
    )
    assert store.get(delivery_id).status == Status.SENDING  # type: ignore[union-attr]


def test_only_one_of_many_concurrent_claims_wins(store: Store) -> None:
    [delivery_id] = record(store, new())
    barrier = threading.Barrier(8)

    def claim(_: int) -> Claim | Refusal:
        barrier.wait()
        return store.claim(delivery_id, worker(store))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim, range(8)))

    assert sum(isinstance(r, Claim) for r in results) == 1
    refusals = [r for r in results if isinstance(r, Refusal)]
    assert all(r.status == Status.SENDING for r in refusals)


def test_a_sent_delivery_cannot_be_claimed_again(store: Store) -> None:
    [delivery_id] = record(store, new())
    store.mark_sent(claimed(store, delivery_id), "provider-1")

    refusal = store.claim(delivery_id, worker(store))

    assert refusal == Refusal(status=Status.SENT)
    delivery = store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.provider_id, delivery.attempts) == (
        Status.SENT,
        "provider-1",
        1,
    )


def test_a_dead_workers_claim_is_handed_on_by_the_sweep_not_taken_by_a_claim(store: Store) -> None:
    [delivery_id] = record(store, new())
    first = worker(store)
    claimed(store, delivery_id, first)
    assert isinstance(store.claim(delivery_id, worker(store)), Refusal)  # its worker lives

    declared_dead(store, first)
    assert store.reclaim_from_dead() == [(delivery_id, "email", "normal")]
    claim = store.claim(delivery_id, worker(store))

    assert isinstance(claim, Claim) and claim.attempts == 2


def test_a_stale_worker_cannot_overwrite_a_newer_outcome(store: Store) -> None:
    [delivery_id] = record(store, new())
    claim = claimed(store, delivery_id)
    assert store.mark_sent(claim, "first")

    assert not store.mark_failed(claim, "late failure from a slow worker", "451")

    assert store.get(delivery_id).status == Status.SENT  # type: ignore[union-attr]


def test_a_claim_taken_over_cannot_record_its_outcome(store: Store) -> None:
    """Worker A is taken for dead, B claims; A's late failure must not drop B's success."""
    [delivery_id] = record(store, new())
    first = worker(store)
    stale = claimed(store, delivery_id, first)
    declared_dead(store, first)
    store.reclaim_from_dead()
    current = claimed(store, delivery_id)

    assert not store.mark_failed(stale, "late failure from the first worker", "451")
    assert store.get(delivery_id).status == Status.SENDING  # type: ignore[union-attr]
    assert store.mark_sent(current, "second")
    delivery = store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.provider_id) == (Status.SENT, "second")


def test_a_dead_workers_claim_it_was_handing_over_ends_unknown_until_its_outcome_comes_back(
    store: Store,
) -> None:
    """Handed on, it could be sent twice (its worker may be alive, cut off, waiting for the answer)."""
    [delivery_id] = record(store, new())
    first = worker(store)
    handing = claimed(store, delivery_id, first)
    assert store.handing_over(handing)
    declared_dead(store, first)

    assert store.reclaim_from_dead() == []  # not for another worker
    assert store.end_unknown_from_dead() == [delivery_id]
    assert store.end_unknown_from_dead() == []
    found = store.get(delivery_id)
    assert found is not None and (found.status, found.error_code) == (Status.FAILED, "outcome_unknown")
    assert "while handing it over" in (found.last_error or "")
    assert [d.id for d in store.dead_letters()] == [delivery_id]
    assert store.claim(delivery_id, worker(store)) == Refusal(status=Status.FAILED)

    assert store.mark_sent(handing, "late")  # the worker reached the store again: the truth wins
    found = store.get(delivery_id)
    assert found is not None and (found.status, found.provider_id) == (Status.SENT, "late")
    assert store.dead_letters() == []
    assert not store.mark_failed(handing, "twice", "x")  # once only


def test_a_replayed_unknown_outcome_is_no_longer_its_old_claims_to_record(store: Store) -> None:
    [delivery_id] = record(store, new())
    first = worker(store)
    handing = claimed(store, delivery_id, first)
    assert store.handing_over(handing)
    declared_dead(store, first)
    assert store.end_unknown_from_dead() == [delivery_id]
    assert [q.id for q in store.replay([delivery_id])] == [delivery_id]

    assert not store.mark_sent(handing, "late")
    current = claimed(store, delivery_id)
    assert not store.mark_failed(handing, "late", "x")
    assert store.mark_sent(current, "replayed")


def test_a_handover_mark_lasts_only_as_long_as_its_claim(store: Store) -> None:
    """Left on the row, it would make a later claim's death look like a handover (a false unknown)."""

    def mark(delivery_id: str) -> object:
        with store.engine.connect() as conn:
            return conn.execute(
                sa.select(deliveries.c.handed_over_at).where(deliveries.c.id == delivery_id)
            ).scalar()

    [delivery_id] = record(store, new())
    first = claimed(store, delivery_id)
    assert store.handing_over(first) and mark(delivery_id) is not None
    assert store.mark_retrying(first, "busy", "451", utcnow())
    assert mark(delivery_id) is None
    assert [q.id for q in store.release_due()] == [delivery_id]
    dying = worker(store)
    assert isinstance(store.claim(delivery_id, dying), Claim)  # and its worker dies before the handover
    declared_dead(store, dying)
    assert store.end_unknown_from_dead() == []
    assert [q.id for q in store.reclaim_from_dead()] == [delivery_id]


def test_a_purge_racing_a_late_outcome_leaves_the_sent_delivery_its_dedup_claim(postgres_url: str) -> None:
    """An unknown outcome's worker comes back with `sent` while an operator purges the dead
    letters: the delivery stays, and so must its dedup claim (else the next send repeats it)."""
    store = Store(postgres_url)
    try:
        key = str(uuid.uuid4())
        [delivery_id] = record(store, new(dedup_key=key, dedup_window=3600))
        first = worker(store)
        handing = claimed(store, delivery_id, first)
        assert store.handing_over(handing)
        declared_dead(store, first)
        assert store.end_unknown_from_dead() == [delivery_id]
        results: dict[str, object] = {}
        with store.engine.connect() as locker:  # another writer holds the row a moment
            locker.execute(sa.select(deliveries.c.id).where(deliveries.c.id == delivery_id).with_for_update())
            late = threading.Thread(target=lambda: results.update(sent=store.mark_sent(handing, "late")))
            late.start()
            wait_until_blocked(store, 1)
            purge = threading.Thread(target=lambda: results.update(purged=store.purge_dead_letters()))
            purge.start()
            wait_until_blocked(store, 2)
            locker.rollback()
        late.join(10)
        purge.join(10)

        assert results == {"sent": True, "purged": 0}
        again = new(dedup_key=key, dedup_window=3600)
        [repeat] = record(store, again)
        assert store.get(repeat).status == Status.DUPLICATE  # type: ignore[union-attr]
    finally:
        store.close()


def wait_until_blocked(store: Store, count: int) -> None:
    """Until `count` sessions of this database wait on a lock (PostgreSQL's own view)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with store.engine.connect() as conn:
            if conn.execute(query).scalar_one() >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"{count} sessions never waited on the row lock")


def test_a_worker_declared_dead_cannot_begin_a_handover_and_its_claim_is_handed_on(store: Store) -> None:
    [delivery_id] = record(store, new())
    first = worker(store)
    stale = claimed(store, delivery_id, first)
    declared_dead(store, first)

    assert not store.handing_over(stale)
    assert store.end_unknown_from_dead() == []
    assert store.reclaim_from_dead() == [(delivery_id, "email", "normal")]
    assert not store.handing_over(stale)  # nor once the claim is another's


def test_a_worker_is_declared_dead_only_at_the_count_observed_and_then_claims_nothing(store: Store) -> None:
    [delivery_id] = record(store, new())
    alive = worker(store)
    observed = store.worker_beats()[alive]
    assert store.beat(alive)  # it beat after the observer looked

    assert not store.declare_dead(alive, observed)  # the count moved on: alive
    assert store.declare_dead(alive, observed + 1)
    assert not store.beat(alive)  # it learns it was declared dead at its next beat
    assert store.claim(delivery_id, alive) == Refusal(status=Status.QUEUED)
    assert alive not in store.worker_beats()


def test_a_retired_worker_is_forgotten_once_its_deliveries_are_handed_on(store: Store) -> None:
    [delivery_id] = record(store, new())
    leaving = worker(store)
    claimed(store, delivery_id, leaving)

    store.retire_worker(leaving)
    assert store.forget_dead_workers() == 0  # it still holds a delivery
    assert store.reclaim_from_dead() == [(delivery_id, "email", "normal")]
    assert store.forget_dead_workers() == 1


@pytest.mark.parametrize("seconds", [-3600, -80, 80, 86400])
def test_no_clock_decides_that_a_worker_is_dead(store_url: str, seconds: float) -> None:
    """A process whose clock (or the database's) steps by any amount hands on nothing of a live worker."""
    holder, skewed = Store(store_url), Store(store_url, clock=lambda: utcnow() + timedelta(seconds=seconds))
    [delivery_id] = record(holder, new())
    claimed(holder, delivery_id)

    reclaimed = skewed.reclaim_from_dead()

    holder.close()
    skewed.close()
    assert reclaimed == []


def test_a_claim_made_by_a_lease_of_notify_0_3_is_handed_on_once_its_lease_lapsed(store: Store) -> None:
    """Upgrading with workers in flight: an older worker's claim carries a lease and no worker."""
    [lapsed, live] = record(store, new(), new())
    d = deliveries.c
    for delivery_id, seconds in ((lapsed, -1), (live, 60)):
        with store.engine.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(d.id == delivery_id)
                .values(
                    status=Status.SENDING,
                    claim_token="old",
                    lease_until=utcnow() + timedelta(seconds=seconds),
                )
            )

    assert store.reclaim_from_dead() == [(lapsed, "email", "normal")]


@pytest.mark.parametrize("offset_hours", [-5, 9, 0])
def test_send_at_is_held_in_utc_whatever_offset_it_was_written_in(store: Store, offset_hours: int) -> None:
    zone = timezone(timedelta(hours=offset_hours))
    past = new(status=Status.SCHEDULED, release_at=(utcnow() - timedelta(minutes=1)).astimezone(zone))
    soon = new(status=Status.SCHEDULED, release_at=(utcnow() + timedelta(minutes=1)).astimezone(zone))
    record(store, past, soon)

    assert [q.id for q in store.release_due()] == [past.id]
    assert soon.release_at is not None
    assert store.get(soon.id).next_attempt_at == soon.release_at  # type: ignore[union-attr]
    assert store.get(soon.id).next_attempt_at.utcoffset() == timedelta(0)  # type: ignore[union-attr]


def test_a_retrying_delivery_always_has_a_release_time(store: Store) -> None:
    """A retry is never left to a broker countdown that a crash could lose."""
    [delivery_id] = record(store, new())
    soon = utcnow() + timedelta(seconds=2)
    store.mark_retrying(claimed(store, delivery_id), "451 later", "451", soon)

    assert store.release_due() == []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "now", lambda: soon + timedelta(milliseconds=1))
        assert [q.id for q in store.release_due()] == [delivery_id]


def test_replaying_more_ids_than_a_statement_can_bind_works(store: Store) -> None:
    [delivery_id] = record(store, new())
    store.mark_failed(claimed(store, delivery_id), "550 no such user", "550")
    unknown = [str(uuid.uuid4()) for _ in range(70_000)]  # PostgreSQL binds at most 65,535 per statement

    replayed = store.replay([*unknown, delivery_id])

    assert [q.id for q in replayed] == [delivery_id]
    assert store.get(delivery_id).status == Status.QUEUED  # type: ignore[union-attr]


def test_purging_dead_letters_frees_their_dedup_keys(store: Store) -> None:
    first = new(dedup_key="order-7", dedup_window=3600)
    record(store, first)
    store.mark_failed(claimed(store, first.id), "550 no such user", "550")

    assert store.purge_dead_letters() == 1
    again = new(dedup_key="order-7", dedup_window=3600)
    record(store, again)

    assert store.get(first.id) is None
    assert store.get(again.id).status == Status.QUEUED  # type: ignore[union-attr]


def test_an_unreachable_store_raises_our_error_not_the_drivers() -> None:
    store = Store("postgresql://postgres@127.0.0.1:1/none")  # connects when first used
    with pytest.raises(StoreUnavailable, match="unavailable"):
        store.get("d-1")
    store.close()


def test_concurrent_producers_with_one_dedup_key_record_one_delivery(store: Store) -> None:
    barrier = threading.Barrier(8)

    def send(_: int) -> str:
        barrier.wait()
        delivery = new(dedup_key="signup-42", dedup_window=3600)
        record_one(store, str(uuid.uuid4()), "welcome", None, "{}", [delivery])
        return str(store.get(delivery.id).status)  # type: ignore[union-attr]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))

    assert sorted(statuses) == ["duplicate"] * 7 + ["queued"]


def test_a_duplicate_names_the_delivery_it_repeats(store: Store) -> None:
    first, second = new(dedup_key="k", dedup_window=3600), new(dedup_key="k", dedup_window=3600)
    record(store, first)
    record(store, second)

    duplicate = store.get(second.id)

    assert duplicate is not None
    assert (duplicate.status, duplicate.duplicate_of) == (Status.DUPLICATE, first.id)


def test_dedup_is_per_channel_and_address(store: Store) -> None:
    ids = [
        record(store, new("email", "a@example.com", dedup_key="k", dedup_window=3600))[0],
        record(store, new("email", "b@example.com", dedup_key="k", dedup_window=3600))[0],
        record(store, new("sms", "+14155550100", dedup_key="k", dedup_window=3600))[0],
    ]

    assert [store.get(i).status for i in ids] == [Status.QUEUED] * 3  # type: ignore[union-attr]


def test_an_expired_dedup_claim_admits_the_key_again(store: Store) -> None:
    record(store, new(dedup_key="k", dedup_window=0))
    later = new(dedup_key="k", dedup_window=3600)

    record(store, later)

    assert store.get(later.id).status == Status.QUEUED  # type: ignore[union-attr]


def test_scheduled_deliveries_are_released_once_when_due(store: Store) -> None:
    due = new(status=Status.SCHEDULED, release_at=utcnow() - timedelta(seconds=1))
    future = new(status=Status.SCHEDULED, release_at=utcnow() + timedelta(hours=1))
    record(store, due, future)

    with ThreadPoolExecutor(4) as pool:
        released = [r for batch in pool.map(lambda _: store.release_due(), range(4)) for r in batch]

    assert released == [(due.id, "email", "normal")]
    assert store.get(due.id).status == Status.QUEUED  # type: ignore[union-attr]
    assert store.get(future.id).status == Status.SCHEDULED  # type: ignore[union-attr]


def test_a_scheduled_delivery_cannot_be_claimed_before_it_is_released(store: Store) -> None:
    held = new(status=Status.SCHEDULED, release_at=utcnow() + timedelta(hours=1))
    record(store, held)

    assert isinstance(store.claim(held.id, worker(store)), Refusal)


def test_a_retry_is_held_by_the_store_until_due(store: Store) -> None:
    [delivery_id] = record(store, new())
    store.mark_retrying(claimed(store, delivery_id), "451 later", "451", utcnow() - timedelta(seconds=1))

    assert isinstance(store.claim(delivery_id, worker(store)), Refusal)
    assert store.release_due() == [(delivery_id, "email", "normal")]
    claim = store.claim(delivery_id, worker(store))
    assert isinstance(claim, Claim) and claim.attempts == 2


def test_the_sweep_takes_back_what_a_dead_worker_held(store: Store) -> None:
    [queued] = record(store, new())
    [dead_worker] = record(store, new())
    [live_worker] = record(store, new())
    dead = worker(store)
    claimed(store, dead_worker, dead)
    claimed(store, live_worker)
    declared_dead(store, dead)

    assert {i for i, _, _ in store.reclaim_from_dead()} == {dead_worker}
    assert store.get(dead_worker).status == Status.QUEUED  # type: ignore[union-attr]
    assert store.get(live_worker).status == Status.SENDING  # type: ignore[union-attr]
    assert store.get(queued).status == Status.QUEUED  # type: ignore[union-attr]


def test_a_delivery_queued_too_long_is_offered_again_once_per_period(store: Store) -> None:
    [queued] = record(store, new())
    [sms] = record(store, new("sms", "+14155550100"))

    assert store.queued_since(3600) == []
    assert [q.id for q in store.queued_since(-1, ["email"])] == [queued]
    assert store.queued_since(1, ["email"]) == []  # just stamped: not again until the period passes
    assert {q.id for q in store.queued_since(-1)} == {queued, sms}


def test_purging_keeps_dead_letters_and_recent_deliveries(store: Store) -> None:
    [sent, failed, recent] = record(store, new(), new(), new())
    record(store, new(dedup_key="k", dedup_window=0))
    store.mark_sent(claimed(store, sent), None)
    store.mark_failed(claimed(store, failed), "550 no such user", "550")
    store.mark_sent(claimed(store, recent), None)

    assert store.purge_finished(older_than=3600) == 0
    assert store.get(recent) is not None

    assert store.purge_finished(older_than=-1) == 2
    assert store.get(sent) is None and store.get(recent) is None
    assert store.get(failed).status == Status.FAILED  # type: ignore[union-attr]


def test_a_postgresql_connection_dropped_while_idle_is_replaced_quietly(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    import notify.store.engines

    monkeypatch.setattr(notify.store.engines, "_PING_IF_IDLE_FOR", 0.0)  # every checkout counts as idle
    store = Store(postgres_url)
    [delivery_id] = record(store, new())
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/test", autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()

    delivery = store.get(delivery_id)  # the pool's connection is dead; the ping replaces it

    store.close()
    assert killed is not None and killed[0] >= 1
    assert delivery is not None and delivery.status == Status.QUEUED


def test_an_outcome_longer_than_its_column_is_kept_cut_not_lost(store: Store) -> None:
    """A DataError on mark_sent would lapse the claim and send it again, for ever."""
    [delivery_id] = record(store, new())

    assert store.mark_sent(claimed(store, delivery_id), "queued as " + "x" * 1000)

    delivery = store.get(delivery_id)
    assert delivery is not None and delivery.status == Status.SENT
    assert delivery.provider_id is not None and len(delivery.provider_id) == 300


def test_what_is_released_together_comes_out_high_priority_first(store: Store) -> None:
    due = utcnow() - timedelta(seconds=1)
    held = [
        dataclasses.replace(new(status=Status.SCHEDULED, release_at=due), priority=p)
        for p in ("low", "normal", "high", "low")
    ]
    record(store, *held)

    assert [q.priority for q in store.release_due()] == ["high", "normal", "low", "low"]


def test_a_sweep_publishes_each_lost_delivery_once_however_slow_publishing_is(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch took longer than the grace: the old sweep found its own rows "lost" again."""
    import notify.delivery.maintenance
    import notify.store.store

    monkeypatch.setattr(notify.store.store, "BATCH", 10)
    monkeypatch.setattr(notify.delivery.maintenance, "BATCH", 10)
    ids = record(store, *[new(address=f"u{i}@example.com") for i in range(30)])
    clock = [utcnow() + timedelta(seconds=60)]
    monkeypatch.setattr(store, "now", lambda: clock[0])
    published: list[str] = []

    def slow_publish(batch: list[Queued]) -> None:
        published.extend(q.id for q in batch)
        assert len(published) <= 100, "the sweep keeps republishing what it just published"
        clock[0] += timedelta(seconds=6)  # longer than the 5 s grace

    settings = Settings.from_env({"NOTIFY_HOME": str(Path(store.engine.url.database or ".").parent)})
    Maintenance(store, settings, slow_publish, channels=["email"], backlog=lambda *_: 0).sweep()

    assert sorted(published) == sorted(ids)


def statements_of(store: Store) -> list[str]:
    """Every SQL statement the store's engines send from now on (BEGIN and COMMIT included)."""
    import sqlalchemy as sa

    sent: list[str] = []
    for engine in {store.engine, store._writer}:
        sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2].split()[0].upper()))
        sa.event.listen(engine, "commit", lambda *_: sent.append("COMMIT"))
    return sent


def test_a_send_records_its_notification_and_deliveries_in_one_round_trip_on_postgresql(
    postgres_url: str,
) -> None:
    store = Store(postgres_url)
    later = store.now() + timedelta(hours=1)  # the database's clock, read once a minute
    sent = statements_of(store)
    _ = utcnow() + timedelta(hours=1)
    deliveries = [
        new(),
        new("sms", "+14155550100"),
        new("push", "tok", status=Status.SCHEDULED, release_at=later),
    ]

    ids = record(store, *deliveries)

    assert sent == ["WITH"]  # one autocommitted statement: no BEGIN, no COMMIT
    got = [store.get(i) for i in ids]
    assert [d.status for d in got if d] == [Status.QUEUED, Status.QUEUED, Status.SCHEDULED]
    assert got[2] is not None and got[2].next_attempt_at == later
    store.close()


def test_a_send_with_a_dedup_key_still_claims_it_in_a_transaction_on_postgresql(postgres_url: str) -> None:
    store = Store(postgres_url)
    first = record(store, new(dedup_key="k", dedup_window=60))
    sent = statements_of(store)

    second = record_one(
        store, str(uuid.uuid4()), "welcome", None, "{}", [new(dedup_key="k", dedup_window=60)]
    )

    assert "COMMIT" in sent and "WITH" not in sent
    assert second[0].duplicate_of == first[0]
    store.close()


def test_a_claim_and_its_outcome_are_one_statement_each_on_postgresql(postgres_url: str) -> None:
    store = Store(postgres_url)
    [delivery_id] = record(store, new())
    worker_id = worker(store)
    sent = statements_of(store)

    claim = claimed(store, delivery_id, worker_id)
    assert store.beat(worker_id)
    assert store.mark_sent(claim, "p-1")

    # autocommitted: no BEGIN, no COMMIT round trips; the outcome writes its attempt row in a CTE
    assert sent == ["UPDATE", "UPDATE", "WITH"]
    store.close()


LATIN_1_REPLY = b"5.1.1 Empf\xe4nger unbekannt".decode("utf-8", "surrogateescape")  # as aiosmtplib reads it


@pytest.mark.parametrize(
    ("outcome", "text", "stored"),
    [
        ("sent", "AB\x00CD", "AB\\x00CD"),
        ("sent", "Q" * 1000, "Q" * 299 + "\u2026"),
        ("failed", LATIN_1_REPLY, "5.1.1 Empf\\xe4nger unbekannt"),
        ("failed", "400 Bad\x00Request", "400 Bad\\x00Request"),
        ("retrying", "lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("failed", "x" * 100_000, "x" * 1999 + "\u2026"),
    ],
)
def test_text_from_a_provider_is_stored_escaped_whatever_it_holds(
    store: Store, outcome: str, text: str, stored: str
) -> None:
    """An outcome the store refused for its content would be sent again: it is written escaped."""
    [delivery_id] = record(store, new())
    claim = claimed(store, delivery_id)

    if outcome == "sent":
        assert store.mark_sent(claim, text)
    elif outcome == "failed":
        assert store.mark_failed(claim, text, text[:10])
    else:
        assert store.mark_retrying(claim, text, None, utcnow())

    delivery = store.get(delivery_id)
    assert delivery is not None
    assert (delivery.provider_id if outcome == "sent" else delivery.last_error) == stored
    [attempt] = store.attempts_of(delivery_id)
    assert attempt.reason == (None if outcome == "sent" else stored)


def test_a_delivery_released_and_claimed_by_another_process_mid_release_keeps_its_claim(
    postgres_url: str,
) -> None:
    """Between a release's SELECT and its UPDATE, another process releases the same delivery and a
    worker claims it: the UPDATE re-checks its condition and leaves the claim alone. (PostgreSQL:
    SQLite's BEGIN IMMEDIATE lets no other writer in between.)"""
    store, other = Store(postgres_url), Store(postgres_url)
    try:
        [due] = record(store, new(status=Status.SCHEDULED, release_at=utcnow() - timedelta(seconds=1)))
        worker = a_worker(other)
        raced: list[object] = []

        def meanwhile(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if statement.startswith("UPDATE notify_deliveries") and not raced:
                raced.append(other.release_due())
                raced.append(other.claim(due, worker))

        sa.event.listen(store.engine, "before_cursor_execute", meanwhile)
        try:
            assert store.release_due() == []  # the other process won the race
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", meanwhile)
        assert isinstance(raced[1], Claim)
        held = store.get(due)
        assert held is not None and held.status == Status.SENDING
    finally:
        store.close()
        other.close()


def test_the_database_clock_moves_on_between_reads_and_reads_the_database_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL's store time: read from the server, carried on by this host's monotonic clock."""
    import types

    import notify.store.clock

    ticks = [500.0]
    monkeypatch.setattr(notify.store.clock, "time", types.SimpleNamespace(monotonic=lambda: ticks[0]))
    served = iter([datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)])
    clock = DatabaseClock(lambda: next(served))

    assert clock() == datetime(2026, 1, 1, tzinfo=UTC)
    ticks[0] += 30
    assert clock() == datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    ticks[0] += DatabaseClock.RESYNC_EVERY
    assert clock() == datetime(2026, 6, 1, tzinfo=UTC)  # the server's time again, a step included


def test_a_held_delivery_without_a_release_time_is_released(store: Store) -> None:
    """A `retrying` row an older release left with no `release_at` is not held for ever."""
    [held] = record(store, new(status=Status.RETRYING, release_at=utcnow() + timedelta(hours=1)))
    store.get("none")
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE notify_deliveries SET release_at = NULL WHERE id = :id"), {"id": held})

    assert [q.id for q in store.release_due()] == [held]


# -- attempts: one row per try, written with its outcome -------------------------------


def test_a_retry_then_a_send_leave_two_attempt_rows_with_their_providers_and_codes(store: Store) -> None:
    [delivery_id] = record(store, new())
    first = claimed(store, delivery_id)
    assert store.mark_retrying(first, "451 try later", "451", utcnow(), provider="smtp")
    assert [q.id for q in store.release_due()] == [delivery_id]
    second = claimed(store, delivery_id)
    assert store.mark_sent(second, "p-2", provider="smtp")

    tries = store.attempts_of(delivery_id)

    assert [(a.number, a.provider, a.outcome, a.code, a.reason) for a in tries] == [
        (1, "smtp", "retry", "451", "451 try later"),
        (2, "smtp", "sent", None, None),
    ]
    assert [a.started_at for a in tries] == [first.claimed_at, second.claimed_at]
    assert all(a.took is not None and a.took >= 0 for a in tries)


def test_a_claim_taken_over_writes_no_attempt_row(store: Store) -> None:
    [delivery_id] = record(store, new())
    first = worker(store)
    stale = claimed(store, delivery_id, first)
    declared_dead(store, first)
    assert [q.id for q in store.reclaim_from_dead()] == [delivery_id]
    current = claimed(store, delivery_id)

    assert not store.mark_failed(stale, "550 gone", "550", provider="smtp")
    assert not store.mark_retrying(stale, "451", "451", utcnow(), provider="smtp")
    assert not store.mark_sent(stale, "p-stale", provider="smtp")
    assert store.attempts_of(delivery_id) == []
    assert store.mark_sent(current, "p-2", provider="smtp")
    assert [(a.number, a.outcome) for a in store.attempts_of(delivery_id)] == [(2, "sent")]


def test_an_uncounted_try_writes_no_attempt_row(store: Store) -> None:
    [delivery_id] = record(store, new())
    assert store.give_back(claimed(store, delivery_id), "cut off")
    assert store.attempts_of(delivery_id) == []


def test_the_sweeps_unknown_outcome_is_a_row_its_workers_late_answer_replaces(store: Store) -> None:
    [delivery_id] = record(store, new())
    first = worker(store)
    handing = claimed(store, delivery_id, first)
    assert store.handing_over(handing)
    declared_dead(store, first)
    assert store.end_unknown_from_dead() == [delivery_id]

    [unknown] = store.attempts_of(delivery_id)
    assert (unknown.number, unknown.provider, unknown.outcome, unknown.code) == (
        1, None, "unknown", "outcome_unknown"
    )  # fmt: skip
    assert unknown.started_at == handing.claimed_at

    assert store.mark_sent(handing, "late", provider="smtp")
    [late] = store.attempts_of(delivery_id)
    assert (late.number, late.provider, late.outcome, late.code, late.started_at) == (
        1, "smtp", "sent", None, handing.claimed_at
    )  # fmt: skip


def test_a_heartbeats_unknown_outcome_is_an_attempt_row(store: Store) -> None:
    [delivery_id] = record(store, new())
    claim = claimed(store, delivery_id)
    assert store.handing_over(claim)

    assert store.abandon(delivery_id, claim.token, "the attempt raised KeyboardInterrupt", handed_over=True)

    [row] = store.attempts_of(delivery_id)
    assert (row.number, row.outcome, row.code, row.started_at) == (1, "unknown", "outcome_unknown", None)


def test_a_replay_keeps_the_old_attempts_and_numbers_its_tries_on_from_them(store: Store) -> None:
    [delivery_id] = record(store, new())
    for _ in range(2):
        claim = claimed(store, delivery_id)
        assert store.mark_retrying(claim, "451", "451", utcnow(), provider="smtp")
        store.release_due()
    assert store.mark_failed(claimed(store, delivery_id), "550 gone", "550", provider="smtp")
    assert [q.id for q in store.replay([delivery_id])] == [delivery_id]

    again = claimed(store, delivery_id)
    assert again.attempts == 1  # a fresh cycle for max_attempts
    assert store.mark_sent(again, "p", provider="smtp")

    tries = store.attempts_of(delivery_id)
    assert [(a.number, a.outcome) for a in tries] == [(1, "retry"), (2, "retry"), (3, "failed"), (4, "sent")]


def test_attempt_rows_go_with_their_delivery_when_purged(store: Store) -> None:
    sent_id, failed_id = record(store, new(), new(address="bo@example.com"))
    assert store.mark_sent(claimed(store, sent_id), "p", provider="smtp")
    assert store.mark_failed(claimed(store, failed_id), "550 gone", "550", provider="smtp")

    assert store.purge_finished(older_than=-60) == 1
    assert store.attempts_of(sent_id) == []
    assert len(store.attempts_of(failed_id)) == 1
    assert store.purge_dead_letters() == 1
    assert store.attempts_of(failed_id) == []


def test_attempt_outcomes_are_the_metrics_words() -> None:
    from notify.observability.metrics import AttemptOutcome
    from notify.store import store as module

    assert {module.SENT, module.RETRY, module.FAILED, module.UNKNOWN} <= {o.value for o in AttemptOutcome}
