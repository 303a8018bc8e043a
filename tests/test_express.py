"""The express lane: a worker's own consumer of the high queues, acked after the outcome.

Real Redis and kombu; the lane's attempt is a recorder here, and a real
worker with a real SMTP server at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from notify.api import Notifier
from notify.broker.redis_publisher import RedisPublisher
from notify.broker.routing import producer_app
from notify.errors import StoreUnavailable
from notify.models import Status
from notify.settings import Settings
from notify.worker.app import has_express_lanes, runs_tasks_here
from notify.worker.express import ExpressLane, express_queues, start_express
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer


@pytest.fixture
def redis_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    env["NOTIFY_BROKER_URL"] = redis_url
    return env


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class Recorder:
    """The lane's attempt: records each delivery id; can fail while the store is 'away'."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.calls: list[list[str]] = []
        self.store_away = threading.Event()
        self.refused = 0
        self.channels: list[str | None] = []
        self.urgent: list[bool] = []

    def __call__(
        self, delivery_ids: list[str], *, channel: str | None = None, urgent: bool = False
    ) -> list[str]:
        self.channels.append(channel)
        self.urgent.append(urgent)
        if self.store_away.is_set():
            self.refused += 1
            raise StoreUnavailable("the store is away")
        self.ids.extend(delivery_ids)
        self.calls.append(list(delivery_ids))
        return ["sent"] * len(delivery_ids)


@pytest.fixture
def lane(redis_env: dict[str, str]) -> Iterator[Callable[[Recorder], ExpressLane]]:
    app = producer_app(Settings.from_env(redis_env))
    started: list[ExpressLane] = []

    def start(recorder: Recorder) -> ExpressLane:
        [lane] = start_express(app, ["email"], recorder, lanes=1)
        started.append(lane)
        return lane

    yield start
    for lane in started:
        lane.stop()
    app.close()


def send(producer: Notifier, priority: str, name: str = "ada") -> str:
    result = producer.send("welcome", {"email": f"{name}@example.com"}, data={"name": "A"}, priority=priority)
    return result.deliveries[0].id


def test_the_lane_takes_high_messages_only_and_acks_each_after_its_attempt(
    redis_env: dict[str, str], notifier: Callable[[], Notifier], lane: Callable[..., ExpressLane],
    broker: redis.Redis,
) -> None:  # fmt: skip
    producer = notifier()
    low, high = send(producer, "low", "bulk"), send(producer, "high")
    recorder = Recorder()

    lane(recorder)

    wait_for(lambda: recorder.ids == [high], what="the high delivery's attempt")
    assert recorder.channels == ["email"]  # from its queue: the channel's rate limit applies,
    assert recorder.urgent == [True]  # and the delivery goes first under it
    wait_for(lambda: broker.hlen("unacked") == 0, what="its message acked")
    assert broker.llen("notify.email.high") == 0
    assert broker.llen("notify.email.low") == 1  # Celery's, untouched
    assert low not in recorder.ids


def test_while_the_store_is_away_the_message_is_kept_and_tried_again(
    redis_env: dict[str, str], notifier: Callable[[], Notifier], lane: Callable[..., ExpressLane],
    broker: redis.Redis,
) -> None:  # fmt: skip
    recorder = Recorder()
    recorder.store_away.set()
    lane(recorder)
    high = send(notifier(), "high")
    wait_for(lambda: recorder.refused >= 1, what="a try while the store is away")
    assert broker.hlen("unacked") == 1  # held, not acked away

    recorder.store_away.clear()

    wait_for(lambda: recorder.ids == [high], what="the try once the store is back", timeout=10)
    wait_for(lambda: broker.hlen("unacked") == 0, what="the message acked")


def test_a_burst_goes_to_the_deliverer_whole_so_its_waiting_deliveries_are_kept(
    redis_env: dict[str, str], notifier: Callable[[], Notifier], lane: Callable[..., ExpressLane],
    broker: redis.Redis,
) -> None:  # fmt: skip
    producer = notifier()
    ids = [send(producer, "high", f"u{i}") for i in range(3)]
    assert producer.flush(timeout=10)
    broker.delete("notify.email.high")  # their single messages; one burst instead
    RedisPublisher(producer.producer).publish([("notify.email.high", ids)], batch=10)
    recorder = Recorder()

    lane(recorder)

    wait_for(lambda: recorder.calls == [ids], what="one call with the whole burst (attempt_burst)")
    wait_for(lambda: broker.hlen("unacked") == 0, what="its message acked")


