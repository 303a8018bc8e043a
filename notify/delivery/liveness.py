"""Which workers are dead: judged by their heartbeats moving on, as this process sees them.

Every worker counts beats in the store (notify.delivery.heartbeat). An
observer (each worker's maintenance, and `notify beat`) reads the counts at
every sweep and adds up, per worker, the time its count stood still, on its
own monotonic clock; a worker whose count stood still for a whole lease is
declared dead, and the deliveries it held are handed on.

Only time the observer saw the store answer counts: a sweep that found the
store away starts every count afresh, and no gap between two sweeps counts
for more than `step_max` (an observer that stalled saw nothing meanwhile). So a
store outage of any length, or a clock step of any process or of the
database, never makes a live worker dead: once the store is back, a worker
has a whole lease of its answering to beat again, and it beats every few
seconds. What that costs: a newly started observer needs a lease of its own
observation before it declares anyone dead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


class Liveness:
    """One observer's view of the workers' beats."""

    def __init__(self, lease: float, step_max: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease, self.step_max, self._clock = lease, step_max, clock
        self._seen: dict[str, tuple[int, float]] = {}  # worker -> (its count, seconds it stood still)
        self._last: float | None = None  # when the store last answered this observer

    def observe(self, beats: Mapping[str, int]) -> list[tuple[str, int]]:
        """Take in the live workers' counts; return the (worker, count) judged dead just now."""
        now = self._clock()
        step = 0.0 if self._last is None else min(max(now - self._last, 0.0), self.step_max)
        self._last = now
        dead: list[tuple[str, int]] = []
        seen: dict[str, tuple[int, float]] = {}
        for worker, count in beats.items():
            previous = self._seen.get(worker)
            still = previous[1] + step if previous is not None and previous[0] == count else 0.0
            seen[worker] = (count, still)
            if still >= self.lease:
                dead.append((worker, count))
        self._seen = seen
        return dead

    def missed(self) -> None:
        """The store did not answer: every worker gets a whole lease, from its return, to beat again."""
        self._last = None
        self._seen.clear()
