"""A channel's rate limit within one worker: deliveries spaced evenly, whatever runs them.

Celery's own rate limit counts task messages, and a burst's message carries
up to 16 deliveries; the express lanes take messages Celery never sees. So
the limit is kept here, per delivery, before its claim: a delivery waiting
for its turn holds no claim (a claim held that long could lapse and be sent
twice). Like Celery's, a rate has a capacity of one: no burst after a pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pace:
    """Spaces calls to `wait()` at least `1 / per_second` apart, across threads."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.interval = 1.0 / per_second
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Wait for this caller's turn; return how long that took."""
        with self._lock:
            now = self._clock()
            turn = max(now, self._next)
            self._next = turn + self.interval
        if turn > now:
            self._sleep(turn - now)
        return turn - now
