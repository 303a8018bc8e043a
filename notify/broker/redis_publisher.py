"""Task messages pushed straight onto Redis lists, pipelined: the producer's fast path.

Celery's `send_task` spends about 0.4 ms per message on routing, signals
and kombu's publish machinery before the one command that matters, an
LPUSH. This publisher keeps Celery's own task message (`app.amqp.as_task_v2`,
protocol 2, 25 us) and stores it the way kombu's Redis transport does
(`virtual.Channel.prepare_message`, `basic_publish` on the default exchange,
`redis.Channel._put`): a JSON envelope with a base64 body, pushed onto the
list named after the queue. A batch is one pipeline, one round trip.

Only for notify's plain `redis://` brokers (the queue per priority means
every message has kombu's default priority, so the list is the queue's own
name). tests/test_redis_publisher.py pins the envelope to what kombu writes
for the same task, so an upgrade that changes either fails loudly.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import redis
from celery import Celery
from kombu.serialization import dumps as serialize
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from notify.constants import BROKER_TIMEOUT, DELIVER_TASK
from notify.observability import tracing

# send() must not hang on a dead broker: the store has the delivery and a
# sweep publishes it later. Two retries, 0.05 then 0.1 s (as Celery's policy).
_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


class RedisPublisher:
    """Publishes `notify.deliver` messages to Redis lists, a pipeline per batch. Thread-safe."""

    def __init__(self, app: Celery, *, client: redis.Redis | None = None) -> None:
        """`client`: kombu's own (a broker the fast path does not read: rediss, Sentinel), else one
        of this publisher's from the broker URL."""
        self._amqp = app.amqp
        self._origin = f"{os.getpid()}@{socket.gethostname()}"
        self._owns_client = client is None
        self.client = client or redis.Redis.from_url(
            str(app.conf.broker_url),
            socket_timeout=BROKER_TIMEOUT,
            socket_connect_timeout=BROKER_TIMEOUT,
            retry=_RETRY,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )

    def publish(
        self, messages: Iterable[tuple[str, str | list[str]]], *, batch: int, front: bool = False
    ) -> int:
        """Push (queue, delivery id or ids) messages, `batch` per round trip; return how many.

        kombu pushes on the left and consumers pop on the right: `front` pushes
        on the right, so the message is the next one taken from its queue.
        """
        count = 0
        pipe = self.client.pipeline(transaction=False)
        push = pipe.rpush if front else pipe.lpush
        if front:  # the first one pushed last, so they are taken in the order given
            messages = list(messages)[::-1]
        for queue, ids in messages:
            with tracing.publishing(queue, 1 if isinstance(ids, str) else len(ids)) as trace_headers:
                push(queue, self.envelope(queue, ids, trace_headers))
            count += 1
            if len(pipe) >= batch:
                pipe.execute()
        if len(pipe):
            pipe.execute()
        return count

    def envelope(self, queue: str, ids: str | list[str], headers: Mapping[str, str] | None = None) -> str:
        """The JSON kombu's Redis transport stores for a `notify.deliver` task of these ids.

        `headers`: more of the message's headers (a trace context), top-level, as Celery's
        `send_task(headers=...)` puts them, so they are attributes of the task's request.
        """
        task_id = str(uuid.uuid4())
        message = self._amqp.as_task_v2(
            task_id,
            DELIVER_TASK,
            args=cast(Any, [ids]),
            kwargs={},
            ignore_result=True,
            origin=self._origin,
            shadow=f"{DELIVER_TASK}.{queue.removeprefix('notify.')}",  # constants.task_shown_as's name
        )
        content_type, encoding, body = serialize(message.body, serializer="json")
        properties: dict[str, Any] = {
            **message.properties,
            "delivery_mode": 2,  # persistent
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        return json.dumps(
            {
                "body": base64.b64encode(body.encode() if isinstance(body, str) else body).decode(),
                "content-encoding": encoding,
                "content-type": content_type,
                "headers": {**message.headers, **headers} if headers else message.headers,
                "properties": properties,
            }
        )

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def as_list(ids: Sequence[str]) -> str | list[str]:
    """One id as itself (the message every notify version understands), more as a list."""
    return ids[0] if len(ids) == 1 else list(ids)
