"""What the email latency benchmarks share: a sink, a notify email worker, a runner, percentiles."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks._harness import (
    REPO,
    RESULTS,
    BenchmarkError,
    Child,
    Control,
    Processes,
    check_service,
    clean_environ,
    close_notify_producer,
    environment,
    flush_redis,
    private_redis,
    raise_on_sigterm,
    temporary_database,
    write_results,
)
from benchmarks._legs import PRIVATE_REDIS_HELP
from benchmarks._stores import STORES, Store, stores, use_store
from notify.cli.mailcatcher import free_port

EMAIL_FROM = "Bench <bench@example.com>"


def percentiles(samples: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99 and the mean, in milliseconds, of samples in seconds."""
    if len(samples) < 2:
        return {"n": len(samples), "p50": None, "p90": None, "p99": None, "mean": None}
    cuts = statistics.quantiles([1000 * s for s in samples], n=100, method="inclusive")
    mean = 1000 * statistics.fmean(samples)
    return {"n": len(samples), "p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "mean": mean}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


class EmailRig:
    """An SMTP sink, the notify environment pointing at it, and notify email workers on demand."""

    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        argv = [sys.executable, "-m", "benchmarks.smtp_sink", "--port", str(free_port())]
        sink = procs.start_server("smtp-sink", argv, clean_environ())
        self.sink = Control(sink["control_url"], sink["child"])
        self.environ = {
            "NOTIFY_BROKER_URL": args.redis_url,
            "NOTIFY_TEMPLATES_DIR": str(REPO / "templates"),
            "NOTIFY_EMAIL_FROM": EMAIL_FROM,
            "NOTIFY_SMTP_HOST": "127.0.0.1",
            "NOTIFY_SMTP_PORT": str(sink["smtp_port"]),
            "NOTIFY_SMTP_TLS": "none",
            "NOTIFY_SMS_BACKEND": "outbox",
            "NOTIFY_PUSH_BACKEND": "outbox",
        }
        self.started = 0

    def use(self, store: Store) -> None:
        flush_redis(self.args.redis_url)
        use_store(store, self.environ)

    def worker(self, store: Store) -> Child:
        """`notify worker email --concurrency N`, its logs under results/logs/."""
        self.started += 1
        argv = [sys.executable, "-m", "notify.cli", "worker", "email",
                "--concurrency", str(self.args.concurrency), "-l", "warning"]  # fmt: skip
        env = {**clean_environ(), **self.environ, **store.environ, "PYTHONUNBUFFERED": "1"}
        return self.procs.start(f"worker-{store.name}-{self.started}", argv, env)

    def warm(self, worker: Child, prefix: str) -> None:
        """A few emails through `worker`: proof that it is up, and its connections open."""
        import notify

        self.sink.reset()
        for i in range(self.args.concurrency):
            notify.send("welcome", to={"email": f"{prefix}-{i}@example.com"}, data={"name": "W"},
                        channels=["email"])  # fmt: skip
        self.sink.wait(self.args.concurrency, timeout=90, watch=[worker])
        time.sleep(0.3)
        self.sink.reset()


@dataclass
class Report:
    """A latency benchmark's results, written to results/<name>.json."""

    name: str
    args: argparse.Namespace
    sections: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    environment: dict[str, Any] = field(default_factory=environment)
    started: float = field(default_factory=time.monotonic)

    def finish(self, *, correct: bool) -> int:
        params = {k: v for k, v in vars(self.args).items() if k != "postgres_url"}
        path = write_results(self.name, {"benchmark": self.name, "params": params,
                                         "environment": self.environment, "loadavg_at_end": os.getloadavg(),
                                         "wall_s": time.monotonic() - self.started,
                                         "results": self.sections, "error": self.error})  # fmt: skip
        print(f"results: {path.relative_to(REPO)}")
        if self.error == "interrupted":
            return 130
        return 0 if self.error is None and correct else 1


def run_per_store(report: Report, step: Callable[[EmailRig, Store], Iterator[tuple[str, Any]]]) -> None:
    """Run `step` on each store of `--stores`; what it yields goes into the report as it comes."""
    args = report.args
    raise_on_sigterm()
    for service, url in (("Redis", args.redis_url), ("PostgreSQL", args.postgres_url)):
        parts = urlsplit(url)
        check_service(service, parts.hostname or "127.0.0.1", parts.port or 0)
    try:
        with (
            temporary_database(args.postgres_url) as database_url,
            Processes(RESULTS / "logs" / report.name) as procs,
        ):
            if args.private_redis:
                args.redis_url = private_redis(procs)
            rig = EmailRig(args, procs)
            under_test = procs.enter(stores(args.stores, database_url))
            try:
                for store in under_test:
                    rig.use(store)
                    for key, value in step(rig, store):
                        report.sections.setdefault(store.name, {})[key] = value
            finally:
                close_notify_producer()
                flush_redis(args.redis_url)
    except BenchmarkError as exc:
        report.error = str(exc)
        print(f"benchmark failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        report.error = "interrupted"
        print("interrupted: child processes stopped, benchmark database dropped", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES),
                        help="notify's store, one after the other (default: both)")  # fmt: skip
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="broker; this database is FLUSHED (default: db 14)")  # fmt: skip
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="admin connection: a fresh database is created, then dropped")  # fmt: skip
    parser.add_argument("--private-redis", action="store_true", help=PRIVATE_REDIS_HELP)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds any wait may take at most")