def test_a_delivery_that_raises_is_logged_and_the_lane_goes_on(
    redis_env: dict[str, str], notifier: Callable[[], Notifier], lane: Callable[..., ExpressLane],
    broker: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    producer = notifier()
    first = send(producer, "high", "first")
    recorder = Recorder()
    calls: list[str] = []

    def attempt(delivery_ids: list[str], *, channel: str | None = None, urgent: bool = False) -> list[str]:
        calls.extend(delivery_ids)
        if first in delivery_ids:
            raise RuntimeError("a bug")
        return recorder(delivery_ids, channel=channel, urgent=urgent)

    lane(attempt)
    wait_for(lambda: calls == [first], what="the first attempt")
    second = send(producer, "high", "second")

    wait_for(lambda: recorder.ids == [second], what="the next message, on the same lane")
    wait_for(lambda: broker.hlen("unacked") == 0, what="both messages acked")
    assert "raised; left to the sweep" in caplog.text


def test_a_lane_stopped_mid_message_leaves_it_for_the_next_consumer(
    redis_env: dict[str, str], notifier: Callable[[], Notifier], lane: Callable[..., ExpressLane],
    broker: redis.Redis,
) -> None:  # fmt: skip
    recorder = Recorder()
    recorder.store_away.set()
    running = lane(recorder)
    high = send(notifier(), "high")
    wait_for(lambda: recorder.refused >= 1, what="a try while the store is away")

    running.stop()

    assert recorder.ids == []
    assert broker.llen("notify.email.high") == 1  # back on its queue, unacked no more
    recorder.store_away.clear()
    lane(recorder)
    wait_for(lambda: recorder.ids == [high], what="the next lane's attempt")


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672//", "redis://127.0.0.1:6379/12", None])
def test_only_brokers_with_a_queue_per_priority_get_a_lane(env: dict[str, str], url: str | None) -> None:
    """RabbitMQ's one priority queue holds the low messages too; the embedded broker has no lane."""
    if url:
        env["NOTIFY_BROKER_URL"] = url
    app = producer_app(Settings.from_env(env))
    names = [q.name for q in express_queues(app, ["email", "sms"])]
    assert names == (["notify.email.high", "notify.sms.high"] if url and url.startswith("redis") else [])
    app.close()


def test_a_high_email_does_not_wait_for_the_busy_pool(
    redis_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """With the worker's only thread stuck on a slow server, a high email still goes out."""
    producer = notifier()
    start_worker("email", "-c", "1").wait_ready()
    smtp_server.delay_data_reply(5)  # each reply comes 5 s after the message arrived
    low = send(producer, "low", "bulk")
    wait_for(lambda: smtp_server.attempts_of(low), what="the low email, its reply pending")

    high = send(producer, "high")

    wait_for(lambda: smtp_server.attempts_of(high), what="the high email at the server")
    assert producer.store.get(low).status == Status.SENDING  # type: ignore[union-attr]
    smtp_server.delay_data_reply(0)
    wait_for(lambda: producer.store.get(high).status == Status.SENT, what="the high one recorded")  # type: ignore[union-attr]
    assert smtp_server.delivery_ids() == {low: 1, high: 1}


def test_only_pools_that_run_tasks_in_the_worker_process_get_a_lane() -> None:
    """A prefork parent must not build a deliverer its later children would inherit half-dead."""
    from celery.concurrency.prefork import TaskPool as PreforkPool
    from celery.concurrency.solo import TaskPool as SoloPool
    from celery.concurrency.thread import TaskPool as ThreadPool

    threads = ThreadPool(limit=1)
    assert has_express_lanes(threads) and runs_tasks_here(threads)
    assert has_express_lanes(SoloPool()) and runs_tasks_here(SoloPool)
    assert not has_express_lanes(PreforkPool(limit=1)) and not runs_tasks_here(PreforkPool)
    threads.on_stop()
