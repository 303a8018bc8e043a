"""The probe of a worker's (or beat's) health, for a container's healthcheck.

A process is healthy while its maintenance goes through: each pass that the
store answered marks the process's file under NOTIFY_HOME/health/ (named for
the host and the process id), and the probe, run in the same host or
container, reads every such file of a live process of its host:

    python -m notify.worker.health          # exit 0: healthy; 1: one line saying why not

It fails when the store is away or the maintenance thread is stuck (no pass
marked for STALE_AFTER seconds), and when no notify process runs there. A
broker that is away shows too: maintenance publishes what is due through it,
and a pass whose publishing fails is not marked.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from pathlib import Path

from notify.settings import get_settings

STALE_AFTER = 60.0  # seconds without a maintenance pass that went through


class HealthFile:
    """This process's mark: its mtime is when its maintenance last went through."""

    def __init__(self, home: Path) -> None:
        self.path = home / "health" / f"{socket.gethostname()}-{os.getpid()}"
        self._failed = False

    def mark(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as exc:  # said once: the probe reports this process unhealthy meanwhile
            if not self._failed:
                self._failed = True
                print(f"notify: cannot mark health in {self.path.parent}: {exc.strerror}", file=sys.stderr)
            return
        self._failed = False

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def probe(home: Path, stale_after: float = STALE_AFTER, *, now: float | None = None) -> str | None:
    """None if every live notify process of this host marked a pass within `stale_after` seconds and
    there is one; else why not, in one line."""
    now = time.time() if now is None else now
    prefix = f"{socket.gethostname()}-"
    ages = {}
    for path in (home / "health").glob(f"{prefix}*"):
        name = path.name.removeprefix(prefix)
        if not name.isdigit() or not _alive(int(name)):
            continue
        with contextlib.suppress(OSError):  # it stopped meanwhile, and removed its file
            ages[int(name)] = now - path.stat().st_mtime
    if not ages:
        return f"no notify worker or beat of this host has run its maintenance (in {home / 'health'})"
    stale = {pid: age for pid, age in ages.items() if age > stale_after}
    if stale:
        pid, age = max(stale.items(), key=lambda item: item[1])
        return (
            f"process {pid}: its maintenance last went through {age:.0f}s ago "
            "(the store or broker away, or the maintenance stuck: its log says which)"
        )
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notify.worker.health", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--stale-after", type=float, default=STALE_AFTER, help="seconds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    problem = probe(get_settings().home, args.stale_after)
    if problem is None:
        print("healthy")
        return 0
    print(f"unhealthy: {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
