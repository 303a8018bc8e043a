"""The heartbeat: a worker process renews the claims of the attempts it runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

from notify.errors import StoreUnavailable
from notify.store import Store

log = logging.getLogger("notify.delivery")


class Heartbeat:
    """Renews the claims of the attempts running in this process, every lease/3 (2 s at most).

    One thread per process, started with the first claim. An attempt that
    runs past `ceiling` seconds is no longer renewed: a hung call must not
    hold a delivery forever.
    """

    def __init__(self, store: Store, lease: float, every: float, ceiling: float) -> None:
        self.store, self.lease, self.every, self.ceiling = store, lease, every, ceiling
        self._running: dict[str, float] = {}  # claim token -> monotonic start
        self._refused: set[str] = set()  # tokens the store did not renew at the last beat
        # Unclaimed deliveries of bursts in hand -> (how many bursts hold it, since when).
        self._waiting: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, token: str) -> None:
        """Renew the claim of `token` from now on (its attempt has started)."""
        with self._lock:
            self._running[token] = time.monotonic()
            self._start()

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

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="notify-heartbeat", daemon=True)
            self._thread.start()

    def release(self, token: str) -> None:
        """Renew that claim no more (its attempt is over)."""
        with self._lock:
            self._running.pop(token, None)

    def stop(self) -> None:
        """Renew nothing more; wait for a beat under way (a renewal) to end."""
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def beat(self) -> None:
        """Renew every running claim once (the thread calls this every `every` seconds)."""
        now = time.monotonic()
        with self._lock:
            live = [c for c, since in self._running.items() if now - since < self.ceiling]
            # A burst stuck behind a hung attempt stops being kept with the claims: the sweep has them.
            waiting = [d for d, (_, since) in self._waiting.items() if now - since < self.ceiling]
        try:
            held = self.store.renew(live, self.lease)  # first: a lapsed claim can mean a second copy
        except StoreUnavailable as exc:
            log.error("heartbeat: %s; claims lapse in %.0fs unless it returns", exc, self.lease)
            return
        for lost in self._taken_over(set(live) - held):
            log.error("heartbeat: claim %s was taken over; its outcome will not be recorded", lost)
        try:
            if waiting:
                self.store.keep_queued(waiting)
        except StoreUnavailable as exc:  # at worst the sweep publishes them again: no second copy
            log.warning("heartbeat: %s; a burst's waiting deliveries were not kept", exc)

    def _taken_over(self, refused: set[str]) -> set[str]:
        """Claims refused at this beat and the last: taken over, so no longer renewed.

        One refusal alone may be an attempt that recorded its outcome just
        before the renewal and has not released its claim yet.
        """
        with self._lock:
            lost = refused & self._refused
            self._refused = refused - lost
            for token in lost:
                self._running.pop(token, None)
        return lost

    def _run(self) -> None:
        while not self._wake.wait(self.every):
            try:
                self.beat()
            except Exception:  # a thread that dies here would let every running claim lapse
                log.exception("heartbeat failed; trying again in %.1fs", self.every)
