"""Email end to end: `notify worker email` against a hand-rolled Celery task and raw SMTP, side by side.

    python -m benchmarks.email_throughput [--count 1000] [--rounds 2] [--concurrency 8]
                                          [--contenders notify notify-many hand-rolled raw]

Each leg sends `--count` welcome emails through a real worker subprocess to a
counting SMTP sink (its own process) and times first enqueue -> the sink
holding them all. notify's producer is a `notify.send()` loop (notify) or
`notify.send_many()` in chunks of `--many-batch` (notify-many); the same
`notify worker email` delivers both. Legs alternate (notify, notify-many,
hand-rolled, raw, notify, ...) on the same Redis database (flushed before each
leg), the same sink and the same thread concurrency; see benchmarks/README.md
for how to read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from benchmarks import counted
from benchmarks._harness import (
    REPO,
    Child,
    Control,
    CpuMeter,
    Processes,
    clean_environ,
    close_notify_producer,
    flush_redis,
    process_tree,
    redis_pid,
)
from benchmarks._legs import (
    Leg,
    SendAll,
    add_common_arguments,
    add_contender_arguments,
    in_chunks,
    measure,
    parse_arguments,
    print_cpu_ratio,
    print_drain_ratio,
    print_legs,
    print_ratios,
    run,
    summarize_pairs,
    times,
    warm_up,
)
from benchmarks._stores import (
    STORES,
    RedisCommands,
    Store,
    StoreTransactions,
    counted_argv,
    stores,
    use_store,
)
from notify.cli.mailcatcher import free_port

NAME = "email_throughput"
NOTIFY, NOTIFY_MANY, BASELINE, RAW = "notify", "notify-many", "hand-rolled", "raw"
NOTIFY_LEGS = (NOTIFY, NOTIFY_MANY)  # notify's producer two ways; the same notify worker
LEGS = (NOTIFY, NOTIFY_MANY, BASELINE, RAW)
EMAIL_FROM = "Bench <bench@example.com>"
TAGS = {NOTIFY: "n", NOTIFY_MANY: "m", BASELINE: "h", RAW: "r"}


class EmailBenchmark:
    def __init__(self, args: argparse.Namespace, procs: Processes, database_url: str) -> None:
        self.args = args
        self.procs = procs
        self.stores = procs.enter(stores(args.stores, database_url))
        argv = [sys.executable, "-m", "benchmarks.smtp_sink", "--port", str(free_port())]
        sink = procs.start_server("smtp-sink", argv, clean_environ())
        self.sink = Control(sink["control_url"], sink["child"])
        self.smtp_port = sink["smtp_port"]
        self.redis_pid = redis_pid(args.redis_url)
        self.environ = _environ(args.redis_url, sink["smtp_port"])
        counted.install()  # this process's SQLite transactions (the producer's), for round trips

    def legs(self) -> Iterator[Leg]:
        for store in self.stores:
            use_store(store, self.environ)  # notify.send() and the hand-rolled producer read these
            for round_no in range(1, self.args.rounds + 1):
                for leg in self.args.contenders:
                    print(f"{store.name} round {round_no}: {leg} ...", flush=True)
                    yield self.run(store, round_no, leg)

    def run(self, store: Store, round_no: int, leg: str) -> Leg:
        flush_redis(self.args.redis_url)  # before a worker starts: it declares the queues
        tag = f"{store.name[0]}{TAGS[leg]}{round_no}"
        recipients = [f"{tag}-{i:05d}@example.com" for i in range(self.args.count)]
        warmup = [f"warmup-{tag}-{i}@example.com" for i in range(self.args.warmup)]
        if leg == RAW:
            return self._raw(store, round_no, recipients, warmup)
        env = {**clean_environ(), **self.environ, **store.environ, "PYTHONUNBUFFERED": "1"}
        argv = _worker_argv(leg, self.args.concurrency, self.args.pool)
        counts = self.procs.log_dir / f"sqlite-{tag}.json"
        if self.args.profile:
            out = self.procs.log_dir / f"profile-{leg}-{store.name}-round{round_no}.prof"
            argv = [sys.executable, "-m", "benchmarks.profiled", "--out", str(out), *argv[1:]]
        elif leg in NOTIFY_LEGS and store.database_url is None:
            argv = counted_argv(argv, counts)
        workers: list[Child] = []

        def start_worker() -> list[Child]:
            workers.append(self.procs.start(f"worker-{tag}-{len(workers)}", argv, env))
            return workers[-1:]

        send = _sender(leg)
        watch: list[Child] = []
        send_all = self._send_all(leg, lambda: watch)
        tx = StoreTransactions(store, [counts])
        commands = RedisCommands(self.args.redis_url)
        try:
            watch = start_worker()
            warm_up(self.sink, watch, send, warmup, send_all=send_all)
            if self.args.preload:  # the queues stay declared; the backlog waits for a fresh worker
                self.procs.stop(watch[0])
                watch = []
            close_notify_producer()  # its PostgreSQL sessions publish their counters as they end
            time.sleep(0.5)  # the counted worker has written its idle counts
            tx.start()
            commands.start()
            result = measure(
                round_no=round_no,
                leg=leg,
                channel="email",
                server=self.sink,
                watch=watch,
                send=send,
                recipients=recipients,
                timeout=self.args.timeout,
                settle=self.args.settle,
                start_after_enqueue=start_worker if self.args.preload else None,
                meter=None if self.args.preload else self._meter(store, workers),
                send_all=send_all,
            )
            result.redis_per_msg = commands.per_message(result.count)
        finally:
            commands.close()
            for worker in workers:
                self.procs.stop(worker)
        result.store_name = store.name
        if leg in NOTIFY_LEGS:
            result.store = store.statuses(f"{tag}-%")
            close_notify_producer()
            result.tx_per_msg = tx.per_message(result.count)
            result.pg_per_msg = tx.pg.per_message(result.count) if tx.pg else None
        result.check(expect_sent=leg in NOTIFY_LEGS)
        return result

    def _send_all(self, leg: str, watch: Callable[[], Sequence[Child]]) -> SendAll | None:
        """notify-many's producer: send_many() in chunks, the running worker checked between chunks."""
        if leg != NOTIFY_MANY:
            return None
        return in_chunks(_many_sender(self.args.many_batch), self.args.many_batch, watch)

    def _raw(self, store: Store, round_no: int, recipients: list[str], warmup: list[str]) -> Leg:
        """The ceiling: pre-built messages over `-c` reused aiosmtplib connections, from this process."""
        raw = RawSmtp(self.smtp_port, self.args.concurrency)
        self.sink.reset()
        raw.prepare(warmup)
        raw.send_all(warmup)
        self.sink.wait(len(warmup), timeout=self.args.timeout)
        raw.prepare(recipients)
        result = measure(round_no=round_no, leg=RAW, channel="email", server=self.sink, watch=[],
                         send=lambda i, to: None, recipients=recipients, timeout=self.args.timeout,
                         settle=self.args.settle, meter=self._meter(store, []),
                         send_all=raw.send_all)  # fmt: skip
        result.store_name = store.name
        result.check(expect_sent=False)
        return result

    def _meter(self, store: Store, workers: list[Child]) -> CpuMeter:
        return CpuMeter({
            "producer": lambda: [os.getpid()],
            "worker": lambda: [pid for w in workers if w.alive for pid in process_tree(w.process.pid)],
            "smtp sink": lambda: [self.sink.child.process.pid],
            "postgres": store.server_pids,
            "redis": lambda: [self.redis_pid] if self.redis_pid else [],
        })  # fmt: skip


