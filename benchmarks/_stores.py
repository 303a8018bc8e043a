"""The stores a benchmark runs on (SQLite in a temporary NOTIFY_HOME, PostgreSQL), and round trips.

Round trips are counted outside the code under test: PostgreSQL's own
`pg_stat_database`, SQLite statements traced per process (`benchmarks.counted`)
and Redis's `INFO commandstats`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import counted
from benchmarks._harness import PgCounters, backend_pids, close_notify_producer, delivery_statuses

STORES = ("sqlite", "postgresql")


@dataclass
class Store:
    """One store under test: the environment that selects it, and how to read it back."""

    name: str
    home: Path  # NOTIFY_HOME: the SQLite file lives here when no NOTIFY_DATABASE_URL is set
    database_url: str | None = None  # PostgreSQL only
    environ: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.environ = {"NOTIFY_HOME": str(self.home)}
        if self.database_url:
            self.environ["NOTIFY_DATABASE_URL"] = self.database_url

    @property
    def sqlite_path(self) -> Path:
        return self.home / "notify.db"

    def statuses(self, address_like: str) -> dict[str, int]:
        """How many deliveries to matching addresses are in each status."""
        if self.database_url:
            return delivery_statuses(self.database_url, address_like)
        if not self.sqlite_path.exists():  # nothing recorded yet
            return {}
        with contextlib.closing(sqlite3.connect(self.sqlite_path, timeout=30)) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM notify_deliveries WHERE address LIKE ? GROUP BY status",
                (address_like,),
            ).fetchall()
        return {str(status): int(n) for status, n in rows}

    def server_pids(self) -> list[int]:
        return backend_pids(self.database_url) if self.database_url else []


@contextlib.contextmanager
def stores(names: Sequence[str], database_url: str) -> Iterator[list[Store]]:
    """The stores asked for; SQLite's temporary NOTIFY_HOME is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    try:
        yield [Store(n, root / n, database_url if n == "postgresql" else None) for n in names]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def use_store(store: Store, environ: dict[str, str]) -> None:
    """Point this process's `notify.send()` at `store` (and `environ`), dropping the old notifier.

    notify builds its settings and notifier once per process (`functools`
    caches); a benchmark that changes stores mid-run has to clear them.
    """
    close_notify_producer()
    for key in [k for k in os.environ if k.startswith("NOTIFY_")]:
        del os.environ[key]
    os.environ.update({**environ, **store.environ})
    if "notify.api" in sys.modules:
        from notify import api, settings

        settings.get_settings.cache_clear()
        api._notifier.cache_clear()


class StoreTransactions:
    """Store transactions over a span: pg_stat_database's xact_commit, or traced SQLite commits.

    For SQLite the worker runs under `benchmarks.counted` (its counts file is
    `worker_counts`) and this process is counted in-process. Read `per_message`
    after the worker has exited (both kinds of counter are published then).
    """

    def __init__(self, store: Store, worker_counts: Sequence[Path] = ()) -> None:
        self.store = store
        self.worker_counts = list(worker_counts)
        self.pg = PgCounters(store.database_url) if store.database_url else None
        self._start: dict[str, float] = {}

    def _sqlite(self) -> dict[str, float]:
        totals = dict.fromkeys(("statements", "transactions"), 0.0)
        for found in [counted.counts(), *(counted.read(p) for p in self.worker_counts)]:
            for key in totals:
                totals[key] += found[key]
        return totals

    def start(self) -> None:
        if self.pg is not None:
            self.pg.start()
        else:
            self._start = self._sqlite()

    def per_message(self, count: int) -> dict[str, float]:
        if self.pg is not None:
            found = self.pg.per_message(count)
            return {"transactions": found["xact_commit"] + found["xact_rollback"], **found}
        end = self._sqlite()
        return {k: (end[k] - self._start.get(k, 0.0)) / count for k in end}


class RedisCommands:
    """Redis commands over a span, from `INFO commandstats` (server-wide: other clients add noise)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self._start: dict[str, int] = {}

    def _read(self) -> dict[str, int]:
        stats: dict[str, Any] = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def start(self) -> None:
        self._start = self._read()

    def per_message(self, count: int) -> dict[str, float]:
        """Commands per message by name (the two INFO calls of the measurement left out), and total."""
        end = self._read()
        diff = {k: n - self._start.get(k, 0) for k, n in end.items()}
        diff["info"] = diff.get("info", 0) - 1
        per = {k: n / count for k, n in sorted(diff.items(), key=lambda kv: -kv[1]) if n > 0}
        return {"total": sum(per.values()), **per}

    def close(self) -> None:
        self.client.close()


def top_commands(per_message: dict[str, float] | None, n: int = 5) -> str:
    """`brpop 1.0, lpush 1.0, ...`: the most frequent commands, for a table cell."""
    if not per_message:
        return "-"
    items = [(k, v) for k, v in per_message.items() if k != "total"][:n]
    return ", ".join(f"{k} {v:.2f}" for k, v in items)


def counted_argv(argv: Sequence[str], out: Path) -> list[str]:
    """`python -m X ...` run under `benchmarks.counted`, writing SQLite counts to `out`."""
    if list(argv[1:2]) != ["-m"]:
        raise ValueError(f"expected `python -m module ...`, got {argv[:3]}")
    return [argv[0], "-m", "benchmarks.counted", "--out", str(out), *argv[1:]]
