"""What metrics (and JSON logs) cost a worker: CPU per delivery with them off and on, side by side.

    python -m benchmarks.observability_cost                      # metrics off vs on
    python -m benchmarks.observability_cost --log-format json    # metrics + JSON logs vs neither
    python -m benchmarks.observability_cost --pool prefork -c 2 --count 3000 --rounds 4

Each leg starts a real email worker (`notify worker email`, the outbox
backend, Redis broker, a SQLite store of its own), warms it up, then sends
`--count` deliveries with `send_many()` and reads the CPU the worker's
process tree spent until the store has them all `sent` (/proc, user +
system). Legs alternate off/on, then on/off, round after round, so drift on a
shared machine falls on both. The "on" leg sets NOTIFY_METRICS_PORT (and
NOTIFY_LOG_FORMAT if given) and, at its end, checks that /metrics counted
every delivery. Reports CPU ms per delivery per leg and the ratio on/off of
the medians; the issue's bound is 1.05.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    RESULTS,
    CpuMeter,
    Processes,
    check_service,
    clean_environ,
    flush_redis,
    median,
    print_table,
    process_tree,
    wait_for,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
WARM_UP = 100


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    check_service("Redis", "127.0.0.1", int(args.redis_url.split(":")[2].split("/")[0]))
    calls_us = metrics_calls_cost()
    print(f"metrics calls of one sent delivery (multiprocess mode): {calls_us:.1f} CPU us")
    legs: list[dict[str, Any]] = []
    with Processes(RESULTS / "logs" / "observability_cost") as procs:
        for round_number in range(args.rounds):
            order = ("off", "on") if round_number % 2 == 0 else ("on", "off")
            for mode in order:
                leg = run_leg(procs, args, mode, round_number)
                legs.append(leg)
                print(f"round {round_number + 1} {mode:>3}: {leg['cpu_ms_per_delivery']:.3f} CPU ms/delivery")
    summary = summarize(legs)
    print_table(
        ["mode", "median CPU ms/delivery", "legs"],
        [
            [mode, summary[mode], ", ".join(f"{x:.3f}" for x in summary[f"{mode}_legs"])]
            for mode in ("off", "on")
        ],
        digits=3,
    )
    print(f"ratio on/off: {summary['ratio']:.3f} (bound 1.05)")
    if summary["off"]:
        share = calls_us / (1000 * summary["off"])
        print(f"the metrics calls alone: {100 * share:.2f}% of the median off leg's CPU per delivery")
        summary["metrics_calls_us"], summary["metrics_calls_share"] = calls_us, share
    path = write_results("observability_cost", {"arguments": vars(args), "legs": legs, "summary": summary})
    print(f"results: {path}")
    return 0


def metrics_calls_cost(deliveries: int = 20000) -> float:
    """CPU microseconds of the metrics calls a worker makes for one sent delivery, measured
    in this process in prometheus_client's multiprocess mode (what a worker runs): a figure
    the machine's noise does not swamp, beside the legs' whole-worker ratio."""
    directory = tempfile.mkdtemp(prefix="notify-bench-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # before prometheus_client's first import
    try:
        from notify.observability.metrics import AttemptOutcome, Prometheus

        metrics = Prometheus()
        started = time.process_time()
        for _ in range(deliveries):
            metrics.called("email", "smtp", 0.012, None)
            metrics.attempted("email", "smtp", AttemptOutcome.SENT)
            metrics.finished("email", "smtp", "sent")
            metrics.delivered("email", "normal", 0.8)
        return 1e6 * (time.process_time() - started) / deliveries
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(directory, ignore_errors=True)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="timed deliveries per leg")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one off and one on leg")
    parser.add_argument("--pool", choices=["threads", "prefork"], default="threads")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--loglevel", default="info", help="the worker's -l (info: a line per delivery)")
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="NOTIFY_LOG_FORMAT of the 'on' legs"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="flushed before each leg")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a leg may take")
    return parser.parse_args(argv)


def run_leg(procs: Processes, args: argparse.Namespace, mode: str, round_number: int) -> dict[str, Any]:
    flush_redis(args.redis_url)
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as home:
        env = leg_environ(args, Path(home), mode)
        worker = procs.start(
            f"worker-{mode}-{round_number}",
            [sys.executable, "-m", "notify.cli", "worker", "email", "-P", args.pool,
             "-c", str(args.concurrency), "-l", args.loglevel],
            env,
        )  # fmt: skip
        try:
            producer = _producer(env)
            try:
                send(producer, WARM_UP, "warm")
                drained(producer, WARM_UP, worker.check_alive, args.timeout)
                meter = CpuMeter({"worker": lambda: process_tree(worker.process.pid)})
                meter.start()
                started = time.monotonic()
                send(producer, args.count, "timed")
                drained(producer, WARM_UP + args.count, worker.check_alive, args.timeout)
                spent = meter.stop()["worker"]
                seconds = time.monotonic() - started
            finally:
                producer.close()
            counted = scraped_sent(env) if mode == "on" else None
            if counted is not None and counted != WARM_UP + args.count:
                raise RuntimeError(f"/metrics counted {counted} sent, not {WARM_UP + args.count}")
        finally:
            procs.stop(worker)
    return {
        "mode": mode,
        "round": round_number,
        "cpu_seconds": spent,
        "seconds": seconds,
        "cpu_ms_per_delivery": 1000 * spent / args.count,
        "metrics_counted": counted,
    }


def leg_environ(args: argparse.Namespace, home: Path, mode: str) -> dict[str, str]:
    env = clean_environ()
    env.update(
        NOTIFY_HOME=str(home),
        NOTIFY_BROKER_URL=args.redis_url,
        NOTIFY_TEMPLATES_DIR=str(REPO / "templates"),
        NOTIFY_EMAIL_BACKEND="outbox",
        NOTIFY_EMAIL_FROM="Bench <bench@example.com>",
        PYTHONPATH=str(REPO),
    )
    if mode == "on":
        env["NOTIFY_METRICS_PORT"] = str(free_port())
        env["NOTIFY_LOG_FORMAT"] = args.log_format
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _producer(env: dict[str, str]) -> Any:
    from notify.api import Notifier
    from notify.settings import Settings

    return Notifier(Settings.from_env(env))


def send(producer: Any, count: int, prefix: str) -> None:
    from notify.api import Intent

    intents = [
        Intent("welcome", {"email": f"{prefix}{i}@example.com"}, data={"name": "B"}) for i in range(count)
    ]
    for start in range(0, count, 500):
        producer.send_many(intents[start : start + 500])


def drained(producer: Any, sent: int, check_alive: Any, timeout: float) -> None:
    def done() -> bool:
        check_alive()
        counts: dict[tuple[str, str], int] = producer.store.status_counts()
        return sum(n for (_, status), n in counts.items() if status == "sent") >= sent

    wait_for(done, timeout=timeout, what=f"{sent} deliveries sent", interval=0.1)


def scraped_sent(env: dict[str, str]) -> float:
    url = f"http://127.0.0.1:{env['NOTIFY_METRICS_PORT']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    prefix = "notify_deliveries_total{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and 'status="sent"' in line
    )


def summarize(legs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    per = {
        mode: [leg["cpu_ms_per_delivery"] for leg in legs if leg["mode"] == mode] for mode in ("off", "on")
    }
    off, on = median(per["off"]), median(per["on"])
    return {
        "off": off,
        "on": on,
        "off_legs": per["off"],
        "on_legs": per["on"],
        "ratio": (on / off) if on is not None and off else float("nan"),
    }


if __name__ == "__main__":
    raise SystemExit(main())
