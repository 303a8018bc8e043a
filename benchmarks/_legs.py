"""Measured legs (N messages, one contender, a counting server), their summary and the run around them."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from benchmarks._harness import (
    REPO,
    RESULTS,
    BenchmarkError,
    Child,
    Control,
    CpuMeter,
    PgCounters,
    Processes,
    check_service,
    close_notify_producer,
    environment,
    flush_redis,
    median,
    print_table,
    private_redis,
    raise_on_sigterm,
    rate,
    temporary_database,
    write_results,
)

PRIVATE_REDIS_HELP = (
    "start a redis-server of its own (exact Redis command counts and CPU) instead of --redis-url"
)
WARMUP_TIMEOUT = 90.0  # seconds: a worker's start-up plus its first messages
MANY_BATCH = 500  # intents per notify.send_many() call of a notify-many leg

Send = Callable[[int, str], object]  # send(index, recipient): one message
SendChunk = Callable[[int, Sequence[str]], object]  # send_chunk(index of the first, recipients)
SendAll = Callable[[Sequence[str]], object]  # send_all(recipients): the whole leg at once


@dataclass
class Leg:
    """What one leg measured; times are seconds from the first message handed over.

    Every per-message figure is per delivery (one recipient, one channel), not
    per broker message: a notify-many leg may carry many deliveries a message.
    """

    round: int
    leg: str
    count: int
    producer_s: float  # notify.send() / send_many() / task.delay() for all, or the whole raw loop
    e2e_s: float  # until the server had received all `count`
    first_receipt_s: float
    drain_s: float  # first receipt -> last: the delivering side alone once it is busy
    received: int
    distinct: int
    duplicates: int
    missing: int
    unexpected: int
    channel: str = "email"
    store_name: str = "postgresql"  # the store notify ran on (the baselines have none: the leg's pairing)
    store: dict[str, int] | None = None  # notify legs: deliveries per status afterwards
    cpu_s: dict[str, float] | None = None  # CPU seconds per component while measuring
    pg_per_msg: dict[str, float] | None = None  # notify legs: pg_stat_database counters per message
    tx_per_msg: dict[str, float] | None = None  # notify legs: store transactions (and statements) per message
    redis_per_msg: dict[str, float] | None = None  # Redis commands per message, by name, and total
    rss_kb: dict[str, int] | None = None  # VmRSS per component at the end of the timed part
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def e2e_rate(self) -> float | None:
        return rate(self.count, self.e2e_s)

    @property
    def producer_rate(self) -> float | None:
        return rate(self.count, self.producer_s)

    @property
    def drain_rate(self) -> float | None:
        return rate(self.count - 1, self.drain_s)

    @property
    def cpu_ms_per_msg(self) -> dict[str, float] | None:
        if self.cpu_s is None:
            return None
        per = {name: 1000 * spent / self.count for name, spent in self.cpu_s.items()}
        return {**per, "total": sum(per.values())}

    def as_json(self) -> dict[str, Any]:
        extra = {"ok": self.ok, "e2e_per_s": self.e2e_rate, "producer_per_s": self.producer_rate,
                 "drain_per_s": self.drain_rate, "cpu_ms_per_msg": self.cpu_ms_per_msg}  # fmt: skip
        return {**asdict(self), **extra}

    def check(self, *, expect_sent: bool) -> None:
        """Fill `problems`: exactly `count` distinct recipients, no duplicates, the store agrees."""
        if self.received != self.count or self.distinct != self.count:
            self.problems.append(
                f"received {self.received} ({self.distinct} distinct), expected {self.count}"
            )
        if self.duplicates:
            self.problems.append(f"{self.duplicates} duplicates")
        if self.missing or self.unexpected:
            self.problems.append(f"{self.missing} missing, {self.unexpected} unexpected recipients")
        if expect_sent and (self.store or {}).get("sent") != self.count:
            self.problems.append(f"store statuses {self.store}, expected {self.count} sent")


def warm_up(
    server: Control,
    watch: Sequence[Child],
    send: Send,
    recipients: Sequence[str],
    send_all: SendAll | None = None,
) -> None:
    """Untimed messages first: connections, caches, and proof that a worker is up.

    With `send_all` they go the way the leg will send them (a notify-many leg's worker
    warms up on grouped messages).
    """
    server.reset()
    if send_all is not None:
        send_all(recipients)
    for i, recipient in enumerate(recipients if send_all is None else ()):
        send(i, recipient)
    server.wait(len(recipients), timeout=WARMUP_TIMEOUT, watch=watch)
    time.sleep(0.3)
    server.reset()


def in_chunks(send_chunk: SendChunk, size: int, watch: Callable[[], Sequence[Child]]) -> SendAll:
    """A send_all handing `size` recipients at a time to `send_chunk`.

    `watch()` gives the workers running now; one that died fails the leg after the chunk.
    """
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")

    def send_all(recipients: Sequence[str]) -> None:
        for first in range(0, len(recipients), size):
            send_chunk(first, recipients[first : first + size])
            for child in watch():
                child.check_alive()

    return send_all


def measure(
    *,
    round_no: int,
    leg: str,
    channel: str,
    server: Control,
    watch: Sequence[Child],
    send: Send,
    recipients: Sequence[str],
    timeout: float,
    settle: float,
    start_after_enqueue: Callable[[], Sequence[Child]] | None = None,
    meter: CpuMeter | None = None,
    send_all: SendAll | None = None,
) -> Leg:
    """Time `recipients` from the first handed over until the server has them all.

    With `start_after_enqueue` (preload mode) every message is enqueued first and
    only then is the worker started; `drain_s` is then the figure that counts.
    `send_all` replaces the per-message loop (a contender that hands over all at once).
    """
    server.reset()
    count = len(recipients)
    if meter is not None:
        meter.start()
    started = time.monotonic()
    if send_all is not None:
        send_all(recipients)
    for i, recipient in enumerate(recipients if send_all is None else ()):
        send(i, recipient)
        if i % 250 == 0:  # a dead worker fails the leg now, not after the whole loop
            for child in watch:
                child.check_alive()
    handed_over = time.monotonic()
    if start_after_enqueue is not None:
        watch = [*watch, *start_after_enqueue()]
        timeout += WARMUP_TIMEOUT
    done = server.wait(count, timeout=timeout, watch=watch)
    cpu = meter.stop() if meter is not None else None
    time.sleep(settle)  # anything arriving now is a duplicate or a stray
    final, keys = server.stats(), server.keys()
    expected = set(recipients)
    return Leg(
        round=round_no,
        leg=leg,
        channel=channel,
        count=count,
        producer_s=handed_over - started,
        e2e_s=done["last_at"] - started,
        first_receipt_s=done["first_at"] - started,
        drain_s=done["last_at"] - done["first_at"],
        received=final["received"],
        distinct=final["distinct"],
        duplicates=final["duplicates"],
        missing=len(expected - keys),
        unexpected=len(keys - expected),
        cpu_s=cpu,
        rss_kb=dict(meter.rss) if meter is not None and meter.rss else None,
    )


def summarize(legs: Sequence[Leg], contender: str, baseline: str) -> dict[str, Any]:
    """Medians per contender and the contender/baseline ratios, per round and their median."""
    by = {(leg.round, leg.leg): leg for leg in legs}
    paired = sorted({r for r, _ in by if (r, contender) in by and (r, baseline) in by})

    def rates(name: str, attr: str) -> list[float]:
        return [v for leg in legs if leg.leg == name and (v := getattr(leg, attr))]

    def ratios(attr: str) -> list[float]:
        pairs = [(getattr(by[r, contender], attr), getattr(by[r, baseline], attr)) for r in paired]
        return [a / b for a, b in pairs if a and b]

    ours, theirs = median(rates(contender, "e2e_rate")), median(rates(baseline, "e2e_rate"))
    return {
        "contender": contender,
        "baseline": baseline,
        "contender_e2e_per_s_median": ours,
        "baseline_e2e_per_s_median": theirs,
        "contender_producer_per_s_median": median(rates(contender, "producer_rate")),
        "baseline_producer_per_s_median": median(rates(baseline, "producer_rate")),
        "e2e_ratio_per_round": ratios("e2e_rate"),
        "e2e_ratio_median": median(ratios("e2e_rate")),
        "e2e_ratio_of_medians": ours / theirs if ours and theirs else None,
        "contender_drain_per_s_median": median(rates(contender, "drain_rate")),
        "baseline_drain_per_s_median": median(rates(baseline, "drain_rate")),
        "drain_ratio_per_round": ratios("drain_rate"),
        "drain_ratio_median": median(ratios("drain_rate")),
        "producer_ratio_per_round": ratios("producer_rate"),
        "producer_ratio_median": median(ratios("producer_rate")),
        "cpu_ms_per_msg_median": {name: _cpu_medians(legs, name) for name in (contender, baseline)},
        "all_correct": bool(legs) and all(leg.ok for leg in legs),
    }


def summarize_pairs(
    legs: Sequence[Leg], contenders: Sequence[str], baselines: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """`summarize` for every contender against every baseline run, keyed `contender/baseline`."""
    ran = {leg.leg for leg in legs}
    return {
        f"{contender}/{baseline}": summarize(legs, contender, baseline)
        for contender in contenders
        for baseline in baselines
        if contender != baseline and contender in ran and baseline in ran
    }


def _cpu_medians(legs: Sequence[Leg], name: str) -> dict[str, float | None]:
    measured = [leg.cpu_ms_per_msg for leg in legs if leg.leg == name and leg.cpu_ms_per_msg]
    components = list(measured[0]) if measured else []
    return {c: median([m[c] for m in measured]) for c in components}


def print_legs(legs: Sequence[Leg], *, producer_header: str = "producer s") -> None:
    headers = ["channel", "store", "round", "leg", producer_header, "producer/s", "e2e s", "e2e msg/s",
               "1st rcpt s", "drain msg/s", "received", "dup", "missing", "ok"]  # fmt: skip
    rows = [
        [
            leg.channel,
            leg.store_name,
            leg.round,
            leg.leg,
            leg.producer_s,
            leg.producer_rate,
            leg.e2e_s,
            leg.e2e_rate,
            leg.first_receipt_s,
            leg.drain_rate,
            leg.received,
            leg.duplicates,
            leg.missing,
            "yes" if leg.ok else "NO: " + "; ".join(leg.problems),
        ]
        for leg in legs
    ]
    print_table(headers, rows)


def print_ratios(summary: dict[str, Any], label: str) -> None:
    per_round = ", ".join(f"{r:.2f}" for r in summary["e2e_ratio_per_round"]) or "-"
    ours, theirs = summary["contender_e2e_per_s_median"] or 0, summary["baseline_e2e_per_s_median"] or 0
    print(
        f"{label} end to end: median {times(summary['e2e_ratio_median'])} (per round {per_round}; "
        f"{ours:,.0f} vs {theirs:,.0f} msg/s, ratio of medians {times(summary['e2e_ratio_of_medians'])})"
    )


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_cpu_ratio(summary: dict[str, Any], label: str) -> None:
    ours = summary["cpu_ms_per_msg_median"][summary["contender"]].get("total")
    theirs = summary["cpu_ms_per_msg_median"][summary["baseline"]].get("total")
    if ours and theirs:
        print(
            f"{label} CPU per delivery, all components: {ours:.2f} vs {theirs:.2f} ms ({ours / theirs:.2f}x)"
        )


def print_cpu(legs: Sequence[Leg]) -> None:
    """CPU milliseconds per message, per component: the cost, whatever the neighbours do."""
    measured = [leg for leg in legs if leg.cpu_ms_per_msg]
    if not measured:
        return
    names = list(measured[0].cpu_ms_per_msg or {})
    rows = [[leg.channel, leg.store_name, leg.round, leg.leg,
             *[(leg.cpu_ms_per_msg or {}).get(n) for n in names]] for leg in measured]  # fmt: skip
    print("CPU ms per delivery (from /proc; redis counts whoever else uses it, unless --private-redis):")
    print_table(["channel", "store", "round", "leg", *names], rows, digits=2)


def print_rss(legs: Sequence[Leg]) -> None:
    """Resident set per component at the end of each leg's timed part, in MB."""
    measured = [leg for leg in legs if leg.rss_kb]
    if not measured:
        return
    names = list(dict.fromkeys(n for leg in measured for n in leg.rss_kb or {}))
    rows = [[leg.channel, leg.store_name, leg.round, leg.leg,
             *[kb / 1024 if (kb := (leg.rss_kb or {}).get(n)) else None for n in names]]
            for leg in measured]  # fmt: skip
    print("RSS MB at the end of each leg (VmRSS from /proc, summed over a component's processes):")
    print_table(["channel", "store", "round", "leg", *names], rows, digits=1)


