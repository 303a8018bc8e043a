"""The store on SQLite and on PostgreSQL: ownership of deliveries, dedup, scheduling."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from notify.models import Status
from notify.store import Job, NewDelivery, Refusal, Store, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        f"sqlite:///{tmp_path}/store.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = Store(url)
    yield store
    store.close()


def new(channel: str = "email", address: str = "ada@example.com", **kwargs: object) -> NewDelivery:
    return NewDelivery(
        id=str(uuid.uuid4()),
        channel=channel,
        address=address,
        priority="normal",
        status=kwargs.pop("status", Status.QUEUED),
        **kwargs,  # type: ignore[arg-type]
    )


def record(store: Store, *deliveries: NewDelivery) -> list[str]:
    recorded = store.record(str(uuid.uuid4()), "welcome", None, '{"name": "Ada"}', deliveries)
    return [d.id for d in recorded]


def test_a_recorded_notification_reads_back_with_its_deliveries(store: Store) -> None:
    email, sms = new(), new("sms", "+14155550100")
    notification_id = str(uuid.uuid4())
    store.record(notification_id, "welcome", "de", '{"name": "Ada"}', [email, sms])

    found = store.deliveries_of(notification_id)

    assert {(d.id, d.channel, d.status, d.attempts) for d in found} == {
        (email.id, "email", Status.QUEUED, 0),
        (sms.id, "sms", Status.QUEUED, 0),
    }


def test_a_claim_hands_the_worker_everything_it_needs(store: Store) -> None:
    [delivery_id] = record(store, new())

    job = store.claim(delivery_id, lease=60)

    assert isinstance(job, Job)
    assert (job.template, job.channel, job.address, job.attempts, job.data) == (
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

    def claim(_: int) -> Job | Refusal:
        barrier.wait()
        return store.claim(delivery_id, lease=60)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim, range(8)))

    assert sum(isinstance(r, Job) for r in results) == 1
    refusals = [r for r in results if isinstance(r, Refusal)]
    assert all(r.status == Status.SENDING and r.retry_in and r.retry_in > 0 for r in refusals)


def test_a_sent_delivery_cannot_be_claimed_again(store: Store) -> None:
    [delivery_id] = record(store, new())
    store.claim(delivery_id, lease=60)
    store.mark_sent(delivery_id, "provider-1")

    refusal = store.claim(delivery_id, lease=60)

    assert refusal == Refusal(status=Status.SENT)
    delivery = store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.provider_id, delivery.attempts) == (
        Status.SENT,
        "provider-1",
        1,
    )


def test_an_expired_lease_lets_another_worker_take_over(store: Store) -> None:
    [delivery_id] = record(store, new())
    store.claim(delivery_id, lease=0)  # this worker "died" holding it

    job = store.claim(delivery_id, lease=60)

    assert isinstance(job, Job) and job.attempts == 2


def test_a_stale_worker_cannot_overwrite_a_newer_outcome(store: Store) -> None:
    [delivery_id] = record(store, new())
    store.claim(delivery_id, lease=60)
    store.mark_sent(delivery_id, "first")

    store.mark_failed(delivery_id, "late failure from a slow worker", "451")

    assert store.get(delivery_id).status == Status.SENT  # type: ignore[union-attr]


def test_concurrent_producers_with_one_dedup_key_record_one_delivery(store: Store) -> None:
    barrier = threading.Barrier(8)

    def send(_: int) -> str:
        barrier.wait()
        delivery = new(dedup_key="signup-42", dedup_window=3600)
        store.record(str(uuid.uuid4()), "welcome", None, "{}", [delivery])
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

    assert isinstance(store.claim(held.id, lease=60), Refusal)


def test_a_long_retry_is_held_until_due(store: Store) -> None:
    [delivery_id] = record(store, new())
    store.claim(delivery_id, lease=60)
    store.mark_retrying(delivery_id, "451 later", "451", utcnow() - timedelta(seconds=1), held=True)

    assert isinstance(store.claim(delivery_id, lease=60), Refusal)
    assert store.release_due() == [(delivery_id, "email", "normal")]
    job = store.claim(delivery_id, lease=60)
    assert isinstance(job, Job) and job.attempts == 2


def test_the_sweeper_takes_back_what_nobody_is_working_on(store: Store) -> None:
    [queued] = record(store, new())
    [dead_worker] = record(store, new())
    [live_worker] = record(store, new())
    store.claim(dead_worker, lease=0)
    store.claim(live_worker, lease=60)

    assert {i for i, _, _ in store.reclaim_stuck(queued_for=3600)} == {dead_worker}
    assert {i for i, _, _ in store.reclaim_stuck(queued_for=-1)} == {queued, dead_worker}
    assert store.get(dead_worker).status == Status.QUEUED  # type: ignore[union-attr]
    assert store.get(live_worker).status == Status.SENDING  # type: ignore[union-attr]


def test_purging_keeps_dead_letters_and_recent_deliveries(store: Store) -> None:
    [sent, failed, recent] = record(store, new(), new(), new())
    record(store, new(dedup_key="k", dedup_window=0))
    for delivery_id in (sent, failed, recent):
        store.claim(delivery_id, lease=60)
    store.mark_sent(sent, None)
    store.mark_failed(failed, "550 no such user", "550")
    store.mark_sent(recent, None)

    assert store.purge_finished(older_than=3600) == 0
    assert store.get(recent) is not None

    assert store.purge_finished(older_than=-1) == 2
    assert store.get(sent) is None and store.get(recent) is None
    assert store.get(failed).status == Status.FAILED  # type: ignore[union-attr]


def test_a_postgresql_connection_dropped_while_idle_is_replaced_quietly(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    import notify.schema

    monkeypatch.setattr(notify.schema, "_PING_IF_IDLE_FOR", 0.0)  # every checkout counts as idle
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