class RawSmtp:
    """`concurrency` aiosmtplib connections, opened once, taking pre-built messages off one queue."""

    def __init__(self, port: int, concurrency: int) -> None:
        self.port = port
        self.concurrency = concurrency
        self.render = RawTemplates()
        self.prepared: dict[str, bytes] = {}

    def prepare(self, recipients: Sequence[str]) -> None:
        self.prepared = {to: self.render.message(to, f"User {i}") for i, to in enumerate(recipients)}

    def send_all(self, recipients: Sequence[str]) -> None:
        asyncio.run(self._send([(to, self.prepared[to]) for to in recipients]))

    async def _send(self, messages: list[tuple[str, bytes]]) -> None:
        import aiosmtplib

        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        for item in messages:
            queue.put_nowait(item)

        async def connection() -> None:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, timeout=30)
            await client.connect()
            try:
                while not queue.empty():
                    to, message = queue.get_nowait()
                    await client.sendmail(EMAIL_FROM, [to], message)
            finally:
                await client.quit()

        await asyncio.gather(*(connection() for _ in range(self.concurrency)))


class RawTemplates:
    """The welcome email rendered with plain Jinja2 and flattened to bytes, before the clock starts."""

    def __init__(self) -> None:
        from jinja2 import Environment, FileSystemLoader

        self.env = Environment(
            loader=FileSystemLoader(REPO / "templates"), trim_blocks=True, lstrip_blocks=True
        )

    def message(self, to: str, name: str) -> bytes:
        from email.message import EmailMessage

        message = EmailMessage()
        message["From"], message["To"] = EMAIL_FROM, to
        message["Subject"] = self.env.get_template("welcome/email.subject.j2").render(name=name).strip()
        message.set_content(self.env.get_template("welcome/email.txt.j2").render(name=name))
        html = self.env.get_template("welcome/email.html.j2").render(name=name)
        message.add_alternative(html, subtype="html")
        return message.as_bytes()


