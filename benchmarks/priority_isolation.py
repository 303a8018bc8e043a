"""Priority isolation: a high email's send-to-arrival time, idle and behind a backlog of low ones.

    python -m benchmarks.priority_isolation [--backlog 5000] [--samples 200] [--interval-ms 25]

Per store, on Redis (one queue per priority, polled high first), one
`notify worker email --concurrency 8`:

- idle: `--samples` high-priority emails, one every `--interval-ms`, each timed
  from just before its `notify.send()` to its arrival at the sink;
- loaded: `--backlog` low-priority emails are recorded while no worker runs
  (`notify.send_many` when it exists, else a `send()` loop), a fresh worker
  starts draining them, and once the first has arrived the same high-priority
  samples are taken. The backlog must outlast them (checked), and every email
  of both phases must arrive exactly once.

The figure is loaded p99 / idle p99 (target <= 1.5x); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

from benchmarks._email import EmailRig, Report, add_arguments, percentiles, ratio, run_per_store
from benchmarks._harness import Child, print_table, wait_for
from benchmarks._stores import Store

NAME = "priority_isolation"


def send_high(rig: EmailRig, worker: Child, prefix: str) -> dict[str, float]:
    """High emails one by one, `--interval-ms` apart; when each was handed to send()."""
    import notify

    started: dict[str, float] = {}
    for i in range(rig.args.samples):
        to = f"{prefix}-{i:05d}@example.com"
        started[to] = time.monotonic()
        notify.send("welcome", to={"email": to}, data={"name": f"H{i}"}, channels=["email"], priority="high")
        time.sleep(rig.args.interval_ms / 1000)
        if i % 50 == 0:
            worker.check_alive()
    return started


def latencies(rig: EmailRig, worker: Child, started: dict[str, float], prefix: str) -> list[float]:
    def all_arrived() -> dict[str, float]:
        worker.check_alive()
        found = rig.sink.arrivals(prefix)
        return found if len(found) >= len(started) else {}

    arrived = wait_for(
        all_arrived, timeout=rig.args.timeout, what=f"{len(started)} high emails", interval=0.2
    )
    return [arrived[to] - t0 for to, t0 in started.items()]


def record_backlog(rig: EmailRig, prefix: str) -> None:
    import notify

    api: Any = notify  # send_many is newer than this file
    n = rig.args.backlog
    recipients = [f"{prefix}-{i:05d}@example.com" for i in range(n)]
    if hasattr(api, "send_many"):
        for start in range(0, n, 1000):
            chunk = recipients[start : start + 1000]
            api.send_many([api.Intent("welcome", to={"email": to}, data={"name": "L"}, channels=["email"],
                                      priority="low") for to in chunk])  # fmt: skip
        return
    for to in recipients:
        notify.send("welcome", to={"email": to}, data={"name": "L"}, channels=["email"], priority="low")


def step(rig: EmailRig, store: Store) -> Iterator[tuple[str, Any]]:
    tag = store.name[0]
    print(f"{store.name}: idle ...", flush=True)
    worker = rig.worker(store)
    rig.warm(worker, f"pw-{tag}")
    idle = latencies(rig, worker, send_high(rig, worker, f"pi-{tag}"), f"pi-{tag}")
    rig.procs.stop(worker)
    print(f"{store.name}: behind {rig.args.backlog} low ...", flush=True)
    rig.sink.reset()
    t0 = time.monotonic()
    record_backlog(rig, f"pl-{tag}")
    recorded_s = time.monotonic() - t0
    worker = rig.worker(store)
    wait_for(lambda: worker.check_alive() or rig.sink.stats()["received"], timeout=90,  # type: ignore[func-returns-value]
             what="the worker's first delivery")  # fmt: skip
    loaded = latencies(rig, worker, send_high(rig, worker, f"ph-{tag}"), f"ph-{tag}")
    low_left = rig.args.backlog - len(rig.sink.arrivals(f"pl-{tag}"))
    expected = rig.args.backlog + rig.args.samples
    rig.sink.wait(expected, timeout=rig.args.timeout, watch=[worker])
    time.sleep(1.0)
    stats = rig.sink.stats()
    rig.procs.stop(worker)
    problems = [] if low_left > 0 else ["the low backlog ran out before the high samples: raise --backlog"]
    if stats["received"] != expected or stats["distinct"] != expected:
        problems.append(f"sink got {stats['received']} ({stats['distinct']} distinct), expected {expected}")
    ours, idle_p = percentiles(loaded), percentiles(idle)
    yield "idle", idle_p
    yield (
        "loaded",
        {**ours, "low_left_at_end": low_left, "backlog_recorded_s": recorded_s, "problems": problems},
    )
    yield "p99_ratio", ratio(ours["p99"], idle_p["p99"])
    yield "p50_ratio", ratio(ours["p50"], idle_p["p50"])


def print_report(sections: dict[str, Any]) -> None:
    rows = []
    for store, found in sections.items():
        if "p99_ratio" not in found:
            continue
        idle, loaded = found["idle"], found["loaded"]
        rows.append([store, idle["p50"], idle["p99"], loaded["p50"], loaded["p99"], found["p50_ratio"],
                     found["p99_ratio"], "<= 1.5x", loaded["low_left_at_end"],
                     "; ".join(loaded["problems"]) or "yes"])  # fmt: skip
    print("High-priority email, send() -> arrival at the sink, ms:")
    headers = ["store", "idle p50", "idle p99", "loaded p50", "loaded p99", "p50 ratio", "p99 ratio",
               "target", "low left", "ok"]  # fmt: skip
    print_table(headers, rows, digits=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.priority_isolation", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(parser)
    parser.add_argument("--backlog", type=int, default=5000, help="low emails draining (default 5000)")
    parser.add_argument("--samples", type=int, default=200, help="high emails per phase (default 200)")
    parser.add_argument("--interval-ms", type=float, default=25.0, help="between high emails (default 25)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(NAME, args)
    run_per_store(report, step)
    print()
    print_report(report.sections)
    correct = all(not found.get("loaded", {}).get("problems", True) for found in report.sections.values())
    return report.finish(correct=correct and len(report.sections) == len(args.stores))


if __name__ == "__main__":
    sys.exit(main())
