"""The heartbeat: a worker process shows the store it is alive, and answers for every try it makes.

A process registers itself as a worker (a row in the store) before its first
claim, and counts a beat every `every` seconds from then on. Other processes
judge it alive while its count moves on, as they observe it on their own
clocks (notify.delivery.liveness): no timestamp written by one process is
compared with another's clock, so a clock step, or a store outage of any
length, never makes a live worker look dead.

So a live worker's claims are its own to end, and the heartbeat sees that
every one of them ends:

- a try is tracked from before its claim (whose token it chose) until its
  outcome is recorded; a try left without an outcome (an error, an answer
  to the claim that never came) is `abandon`ed, and the heartbeat ends its
  claim: given back for another try if nothing was handed over, else a dead
  letter with an unknown outcome;
- a try still running `ceiling` seconds after it started (a provider call
  that never ends) is ended the same way, as an unknown outcome;
- a try hands nothing to a provider unless the claim is this worker's current
  registration and its last beat left within three quarters of a lease
  (`fresh`): a worker cut off from the store for a lease may be declared
  dead, and its deliveries handed on;
- and unless the store took the news first (`Store.handing_over`, fenced by
  the claim and by its worker being alive): from then on, a claim whose worker
  is taken for dead (killed, or cut off from the store while the provider has
  the message) ends as an unknown outcome, never handed to another worker;
  the outcome its worker brings back once it reaches the store again wins.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

from notify.errors import StoreUnavailable
from notify.store import Claim, Store

log = logging.getLogger("notify.delivery")

FRESH_FOR = 0.75  # of a lease: a worker whose last beat left earlier hands nothing over


@dataclass
class _Try:
    """One try this process is making, from before its claim to its recorded outcome."""

    delivery_id: str
    since: float  # monotonic
    handed_over: bool = False  # the provider may have the message
    answered: bool = False  # the provider's call returned: its outcome is known, being recorded
    abandoned: str | None = None  # why it ended without an outcome, for the heartbeat to record


class Heartbeat:
    """This process's beats in the store, its tries, and its bursts' waiting deliveries."""

    def __init__(self, store: Store, lease: float, every: float, ceiling: float) -> None:
        self.store, self.lease, self.every, self.ceiling = store, lease, every, ceiling
        self._worker_id: str | None = None
        self._last_beat: float | None = None  # monotonic time the last beat the store took left
        self._tries: dict[str, _Try] = {}  # token -> the try
        # Unclaimed deliveries of bursts in hand -> (how many bursts hold it, since when).
        self._waiting: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._also: list[Callable[[], object]] = []  # what else runs at every beat

    def also_at_every_beat(self, work: Callable[[], object]) -> None:
        """Run `work` at every beat too (the deliverer hands on a stuck burst's waiting deliveries)."""
        self._also.append(work)

    @property
    def worker_id(self) -> str:
        """This process's id as a worker, registered in the store on first use (StoreUnavailable if not)."""
        with self._lock:
            if self._worker_id is None:
                worker_id, sent = str(uuid.uuid4()), time.monotonic()
                self.store.register_worker(worker_id, host=socket.gethostname(), pid=os.getpid())
                self._worker_id, self._last_beat = worker_id, sent
            self._start()
            return self._worker_id

    def fresh(self, claim: Claim) -> bool:
        """Whether `claim` may hand its message over: made under this worker's current registration,
        whose last beat left within 3/4 of a lease."""
        last = self._last_beat
        current = claim.worker_id == self._worker_id
        return current and last is not None and time.monotonic() - last < self.lease * FRESH_FOR

    # -- tries ---------------------------------------------------------------

    def track(self, token: str, delivery_id: str) -> None:
        """A try is about to claim `delivery_id` with `token`: answer for it from now on."""
        with self._lock:
            self._tries[token] = _Try(delivery_id, time.monotonic())

    def handing_over(self, token: str) -> None:
        """The try is about to hand its message to the provider: from now on it may have been sent."""
        with self._lock:
            found = self._tries.get(token)
            if found is not None:
                found.handed_over = True

    def answered(self, token: str) -> None:
        """The provider's call returned: the try knows its outcome, and records it whatever the
        wait (no ceiling ends it as unknown)."""
        with self._lock:
            found = self._tries.get(token)
            if found is not None:
                found.answered = True

    def done(self, token: str) -> None:
        """The try's outcome is recorded (or its claim was refused, or taken over): nothing to end."""
        with self._lock:
            self._tries.pop(token, None)

    def abandon(self, token: str, why: str) -> None:
        """The try ended without an outcome: the next beat ends its claim (if it made one)."""
        with self._lock:
            found = self._tries.get(token)
            if found is not None:
                found.abandoned = why

    # -- bursts ----------------------------------------------------------------

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

    # -- the thread ------------------------------------------------------------

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
        """Beat no more; retire this worker in the store once no try of its runs."""
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._end_tries()  # the abandoned ones, one last time
        with self._lock:
            busy = bool(self._tries)
        if self._worker_id is None or busy:
            return  # a try still runs (a cold shutdown): the sweep takes it over once the beats stand still
        try:
            self.store.retire_worker(self._worker_id)
        except StoreUnavailable as exc:  # the sweep declares it dead in time, as if it had died
            log.warning("heartbeat: %s; this worker was not retired", exc)

    def beat(self) -> None:
        """Count one beat; end the tries abandoned or past the ceiling; stamp the bursts' waiting."""
        worker_id = self._worker_id
        if worker_id is not None:
            sent = time.monotonic()  # fresh counts from when the beat left, not when it came back
            try:
                alive = self.store.beat(worker_id)
            except StoreUnavailable as exc:
                log.error("heartbeat: %s; this worker hands nothing over until it returns", exc)
                return
            if alive:
                self._last_beat = sent
            else:
                self._declared_dead(worker_id)
        self._end_tries()
        self._keep_waiting()
        for work in self._also:
            try:
                work()
            except Exception:  # the beats go on whatever the extra work raised
                log.exception("heartbeat: %r failed", work)

    def _declared_dead(self, worker_id: str) -> None:
        """Another worker took this one for dead (it was cut off from the store, or stalled): its
        claims have been handed on, so their outcomes will not be recorded. It starts afresh."""
        log.error("heartbeat: this worker (%s) was declared dead; it registers again", worker_id)
        with self._lock:
            if self._worker_id == worker_id:
                self._worker_id, self._last_beat = None, None

    def _end_tries(self) -> None:
        """End the claims of abandoned tries, and of tries past the ceiling (unknown outcomes)."""
        now = time.monotonic()
        with self._lock:
            for found in self._tries.values():
                if found.abandoned is None and not found.answered and now - found.since >= self.ceiling:
                    found.abandoned = f"the attempt did not end within {self.ceiling:.0f}s"
                    found.handed_over = True  # whatever it reached: never sent again blindly
            ending = [(token, t) for token, t in self._tries.items() if t.abandoned is not None]
        for token, found in ending:
            reason = f"{found.abandoned}; " + (
                "it may have been sent" if found.handed_over else "nothing was sent: another try follows"
            )
            try:
                ended = self.store.abandon(found.delivery_id, token, reason, handed_over=found.handed_over)
            except StoreUnavailable:
                return  # the next beat tries again
            if ended:
                log.error("delivery %s: %s", found.delivery_id, reason)
            self.done(token)

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
