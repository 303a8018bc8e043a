"""What a worker keeps per delivery: nothing that outlives it, and no client built per message."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from notify.broker.routing import REDIS_TRANSPORT
from notify.delivery.heartbeat import Heartbeat
from notify.settings import Secret, Settings
from notify.store import Claim, Store
from notify.worker.app import CELERY_TASK_LOGGERS, _quiet_per_message_lines, worker_config


class BeatingStore:
    """A store that takes beats (or declares the worker dead), keeps and failures, and remembers them."""

    def __init__(self) -> None:
        self.registered: list[str] = []
        self.beats: list[str] = []
        self.dead: set[str] = set()
        self.kept: list[list[str]] = []
        self.abandoned: list[tuple[str, bool]] = []  # (delivery id, handed over)
        self.retired: list[str] = []

    def register_worker(self, worker_id: str, *, host: str, pid: int) -> None:
        self.registered.append(worker_id)

    def beat(self, worker_id: str) -> bool:
        self.beats.append(worker_id)
        return worker_id not in self.dead

    def keep_queued(self, delivery_ids: Collection[str]) -> None:
        self.kept.append(list(delivery_ids))

    def abandon(self, delivery_id: str, token: str, reason: str, *, handed_over: bool) -> bool:
        self.abandoned.append((delivery_id, handed_over))
        return True

    def retire_worker(self, worker_id: str) -> None:
        self.retired.append(worker_id)


def heartbeat(store: BeatingStore, ceiling: float = 3600) -> Heartbeat:
    return Heartbeat(cast(Store, store), lease=30, every=3600, ceiling=ceiling)


def a_claim(i: int, worker_id: str = "w") -> Claim:
    return Claim(
        f"d-{i}", "email", "a@example.com", "normal", 1, "welcome", None, {}, f"token-{i}", worker_id
    )


def test_the_heartbeat_holds_nothing_once_the_tries_end() -> None:
    beats = heartbeat(BeatingStore())
    for i in range(1000):
        beats.track(f"token-{i}", f"d-{i}")
        if i % 100 == 0:
            beats.beat()
        beats.done(f"token-{i}")
    beats.beat()
    beats.stop()

    assert beats._tries == {} and beats._waiting == {}


def test_a_bursts_waiting_deliveries_are_kept_until_their_turn_and_no_longer_than_the_ceiling() -> None:
    store = BeatingStore()
    beats = heartbeat(store)
    beats.keep(["d1", "d2", "d3"])
    beats.drop("d1")  # its turn came
    beats.beat()
    assert store.kept == [["d2", "d3"]]

    stuck = heartbeat(store, ceiling=0)  # behind a hung attempt
    stuck.keep(["d4"])
    stuck.beat()
    assert store.kept == [["d2", "d3"]]  # not kept: the sweep may have it
    beats.stop()
    stuck.stop()


def test_a_worker_registers_once_beats_and_is_retired_when_it_stops() -> None:
    store = BeatingStore()
    beats = heartbeat(store)
    worker_id = beats.worker_id
    beats.beat()
    beats.beat()

    assert beats.worker_id == worker_id and store.registered == [worker_id]
    assert store.beats == [worker_id, worker_id] and beats.fresh(a_claim(1, worker_id))
    beats.stop()
    assert store.retired == [worker_id]


def test_a_worker_declared_dead_hands_nothing_over_and_registers_anew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BeatingStore()
    beats = heartbeat(store)
    first = beats.worker_id
    store.dead.add(first)

    beats.beat()

    assert not beats.fresh(a_claim(1, first))  # its claims were handed on: no message leaves under them
    assert "was declared dead" in caplog.text
    assert beats.worker_id != first and store.registered == [first, beats.worker_id]
    assert not beats.fresh(a_claim(1, first))  # registered anew: still nothing under the old claims
    assert beats.fresh(a_claim(1, beats.worker_id))
    beats.stop()


def test_an_attempt_past_the_ceiling_is_an_unknown_outcome_not_a_second_try() -> None:
    store = BeatingStore()
    beats = heartbeat(store, ceiling=0)
    assert beats.worker_id
    beats.track("token-1", "d-1")

    beats.beat()

    assert store.abandoned == [("d-1", True)] and beats._tries == {}
    beats.stop()


def test_an_abandoned_try_is_given_back_if_nothing_was_handed_over_else_an_unknown_outcome() -> None:
    store = BeatingStore()
    beats = heartbeat(store)
    assert beats.worker_id
    beats.track("token-1", "d-1")
    beats.track("token-2", "d-2")
    beats.handing_over("token-2")
    beats.abandon("token-1", "the claim's answer was lost")
    beats.abandon("token-2", "the attempt raised RuntimeError")

    beats.beat()

    assert sorted(store.abandoned) == [("d-1", False), ("d-2", True)] and beats._tries == {}
    beats.stop()


def test_a_worker_with_a_try_still_running_is_not_retired_when_it_stops() -> None:
    """A cold shutdown: the sweep takes the try over once the beats stand still, not at once."""
    store = BeatingStore()
    beats = heartbeat(store)
    assert beats.worker_id
    beats.track("token-1", "d-1")

    beats.stop()

    assert store.retired == []


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
    settings = Settings(home=tmp_path, broker_url=Secret(url))

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
