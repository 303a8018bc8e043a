"""Priority in a worker process: while a high attempt starts, lower ones wait their turn, briefly.

A worker's threads share one GIL. Behind a backlog of low deliveries every
thread is busy, and a high attempt that does get a thread still runs at a
fraction of the process's CPU: each claim, render and SMTP exchange waits
behind seven low ones. The broker already hands the high message over first
(notify.broker.routing); this gate gives its attempt the process too.

An urgent attempt holds the gate for at most `hold` seconds from its start
(after that it is waiting on the network, not on us), and a lower attempt
waits at most `hold` seconds: under a stream of high deliveries the low
ones still go, one `hold` at a time per thread, never starved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from notify.constants import GATE_HOLD
from notify.models import Priority

URGENT = frozenset(p.value for p in Priority if p.urgent)


class PriorityGate:
    """Lets the urgent attempts of one process run first; lower ones wait, bounded."""

    def __init__(self, hold: float = GATE_HOLD, urgent: frozenset[str] = URGENT) -> None:
        self.hold = hold
        self.urgent = urgent
        self._started: dict[int, float] = {}  # urgent attempts in flight: token -> monotonic start
        self._next = 0
        self._changed = threading.Condition()

    @contextmanager
    def turn(self, priority: str) -> Iterator[float]:
        """Around an attempt's work: urgent ones hold the gate, the others wait at it first.

        Yields how long the attempt waited (always 0.0 for an urgent one).
        """
        if priority not in self.urgent:
            yield self.wait()
            return
        token = self._enter()
        try:
            yield 0.0
        finally:
            self._leave(token)

    def checkpoint(self, priority: str) -> float:
        """Inside a lower attempt, before its next costly step (MIME and SMTP): wait again if need be;
        how long that took (0.0 for an urgent attempt, which never waits)."""
        return self.wait() if priority not in self.urgent else 0.0

    def wait(self) -> float:
        """Wait while an urgent attempt younger than `hold` runs, `hold` seconds at most; how long."""
        if not self._started:  # the common case: nothing urgent, no lock taken
            return 0.0
        with self._changed:
            start = now = time.monotonic()
            deadline = start + self.hold
            while now < deadline:
                newest = max(self._started.values(), default=None)
                if newest is None or now - newest >= self.hold:
                    break
                self._changed.wait(min(deadline, newest + self.hold) - now)
                now = time.monotonic()
            return now - start

    def _enter(self) -> int:
        with self._changed:
            self._next += 1
            self._started[self._next] = time.monotonic()
            return self._next

    def _leave(self, token: int) -> None:
        with self._changed:
            del self._started[token]
            self._changed.notify_all()
