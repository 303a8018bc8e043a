"""Every worker's own scheduler: release what is due, hand on what nobody works on, purge.

It runs in a thread of each worker process (and in `notify beat`, for
those who want one more), so no separate scheduler is needed and no backlog
on the broker can delay it: a due `send_at` is released within
`release_every` of its time. Every step is a conditional UPDATE in the store,
so any number of workers may run it at once.

Who moves each status on, and within how long (README "Delivery semantics"):

- queued: a worker consuming its message. If the message was lost, the
  sweep publishes it again once it has waited `QUEUED_GRACE` with nothing
  ahead of it on the broker (no message of its priority or a more urgent one:
  a low backlog does not hold a lost high delivery), or after `sweep_after`
  whatever is ahead of it. On RabbitMQ the channel's one priority queue counts
  every priority: there a lost delivery behind any backlog waits `sweep_after`.
- scheduled, retrying: `release_due`, within `release_every` of `release_at`.
- sent: final for notify's work; a provider's receipt may move it to delivered or
  undelivered (notify.receipts); one that came before `sent` was recorded is
  settled by the sweep (`Receipts.settle_waiting`), within RECEIPT_WAIT.
- sending: the claiming worker records the outcome; if it dies its beats
  stop, the sweep declares it dead once they stood still for a lease (as it
  observed them: notify.delivery.liveness) and publishes what it held again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

from notify.constants import PURGE_EVERY, QUEUED_GRACE
from notify.delivery.liveness import Liveness
from notify.errors import NotifyError
from notify.models import Priority
from notify.observability import tracing
from notify.observability.metrics import OFF, Metrics
from notify.receipts import Receipts
from notify.settings import Settings
from notify.store import BATCH, Queued, Store

log = logging.getLogger("notify.maintenance")


Publish = Callable[[list[Queued]], object]  # a Publisher's publish (notify.broker.publisher), grouped
# Messages ahead of a new one of (channel, priority) on the broker; None: the broker cannot say.
Backlog = Callable[[str, Priority], int | None]


class Maintenance:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        publish: Publish,
        *,
        channels: Collection[str],
        backlog: Backlog | None = None,
        on_stop: Sequence[Callable[[], object]] = (),
        receipts: Receipts | None = None,
        metrics: Metrics = OFF,
        on_pass: Callable[[], object] = lambda: None,
    ) -> None:
        """`store` is its own from then on (closed when it stops), and so is what `on_stop` closes.
        `receipts`: settles receipts that came before their delivery's `sent` (notify.receipts).
        `metrics`: counts the deliveries taken over from dead workers."""
        self.metrics = metrics
        self._on_pass = on_pass  # after each pass that went through: the health probe's mark
        self.receipts = receipts
        self.store, self.settings, self.publish = store, settings, publish
        self.channels = tuple(channels)
        self.backlog = backlog or (lambda _channel, _priority: None)
        self._on_stop = on_stop
        self._stop = threading.Event()
        self._ran = threading.Event()  # a whole pass went through: the store answered
        self._thread: threading.Thread | None = None
        self._swept = self._purged = 0.0
        # A gap between two observations counts for two sweeps at most: a stalled observer saw nothing.
        self.liveness = Liveness(settings.lease, 2 * settings.sweep_every)
        self._last_error = "it has not run yet"

    def start(self) -> Maintenance:
        self._thread = threading.Thread(target=self._run, name="notify-maintenance", daemon=True)
        self._thread.start()
        return self

    def wait_until_running(self, say_every: float = 10.0) -> None:
        """Return once a whole pass went through (the store answered); say so while it has not.

        A worker is not ready until its maintenance runs: a worker that starts
        while the store is away would otherwise take messages and never release
        a due `send_at` or sweep a dead worker's deliveries.
        """
        while not self._ran.wait(say_every):
            if self._stop.is_set():
                return
            if self._thread is None or not self._thread.is_alive():
                log.error("maintenance: its thread ended; starting it again")
                self.start()
            log.warning("maintenance has not run yet (%s); the worker waits for it", self._last_error)

    def stop(self) -> None:
        """Stop after the pass under way, then close the store and what `on_stop` names."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.error("maintenance: a pass still runs after 10s; leaving it")
                return  # its store and connections are still in use
        for close in (*self._on_stop, self.store.close):
            close()

    def tick(self) -> None:
        """One pass: judge the workers and sweep, release what is due, purge, each when its time has come.

        Any statement failing makes the pass count for no worker's liveness: an
        observer counts only time it saw the store take what it was asked.
        """
        now = time.monotonic()
        try:
            if now - self._swept >= self.settings.sweep_every:
                self._swept = now
                self.judge_workers()  # first: no publishing ahead of it can stretch what it counts
                self.sweep()
                if self.receipts is not None:
                    self.receipts.settle_waiting()
            self._publish_all(lambda: self.store.release_due(self.channels), "released")
            if now - self._purged >= PURGE_EVERY:
                self._purged = now
                purged = self.store.purge_finished(older_than=self.settings.retention)
                self.store.forget_dead_workers()
                log.info("purged %d finished deliveries older than the retention", purged)
        except Exception:
            self.liveness.missed()
            raise

    def sweep(self) -> None:
        """Publish again what a dead worker held, and what a broker lost."""
        self._publish_all(self._reclaim, "taken over from a dead worker")
        for delivery_id in self.store.end_unknown_from_dead(self.channels):
            log.error(
                "delivery %s: its worker was taken for dead while handing it over; "
                "failed as outcome_unknown (it may have been sent)",
                delivery_id,
            )
        as_of = self.store.now()  # one snapshot: what this sweep publishes is not "lost" again in it
        for channel in self.channels:
            for priority in Priority:
                grace = QUEUED_GRACE if self.backlog(channel, priority) == 0 else self.settings.sweep_after
                lost = functools.partial(
                    self.store.queued_since, grace, [channel], as_of=as_of, priority=priority
                )
                self._publish_all(lost, "lost by the broker, published again")

    def _reclaim(self) -> list[Queued]:
        taken = self.store.reclaim_from_dead(self.channels)
        self.metrics.recovered(q.channel for q in taken)
        return taken

    def judge_workers(self) -> None:
        """Declare dead the workers whose beats stood still for a lease, as this process observed them."""
        for worker, count in self.liveness.observe(self.store.worker_beats()):
            if self.store.declare_dead(worker, count):
                log.warning(
                    "worker %s stopped beating for %.0fs: its deliveries are handed on",
                    worker,
                    self.settings.lease,
                )

    def _publish_all(self, take: Callable[[], list[Queued]], what: str) -> None:
        """Publish batches from `take` until it returns a short one (a trace each, saying why)."""
        while batch := take():
            with tracing.span("notify.maintenance", {"notify.reason": what, "notify.deliveries": len(batch)}):
                self.publish(batch)
            log.info("%d %s deliveries %s", len(batch), batch[0].channel, what)
            if len(batch) < BATCH:
                return

    def _run(self) -> None:
        pause = 0.0  # the first pass at once: the worker is not ready until one went through
        while not self._stop.wait(pause):
            pause = self.settings.release_every
            try:
                self.tick()
                self._ran.set()
                self._on_pass()
            except NotifyError as exc:  # the store is down: try again next tick
                self._last_error = str(exc)
                log.error("maintenance: %s", exc)
            except Exception as exc:  # the thread goes on whatever a pass raised
                self._last_error = f"a pass raised {type(exc).__name__}: {exc}"
                log.exception("maintenance tick failed")