def print_pg(legs: Sequence[Leg]) -> None:
    measured = [leg for leg in legs if leg.pg_per_msg]
    if not measured:
        return
    names = list(PgCounters.COLUMNS)
    print("PostgreSQL per delivery (pg_stat_database; sessions = connections opened):")
    rows = [
        [leg.channel, leg.round, leg.leg, *[(leg.pg_per_msg or {}).get(n) for n in names]] for leg in measured
    ]
    print_table(["channel", "round", "leg", *names], rows, digits=2)


def print_round_trips(legs: Sequence[Leg]) -> None:
    """Store transactions and Redis commands per message, where they were counted."""
    from benchmarks._stores import top_commands

    measured = [leg for leg in legs if leg.tx_per_msg or leg.redis_per_msg]
    if not measured:
        return
    print("Round trips per delivery (store: pg_stat_database or traced SQLite; redis: INFO commandstats):")
    rows = [[leg.channel, leg.store_name, leg.round, leg.leg, (leg.tx_per_msg or {}).get("transactions"),
             (leg.tx_per_msg or {}).get("statements"), (leg.redis_per_msg or {}).get("total"),
             top_commands(leg.redis_per_msg)] for leg in measured]  # fmt: skip
    headers = [
        "channel",
        "store",
        "round",
        "leg",
        "store tx",
        "sqlite stmts",
        "redis cmds",
        "top redis commands",
    ]
    print_table(headers, rows, digits=2)


