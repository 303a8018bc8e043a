"""The producer's fast path to Redis: the messages it writes are the ones kombu would write.

notify.broker.redis_publisher stores Celery's task message the way kombu's Redis
transport does, without kombu's per-message machinery. These tests pin the
two together (an upgrade of Celery, kombu or redis-py that changes either
fails here), and show a real worker delivering what it published, a burst's
deliveries grouped into fewer messages.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from notify.api import Intent, Notifier
from notify.broker.publisher import Publisher
from notify.broker.redis_publisher import RedisPublisher
from notify.broker.routing import MAX_GROUP, REDIS_TRANSPORT, enqueue, group_size, producer_app
from notify.models import Status
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer

QUEUE = "notify.email.normal"
VARYING_HEADERS = {"id", "root_id"}  # a fresh task id each time
VARYING_PROPERTIES = {"correlation_id", "delivery_tag", "reply_to"}  # ids; reply_to is for results


@pytest.fixture
def redis_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    env["NOTIFY_BROKER_URL"] = redis_url
    return env


def stored(redis_url: str, queue: str = QUEUE) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    finally:
        client.close()


def without(mapping: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def test_the_producer_uses_the_fast_path_on_a_plain_redis_broker(
    redis_env: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    producer = notifier()
    assert producer.producer.conf.broker_transport == REDIS_TRANSPORT
    assert isinstance(producer.publisher._redis, RedisPublisher)


@pytest.mark.parametrize("ids", ["d-1", ["d-1", "d-2", "d-3"]], ids=["one id", "a burst"])
def test_a_message_is_the_one_kombu_stores_for_the_same_task(
    redis_env: dict[str, str], redis_url: str, notifier: Callable[[], Notifier], ids: str | list[str]
) -> None:
    producer = notifier()
    app = producer.producer
    with app.producer_or_acquire() as celery_producer:  # Celery and kombu's own way
        app.send_task(
            "notify.deliver", args=[ids], producer=celery_producer, ignore_result=True,
            queue=QUEUE, routing_key=QUEUE, shadow=f"notify.deliver.{QUEUE.removeprefix('notify.')}",
        )  # fmt: skip
    RedisPublisher(app).publish([(QUEUE, ids)], batch=10)

    theirs, ours = stored(redis_url)
    assert ours.keys() == theirs.keys()
    assert without(ours, {"headers", "properties"}) == without(theirs, {"headers", "properties"})
    assert without(ours["headers"], VARYING_HEADERS | {"origin"}) == without(
        theirs["headers"], VARYING_HEADERS | {"origin"}
    )
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["properties"].keys() == theirs["properties"].keys()
    assert without(ours["properties"], VARYING_PROPERTIES) == without(
        theirs["properties"], VARYING_PROPERTIES
    )
    args, kwargs, _embed = json.loads(base64.b64decode(ours["body"]))
    assert (args, kwargs) == ([ids], {})


def test_a_single_send_is_one_message_of_one_id(
    redis_env: dict[str, str], redis_url: str, notifier: Callable[[], Notifier]
) -> None:
    producer = notifier()
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    assert producer.flush(timeout=10)

    [message] = stored(redis_url)
    args, _, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [result.deliveries[0].id]


@pytest.mark.parametrize(
    ("count", "size"),
    [(1, 1), (127, 1), (128, 2), (300, 4), (500, 7), (1023, 15), (1024, 16), (5000, MAX_GROUP)],
)
def test_a_burst_is_spread_over_enough_messages_for_many_threads(count: int, size: int) -> None:
    assert group_size(count) == size


def test_send_many_groups_each_channel_and_priority_into_fewer_messages(
    redis_env: dict[str, str], redis_url: str, notifier: Callable[[], Notifier]
) -> None:
    intents = [
        Intent("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}, priority=p)
        for i in range(300)
        for p in ("high", "low")
    ]
    producer = notifier()
    results = producer.send_many(intents, batch_size=1000)  # one batch: one grouping
    assert producer.flush(timeout=10)

    published: dict[str, list[str]] = {}
    for priority in ("high", "normal", "low"):
        for message in stored(redis_url, f"notify.email.{priority}"):
            [ids], _, _ = json.loads(base64.b64decode(message["body"]))
            published.setdefault(priority, []).extend([ids] if isinstance(ids, str) else ids)
    ids_of = {p: [r.deliveries[0].id for r, i in zip(results, intents, strict=True) if i.priority == p]
              for p in ("high", "low")}  # fmt: skip
    assert published == ids_of  # every delivery once, on its own priority's queue, in order
    assert len(stored(redis_url, "notify.email.high")) == 75  # 300 in fours


def test_a_worker_delivers_every_delivery_of_grouped_messages_once(
    redis_env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    producer = notifier()
    results = producer.send_many(
        [Intent("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}) for i in range(300)]
    )
    assert producer.flush(timeout=10)
    assert len(stored(redis_url)) == 75  # 300 in fours
    ids = [r.deliveries[0].id for r in results]

    start_worker("email", "-c", "4")

    wait_for(
        lambda: all(producer.store.get(i).status == Status.SENT for i in ids),  # type: ignore[union-attr]
        timeout=60,
        what="every delivery sent",
    )
    assert smtp_server.delivery_ids() == dict.fromkeys(ids, 1)


def test_a_message_of_ids_the_store_does_not_know_is_dropped_and_the_rest_delivered(
    redis_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    producer = notifier()
    known = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}).deliveries[0].id
    Publisher(producer.producer).publish(
        [("unknown-1", "email", "normal"), (known, "email", "normal"), ("unknown-2", "email", "normal")],
        grouped=False,
    )
    enqueue(producer.producer, "unknown-3", "email", "normal")  # through Celery, as before

    worker = start_worker("email", "-c", "2")

    wait_for(lambda: producer.store.get(known).status == Status.SENT, what="the known delivery")  # type: ignore[union-attr]
    wait_for(lambda: worker.output().count("not in the store") >= 3, what="the unknown ids dropped")
    assert smtp_server.delivery_ids() == {known: 1}


def _kombu_db(url: str) -> object:
    """The database kombu's Redis channel uses for `url` (creating the channel only PINGs)."""
    from kombu import Connection

    with Connection(url) as connection:
        channel: Any = connection.default_channel  # kombu's Redis channel: it has a client
        return channel.client.connection_pool.connection_kwargs["db"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/15;redis://127.0.0.1:6379/15",  # kombu: failover, db 15; redis-py: db 0
        "redis://:secret@127.0.0.1:6379/15?ssl_cert_reqs=required",  # kombu: TLS; redis-py: plain TCP
        "redis://127.0.0.1:6379/15?heartbeat=10",  # kombu accepts it; redis-py's connection refuses it
    ],
    ids=["failover list", "tls option", "kombu option"],
)
def test_a_url_redis_py_would_read_otherwise_than_kombu_goes_through_celery(tmp_path: Path, url: str) -> None:
    from notify.settings import Secret, Settings

    app = producer_app(Settings(home=tmp_path / ".notify", broker_url=Secret(url)))
    assert app.conf.broker_transport == REDIS_TRANSPORT  # the workers' transport, as before

    assert Publisher(app)._redis is None


@pytest.mark.parametrize(
    "url", ["redis://:secret@127.0.0.1:6379/15", "redis://127.0.0.1/15", "redis://127.0.0.1:6379"]
)
def test_a_plain_url_takes_the_fast_path_to_the_database_kombu_reads(tmp_path: Path, url: str) -> None:
    from notify.settings import Secret, Settings

    app = producer_app(Settings(home=tmp_path / ".notify", broker_url=Secret(url)))
    publisher = Publisher(app)

    assert publisher._redis is not None
    assert publisher._redis.client.connection_pool.connection_kwargs.get("db", 0) == _kombu_db(url)