def _environ(redis_url: str, smtp_port: int) -> dict[str, str]:
    return {
        "NOTIFY_BROKER_URL": redis_url,
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


def _worker_argv(leg: str, concurrency: int, pool: str) -> list[str]:
    if leg in NOTIFY_LEGS:
        return [sys.executable, "-m", "notify.cli", "worker", "email", "--concurrency", str(concurrency),
                "--pool", pool, "-l", "warning"]  # fmt: skip
    return [sys.executable, "-m", "celery", "-A", "benchmarks.handrolled_app", "worker",
            "-P", "threads", "-c", str(concurrency), "-Q", "handrolled", "-n", "handrolled@%h",
            "-l", "warning", "--without-gossip", "--without-mingle"]  # fmt: skip


def _sender(leg: str) -> Callable[[int, str], object]:
    if leg in NOTIFY_LEGS:  # notify-many's warm-up and legs go through _many_sender instead
        import notify

        def send(i: int, to: str) -> object:
            return notify.send("welcome", to={"email": to}, data={"name": f"User {i}"}, channels=["email"])

        return send
    from benchmarks.handrolled_app import send_welcome_email

    return lambda i, to: send_welcome_email.delay(to, f"User {i}")


def _many_sender(batch: int) -> Callable[[int, Sequence[str]], object]:
    """send_chunk(first, recipients): one notify.send_many() of their intents (names from `first`)."""
    import notify

    def send_chunk(first: int, recipients: Sequence[str]) -> object:
        intents = [notify.Intent("welcome", to={"email": to}, data={"name": f"User {first + i}"},
                                 channels=["email"]) for i, to in enumerate(recipients)]  # fmt: skip
        return notify.send_many(intents, batch_size=batch)

    return send_chunk


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.email_throughput", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_common_arguments(
        parser,
        default_count=1000,
        help_for={
            "--count": "emails per leg (default %(default)s)",
            "--rounds": "rounds of every contender per store (default %(default)s)",
            "--concurrency": "worker threads, both, and raw SMTP connections (default %(default)s)",
            "--redis-url": "broker; this database is FLUSHED before each leg (default: db 14)",
            "--profile": "run workers under cProfile (slower); profiles go to results/logs/",
        },
    )
    parser.add_argument(
        "--stores",
        nargs="+",
        choices=STORES,
        default=list(STORES),
        help="notify's store, one after the other (default: both)",
    )
    parser.add_argument(
        "--pool",
        choices=["threads", "prefork", "solo"],
        default="threads",
        help="the notify worker's Celery pool (default threads)",
    )
    parser.add_argument("--preload", action="store_true",
                        help="enqueue all before the worker starts: compare the workers alone")  # fmt: skip
    add_contender_arguments(parser, LEGS)
    return parse_arguments(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(NAME, args, EmailBenchmark)
    summaries: dict[str, Any] = {}
    for store in args.stores:
        legs = [leg for leg in result.legs if leg.store_name == store]
        summaries[store] = summarize_pairs(legs, NOTIFY_LEGS, (BASELINE, RAW, NOTIFY))
    print()
    print_legs(result.legs, producer_header="enqueue s")
    print()
    for store, summary in summaries.items():
        _print_summary(store, summary, preload=args.preload)
    correct = bool(result.legs) and all(leg.ok for leg in result.legs)
    suffix = ("_preload" if args.preload else "") + ("_profile" if args.profile else "")
    return result.finish(NAME + suffix, summaries, correct=correct)


PRODUCER = {NOTIFY: "notify.send", NOTIFY_MANY: "notify.send_many", BASELINE: "task.delay"}


def _print_summary(store: str, summary: dict[str, Any], *, preload: bool) -> None:
    for pair, versus in summary.items():
        label = f"{store}: {pair}"
        if preload:
            print_drain_ratio(versus, f"{label} workers alone,")
        else:
            print_ratios(versus, label)
        print_cpu_ratio(versus, label)
        if versus["baseline"] in PRODUCER:
            producer = times(versus["producer_ratio_median"])
            print(f"{label} producer ({PRODUCER[versus['contender']]} vs "
                  f"{PRODUCER[versus['baseline']]}, per second): median {producer}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
