"""The store's clock: the database server's time on PostgreSQL, the host's on SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

Clock = Callable[[], datetime]


class DatabaseClock:
    """The database server's time, read once a minute and carried on by the monotonic clock.

    Immune to this host's wall clock being wrong or stepping, at one query a minute.
    """

    RESYNC_EVERY = 60.0

    def __init__(self, read: Callable[[], datetime]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._base: datetime | None = None
        self._at = 0.0

    def __call__(self) -> datetime:
        with self._lock:
            elapsed = time.monotonic() - self._at
            if self._base is None or elapsed > self.RESYNC_EVERY:
                self._base, self._at, elapsed = self._read(), time.monotonic(), 0.0
            return self._base + timedelta(seconds=elapsed)
