"""Queues, routing and the Celery configuration producers and workers share.

Producers enqueue by task name only: nothing here imports a provider, and
the worker's tasks are not imported either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from notify import channels as registry
from notify.constants import (
    BROKER_TIMEOUT,
    DELIVER_TASK,
    SQLITE_LOCK_WAIT,
    channel_queues,
    priority_queue_name,
    queue_channel,
    queue_name,
    task_shown_as,
)
from notify.models import Priority
from notify.observability import tracing
from notify.settings import Settings, revealed

EMBEDDED_TRANSPORT = "notify.broker.embedded:Transport"
REDIS_TRANSPORT = "notify.broker.redis_transport:Transport"
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def uses_priority_queues(broker_url: str | None) -> bool:
    """RabbitMQ: one `x-max-priority` queue per channel, since it round-robins separate queues.

    Redis and the embedded broker keep a queue per priority instead, polled
    high before normal before low.
    """
    return broker_url is not None and broker_url.split("://", 1)[0].split("+")[-1] in _AMQP_SCHEMES


def consume_queues(broker_url: str | None, channel: str) -> list[str]:
    """The queues a worker for `channel` consumes, highest priority first."""
    return [priority_queue_name(channel)] if uses_priority_queues(broker_url) else channel_queues(channel)


def task_queues(broker_url: str | None) -> list[Queue]:
    exchange = Exchange("notify", type="direct", durable=True)
    if uses_priority_queues(broker_url):
        limit = {"x-max-priority": max(p.amqp for p in Priority)}
        return [
            Queue(name, exchange, routing_key=name, durable=True, queue_arguments=limit)
            for name in map(priority_queue_name, registry.names())
        ]
    names = [name for channel in registry.names() for name in channel_queues(channel)]
    return [Queue(name, exchange, routing_key=name, durable=True) for name in names]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings every notify process uses; see README "Delivery semantics"."""
    transport_options: dict[str, Any] = {}
    if settings.uses_embedded_broker:
        settings.home.mkdir(parents=True, exist_ok=True)
        # Forwarded by kombu to create_engine(): sqlite3's busy_timeout.
        transport_options = {"connect_args": {"timeout": SQLITE_LOCK_WAIT}}
    else:
        transport_options = {
            # Redis: poll a worker's queues in the order given (high first).
            "queue_order_strategy": "priority",
            # Redis: an unacked message returns to its queue after this long, so
            # a SIGKILLed worker's tasks come back in minutes, not the default hour...
            "visibility_timeout": settings.visibility_timeout,
            # ...provided someone looks: kombu scans for them only every
            # interval x throttle seconds (10 x 10 by default, another 100 s).
            "unacked_restore_interval": max(1.0, settings.visibility_timeout / 10),
            "unacked_restore_throttle": 1,
            # A worker killed while restoring must not block restores for long.
            "unacked_mutex_expire": 60,
        }
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport": _transport(settings),
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # send() must not hang on a dead broker: the store has the delivery and
        # the sweeper enqueues it later.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_connection_timeout": BROKER_TIMEOUT,
        "task_queues": task_queues(revealed(settings.broker_url)),
        "task_default_queue": queue_name(registry.names()[0], Priority.NORMAL),  # every task names its own
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # On a broker blip Celery would terminate (prefork: SIGTERM) every late-ack
        # task in flight, mid provider call, and the lapsed claim would be sent
        # again. The store fences outcomes; a redelivered message is refused.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_delivery_mode": "persistent",
        "enable_utc": True,
    }


def _transport(settings: Settings) -> str | None:
    if settings.uses_embedded_broker:
        return EMBEDDED_TRANSPORT
    # Only plain redis://: kombu derives TLS (rediss) and Sentinel from the scheme.
    return REDIS_TRANSPORT if (revealed(settings.broker_url) or "").split("://", 1)[0] == "redis" else None


def producer_app(settings: Settings) -> Celery:
    """A Celery app used only to publish; its owner reuses it and closes it."""
    app = Celery("notify-producer", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def route(broker_url: str | None, channel: str, priority: str, *, front: bool = False) -> dict[str, Any]:
    """Where a delivery for `channel` at `priority` is published: queue, routing key, priority.

    `front`: ahead of the backlog of its priority (a release, a recovery). On
    RabbitMQ's one priority queue that is one priority up (the most urgent stays
    itself: the queue's priorities are fixed when it is declared); elsewhere the
    publisher puts the message at the head of its priority's queue.
    """
    if uses_priority_queues(broker_url):
        level = Priority(priority).amqp + front
        queue, level = priority_queue_name(channel), min(level, max(p.amqp for p in Priority))
    else:
        queue, level = queue_name(channel, priority), None
    return {"queue": queue, "routing_key": queue, "priority": level}


def message_route(delivery_info: Mapping[str, Any] | None) -> tuple[str | None, Priority | None]:
    """The channel and priority a consumed message was routed by (`route` in reverse): its queue
    names both on Redis and the embedded broker, its queue and message priority on RabbitMQ."""
    info = delivery_info or {}
    queue = str(info.get("routing_key") or "")
    channel = queue_channel(queue)
    named = queue.rpartition(".")[2]
    if named in _PRIORITY_BY_NAME:
        return channel, _PRIORITY_BY_NAME[named]
    level = info.get("priority")
    return channel, _PRIORITY_BY_AMQP.get(level) if isinstance(level, int) else None


_PRIORITY_BY_NAME = {p.value: p for p in Priority}
_PRIORITY_BY_AMQP = {p.amqp: p for p in Priority}


FRONT_HEADER = "x-notify-front"  # the embedded broker puts such a message at the head of its queue


def enqueue(
    app: Celery,
    delivery_ids: str | list[str],
    channel: str,
    priority: str,
    *,
    producer: Any = None,
    front: bool = False,
) -> None:
    """Publish one message (a delivery, or a burst's) for `channel` at `priority`, through Celery;
    `front`: ahead of its priority's backlog (see `route`)."""
    options = route(app.conf.broker_url, channel, priority, front=front)
    count = 1 if isinstance(delivery_ids, str) else len(delivery_ids)
    with tracing.publishing(options["queue"], count) as trace_headers:
        headers = {**(trace_headers or {}), **({FRONT_HEADER: "1"} if front else {})}
        app.send_task(
            DELIVER_TASK,
            shadow=task_shown_as(channel, priority),
            args=[delivery_ids],
            producer=producer,
            ignore_result=True,
            headers=headers or None,
            **options,
        )


MAX_GROUP = 16  # deliveries per broker message, at most
SPREAD = 64  # a burst is spread over at least this many messages, so that many threads share it


def group_size(count: int) -> int:
    """Deliveries per message for a burst of `count` of one channel and priority.

    One per message until there are 128; then as many as keep the burst on
    64 messages or more (so 8-32 worker threads share it to the end, a slow
    provider's too), 16 at most: a message costs a Celery task, about 2 ms
    of a worker's CPU, whatever it carries.
    """
    return max(1, min(MAX_GROUP, count // SPREAD))
