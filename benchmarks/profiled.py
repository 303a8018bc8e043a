"""Run a Python module under cProfile in every thread, and write the merged profile at exit.

    python -m benchmarks.profiled --out results/worker.prof -m notify.cli worker email -c 16

cProfile only sees the thread that enables it, and a Celery worker on the
threads pool does its work in threads started later; `threading.setprofile`
turns a profiler on in each of them. At exit (a warm shutdown after SIGTERM)
the profiles are merged into `--out` (pstats format) and a text summary next
to it (`.txt`). The default timer is each thread's CPU time (`--timer cpu`), so
threads waiting on sockets and locks do not drown what actually costs CPU;
`--timer wall` shows where a delivery waits. cProfile slows Python code down
severalfold: read the proportions, not the absolute times. The benchmarks'
`--profile` flag runs their workers under it.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import io
import pstats
import runpy
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()
_timer: Callable[[], float] = time.thread_time


def _profile_this_thread(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)
    profile = cProfile.Profile(_timer)
    with _lock:
        _profiles.append(profile)
    profile.enable()


def _write(out: Path, lines: int) -> None:
    with _lock:
        profiles = list(_profiles)
    for profile in profiles:
        profile.disable()
    stats = pstats.Stats(*profiles) if profiles else None
    if stats is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(out)
    text = io.StringIO()
    summary = pstats.Stats(str(out), stream=text)
    summary.strip_dirs()
    timer = "CPU" if _timer is time.thread_time else "wall"
    text.write(f"{len(profiles)} threads profiled, timer: {timer}\n\n=== by own time (tottime) ===\n")
    summary.sort_stats("tottime").print_stats(lines)
    text.write("\n=== by cumulative time ===\n")
    summary.sort_stats("cumulative").print_stats(lines)
    out.with_suffix(".txt").write_text(text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the merged profile")
    parser.add_argument("--lines", type=int, default=60, help="rows in the text summary")
    parser.add_argument(
        "--timer", choices=["cpu", "wall"], default="cpu", help="per-thread CPU time or wall time"
    )
    parser.add_argument("-m", dest="module", required=True, help="the module to run, as python -m does")
    args, rest = parser.parse_known_args()

    global _timer
    _timer = time.thread_time if args.timer == "cpu" else time.perf_counter
    atexit.register(_write, args.out, args.lines)
    threading.setprofile(_profile_this_thread)
    main_profile = cProfile.Profile(_timer)
    _profiles.append(main_profile)
    sys.argv = [args.module, *rest]
    main_profile.enable()
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
