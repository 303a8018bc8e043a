"""The express lane: a worker's own consumer of its channels' high queues, beside Celery's.

Behind a backlog every one of Celery's slots holds a low message (a burst of
up to 16 deliveries, notify.broker.routing.group_size), and a high message waits on
the broker until one of them has finished: 40 ms typically, 350 ms at p99
behind 5,000 low emails. The lane is one thread with a connection of its
own that consumes only `notify.<channel>.high`, one message at a time, so a
high delivery starts at once whatever the pool is doing; the priority gate
(notify.delivery.gate) then holds the low attempts back while it runs.

Messages are Celery's own `notify.deliver` tasks, handled as the task does
(Deliverer.attempt_burst: each delivery claimed in turn, fenced by the
store, the waiting ones kept from the sweep), the message acked only
after every outcome is recorded; a message not acked when the worker dies
returns after the transport's visibility timeout like any of Celery's. Only
on brokers with a queue per priority (Redis): on RabbitMQ the one priority
queue already hands a high message to the next free slot first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from celery import Celery
from kombu import Connection, Queue
from kombu.mixins import ConsumerMixin

from notify.broker.routing import uses_priority_queues
from notify.constants import DELIVER_TASK, STORE_RETRY_MAX, queue_channel, queue_name
from notify.errors import StoreUnavailable
from notify.models import Priority
from notify.observability import tracing

log = logging.getLogger("notify.worker")


class Attempt(Protocol):
    """Deliverer.attempt_burst: a message's deliveries, and the channel its queue is for."""

    def __call__(self, delivery_ids: list[str], *, channel: str | None, urgent: bool) -> object: ...


LANES = 2  # threads, each one message at a time: a high attempt behind a backlog takes 15-40 ms


def express_queues(celery: Celery, channels: Sequence[str]) -> list[Queue]:
    """The high queues of `channels` this worker consumes; none where one queue holds every priority."""
    url = celery.conf.broker_url
    if not url or url.split("://", 1)[0] not in ("redis", "rediss") or uses_priority_queues(url):
        return []
    consumed = set(celery.amqp.queues.consume_from)
    names = {queue_name(c, p) for c in channels for p in Priority if p.urgent} & consumed
    return [q for q in celery.conf.task_queues if q.name in names]


