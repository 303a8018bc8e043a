"""Plumbing shared by the benchmarks: child processes, bounded waits, services, reporting."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
T = TypeVar("T")


class BenchmarkError(RuntimeError):
    """The benchmark could not measure what it set out to (a process died, a wait ran out)."""


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def clean_environ() -> dict[str, str]:
    """This process's environment without notify's or twilio's own variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "TWILIO_", "BENCH_"))}


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the benchmark is killed
    # outright (SIGKILL, no finally), the kernel sends the child SIGTERM.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One process the benchmark started: in its own session, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            env=env,
            cwd=REPO,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive:
            raise BenchmarkError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the child's process group, SIGKILL it if it has not gone in `timeout` seconds."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log_file.close()


class Processes:
    """Owns every child a benchmark starts; stops them all on exit, whatever happened."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._resources = contextlib.ExitStack()  # what lives as long as the children (temp stores)
        shutil.rmtree(log_dir, ignore_errors=True)  # the last run's logs, so none are mistaken for this one's

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, argv, env, self.log_dir / f"{name}.log")
        self.children.append(child)
        return child

    def start_server(
        self, name: str, argv: Sequence[str], env: dict[str, str], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Start a benchmark server (`--ready-file` appended) and return what it announced."""
        ready = self.log_dir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        child = self.start(name, [*argv, "--ready-file", str(ready)], env)

        def announced() -> dict[str, Any]:
            child.check_alive()
            info: dict[str, Any] = json.loads(ready.read_text()) if ready.exists() else {}
            return info

        info = wait_for(announced, timeout=timeout, what=f"{name} to listen")
        info["child"] = child
        return info

    def enter(self, resource: contextlib.AbstractContextManager[T]) -> T:
        """Enter `resource` now; it is exited after every child has stopped."""
        return self._resources.enter_context(resource)

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        while self.children:
            self.children.pop().stop()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        try:
            self.stop_all()
            self._resources.close()
        finally:
            signal.signal(signal.SIGINT, previous)


def raise_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every `finally` (process and database cleanup) runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


class Control:
    """Client of a benchmark server's control endpoint (see `benchmarks._control`)."""

    def __init__(self, url: str, child: Child) -> None:
        self.url = url.rstrip("/")
        self.child = child

    def _call(self, path: str, method: str = "GET", timeout: float = 10.0) -> dict[str, Any]:
        body = b"" if method == "POST" else None
        request = urllib.request.Request(self.url + path, method=method, data=body)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def stats(self) -> dict[str, Any]:
        return self._call("/stats")

    def reset(self) -> None:
        self._call("/reset", method="POST")

    def keys(self) -> set[str]:
        return set(self._call("/keys", timeout=30)["keys"])

    def arrivals(self, prefix: str) -> dict[str, float]:
        """When each key starting with `prefix` first arrived (`time.monotonic()`)."""
        found: dict[str, float] = self._call(f"/arrivals?prefix={prefix}", timeout=30)["arrivals"]
        return found

    def wait(self, count: int, *, timeout: float, watch: Sequence[Child] = ()) -> dict[str, Any]:
        """Block until `count` messages arrived; raise if a watched process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            for child in (self.child, *watch):
                child.check_alive()
            left = deadline - time.monotonic()
            stats = self._call(f"/wait?count={count}&timeout={max(0.0, min(left, 1.0)):.3f}")
            if stats["received"] >= count:
                return stats
            if left <= 0:
                raise BenchmarkError(
                    f"timed out after {timeout:.0f}s: {stats['received']} of {count} messages arrived"
                )


@contextlib.contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards (connections and all)."""
    import psycopg

    name = f"notify_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delivery_statuses(database_url: str, address_like: str) -> dict[str, int]:
    """How many of the store's deliveries to matching addresses are in each status."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM notify_deliveries WHERE address LIKE %s GROUP BY status",
            (address_like,),
        ).fetchall()
    return {str(status): int(n) for status, n in rows}


def backend_pids(database_url: str) -> list[int]:
    """PostgreSQL server processes serving `database_url`'s database (this query's own excluded)."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


