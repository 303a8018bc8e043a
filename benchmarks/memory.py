"""Memory: one email worker's RSS over 100,000 deliveries, and its growth from 10,000 to the end.

    python -m benchmarks.memory [--count 100000] [--store sqlite] [--backend smtp|outbox]

One `notify worker email --concurrency 8` delivers `--count` emails to the
counting SMTP sink (default; the real SMTP path, and exact counts) or to the
outbox backend (`--backend outbox`: files under a temporary NOTIFY_HOME,
counted as `sent` in the store). This process records them as it goes
(`notify.send_many` in chunks when it exists, else `notify.send()`), never
more than `--ahead` in front of the worker, so the broker holds a bounded
backlog and the worker never idles. Every `--every` deliveries it samples the
worker's VmRSS from /proc; the figure is RSS at the end over RSS at
`--baseline` deliveries (target: under 10% growth).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._email import EmailRig, Report, add_arguments, run_per_store
from benchmarks._harness import BenchmarkError, Child, cpu_seconds, print_table, rss_kb
from benchmarks._stores import Store

NAME = "memory"
CHUNK = 500  # emails recorded per producer step


def delivered_counter(rig: EmailRig, store: Store) -> Callable[[], int]:
    if rig.args.backend == "smtp":
        return lambda: int(rig.sink.stats()["received"])
    return lambda: store.statuses("m-%").get("sent", 0)


def record(first: int, n: int) -> None:
    """Emails `first` .. `first + n - 1`, in one send_many when the API has it."""
    import notify

    api: Any = notify  # send_many is newer than this file
    recipients = [(f"m-{i:07d}@example.com", {"name": f"U{i}"}) for i in range(first, first + n)]
    if hasattr(api, "send_many"):
        api.send_many([api.Intent("welcome", to={"email": to}, data=data, channels=["email"])
                       for to, data in recipients])  # fmt: skip
        return
    for to, data in recipients:
        notify.send("welcome", to={"email": to}, data=data, channels=["email"])


class Sampler:
    """RSS and CPU of the worker every `every` deliveries."""

    def __init__(self, worker: Child, every: int) -> None:
        self.pid = worker.process.pid
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def maybe(self, delivered: int, *, force: bool = False) -> None:
        due = not self.samples or delivered >= self.samples[-1]["delivered"] + self.every
        if due or force:
            self.samples.append({"delivered": delivered, "rss_kb": rss_kb(self.pid),
                                 "hwm_kb": rss_kb(self.pid, "VmHWM"), "cpu_s": cpu_seconds(self.pid),
                                 "elapsed_s": time.monotonic() - self.started})  # fmt: skip
            print(f"  {delivered:>7,} delivered  rss {self.samples[-1]['rss_kb'] or 0:>8,} kB", flush=True)

    def at(self, delivered: int) -> dict[str, Any] | None:
        """The first sample taken at or after `delivered` deliveries."""
        return next((s for s in self.samples if s["delivered"] >= delivered), None)


def drive(rig: EmailRig, worker: Child, delivered: Callable[[], int], sampler: Sampler) -> None:
    """Record ahead of the worker until all `--count` are in, then wait for it to deliver them."""
    count, recorded = rig.args.count, 0
    deadline = time.monotonic() + rig.args.timeout
    while (done := delivered()) < count:
        worker.check_alive()
        sampler.maybe(done)
        if recorded < count and recorded - done < rig.args.ahead:
            n = min(CHUNK, count - recorded)
            record(recorded, n)
            recorded += n
            continue
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {rig.args.timeout:.0f}s: {done} of {count} delivered")
        time.sleep(0.5)
    sampler.maybe(delivered(), force=True)


def step(rig: EmailRig, store: Store) -> Iterator[tuple[str, Any]]:
    worker = rig.worker(store)
    if rig.args.backend == "smtp":  # the outbox has no sink to wait on: start-up comes before --baseline
        rig.warm(worker, "mw")
    sampler = Sampler(worker, rig.args.every)
    counter = delivered_counter(rig, store)
    drive(rig, worker, counter, sampler)
    time.sleep(rig.args.settle)
    problems = check(rig, store)
    rig.procs.stop(worker)
    base, end = sampler.at(rig.args.baseline), sampler.samples[-1]
    growth = end["rss_kb"] / base["rss_kb"] - 1 if base and base["rss_kb"] and end["rss_kb"] else None
    elapsed = end["elapsed_s"] - (base["elapsed_s"] if base else 0)
    yield "samples", sampler.samples
    yield "summary", {"rss_kb_at_baseline": base and base["rss_kb"], "rss_kb_at_end": end["rss_kb"],
                      "growth": growth, "delivered": end["delivered"], "problems": problems,
                      "rate_after_baseline": (end["delivered"] - (base or end)["delivered"]) / elapsed
                      if elapsed else None}  # fmt: skip


def check(rig: EmailRig, store: Store) -> list[str]:
    n = rig.args.count
    statuses = store.statuses("m-%")
    problems = [] if statuses.get("sent") == n else [f"store statuses {statuses}, expected {n} sent"]
    if rig.args.backend == "smtp":
        stats = rig.sink.stats()
        if stats["received"] != n or stats["distinct"] != n:
            problems.append(f"sink got {stats['received']} ({stats['distinct']} distinct), expected {n}")
    return problems


def print_report(sections: dict[str, Any], args: argparse.Namespace) -> None:
    for store, found in sections.items():
        samples = found.get("samples", [])
        rows = [[s["delivered"], s["rss_kb"], s["hwm_kb"], s["cpu_s"], s["elapsed_s"]] for s in samples]
        print(f"{store}, {args.backend}: worker RSS every {args.every:,} deliveries")
        print_table(["delivered", "VmRSS kB", "VmHWM kB", "worker CPU s", "elapsed s"], rows)
        summary = found.get("summary")
        if summary and summary["growth"] is not None:
            ok = "; ".join(summary["problems"]) or "every email delivered once, all sent in the store"
            print(f"{store}: RSS {summary['rss_kb_at_baseline']:,} kB at {args.baseline:,} -> "
                  f"{summary['rss_kb_at_end']:,} kB at {summary['delivered']:,}: growth "
                  f"{100 * summary['growth']:.1f}% (target < 10%); "
                  f"{summary['rate_after_baseline'] or 0:.0f} msg/s; {ok}")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(parser)
    parser.set_defaults(stores=["sqlite"], timeout=3600.0)
    parser.add_argument("--count", type=int, default=100_000, help="deliveries (default 100,000)")
    parser.add_argument("--baseline", type=int, default=10_000, help="growth is measured from here")
    parser.add_argument("--every", type=int, default=5_000, help="deliveries between samples")
    parser.add_argument("--ahead", type=int, default=2_000, help="most emails recorded but not delivered")
    parser.add_argument("--backend", choices=["smtp", "outbox"], default="smtp",
                        help="deliver to the SMTP sink (default) or the outbox backend")  # fmt: skip
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to watch for late duplicates")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(NAME, args)

    def step_with_backend(rig: EmailRig, store: Store) -> Iterator[tuple[str, Any]]:
        if args.backend == "outbox":
            rig.environ["NOTIFY_EMAIL_BACKEND"] = "outbox"
            rig.use(store)
        return step(rig, store)

    run_per_store(report, step_with_backend)
    print()
    print_report(report.sections, args)
    correct = all(not found.get("summary", {}).get("problems", True) for found in report.sections.values())
    return report.finish(correct=correct and len(report.sections) == len(args.stores))


if __name__ == "__main__":
    sys.exit(main())
