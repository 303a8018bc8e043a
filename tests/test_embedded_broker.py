"""The embedded broker's contract with kombu: the private methods it overrides still exist and are called.

notify.broker.embedded overrides `Channel._reset_cycle` and `Channel._get`
of kombu's virtual / SQLAlchemy transport (no public hook gives strict
priority order or delete-on-fetch). A kombu release that renames, re-signs or
stops calling them must fail here, with a message, not in production.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import sqlalchemy as sql_transport
from kombu.transport import virtual
from kombu.utils.scheduling import FairCycle

from notify.broker.embedded import InOrderCycle, Transport, sqlite_path
from notify.broker.routing import celery_config
from notify.constants import SQLITE_LOCK_WAIT, channel_queues
from notify.settings import Settings

UPGRADE = f"kombu {version('kombu')} changed an internal notify.broker.embedded overrides"


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_overridden_kombu_methods_keep_their_signatures() -> None:
    assert parameters(virtual.Channel._reset_cycle) == ["self"], f"{UPGRADE}: virtual.Channel._reset_cycle"
    get = parameters(sql_transport.Channel._get)
    assert get[:2] == ["self", "queue"], f"{UPGRADE}: sqlalchemy Channel._get"
    assert parameters(virtual.Channel._get_and_deliver) == ["self", "queue", "callback"], (
        f"{UPGRADE}: virtual.Channel._get_and_deliver, which the cycle calls"
    )
    cycle = parameters(FairCycle.__init__)
    assert cycle == ["self", "fun", "resources", "predicate"], f"{UPGRADE}: FairCycle"
    assert parameters(FairCycle.get) == ["self", "callback", "kwargs"], f"{UPGRADE}: FairCycle.get"
    for name in ("session", "queue_cls", "message_cls", "_get_or_create"):
        assert hasattr(sql_transport.Channel, name), f"{UPGRADE}: sqlalchemy Channel.{name}"
    assert parameters(sql_transport.Channel._put)[:3] == ["self", "queue", "payload"], (
        f"{UPGRADE}: sqlalchemy Channel._put"
    )


def test_routing_gives_the_engine_the_broker_lock_timeout(tmp_path: Path) -> None:
    options = celery_config(Settings(home=tmp_path))["broker_transport_options"]
    assert options == {"connect_args": {"timeout": SQLITE_LOCK_WAIT}}


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/notify/broker.db", "/var/notify/broker.db"),
        ("sqlite:///broker.db", "broker.db"),
        ("sqlite:///broker.db?mode=rw", "broker.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("redis://localhost", None),
    ],
)
def test_the_broker_file_is_read_from_its_url(url: str, path: str | None) -> None:
    assert sqlite_path(url) == path


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Connection, Path]]:
    """A kombu Connection on the embedded transport, with routing's options, on a fresh file."""
    file = tmp_path / "broker.db"
    options = celery_config(Settings(home=tmp_path))["broker_transport_options"]
    with Connection(f"sqlite:///{file}", transport=Transport, transport_options=options) as connection:
        yield connection, file


def test_a_round_trip_is_strict_priority_then_fifo_and_leaves_no_row(broker: tuple[Connection, Path]) -> None:
    connection, file = broker
    high, normal, low = channel_queues("email")
    exchange = Exchange("notify", type="direct", durable=True)
    queues = [Queue(name, exchange, routing_key=name, durable=True) for name in (high, normal, low)]
    producer = Producer(connection.default_channel, exchange=exchange)
    for queue, body in [(low, "low"), (normal, "normal"), (high, "high 1"), (high, "high 2")]:
        producer.publish(body, routing_key=queue, declare=list(queues), serializer="json")

    received: list[str] = []

    def on_message(body: str, message: Any) -> None:
        received.append(body)
        message.ack()

    channel: Any = connection.channel()
    with Consumer(channel, queues, callbacks=[on_message], accept=["json"]):
        assert isinstance(channel.cycle, InOrderCycle), f"{UPGRADE}: _reset_cycle is no longer called"
        for _ in range(4):
            connection.drain_events(timeout=5)
    channel.close()

    # kombu's round robin would give high 1, normal, low, high 2.
    assert received == ["high 1", "high 2", "normal", "low"], f"{UPGRADE}: the cycle or _get is bypassed"
    with sqlite3.connect(file) as db:
        rows = db.execute("SELECT count(*) FROM kombu_message").fetchone()[0]
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert rows == 0, f"{UPGRADE}: fetched messages are kept, so _get is no longer ours"
    assert journal == "wal"


def test_the_engine_waits_for_the_lock_as_long_as_routing_says(broker: tuple[Connection, Path]) -> None:
    connection, _ = broker
    channel: Any = connection.default_channel
    session = channel.session
    busy_timeout = session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert busy_timeout == int(SQLITE_LOCK_WAIT * 1000)
