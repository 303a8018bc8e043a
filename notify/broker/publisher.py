"""The one place store rows become broker messages: send(), send_many(), replays, maintenance."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery

from notify.broker.redis_publisher import RedisPublisher, as_list
from notify.broker.routing import REDIS_TRANSPORT, enqueue, group_size, route


class Publisher:
    """The one place store rows become broker messages: send(), send_many(), replays, maintenance.

    On notify's plain `redis://` brokers, messages go straight onto the
    queues' lists in pipelined batches (notify.broker.redis_publisher); on the others
    through Celery's `send_task` on one pooled producer, batched where the
    transport can. Either way the message is Celery's own `notify.deliver`.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        fast = app.conf.broker_transport == REDIS_TRANSPORT and _one_plain_url(str(app.conf.broker_url))
        self._redis = RedisPublisher(app) if fast else None
        self._front: RedisPublisher | None = None  # see _kombu_redis
        self._connection: Any = None

    def publish(
        self,
        queued: Iterable[tuple[str, str, str]],
        *,
        batch: int = 500,
        grouped: bool = False,
        front: bool = False,
    ) -> int:
        """Publish (delivery id, channel, priority) rows; return how many messages that took.

        `grouped`: rows of one channel and priority share messages (a burst:
        `send_many`, a sweep), `group_size` each. Claims, retries and
        statuses stay per delivery whatever a message carries. `front`: each
        message goes ahead of the backlog of its priority (what maintenance
        releases and recovers has waited already: `send_at` is due, a dead
        worker's delivery is late).
        """
        messages = _messages(queued, grouped=grouped)
        broker_url = self.app.conf.broker_url
        redis = self._redis if self._redis is not None else self._kombu_redis() if front else None
        if redis is not None:
            routed = ((route(broker_url, c, p)["queue"], ids) for c, p, ids in messages)
            return redis.publish(routed, batch=batch, front=front)
        count = 0
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=batch):
            for channel, priority, ids in messages:
                enqueue(self.app, ids, channel, priority, producer=producer, front=front)
                count += 1
        return count

    def _kombu_redis(self) -> RedisPublisher | None:
        """On a Redis broker not reached by the fast path (rediss, Sentinel): kombu's own client for
        it, which alone can put a message at the head of a list. None on another broker."""
        if self._front is None and self.app.conf.broker_transport in (REDIS_TRANSPORT, None):
            url = str(self.app.conf.broker_url)
            if url.split("://", 1)[0].split("+")[0] in ("redis", "rediss", "sentinel"):
                self._connection = self.app.connection_for_write()
                with self._connection.default_channel.conn_or_acquire() as client:  # a plain, blocking one
                    self._front = RedisPublisher(self.app, client=client)
        return self._front

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._connection is not None:
            self._connection.release()


def _one_plain_url(url: str) -> bool:
    """A URL redis-py reads as kombu does: not a failover list (`;`), no options (`?ssl_...`)."""
    return ";" not in url and "?" not in url


def _messages(
    queued: Iterable[tuple[str, str, str]], *, grouped: bool
) -> Iterator[tuple[str, str, str | list[str]]]:
    """(channel, priority, ids) per message: one id each, or grouped per channel and priority."""
    if not grouped:
        for delivery_id, channel, priority in queued:
            yield channel, priority, delivery_id
        return
    bursts: dict[tuple[str, str], list[str]] = {}
    for delivery_id, channel, priority in queued:
        bursts.setdefault((channel, priority), []).append(delivery_id)
    for (channel, priority), ids in bursts.items():
        size = group_size(len(ids))
        for start in range(0, len(ids), size):
            yield channel, priority, as_list(ids[start : start + size])
