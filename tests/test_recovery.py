"""Recovery is the store's job: what a dead worker held, lost retries, schedules behind a backlog.

Real workers on Redis, RabbitMQ and the embedded broker; a real SMTP server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from notify.api import Intent, Notifier
from notify.models import Status
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer
from tests.test_email_delivery import arrival_order, queue_a_backlog

RECOVERY_BOUND = 30.0  # seconds from a new worker being ready: the contract (DESIGN.md)
BROKERS = ["embedded", "redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]


@pytest.fixture(params=BROKERS)
def broker_env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """The test's environment on each broker in turn (the store on SQLite)."""
    if request.param != "embedded":
        env["NOTIFY_BROKER_URL"] = request.getfixturevalue(f"{request.param}_url")
    return env


def statuses(producer: Notifier, ids: list[str]) -> list[Status]:
    return [producer.store.get(i).status for i in ids]  # type: ignore[union-attr]


def test_priority_order_holds_on_every_broker(
    broker_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    queue_a_backlog(notifier())

    start_worker("email", "-c", "1")

    order = arrival_order(smtp_server)
    assert order == sorted(order, key=["high", "normal", "low"].index)


def queue_emails(producer: Notifier, how: str) -> list[str]:
    """40 emails sent one by one, or 150 as one burst (2 deliveries per message)."""
    if how == "send":
        return [
            producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}).deliveries[0].id
            for i in range(40)
        ]
    intents = [Intent("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}) for i in range(150)]
    return [r.deliveries[0].id for r in producer.send_many(intents)]


@pytest.mark.parametrize("how", ["send", "send_many"])
def test_what_a_killed_worker_held_ends_within_30_seconds_and_nothing_arrives_twice(
    broker_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    how: str,
) -> None:
    """Killed with emails at the SMTP server, waiting for its answer: the server may have
    accepted them, so they end as unknown outcomes in the dead letters, never sent again
    blindly; every other delivery, its burst-mates and what it had taken included, is sent."""
    smtp_server.delay_data_reply(0.5)  # every delivery spends a while in flight
    producer = notifier()
    ids = queue_emails(producer, how)
    first = start_worker("email", "-c", "8").wait_ready()
    wait_for(lambda: len(smtp_server.messages) >= 8, what="the first emails")
    wait_for(lambda: Status.SENDING in statuses(producer, ids), what="deliveries in flight")

    first.kill()
    in_flight = {i for i, s in zip(ids, statuses(producer, ids), strict=True) if s == Status.SENDING}
    smtp_server.delay_data_reply(0)
    start_worker("email", "-c", "8").wait_ready()
    ready = time.monotonic()

    wait_for(
        lambda: set(statuses(producer, ids)) <= {Status.SENT, Status.FAILED},
        timeout=RECOVERY_BOUND,
        what="every delivery, the dead worker's included",
    )
    took = time.monotonic() - ready
    print(f"\n{len(in_flight)} in flight at the kill; all final {took:.1f}s after the restart")
    found = {i: producer.store.get(i) for i in ids}
    unknown = {i for i, d in found.items() if d is not None and d.status == Status.FAILED}
    assert unknown and unknown <= in_flight  # only what the server had when the worker died
    assert {found[i].error_code for i in unknown} == {"outcome_unknown"}  # type: ignore[union-attr]
    counts = smtp_server.delivery_ids()
    assert set(counts) >= set(ids) - unknown  # nothing lost
    assert max(counts.values()) == 1  # nothing twice


def test_a_retry_survives_the_worker_that_scheduled_it(
    broker_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """The retry waits in the store, not in a broker countdown the kill would lose."""
    smtp_server.fail_next(1, "451 4.7.1 Greylisted, try again in 3 seconds")
    producer = notifier()
    first = start_worker("email", "-c", "1").wait_ready()
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    [delivery_id] = [d.id for d in result.deliveries]
    wait_for(lambda: statuses(producer, [delivery_id]) == [Status.RETRYING], what="the first failure")

    first.kill()
    start_worker("email", "-c", "1").wait_ready()

    wait_for(
        lambda: statuses(producer, [delivery_id]) == [Status.SENT],
        timeout=RECOVERY_BOUND,
        what="the retry, after the restart",
    )
    assert smtp_server.delivery_ids() == {delivery_id: 1}


def test_a_due_send_at_is_released_on_time_behind_a_backlog(
    broker_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Maintenance runs beside the channel queues, never behind them."""
    smtp_server.delay_data_reply(0.3)  # 60 low emails: a backlog of about 20 s for one thread
    producer = notifier()
    low = [
        producer.send("welcome", {"email": f"bulk{i}@example.com"}, data={"name": "U"}, priority="low")
        for i in range(60)
    ]
    start_worker("email", "-c", "1").wait_ready()
    due = datetime.now(UTC) + timedelta(seconds=2)

    urgent = producer.send(
        "welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, priority="high", send_at=due
    )

    [urgent_id] = [d.id for d in urgent.deliveries]
    wait_for(lambda: statuses(producer, [urgent_id]) == [Status.SENT], what="the scheduled email")
    [arrived] = smtp_server.attempts_of(urgent_id)
    arrived_before = set(smtp_server.delivery_ids())
    delivered_low = [d for r in low for d in r.deliveries if d.id in arrived_before]
    assert len(delivered_low) < len(low), "the backlog had drained: this proved nothing"
    # Released within a second of due; then at most one email ahead of it, and the trip.
    assert due.timestamp() <= arrived <= due.timestamp() + 3.0


def test_a_slow_reply_to_the_data_keeps_its_claim_and_arrives_once(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """The reply takes longer than the budget and several leases: no second worker sends it again."""
    env.update(NOTIFY_DELIVERY_TIMEOUT="2", NOTIFY_LEASE="1")
    smtp_server.delay_data_reply(5)
    start_worker("email", "-c", "2").wait_ready()
    start_worker("email", "-c", "2").wait_ready()
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    [delivery_id] = [d.id for d in result.deliveries]
    wait_for(lambda: statuses(producer, [delivery_id]) == [Status.SENT], what="the slow email")
    assert smtp_server.delivery_ids() == {delivery_id: 1}
    assert producer.store.get(delivery_id).attempts == 1  # type: ignore[union-attr]