class ExpressLane(ConsumerMixin):
    """One thread consuming high queues, one message at a time, acked after its outcomes."""

    def __init__(
        self, connection: Connection, queues: list[Queue], attempt: Attempt, events: TaskEvents | None = None
    ) -> None:
        self.connection = connection
        self.queues = queues
        self.attempt = attempt
        self.events = events
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def get_consumers(self, consumer: Any, channel: Any) -> list[Any]:
        return [consumer(queues=self.queues, callbacks=[self.on_message], accept=["json"], prefetch_count=1)]

    def start(self) -> ExpressLane:
        self._thread = threading.Thread(target=self.run, name="notify-express", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming, and wait up to `timeout` for the attempt in flight to record its outcome
        (a message not finished stays unacked and returns to its queue)."""
        self.stopping()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("express lane: an attempt still runs after %.0fs; leaving it", timeout)
        if self.events is not None:
            self.events.close()
        self.connection.release()

    def stopping(self) -> None:
        """Take no more messages (the consumer looks every second); `stop` waits for it."""
        self.should_stop = True
        self._stopped.set()

    def on_message(self, body: Any, message: Any) -> None:
        ids = _delivery_ids(message.headers, body)
        if ids is None:  # not ours to run: Celery's consumer has it after the restore
            log.warning("express lane: a message for %s left to Celery", message.headers.get("task"))
            message.requeue()
            self._stopped.wait(1.0)
            return
        if not self._wait_until(message.headers.get("eta")):
            return  # stopping: unacked, it returns to its queue
        events = self.events or _NO_EVENTS
        events.received(message.headers)
        started = time.monotonic()
        with tracing.consumed(message.headers):  # each delivery's span a child of the message's
            done = self._attempt(ids, queue_channel(str(message.delivery_info.get("routing_key") or "")))
        if done:
            message.ack()
            events.succeeded(message.headers, time.monotonic() - started)

    def _attempt(self, ids: list[str], channel: str | None) -> bool:
        """The message's deliveries (Deliverer.attempt_burst), however long the store is away;
        False if the lane stopped first. Those already done are refused at their claim next time."""
        delay = 1.0
        while not self._stopped.is_set():
            try:
                self.attempt(ids, channel=channel, urgent=True)  # the lanes consume the urgent queues
                return True
            except StoreUnavailable as exc:  # nothing was claimed: keep the message, try again
                log.error("deliveries %s: %s, again in %.1fs", ids, exc, delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)
            except Exception:  # a bug must not end the lane's thread: log it, leave it to the sweep
                log.exception("express lane: deliveries %s raised; left to the sweep", ids)
                return True
        return False

    def _wait_until(self, eta: str | None) -> bool:
        """A retry's countdown (the task's, after a store outage), as Celery would hold it."""
        if eta:
            wait = datetime.fromisoformat(eta).timestamp() - time.time()
            if wait > 0 and self._stopped.wait(wait):
                return False
        return not self._stopped.is_set()


class TaskEvents:
    """The task events Celery's consumer sends for a task (with -E), sent for the lanes' messages:
    without them Flower would never list a high-priority delivery. Each lane its own dispatcher,
    on a thread of its own: a broker that is slow to take an event never delays a delivery, and
    what it cannot take is dropped (monitoring, not the record: the store has every outcome)."""

    def __init__(self, celery: Celery, hostname: str) -> None:
        self._connection = celery.connection_for_write()
        self._dispatcher = celery.events.Dispatcher(self._connection, hostname=hostname, enabled=True)
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send_all, name="notify-express-events", daemon=True)
        self._thread.start()

    def received(self, headers: dict[str, Any]) -> None:
        self._queue.put(
            (
                "task-received",
                {
                    "uuid": headers.get("id"),
                    "name": headers.get("shadow") or headers.get("task"),
                    "args": headers.get("argsrepr"),
                    "kwargs": headers.get("kwargsrepr"),
                    "root_id": headers.get("root_id"),
                    "parent_id": headers.get("parent_id"),
                    "retries": headers.get("retries", 0),
                    "eta": headers.get("eta"),
                    "expires": headers.get("expires"),
                },
            )
        )
        self._queue.put(("task-started", {"uuid": headers.get("id")}))  # the dispatcher adds the pid

    def succeeded(self, headers: dict[str, Any], runtime: float) -> None:
        self._queue.put(("task-succeeded", {"uuid": headers.get("id"), "result": "None", "runtime": runtime}))

    def _send_all(self) -> None:
        while (event := self._queue.get()) is not None:
            kind, fields = event
            try:
                self._dispatcher.send(kind, **fields)
            except Exception as exc:  # monitoring never stops a delivery
                log.debug("express lane: the %s event was not sent: %s", kind, exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._dispatcher.close()
        self._connection.release()


class _NoEvents:
    def received(self, headers: dict[str, Any]) -> None:
        pass

    def succeeded(self, headers: dict[str, Any], runtime: float) -> None:
        pass


_NO_EVENTS = _NoEvents()


def _delivery_ids(headers: dict[str, Any], body: Any) -> list[str] | None:
    """The delivery ids a Celery `notify.deliver` message (protocol 2) carries, else None."""
    if headers.get("task") != DELIVER_TASK or not isinstance(body, list | tuple) or not body:
        return None
    args = body[0]
    if not isinstance(args, list | tuple) or len(args) != 1:
        return None
    ids = args[0]
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return ids
    return None


def start_express(
    celery: Celery,
    channels: Sequence[str],
    attempt: Attempt,
    lanes: int = LANES,
    *,
    events_from: str | None = None,
) -> list[ExpressLane]:
    """`lanes` threads consuming `channels`' high queues (none on a broker without them); with
    `events_from` (the worker's node name, under -E), each sends its messages' task events."""
    queues = express_queues(celery, channels)
    if not queues:
        return []
    started = [
        ExpressLane(
            celery.connection_for_read(),
            queues,
            attempt,
            TaskEvents(celery, events_from) if events_from else None,
        ).start()
        for _ in range(lanes)
    ]
    log.info("express lanes: %d consuming %s", lanes, ", ".join(q.name for q in queues))
    return started
