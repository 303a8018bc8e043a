"""Messages that carry a burst of deliveries, against the sweep and priorities.

A grouped message's deliveries stay "queued" in the store until their turn
comes, while the message itself is off the queue (unacked). Each test
builds the burst a large send_many() makes (16 ids in one message) by
publishing it with the producer's own RedisPublisher, so it runs in
seconds with one worker thread.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from notify.api import Intent, Notifier
from notify.broker.redis_publisher import RedisPublisher
from notify.broker.routing import MAX_GROUP
from notify.models import Status
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer


@pytest.fixture
def redis_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    env["NOTIFY_BROKER_URL"] = redis_url
    return env


def _burst(producer: Notifier, redis_url: str, priority: str, count: int = MAX_GROUP) -> list[str]:
    """`count` deliveries recorded, and published as one grouped message (as send_many's bursts are)."""
    results = producer.send_many(
        [
            Intent("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}, priority=priority)
            for i in range(count)
        ]
    )
    assert producer.flush(timeout=10)
    queue = f"notify.email.{priority}"
    redis.Redis.from_url(redis_url).delete(queue)  # the single messages a burst this small got
    ids = [r.deliveries[0].id for r in results]
    RedisPublisher(producer.producer).publish([(queue, ids)], batch=10)
    return ids


def _all_sent(producer: Notifier, ids: list[str]) -> bool:
    return all(producer.store.get(i).status == Status.SENT for i in ids)  # type: ignore[union-attr]


def test_the_sweep_does_not_republish_a_burst_a_worker_is_working_through(
    redis_env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    producer = notifier()
    ids = _burst(producer, redis_url, "normal")
    smtp_server.delay_rcpt(0.7)  # 16 emails at 0.7 s: one message held for 11 s
    producer.store.keep_queued(ids)  # the 5 s beside an empty queue start now, not at send_many

    worker = start_worker("email", "-c", "1")
    wait_for(lambda: _all_sent(producer, ids), timeout=120, what="the burst sent")

    # The burst's unstarted deliveries stay "queued" while the message is in hand; the
    # worker keeps them from the sweep, which would otherwise take them for lost after
    # 5 s beside an empty queue and publish them again.
    output = worker.output()
    assert "published again" not in output, [line for line in output.splitlines() if "again" in line]


def test_a_high_send_is_not_held_behind_a_burst_of_low_deliveries(
    redis_env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    producer = notifier()
    lows = _burst(producer, redis_url, "low")
    smtp_server.delay_rcpt(0.3)
    start_worker("email", "-c", "1")
    wait_for(lambda: len(smtp_server.messages) >= 1, timeout=60, what="the first low email")

    arrived_before = len(smtp_server.messages)
    high = producer.send("welcome", {"email": "vip@example.com"}, data={"name": "V"}, priority="high")
    assert producer.flush(timeout=10)
    wait_for(lambda: _all_sent(producer, [*lows, high.deliveries[0].id]), timeout=120, what="all sent")

    order = [str(m["X-Notify-Delivery-Id"]) for m in smtp_server.messages]
    overtaken_by = order.index(high.deliveries[0].id) - arrived_before
    # The express lane takes the high message at once: it waits for at most the low
    # one in progress, not for the rest of the burst.
    assert overtaken_by <= 1, f"the high email waited behind {overtaken_by} low ones"


def test_a_slow_reply_holds_its_burst_mates_no_longer_than_a_heartbeat_or_two(
    env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Before: a 90 s reply held its 6 burst-mates for 90 s while the other threads were idle."""
    env["NOTIFY_BROKER_URL"] = redis_url
    producer = notifier()
    ids = [
        producer.send("welcome", {"email": f"mate{i}@example.com"}, data={"name": "M"}).deliveries[0].id
        for i in range(7)
    ]
    assert producer.flush(timeout=10)
    broker = redis.Redis.from_url(redis_url)
    broker.delete("notify.email.normal")  # their single messages: one burst instead
    RedisPublisher(producer.producer).publish([("notify.email.normal", ids)], batch=10)
    smtp_server.hold_replies_for("mate0@example.com")  # the first of the burst gets no answer

    start_worker("email", "-c", "8").wait_ready()

    wait_for(lambda: smtp_server.attempts_of(ids[0]), what="the first, its reply held")
    wait_for(lambda: all(smtp_server.attempts_of(i) for i in ids[1:]), what="its 6 burst-mates", timeout=30)
    assert producer.store.get(ids[0]).status == Status.SENDING  # type: ignore[union-attr]
    smtp_server.release_replies()
    wait_for(lambda: all(producer.store.get(i).status == Status.SENT for i in ids), what="all 7 sent")  # type: ignore[union-attr]
    assert smtp_server.delivery_ids() == dict.fromkeys(ids, 1)
    broker.close()
