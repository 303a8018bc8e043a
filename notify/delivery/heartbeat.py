"""The heartbeat: a worker process shows the store it is alive, and keeps its attempts honest.

A process registers itself as a worker (a row in the store) before its first
claim, and counts a beat every `every` seconds from then on. Other processes
judge it alive while its count moves on, as they observe it on their own
clocks (notify.delivery.liveness): no timestamp written by one process is
compared with another's clock, so a clock step, or a store outage of any
length, never makes a live worker look dead.

Two rules keep a worker's attempts from doubling anyone's:

- an attempt hands nothing to a provider unless this process's last beat
  landed within three quarters of a lease (`fresh`): a worker cut off from
  the store for a lease may be declared dead, and its deliveries handed on;
- an attempt still running `ceiling` seconds after it started (a provider call
  that never ends) is recorded as an unknown outcome, a dead letter, rather
  than left for another worker to send again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Collection

from notify.errors import OutcomeUnknownError, StoreUnavailable
from notify.store import Claim, Store

log = logging.getLogger("notify.delivery")

FRESH_FOR = 0.75  # of a lease: a worker whose last beat is older hands nothing over


class Heartbeat:
    """This process's beats in the store, its attempts' deadlines, and its bursts' waiting deliveries."""

    def __init__(self, store: Store, lease: float, every: float, ceiling: float) -> None:
        self.store, self.lease, self.every, self.ceiling = store, lease, every, ceiling
        self._worker_id: str | None = None
        self._last_beat: float | None = None  # monotonic time of the last beat the store took
        self._running: dict[str, tuple[Claim, float]] = {}  # token -> (claim, monotonic start)
        # Unclaimed deliveries of bursts in hand -> (how many bursts hold it, since when).
        self._waiting: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def worker_id(self) -> str:
        """This process's id as a worker, registered in the store on first use (StoreUnavailable if not)."""
        with self._lock:
            if self._worker_id is None:
                worker_id = str(uuid.uuid4())
                self.store.register_worker(worker_id, host=socket.gethostname(), pid=os.getpid())
                self._worker_id, self._last_beat = worker_id, time.monotonic()
            self._start()
            return self._worker_id

    def fresh(self) -> bool:
        """Whether the store took a beat of this worker within 3/4 of a lease: safe to hand a message over."""
        last = self._last_beat
        return last is not None and time.monotonic() - last < self.lease * FRESH_FOR

    def hold(self, claim: Claim) -> None:
        """Watch `claim`'s attempt from now on (it has started)."""
        with self._lock:
            self._running[claim.token] = (claim, time.monotonic())

    def release(self, claim: Claim) -> None:
        """That attempt is over."""
        with self._lock:
            self._running.pop(claim.token, None)

    def keep(self, delivery_ids: Collection[str]) -> None:
        """Deliveries of a burst in hand, still "queued": keep the sweep from publishing them again."""
        with self._lock:
            self._start()
            now = time.monotonic()
            for delivery_id in delivery_ids:
                held, _ = self._waiting.get(delivery_id, (0, now))
                self._waiting[delivery_id] = (held + 1, now)

    def drop(self, delivery_id: str) -> None:
        """Its turn has come (or the burst ended): no longer kept."""
        with self._lock:
            held, since = self._waiting.pop(delivery_id, (1, 0.0))
            if held > 1:
                self._waiting[delivery_id] = (held - 1, since)

    def start(self) -> Heartbeat:
        """Beat from now on (a worker's services start it; otherwise the first claim does)."""
        with self._lock:
            self._start()
        return self

    def _start(self) -> None:
        if self._wake.is_set():
            return  # stopped
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="notify-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Beat no more, and retire this worker in the store (every attempt is over)."""
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        if self._worker_id is not None:
            try:
                self.store.retire_worker(self._worker_id)
            except StoreUnavailable as exc:  # the sweep declares it dead in time, as if it had died
                log.warning("heartbeat: %s; this worker was not retired", exc)

    def beat(self) -> None:
        """Count one beat, give up on attempts past the ceiling, stamp the bursts' waiting deliveries."""
        worker_id = self._worker_id
        if worker_id is not None:
            try:
                alive = self.store.beat(worker_id)
            except StoreUnavailable as exc:
                log.error("heartbeat: %s; this worker hands nothing over until it returns", exc)
                return
            if alive:
                self._last_beat = time.monotonic()
            else:
                self._declared_dead(worker_id)
            self._end_hung_attempts()
        self._keep_waiting()

    def _declared_dead(self, worker_id: str) -> None:
        """Another worker took this one for dead (it was cut off from the store, or stalled): its
        claims have been handed on, so their outcomes will not be recorded. It starts afresh."""
        log.error("heartbeat: this worker (%s) was declared dead; it registers again", worker_id)
        with self._lock:
            if self._worker_id == worker_id:
                self._worker_id, self._last_beat = None, None

    def _end_hung_attempts(self) -> None:
        now = time.monotonic()
        with self._lock:
            hung = [claim for claim, since in self._running.values() if now - since >= self.ceiling]
        for claim in hung:
            reason = f"the attempt did not end within {self.ceiling:.0f}s; it may have been sent"
            error = OutcomeUnknownError(reason, channel=claim.channel, provider="notify")
            try:
                if self.store.mark_failed(claim, reason, error.code):
                    log.error("delivery %s: %s", claim.delivery_id, reason)
            except StoreUnavailable:
                return  # the next beat tries again
            self.release(claim)

    def _keep_waiting(self) -> None:
        now = time.monotonic()
        with self._lock:
            # A burst stuck behind a hung attempt stops being kept: the sweep has its deliveries.
            waiting = [d for d, (_, since) in self._waiting.items() if now - since < self.ceiling]
        try:
            if waiting:
                self.store.keep_queued(waiting)
        except StoreUnavailable as exc:  # at worst the sweep publishes them again: no second copy
            log.warning("heartbeat: %s; a burst's waiting deliveries were not kept", exc)

    def _run(self) -> None:
        while not self._wake.wait(self.every):
            try:
                self.beat()
            except Exception:  # a thread that dies here would let every claim of this worker go
                log.exception("heartbeat failed; trying again in %.1fs", self.every)