def print_drain_ratio(summary: dict[str, Any], label: str) -> None:
    per_round = ", ".join(f"{r:.2f}" for r in summary["drain_ratio_per_round"]) or "-"
    ours, theirs = summary["contender_drain_per_s_median"] or 0, summary["baseline_drain_per_s_median"] or 0
    print(f"{label} drain (first -> last receipt): median {times(summary['drain_ratio_median'])} "
          f"(per round {per_round}; {ours:,.0f} vs {theirs:,.0f} msg/s)")  # fmt: skip


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    default_count: int,
    help_for: Mapping[str, str],
    default_concurrency: int = 8,
) -> None:
    """The options every benchmark takes; `help_for` words those whose meaning differs.

    `help_for` holds the help of --count, --rounds, --concurrency, --redis-url and --profile.
    """
    parser.add_argument("--count", type=int, default=default_count, help=help_for["--count"])
    parser.add_argument("--rounds", type=int, default=2, help=help_for["--rounds"])
    parser.add_argument(
        "--concurrency", "-c", type=int, default=default_concurrency, help=help_for["--concurrency"]
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed messages first (default: -c)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help=help_for["--redis-url"])
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="admin connection: a fresh database is created, then dropped")  # fmt: skip
    parser.add_argument("--private-redis", action="store_true", help=PRIVATE_REDIS_HELP)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one leg may take at most")
    parser.add_argument("--profile", action="store_true", help=help_for["--profile"])
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to watch for late duplicates")


