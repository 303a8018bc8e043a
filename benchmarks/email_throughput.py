"""Email end to end: `notify worker email` against a hand-rolled Celery task, side by side.

    python -m benchmarks.email_throughput [--count 2000] [--rounds 2] [--concurrency 16]

Each leg sends `--count` welcome emails through a real worker subprocess to a
counting SMTP sink (its own process) and times first enqueue -> the sink
holding them all. Legs alternate (notify, hand-rolled, notify, ...) on the same
Redis database (flushed before each leg), the same sink and the same thread
concurrency; see benchmarks/README.md for how to read the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
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
    backend_pids,
    check_service,
    clean_environ,
    delivery_statuses,
    environment,
    flush_redis,
    free_port,
    raise_on_sigterm,
    redis_pid,
    temporary_database,
    write_results,
)
from benchmarks._legs import (
    Leg,
    measure,
    print_cpu,
    print_cpu_ratio,
    print_drain_ratio,
    print_legs,
    print_pg,
    print_ratios,
    summarize,
    times,
    warm_up,
)

NAME = "email_throughput"
NOTIFY, BASELINE = "notify", "hand-rolled"
EMAIL_FROM = "Bench <bench@example.com>"


class EmailBenchmark:
    def __init__(self, args: argparse.Namespace, procs: Processes, database_url: str) -> None:
        self.args = args
        self.procs = procs
        self.database_url = database_url
        argv = [sys.executable, "-m", "benchmarks.smtp_sink", "--port", str(free_port())]
        sink = procs.start_server("smtp-sink", argv, clean_environ())
        self.sink = Control(sink["control_url"], sink["child"])
        self.redis_pid = redis_pid(args.redis_url)
        self.environ = _environ(args.redis_url, database_url, sink["smtp_port"], procs.log_dir)
        os.environ.update(self.environ)  # notify.send() and the hand-rolled producer read these

    def run(self, round_no: int, leg: str) -> Leg:
        flush_redis(self.args.redis_url)  # before a worker starts: it declares the queues
        env = {**clean_environ(), **self.environ, "PYTHONUNBUFFERED": "1"}
        argv = _worker_argv(leg, self.args.concurrency)
        if self.args.profile:
            out = self.procs.log_dir / f"profile-{leg}-round{round_no}.prof"
            argv = [sys.executable, "-m", "benchmarks.profiled", "--out", str(out), *argv[1:]]
        workers: list[Child] = []

        def start_worker() -> list[Child]:
            workers.append(self.procs.start(f"worker-{leg}-round{round_no}-{len(workers)}", argv, env))
            return workers[-1:]

        tag = f"{'n' if leg == NOTIFY else 'h'}{round_no}"
        send = _sender(leg)
        pg = PgCounters(self.database_url)
        try:
            watch = start_worker()
            warm_up(
                self.sink, watch, send, [f"warmup-{tag}-{i}@example.com" for i in range(self.args.warmup)]
            )
            if self.args.preload:  # the queues stay declared; the backlog waits for a fresh worker
                self.procs.stop(watch[0])
                watch = []
            close_notify_producer()  # its PostgreSQL sessions publish their counters as they end
            pg.start()
            result = measure(
                round_no=round_no,
                leg=leg,
                channel="email",
                server=self.sink,
                watch=watch,
                send=send,
                recipients=[f"{tag}-{i:05d}@example.com" for i in range(self.args.count)],
                timeout=self.args.timeout,
                settle=self.args.settle,
                start_after_enqueue=start_worker if self.args.preload else None,
                meter=None if self.args.preload else self._meter(workers),
            )
        finally:
            for worker in workers:
                self.procs.stop(worker)
        if leg == NOTIFY:
            result.store = delivery_statuses(self.database_url, f"{tag}-%")
            close_notify_producer()
            result.pg_per_msg = pg.per_message(result.count)
        result.check(expect_sent=leg == NOTIFY)
        return result

    def _meter(self, workers: list[Child]) -> CpuMeter:
        return CpuMeter({
            "producer": lambda: [os.getpid()],
            "worker": lambda: [w.process.pid for w in workers if w.alive],
            "smtp sink": lambda: [self.sink.child.process.pid],
            "postgres": lambda: backend_pids(self.database_url),
            "redis": lambda: [self.redis_pid] if self.redis_pid else [],
        })  # fmt: skip


def _environ(redis_url: str, database_url: str, smtp_port: int, log_dir: object) -> dict[str, str]:
    return {
        "NOTIFY_HOME": f"{log_dir}/notify-home",
        "NOTIFY_BROKER_URL": redis_url,
        "NOTIFY_DATABASE_URL": database_url,
        "NOTIFY_TEMPLATES_DIR": str(REPO / "templates"),
        "NOTIFY_EMAIL_FROM": EMAIL_FROM,
        "NOTIFY_SMTP_HOST": "127.0.0.1",
        "NOTIFY_SMTP_PORT": str(smtp_port),
        "NOTIFY_SMTP_TLS": "none",
        "NOTIFY_SMS_BACKEND": "outbox",
        "NOTIFY_PUSH_BACKEND": "outbox",
        "BENCH_BROKER_URL": redis_url,
        "BENCH_TEMPLATES_DIR": str(REPO / "templates"),
        "BENCH_SMTP_HOST": "127.0.0.1",
        "BENCH_SMTP_PORT": str(smtp_port),
        "BENCH_EMAIL_FROM": EMAIL_FROM,
    }


def _worker_argv(leg: str, concurrency: int) -> list[str]:
    if leg == NOTIFY:
        return [
            sys.executable,
            "-m",
            "workers.cli",
            "worker",
            "email",
            "-c",
            str(concurrency),
            "-l",
            "warning",
        ]
    return [sys.executable, "-m", "celery", "-A", "benchmarks.handrolled_app", "worker",
            "-P", "threads", "-c", str(concurrency), "-Q", "handrolled", "-n", "handrolled@%h",
            "-l", "warning", "--without-gossip", "--without-mingle"]  # fmt: skip


def _sender(leg: str) -> Callable[[int, str], object]:
    if leg == NOTIFY:
        import notify

        def send(i: int, to: str) -> object:
            return notify.send("welcome", to={"email": to}, data={"name": f"User {i}"}, channels=["email"])

        return send
    from benchmarks.handrolled_app import send_welcome_email

    return lambda i, to: send_welcome_email.delay(to, f"User {i}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.email_throughput", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--count", type=int, default=2000, help="emails per leg (default 2000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of notify + hand-rolled (default 2)")
    parser.add_argument("--concurrency", "-c", type=int, default=16, help="worker threads, both (default 16)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed messages first (default: -c)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="broker; this database is FLUSHED before each leg (default: db 14)")  # fmt: skip
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="admin connection: a fresh database is created, then dropped")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one leg may take at most")
    parser.add_argument("--preload", action="store_true",
                        help="enqueue all before the worker starts: compare the workers alone")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="run workers under cProfile (slower); profiles go to results/logs/")  # fmt: skip
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to watch for late duplicates")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.concurrency
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    for name, url in (("Redis", args.redis_url), ("PostgreSQL", args.postgres_url)):
        parts = urlsplit(url)
        check_service(name, parts.hostname or "127.0.0.1", parts.port or 0)
    env_at_start = environment()
    legs: list[Leg] = []
    error: str | None = None
    started = time.monotonic()
    try:
        with (
            temporary_database(args.postgres_url) as database_url,
            Processes(RESULTS / "logs" / NAME) as procs,
        ):
            bench = EmailBenchmark(args, procs, database_url)
            try:
                for round_no in range(1, args.rounds + 1):
                    for leg in (NOTIFY, BASELINE):
                        print(f"round {round_no}: {leg} ...", flush=True)
                        legs.append(bench.run(round_no, leg))
            finally:
                close_notify_producer()
                flush_redis(args.redis_url)
    except BenchmarkError as exc:
        error = str(exc)
        print(f"benchmark failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        error = "interrupted"
        print("interrupted: child processes stopped, benchmark database dropped", file=sys.stderr)
    summary = summarize(legs, NOTIFY, BASELINE)
    print()
    print_legs(legs, producer_header="enqueue s")
    print()
    if args.preload:
        print_drain_ratio(summary, "notify/hand-rolled workers alone,")
        print_ratios(summary, "(includes the worker's start-up) notify/hand-rolled")
    else:
        print_ratios(summary, "notify/hand-rolled")
    producer = times(summary["producer_ratio_median"])
    print(f"notify/hand-rolled producer (notify.send vs task.delay): median {producer}")
    print_cpu_ratio(summary, "notify/hand-rolled")
    print()
    print_cpu(legs)
    print()
    print_pg(legs)
    path = write_results(NAME + ("_preload" if args.preload else "") + ("_profile" if args.profile else ""), {
        "benchmark": NAME,
        "params": {k: v for k, v in vars(args).items() if k != "postgres_url"},
        "environment": env_at_start,
        "loadavg_at_end": os.getloadavg(),
        "wall_s": time.monotonic() - started,
        "legs": [leg.as_json() for leg in legs],
        "summary": summary,
        "error": error,
    })  # fmt: skip
    print(f"results: {path.relative_to(REPO)}")
    if error == "interrupted":
        return 130
    return 0 if error is None and summary["all_correct"] else 1


def close_notify_producer() -> None:
    """Let go of the producer's database connections before the database is dropped."""
    if "notify.api" in sys.modules:
        from notify.api import default_notifier

        default_notifier().close()


if __name__ == "__main__":
    sys.exit(main())
