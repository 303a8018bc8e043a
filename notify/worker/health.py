"""The probe of a worker's (or beat's) health, for a container's healthcheck.

A process is healthy while its maintenance goes through: each pass that the
store answered marks the process's file under NOTIFY_HOME/health/ (named for
the host and the process id), and the probe, run in the same host or
container, reads every such file of a live process of its host, and asks the
broker:

    python -m notify.worker.health          # exit 0: healthy; 1: one line saying why not

It fails when the store is away or the maintenance stuck (no pass marked for
STALE_AFTER seconds), when the broker does not answer, and when no notify
process runs there. A file names its process by id and start time, so a file
left by a killed process is never read as a live one's whose id came later;
ages are read on the monotonic clock, which no step of the wall clock moves.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from notify.errors import NotifyError, one_line
from notify.settings import Settings, get_settings, mask_url
from notify.text import printable

STALE_AFTER = 60.0  # seconds without a maintenance pass that went through
BROKER_TIMEOUT = 5  # seconds the probe waits for the broker


class HealthFile:
    """This process's mark: its start time, and when its maintenance last went through."""

    def __init__(self, home: Path) -> None:
        self.path = home / "health" / f"{socket.gethostname()}-{os.getpid()}"
        self._started = started(os.getpid())
        self._failed = False

    def mark(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = self.path.with_name(f".{self.path.name}.tmp")
            fresh.write_text(f"{self._started} {time.monotonic()}\n")
            fresh.replace(self.path)  # whole, or not at all, to a probe reading it
        except OSError as exc:  # said once: the probe reports this process unhealthy meanwhile
            if not self._failed:
                self._failed = True
                print(f"notify: cannot mark health in {self.path.parent}: {exc.strerror}", file=sys.stderr)
            return
        self._failed = False

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, starttime; the name before may hold spaces


def probe(home: Path, stale_after: float = STALE_AFTER) -> str | None:
    """None if a notify process of this host marks its passes, each within `stale_after`
    seconds; else why not, in one line."""
    now = time.monotonic()
    prefix = f"{socket.gethostname()}-"
    ages: dict[int, float] = {}
    for path in (home / "health").glob(f"{prefix}*"):
        name = path.name.removeprefix(prefix)
        try:
            start, marked = path.read_text().split()
        except (OSError, ValueError):  # it stopped meanwhile, or wrote something else
            continue
        if name.isdigit() and started(int(name)) == start:  # that process, not a later one of its id
            ages[int(name)] = now - float(marked)
    if not ages:
        return f"no notify worker or beat of this host has run its maintenance (in {home / 'health'})"
    stale = {pid: age for pid, age in ages.items() if age > stale_after}
    if stale:
        pid, age = max(stale.items(), key=lambda item: item[1])
        return (
            f"process {pid}: its maintenance last went through {age:.0f}s ago "
            "(the store away, or the maintenance stuck: its log says which)"
        )
    return None


def broker_problem(settings: Settings) -> str | None:
    """None if the broker answers within BROKER_TIMEOUT; else which and why, in one line."""
    if settings.uses_embedded_broker:
        return None  # a file, as the store is
    from kombu import Connection

    url = settings.resolved_broker_url
    try:
        with Connection(url, connect_timeout=BROKER_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT)
            if connection.transport_cls in ("redis", "rediss"):
                channel: Any = connection.default_channel  # connecting alone proves little on Redis
                channel.client.ping()
    except Exception as exc:
        words = " ".join(str(exc).split())[:300]
        return f"the broker does not answer ({mask_url(url)}): {type(exc).__name__}: {words}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notify.worker.health", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--stale-after", type=float, default=STALE_AFTER, help="seconds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.stale_after) and args.stale_after > 0):
        parser.error("--stale-after must be a number of seconds above 0")
    try:
        settings = get_settings()
        problem = probe(settings.home, args.stale_after) or broker_problem(settings)
    except NotifyError as exc:
        problem = one_line(exc)
    if problem is None:
        print("healthy")
        return 0
    print(f"unhealthy: {printable(problem)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