def add_contender_arguments(parser: argparse.ArgumentParser, contenders: Sequence[str]) -> None:
    """--contenders (which legs a round runs, default all) and --many-batch."""
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=contenders,
        default=list(contenders),
        metavar="LEG",
        help=f"the legs of a round, run in this order whatever order they are given: "
        f"{', '.join(contenders)} (default: all)",
    )
    parser.add_argument("--many-batch", type=_positive, default=MANY_BATCH,
                        help="intents per notify.send_many() call of the notify-many leg "
                             "(default %(default)s)")  # fmt: skip
    parser.set_defaults(contender_order=list(contenders))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; --warmup defaults to the concurrency; --contenders put in their run order."""
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.concurrency
    order = vars(args).pop("contender_order", None)
    if order is not None:
        args.contenders = [c for c in order if c in args.contenders]
    return args


class Benchmark(Protocol):
    def legs(self) -> Iterator[Leg]:
        """Run every leg in order, announcing each as it starts."""
        ...


@dataclass
class Run:
    """What one benchmark run measured, and why it stopped short if it did."""

    name: str
    args: argparse.Namespace
    legs: list[Leg] = field(default_factory=list)
    error: str | None = None
    environment: dict[str, Any] = field(default_factory=environment)
    started: float = field(default_factory=time.monotonic)

    def finish(self, results_name: str, summary: Any, *, correct: bool) -> int:
        """Print the CPU and PostgreSQL tables, write the results file; the exit status."""
        print()
        print_cpu(self.legs)
        print()
        print_rss(self.legs)
        print()
        print_pg(self.legs)
        print()
        print_round_trips(self.legs)
        path = write_results(results_name, {
            "benchmark": self.name,
            "params": {k: v for k, v in vars(self.args).items() if k != "postgres_url"},
            "environment": self.environment,
            "loadavg_at_end": os.getloadavg(),
            "wall_s": time.monotonic() - self.started,
            "legs": [leg.as_json() for leg in self.legs],
            "summary": summary,
            "error": self.error,
        })  # fmt: skip
        print(f"results: {path.relative_to(REPO)}")
        if self.error == "interrupted":
            return 130
        return 0 if self.error is None and correct else 1


def run(
    name: str,
    args: argparse.Namespace,
    make_bench: Callable[[argparse.Namespace, Processes, str], Benchmark],
) -> Run:
    """Run a benchmark's legs on a temporary database; every child and the Redis db cleaned up after."""
    raise_on_sigterm()
    for service, url in (("Redis", args.redis_url), ("PostgreSQL", args.postgres_url)):
        parts = urlsplit(url)
        check_service(service, parts.hostname or "127.0.0.1", parts.port or 0)
    result = Run(name, args)
    try:
        with (
            temporary_database(args.postgres_url) as database_url,
            Processes(RESULTS / "logs" / name) as procs,
        ):
            if args.private_redis:
                args.redis_url = private_redis(procs)
            bench = make_bench(args, procs, database_url)
            try:
                for leg in bench.legs():
                    result.legs.append(leg)
            finally:
                close_notify_producer()
                flush_redis(args.redis_url)
    except BenchmarkError as exc:
        result.error = str(exc)
        print(f"benchmark failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        result.error = "interrupted"
        print("interrupted: child processes stopped, benchmark database dropped", file=sys.stderr)
    return result