class PgCounters:
    """PostgreSQL's own counters for a database (pg_stat_database), as a difference.

    Sessions opened and transactions committed per message show connection
    churn and round trips without touching the code under test. PostgreSQL
    publishes a backend's counters at transaction end (at most once a second)
    and when it exits, so read `stop()` after the worker has exited.
    """

    COLUMNS = ("sessions", "xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_fetched")

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._start: dict[str, int] = {}

    def _read(self) -> dict[str, int]:
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=10) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                f"SELECT {', '.join(self.COLUMNS)} FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        return dict(zip(self.COLUMNS, (int(v or 0) for v in row or ()), strict=False))

    def start(self) -> None:
        self._start = self._read()

    def per_message(self, count: int) -> dict[str, float]:
        end = self._read()
        return {k: (end.get(k, 0) - self._start.get(k, 0)) / count for k in self.COLUMNS}


def redis_pid(url: str) -> int | None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (a prefork pool's children), from /proc."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for c in children for p in process_tree(int(c)))]


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU a process (all its threads) has used so far, from /proc; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    """A process's resident set (or another /proc/<pid>/status field), in kB; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuMeter:
    """CPU seconds each component spent between `start()` and `stop()`, read from /proc.

    Less sensitive to a busy machine than wall time: on a shared 2-core box the
    wall-clock rates move with the neighbours, the CPU cost per message barely.
    `components` maps a name to a function giving its pids now; a pid that only
    appears by `stop()` counts from zero. `stop()` also reads each component's
    resident set then (VmRSS summed over its processes, kB) into `rss`, except
    for `without_rss` (PostgreSQL: each backend maps the shared buffers).
    """

    def __init__(
        self, components: dict[str, Callable[[], Sequence[int]]], without_rss: Sequence[str] = ("postgres",)
    ) -> None:
        self.components = components
        self.without_rss = set(without_rss)
        self._start: dict[str, dict[int, float]] = {}
        self.spent: dict[str, float] = {}
        self.rss: dict[str, int] = {}
        self._pids: dict[str, list[int]] = {}

    def _snapshot(self) -> dict[str, dict[int, float]]:
        snapshot: dict[str, dict[int, float]] = {}
        for name, pids in self.components.items():
            try:
                found = pids()
            except Exception:  # a component we cannot see (say, PostgreSQL's stats view) is left out
                found = []
            snapshot[name] = {pid: cpu for pid in found if (cpu := cpu_seconds(pid)) is not None}
            self._pids[name] = list(snapshot[name])
        return snapshot

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        self.spent = {
            name: sum(cpu - self._start.get(name, {}).get(pid, 0.0) for pid, cpu in end[name].items())
            for name in self.components
        }
        measured = {name: pids for name, pids in self._pids.items() if pids and name not in self.without_rss}
        self.rss = {name: sum(kb for pid in pids if (kb := rss_kb(pid)) is not None)
                    for name, pids in measured.items()}  # fmt: skip
        return self.spent


def private_redis(procs: Processes) -> str:
    """A redis-server of the benchmark's own (no persistence): its counters and CPU are the run's alone."""
    port = _free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = procs.start("redis-server", argv, clean_environ())
    url = f"redis://127.0.0.1:{port}/14"

    def answers() -> bool:
        child.check_alive()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        return False

    wait_for(answers, timeout=30, what="the private redis-server")
    return url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def check_service(name: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        raise BenchmarkError(
            f"{name} is not reachable at {host}:{port} ({exc}); scripts/start-services starts it"
        ) from None


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def rate(count: int, seconds: float | None) -> float | None:
    return count / seconds if seconds else None


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> None:
    cells = [[str(h) for h in headers], *[[fmt(c, digits) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        pairs = enumerate(zip(row, widths, strict=True))
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        print("  ".join(padded))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    packages = [
        "celery",
        "kombu",
        "redis",
        "SQLAlchemy",
        "psycopg",
        "jinja2",
        "aiosmtplib",
        "aiosmtpd",
        "twilio",
        "pyfcm",
        "google-auth",
        "requests",
    ]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "packages": {p: version(p) for p in packages},
    }


def close_notify_producer() -> None:
    """Let go of the producer's connections (so PostgreSQL publishes their counters, or before
    the database is dropped); the next notify call builds a fresh notifier (5-12 ms, once)."""
    if "notify.api" in sys.modules:
        from notify import api

        api.default_notifier().close()
        api._notifier.cache_clear()  # a closed notifier may not send again (its relay is closed)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
