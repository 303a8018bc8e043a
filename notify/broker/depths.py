"""How many messages wait in each of notify's queues, as the broker counts them."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Connection

from notify.broker.routing import task_queues


def queue_depths(app: Celery, broker_url: str | None) -> dict[str, int]:
    """Messages waiting per queue, by a passive declare: it creates nothing and reads no message.

    A queue the broker does not have yet counts 0 (Redis has no key for an
    empty list). Raises what the connection raises when the broker does not answer.
    """
    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        for queue in task_queues(broker_url):
            depths[queue.name] = _depth(conn, queue.name)
    return depths


def _depth(conn: Connection, name: str) -> int:
    # A channel per queue: RabbitMQ closes a channel whose passive declare finds no queue.
    channel: Any = conn.channel()  # kombu's StdChannel stub lacks queue_declare() and close()
    try:
        return int(channel.queue_declare(queue=name, passive=True).message_count)
    except conn.channel_errors:  # the transport's "no such queue" (kombu's, or py-amqp's NotFound)
        return 0
    finally:
        channel.close()
