"""What `notify web` serves on /metrics: the store's and the broker's state, read at each scrape.

A Prometheus collector, not gauges set in the background: every scrape runs
two small GROUP BY queries and asks the broker how many messages each queue
holds. A store or a broker that does not answer leaves its gauges out and
says so in `notify_store_up` / `notify_broker_up` (0); the scrape still answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from notify import channels as registry
from notify.errors import NotifyError
from notify.models import Status
from notify.observability.metrics import bounded
from notify.store import Store

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("notify.web")

Depths = Callable[[], dict[str, int]]  # messages per queue; raises if the broker does not answer

# name: (labels, help); tests/test_metrics.py checks the dashboards against these names.
WEB_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "notify_queue_depth": (("queue",), "Messages waiting in each of notify's queues on the broker."),
    "notify_deliveries": (("channel", "status"), "Deliveries in the store, by channel and status."),
    "notify_dead_letters": (("channel",), "Failed deliveries (dead letters) in the store."),
    "notify_oldest_queued_seconds": (
        ("channel",),
        "Age (since send()) of the oldest delivery still queued; 0 if none.",
    ),
    "notify_store_up": ((), "1 if the store answered this scrape, else 0."),
    "notify_broker_up": ((), "1 if the broker answered this scrape, else 0."),
}


class StoreAndBroker:
    """A prometheus_client collector of `WEB_METRICS`, computed per scrape."""

    def __init__(self, store: Store, depths: Depths) -> None:
        self.store = store
        self.depths = depths

    def collect(self) -> Iterator[Any]:
        yield from self._store()
        yield from self._broker()

    def _store(self) -> Iterator[Any]:
        try:
            counts = self.store.status_counts()
            oldest = self.store.oldest_queued()
            now = self.store.now()
        except NotifyError as exc:
            log.warning("/metrics: the store did not answer: %s", exc)
            yield _gauge("notify_store_up", value=0)
            return
        channels = sorted({*registry.names(), *(channel for channel, _ in counts)})
        deliveries = _gauge("notify_deliveries")
        for (channel, status), count in sorted(counts.items()):
            deliveries.add_metric([bounded(channel), bounded(status)], count)
        dead = _gauge("notify_dead_letters")
        waiting = _gauge("notify_oldest_queued_seconds")
        for channel in channels:
            dead.add_metric([bounded(channel)], counts.get((channel, Status.FAILED), 0))
            age = (now - oldest[channel]).total_seconds() if channel in oldest else 0.0
            waiting.add_metric([bounded(channel)], max(0.0, age))
        yield from (deliveries, dead, waiting, _gauge("notify_store_up", value=1))

    def _broker(self) -> Iterator[Any]:
        try:
            depths = self.depths()
        except Exception as exc:  # any transport's error: the broker is away, or refuses us
            log.warning("/metrics: the broker did not answer: %s: %s", type(exc).__name__, exc)
            yield _gauge("notify_broker_up", value=0)
            return
        depth = _gauge("notify_queue_depth")
        for queue, count in sorted(depths.items()):
            depth.add_metric([bounded(queue)], count)
        yield from (depth, _gauge("notify_broker_up", value=1))


def _gauge(name: str, value: float | None = None) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    labels, text = WEB_METRICS[name]
    if value is not None:
        return GaugeMetricFamily(name, text, value=value)
    return GaugeMetricFamily(name, text, labels=labels)


def web_registry(store: Store, depths: Depths) -> CollectorRegistry:
    """A registry of these gauges alone (not prometheus_client's global one, nor its process metrics)."""
    from prometheus_client import CollectorRegistry

    served = CollectorRegistry(auto_describe=False)
    served.register(StoreAndBroker(store, depths))
    return served
