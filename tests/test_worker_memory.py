"""What a worker keeps per delivery: nothing that outlives it, and no client built per message."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from notify.broker.routing import REDIS_TRANSPORT
from notify.delivery.heartbeat import Heartbeat
from notify.settings import Settings
from notify.store import Store
from notify.worker.app import CELERY_TASK_LOGGERS, _quiet_per_message_lines, worker_config


class RenewingStore:
    """Renews what it is given, except the claims in `refused`."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.renewals: list[list[str]] = []
        self.kept = []

    def renew(self, claims: Collection[str], lease: float) -> set[str]:
        self.renewals.append(list(claims))
        return set(claims) - self.refused

    kept: list[list[str]]

    def keep_queued(self, delivery_ids: Collection[str]) -> None:
        self.kept.append(list(delivery_ids))


def heartbeat(store: RenewingStore) -> Heartbeat:
    return Heartbeat(cast(Store, store), lease=30, every=3600, ceiling=3600)


def test_the_heartbeat_holds_nothing_once_the_attempts_end() -> None:
    beats = heartbeat(RenewingStore())
    for i in range(1000):
        beats.hold(f"claim-{i}")
        if i % 100 == 0:
            beats.beat()
        beats.release(f"claim-{i}")
    beats.beat()
    beats.stop()

    assert beats._running == {} and beats._refused == set()


def test_a_bursts_waiting_deliveries_are_kept_until_their_turn_and_no_longer_than_the_ceiling() -> None:
    store = RenewingStore()
    beats = heartbeat(store)
    beats.keep(["d1", "d2", "d3"])
    beats.drop("d1")  # its turn came
    beats.beat()
    assert store.kept == [["d2", "d3"]]

    stuck = Heartbeat(cast(Store, store), lease=30, every=3600, ceiling=0)  # behind a hung attempt
    stuck.keep(["d4"])
    stuck.beat()
    assert store.kept == [["d2", "d3"]]  # not kept: the sweep may have it
    beats.stop()
    stuck.stop()


def test_a_claim_refused_just_as_its_attempt_ends_is_not_called_taken_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RenewingStore()
    beats = heartbeat(store)
    beats.hold("finishing")
    store.refused.add("finishing")  # its outcome was recorded just before the renewal

    beats.beat()
    beats.release("finishing")
    beats.beat()

    assert "taken over" not in caplog.text
    assert beats._refused == set()


def test_a_claim_refused_twice_is_reported_once_and_no_longer_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RenewingStore()
    beats = heartbeat(store)
    beats.hold("kept")
    beats.hold("lost")
    store.refused.add("lost")  # another worker holds it now

    for _ in range(4):
        beats.beat()

    assert caplog.text.count("claim lost was taken over") == 1
    assert store.renewals[-1] == ["kept"]
    beats.release("lost")  # the attempt ends later, as it does
    assert list(beats._running) == ["kept"]


def test_celerys_per_task_lines_only_show_at_debug() -> None:
    loggers = [logging.getLogger(name) for name in CELERY_TASK_LOGGERS]
    saved = [logger.level for logger in loggers]
    try:
        _quiet_per_message_lines(loglevel=logging.DEBUG)
        at_debug = [logger.level for logger in loggers]
        _quiet_per_message_lines(loglevel=logging.INFO)
        at_info = [logger.level for logger in loggers]
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.setLevel(level)

    assert at_debug == saved
    assert at_info == [logging.WARNING] * len(loggers)


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", REDIS_TRANSPORT),
        ("rediss://127.0.0.1:6380/0", None),  # kombu reads TLS from the scheme
        ("amqp://guest@127.0.0.1//", None),
    ],
)
def test_workers_use_the_shared_client_transport_on_plain_redis_only(
    tmp_path: Path, url: str, transport: str | None
) -> None:
    settings = Settings(home=tmp_path, broker_url=url)

    assert worker_config(settings)["broker_transport"] == transport


@pytest.fixture
def counted_redis_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    import redis

    built = [0]
    original = redis.Redis.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    yield built


def test_receiving_and_acking_messages_builds_no_redis_client_per_message(
    redis_url: str, counted_redis_clients: list[int]
) -> None:
    """kombu's ack emulation asks `conn_or_acquire` for a client twice per message; one serves all."""
    from kombu import Connection

    with Connection(redis_url, transport=REDIS_TRANSPORT) as connection:
        queue = connection.SimpleQueue("notify-test-acks")
        for i in range(20):
            queue.put({"i": i})
        counted_redis_clients[0] = 0
        for _ in range(20):
            queue.get(timeout=5).ack()
        built = counted_redis_clients[0]
        queue.close()

    assert built <= 1


def test_a_broker_blip_does_not_terminate_attempts_in_flight() -> None:
    """With it on, a prefork child is SIGTERMed mid provider call and its lapsed claim sent again.

    The store fences outcomes and refuses a redelivered message, so an attempt
    in flight may run to its end while the consumer reconnects.
    """
    config = worker_config(Settings.from_env({"NOTIFY_BROKER_URL": "redis://127.0.0.1:6379/0"}))

    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is False
