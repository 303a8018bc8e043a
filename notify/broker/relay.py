"""The relay: what send() recorded goes to the broker from a thread of its own.

The store is the outbox. `send()` returns once the store has the delivery,
which is the whole promise: from then on a crash of either side loses
nothing, because a worker's sweep publishes whatever never reached the
broker (README "Delivery semantics"). The message itself follows a fraction
of a millisecond later, from this thread, and when the caller records
faster than one broker round trip the messages waiting share a pipeline.

`flush()` waits until everything handed over so far has been published (or
given up on, when the broker is down: the sweep's job then). A process
flushes its relays when it exits normally. A forked child (a prefork pool's,
multiprocessing's: they end with os._exit, no atexit) starts with empty
relays that publish in the caller's thread, as send() did before; so does a
closed relay, and one that cannot start its thread. submit() never raises:
the store has the delivery, and a caller that saw an error would send again.
With OpenTelemetry configured, each submit keeps the caller's trace context and
its rows are published in it (notify.observability.tracing).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence

from notify.constants import EXIT_FLUSH_TIMEOUT
from notify.observability import tracing
from notify.store import Queued

log = logging.getLogger("notify")

Publish = Callable[[Sequence[Queued], bool], object]  # (rows, grouped)

_relays: weakref.WeakSet[Relay] = weakref.WeakSet()


class Relay:
    """Publishes batches of queued deliveries in a background thread, in the order handed over."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._reset()
        _relays.add(self)

    def _reset(self, *, synchronous: bool = False) -> None:
        # In a forked child (a prefork pool's, multiprocessing's) publish in the
        # caller's thread, as before the relay: such children end with
        # os._exit, and no atexit flush would run.
        self._synchronous = synchronous or _forked
        self._cond = threading.Condition()
        self._pending: list[tuple[Sequence[Queued], bool, tracing.Trace | None]] = []
        self._handed = self._done = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, rows: Sequence[Queued], *, grouped: bool) -> None:
        """Publish `rows` soon, from the relay's thread."""
        if not rows:
            return
        trace = tracing.carrier()  # the caller's span (send()'s), for the relay's thread
        with self._cond:
            queued = not (self._synchronous or self._closed) and self._start_thread()
            if queued:
                self._pending.append((rows, grouped, trace))
                self._handed += 1
                self._cond.notify()
        if not queued:  # closed (an exiting process), forked, or no thread to be had: publish here
            self._publish_now(rows, grouped)

    def _start_thread(self) -> bool:
        if self._thread is not None and self._thread.is_alive():
            return True
        try:
            self._thread = threading.Thread(target=self._run, name="notify-relay", daemon=True)
            self._thread.start()
        except RuntimeError:  # "can't start new thread", or the interpreter is shutting down
            self._thread = None
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is published; False if `timeout` came first."""
        with self._cond:
            target = self._handed
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None = EXIT_FLUSH_TIMEOUT) -> None:
        """Publish what is pending, then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                work, self._pending = self._pending, []
            for (grouped, trace), rows in _by_kind(work):
                with tracing.resumed(trace):
                    self._publish_now(rows, grouped)
            with self._cond:
                self._done += len(work)
                self._cond.notify_all()

    def _publish_now(self, rows: Sequence[Queued], grouped: bool) -> None:
        try:
            self._publish(rows, grouped)
        except Exception as exc:  # the store has them; a worker's sweep publishes them later
            log.warning(
                "broker unavailable, %d deliveries stay queued in the store until a worker's "
                "sweep publishes them: %s: %s",
                len(rows),
                type(exc).__name__,
                exc,
            )


def _by_kind(
    work: Sequence[tuple[Sequence[Queued], bool, tracing.Trace | None]],
) -> list[tuple[tuple[bool, tracing.Trace | None], list[Queued]]]:
    """The rows handed over, by (grouped, trace context), in order, single sends first (the
    latency-sensitive ones). Without OpenTelemetry, every trace is None: two publishes at most."""
    kinds: dict[tuple[bool, tracing.Trace | None], list[Queued]] = {}
    for rows, grouped, trace in work:
        kinds.setdefault((grouped, trace), []).extend(rows)
    return sorted(kinds.items(), key=lambda kind: kind[0][0])


def _flush_all() -> None:
    for relay in list(_relays):
        relay.close()


_forked = False  # set in a forked child: its relays publish in the caller's thread


def _forget_all_in_child() -> None:
    # The parent publishes what it had pending; the child's thread and locks are not its own.
    global _forked
    _forked = True
    for relay in list(_relays):
        relay._reset(synchronous=True)


atexit.register(_flush_all)
os.register_at_fork(after_in_child=_forget_all_in_child)
