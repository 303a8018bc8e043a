"""The one place store rows become broker messages: send(), send_many(), replays, maintenance."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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

    def publish(
        self, queued: Iterable[tuple[str, str, str]], *, batch: int = 500, grouped: bool = False
    ) -> int:
        """Publish (delivery id, channel, priority) rows; return how many messages that took.

        `grouped`: rows of one channel and priority share messages (a burst:
        `send_many`, a sweep), `group_size` each. Claims, retries and
        statuses stay per delivery whatever a message carries.
        """
        messages = _messages(queued, grouped=grouped)
        broker_url = self.app.conf.broker_url
        if self._redis is not None:
            routed = ((route(broker_url, c, p)["queue"], ids) for c, p, ids in messages)
            return self._redis.publish(routed, batch=batch)
        count = 0
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=batch):
            for channel, priority, ids in messages:
                enqueue(self.app, ids, channel, priority, producer=producer)
                count += 1
        return count

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


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
