"""A channel's rate limit within one worker: deliveries spaced evenly, whatever runs them.

Celery's own rate limit counts task messages, and a burst's message carries
up to 16 deliveries; the express lanes take messages Celery never sees. So
the limit is kept here, per delivery, before its claim: a delivery waiting
for its turn holds no claim (a claim held that long could lapse and be sent
twice; the deliverer keeps it from the sweep meanwhile). Like Celery's, a
rate has a capacity of one: no burst after a pause. An urgent delivery
takes the next turn ahead of the others waiting: a rate-limited channel
still sends a password reset before the rest of a campaign.
"""

from __future__ import annotations

import threading
import time


class Pace:
    """Spaces the calls to `wait()` at least `1 / per_second` apart, across threads, urgent ones first."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._next = 0.0  # monotonic time of the next free turn
        self._urgent_waiting = 0
        self.waiting = 0  # callers waiting for a turn now
        self._changed = threading.Condition()

    def delay(self) -> float:
        """How long a call made now would wait, at least (others may come first)."""
        return max(0.0, self._next - time.monotonic())

    def wait(self, *, urgent: bool = False) -> float:
        """Wait for this caller's turn and take it; return how long that took."""
        start = None
        with self._changed:
            self._urgent_waiting += urgent
            self.waiting += 1
            try:
                while True:
                    now = time.monotonic()
                    ahead = self._urgent_waiting and not urgent  # an urgent caller takes this turn
                    if now >= self._next and not ahead:
                        self._next = now + self.interval
                        return 0.0 if start is None else now - start
                    start = now if start is None else start
                    self._changed.wait(max(self._next - now, self.interval) if ahead else self._next - now)
            finally:
                self._urgent_waiting -= urgent
                self.waiting -= 1
                self._changed.notify_all()
