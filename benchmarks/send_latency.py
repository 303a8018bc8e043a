"""`notify.send()` and `notify.send_many()` against a bare `apply_async` of the same arguments.

    python -m benchmarks.send_latency [--samples 600] [--backlog 2500] [--batch 1000] [--rounds 3]

Per store (SQLite in a temporary NOTIFY_HOME, then PostgreSQL), in this process:

- unloaded: `--samples` pairs, each one `notify.send("welcome", ...)` and one
  bare publish of `notify.deliver` with a fresh id to `notify.email.normal`
  through the producer app notify itself uses, timed one by one, their order
  swapped every pair; no worker runs.
- loaded: the same while `notify worker email` drains a `--backlog` of emails
  recorded before it started (the bare publishes carry unknown ids, which the
  worker refuses at its claim; every notify email must reach the sink once).
- send_many: `--rounds` of a bare publish loop, `notify.send_many()` of
  `--batch` intents and a `notify.send()` loop, per-message time of each.

See benchmarks/README.md for the columns and the targets.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._email import EmailRig, Report, add_arguments, percentiles, ratio, run_per_store
from benchmarks._harness import BenchmarkError, flush_redis, print_table, wait_for
from benchmarks._stores import Store

NAME = "send_latency"
QUEUE = "notify.email.normal"  # where notify.send() puts a normal-priority email on Redis
NO_SEND_MANY = "notify.send_many is not in this checkout: the send_many leg is skipped"


def notify_send(prefix: str) -> Callable[[int], object]:
    import notify

    def send(i: int) -> object:
        return notify.send("welcome", to={"email": f"{prefix}-{i:06d}@example.com"}, data={"name": f"U{i}"},
                           channels=["email"])  # fmt: skip

    return send


def bare_publish() -> Callable[[int], object]:
    """`apply_async` of notify's own task, by name, on notify's own producer app: what send() wraps."""
    from notify.api import default_notifier

    producer = default_notifier().producer
    return lambda i: producer.send_task(
        "notify.deliver", args=[str(uuid.uuid4())], queue=QUEUE, routing_key=QUEUE, ignore_result=True
    )


def timed_pairs(n: int, first: Callable[[int], object], second: Callable[[int], object]) -> list[list[float]]:
    """`n` calls of each, alternating which goes first; the durations of each, in seconds."""
    durations: list[list[float]] = [[], []]
    calls = (first, second)
    for i in range(n):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            calls[k](i)
            durations[k].append(time.perf_counter() - t0)
    return durations


def latency_section(notify_s: list[float], bare_s: list[float]) -> dict[str, Any]:
    ours, theirs = percentiles(notify_s), percentiles(bare_s)
    return {"notify.send": ours, "apply_async": theirs, "p50_ratio": ratio(ours["p50"], theirs["p50"])}


def unloaded(rig: EmailRig, store: Store) -> dict[str, Any]:
    warm = rig.args.samples // 10 + 10
    timed_pairs(warm, notify_send(f"lw-{store.name}"), bare_publish())  # connections, caches
    notify_s, bare_s = timed_pairs(rig.args.samples, notify_send(f"lu-{store.name}"), bare_publish())
    flush_redis(rig.args.redis_url)
    return latency_section(notify_s, bare_s)


def loaded(rig: EmailRig, store: Store) -> dict[str, Any]:
    """Sampled while a worker drains a backlog recorded before it started; every email checked."""
    prefix, backlog = f"bl-{store.name}", rig.args.backlog
    record = notify_send(prefix)
    for i in range(backlog):
        record(i)
    rig.sink.reset()
    worker = rig.worker(store)
    wait_for(lambda: worker.check_alive() or rig.sink.stats()["received"], timeout=90,  # type: ignore[func-returns-value]
             what="the worker's first delivery")  # fmt: skip
    notify_s, bare_s = timed_pairs(rig.args.samples, notify_send(f"ll-{store.name}"), bare_publish())
    left = backlog - rig.sink.stats()["received"]
    expected = backlog + rig.args.samples
    rig.sink.wait(expected, timeout=rig.args.timeout, watch=[worker])
    time.sleep(1.0)
    stats = rig.sink.stats()
    rig.procs.stop(worker)
    section = latency_section(notify_s, bare_s)
    problems = [] if left > 0 else ["the backlog ran out before the samples did: raise --backlog"]
    if stats["received"] != expected or stats["distinct"] != expected:
        problems.append(f"sink got {stats['received']} ({stats['distinct']} distinct), expected {expected}")
    return {**section, "backlog_left_at_end": left, "problems": problems}


def send_many_section(rig: EmailRig, store: Store) -> dict[str, Any]:
    import notify

    if not hasattr(notify, "send_many"):
        print(NO_SEND_MANY, flush=True)
        return {"skipped": NO_SEND_MANY}
    per: dict[str, list[float]] = {"apply_async loop": [], "send_many": [], "send loop": []}
    for r in range(rig.args.rounds + 1):  # round 0 warms up and is not kept
        for name, leg in batch_legs(store, r, rig.args.batch).items():
            t0 = time.perf_counter()
            leg()
            if r:
                per[name].append((time.perf_counter() - t0) / rig.args.batch)
        flush_redis(rig.args.redis_url)
    medians = {k: 1000 * sorted(v)[len(v) // 2] for k, v in per.items()}
    rounds = {k: [1000 * x for x in v] for k, v in per.items()}
    # Paired per round (legs run back to back), like the throughput ratios: drift cancels.
    paired = sorted(a / b for a, b in zip(per["send_many"], per["apply_async loop"], strict=True))
    return {"per_message_ms_median": medians, "per_message_ms_rounds": rounds,
            "ratio_per_round": paired, "ratio_send_many_to_loop": paired[len(paired) // 2]}  # fmt: skip


def batch_legs(store: Store, r: int, n: int) -> dict[str, Callable[[], object]]:
    """A bare publish loop, one send_many of `n` intents, a send() loop: fresh recipients each round."""
    import notify

    bare, send = bare_publish(), notify_send(f"sl-{store.name}-{r}")
    api: Any = notify  # send_many and Intent are newer than this file: typed loosely until they land
    intents = [api.Intent("welcome", to={"email": f"sm-{store.name}-{r}-{i:06d}@example.com"},
                      data={"name": f"U{i}"}, channels=["email"]) for i in range(n)]  # fmt: skip
    return {
        "apply_async loop": lambda: [bare(i) for i in range(n)],
        "send_many": lambda: api.send_many(intents),
        "send loop": lambda: [send(i) for i in range(n)],
    }


def step(rig: EmailRig, store: Store) -> Iterator[tuple[str, Any]]:
    # Loaded first, on a store nothing else is queued in: the worker delivers exactly what it counts.
    print(f"{store.name}: under a draining worker ...", flush=True)
    yield "loaded", loaded(rig, store)
    print(f"{store.name}: unloaded ...", flush=True)
    yield "unloaded", unloaded(rig, store)
    print(f"{store.name}: send_many ...", flush=True)
    yield "send_many", send_many_section(rig, store)


TARGET = {"sqlite": 1.5, "postgresql": 2.5}


def print_report(sections: dict[str, Any]) -> None:
    rows = []
    for store, found in sections.items():
        for phase in ("unloaded", "loaded"):
            if phase not in found:
                continue
            ours, theirs = found[phase]["notify.send"], found[phase]["apply_async"]
            rows.append([store, phase, ours["p50"], ours["p90"], ours["p99"], theirs["p50"], theirs["p90"],
                         theirs["p99"], found[phase]["p50_ratio"], f"<= {TARGET[store]}x"])  # fmt: skip
    print("send() latency, ms (notify.send vs a bare apply_async of notify.deliver, same producer app):")
    print_table(["store", "phase", "send p50", "p90", "p99", "bare p50", "p90", "p99", "p50 ratio", "target"],
                rows, digits=3)  # fmt: skip
    for store, found in sections.items():
        if "loaded" in found and "unloaded" in found:
            under = ratio(found["loaded"]["notify.send"]["p50"], found["unloaded"]["notify.send"]["p50"])
            problems = "; ".join(found["loaded"]["problems"]) or "every email arrived once"
            left = found["loaded"]["backlog_left_at_end"]
            print(f"{store}: send() p50 under a draining worker / unloaded: {under or 0:.2f}x "
                  f"(target <= 1.5x); backlog left at the end {left}; {problems}")  # fmt: skip
    print()
    print_send_many(sections)


def print_send_many(sections: dict[str, Any]) -> None:
    rows = []
    for store, found in sections.items():
        many = found.get("send_many", {})
        if "skipped" in many:
            print(f"{store}: {many['skipped']}")
            continue
        if many:
            m = many["per_message_ms_median"]
            rows.append([store, m["apply_async loop"], m["send_many"], m["send loop"],
                         many["ratio_send_many_to_loop"], "<= 0.5x"])  # fmt: skip
    if rows:
        print("Per message, ms (median of rounds) of send_many(intents) and a bare apply_async loop;")
        print("ratio: the median over rounds of send_many / the same round's loop")
        print_table(
            ["store", "apply_async loop", "send_many", "send loop", "ratio", "target"], rows, digits=3
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.send_latency", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(parser)
    parser.add_argument("--samples", type=int, default=600, help="timed pairs per phase (default 600)")
    parser.add_argument(
        "--backlog",
        type=int,
        default=2500,
        help="emails a worker drains while the loaded phase samples (default 2500)",
    )
    parser.add_argument("--batch", type=int, default=1000, help="intents per send_many call (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="send_many rounds (default 3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(NAME, args)
    run_per_store(report, step)
    print()
    print_report(report.sections)
    correct = not any(found.get("loaded", {}).get("problems") for found in report.sections.values())
    if report.error is None and len(report.sections) < len(args.stores):
        raise BenchmarkError("a store was not measured")
    return report.finish(correct=correct)


if __name__ == "__main__":
    sys.exit(main())
