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
from collections.abc import Callable, Iterator

from benchmarks._harness import (
    REPO,
    Child,
    Control,
    CpuMeter,
    PgCounters,
    Processes,
    backend_pids,
    clean_environ,
    close_notify_producer,
    delivery_statuses,
    flush_redis,
    redis_pid,
)
from benchmarks._legs import (
    Leg,
    add_common_arguments,
    measure,
    parse_arguments,
    print_cpu_ratio,
    print_drain_ratio,
    print_legs,
    print_ratios,
    run,
    summarize,
    times,
    warm_up,
)
from workers.mailcatcher import free_port

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

    def legs(self) -> Iterator[Leg]:
        for round_no in range(1, self.args.rounds + 1):
            for leg in (NOTIFY, BASELINE):
                print(f"round {round_no}: {leg} ...", flush=True)
                yield self.run(round_no, leg)

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
    add_common_arguments(
        parser,
        default_count=2000,
        help_for={
            "--count": "emails per leg (default %(default)s)",
            "--rounds": "rounds of notify + hand-rolled (default %(default)s)",
            "--concurrency": "worker threads, both (default %(default)s)",
            "--redis-url": "broker; this database is FLUSHED before each leg (default: db 14)",
            "--profile": "run workers under cProfile (slower); profiles go to results/logs/",
        },
    )
    parser.add_argument("--preload", action="store_true",
                        help="enqueue all before the worker starts: compare the workers alone")  # fmt: skip
    return parse_arguments(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(NAME, args, EmailBenchmark)
    summary = summarize(result.legs, NOTIFY, BASELINE)
    print()
    print_legs(result.legs, producer_header="enqueue s")
    print()
    if args.preload:
        print_drain_ratio(summary, "notify/hand-rolled workers alone,")
        print_ratios(summary, "(includes the worker's start-up) notify/hand-rolled")
    else:
        print_ratios(summary, "notify/hand-rolled")
    producer = times(summary["producer_ratio_median"])
    print(f"notify/hand-rolled producer (notify.send vs task.delay): median {producer}")
    print_cpu_ratio(summary, "notify/hand-rolled")
    suffix = ("_preload" if args.preload else "") + ("_profile" if args.profile else "")
    return result.finish(NAME + suffix, summary, correct=summary["all_correct"])


if __name__ == "__main__":
    sys.exit(main())
