"""What maintenance publishes goes ahead of the backlog of its priority, on every broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from notify.broker.publisher import Publisher
from notify.broker.routing import producer_app, route
from notify.settings import Secret, Settings
from notify.store import Queued

BROKERS = ["embedded", "redis", "rediss-path", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]


@pytest.fixture(params=BROKERS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Celery]:
    url: str | None = None
    if request.param in ("redis", "rediss-path"):
        url = request.getfixturevalue("redis_url")
        if request.param == "rediss-path":  # not the fast path: Celery's own client, as for rediss://
            url += "?heartbeat=10"  # kombu accepts it; redis-py refuses it
    elif request.param == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
    built = producer_app(Settings(home=tmp_path, broker_url=None if url is None else Secret(url)))
    yield built
    built.close()


def taken_in_order(app: Celery, count: int) -> list[Any]:
    """The ids of the next `count` messages a worker would take from notify.email's normal queue."""
    queue_name = route(app.conf.broker_url, "email", "normal")["queue"]
    queue = next(q for q in app.conf.task_queues if q.name == queue_name)
    taken = []
    with app.connection_for_read() as connection, connection.SimpleQueue(queue) as simple:
        for _ in range(count):
            message = simple.get(timeout=10)
            taken.append(message.payload[0][0])
            message.ack()
    return taken


def test_a_message_published_to_the_front_is_taken_before_the_backlog(app: Celery) -> None:
    publisher = Publisher(app)
    publisher.publish([Queued(f"b{i}", "email", "normal") for i in range(3)])
    publisher.publish([Queued("f1", "email", "normal"), Queued("f2", "email", "normal")], front=True)
    publisher.close()

    assert taken_in_order(app, 5) == ["f1", "f2", "b0", "b1", "b2"]


def test_on_rabbitmq_the_front_is_one_priority_up_and_the_most_urgent_stays_itself() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672//"
    assert [route(url, "email", p, front=True)["priority"] for p in ("low", "normal", "high")] == [1, 2, 2]
