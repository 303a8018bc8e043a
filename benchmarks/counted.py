"""Count a process's SQLite transactions (a trace callback on every connection), for round trips.

    python -m benchmarks.counted --out results/worker.sqlite.json -m notify.cli worker email -c 8

SQLite has no server to ask (PostgreSQL's `pg_stat_database` counts commits
for the PostgreSQL legs), so each process counts its own: `install()` wraps
`sqlite3.connect` so that every connection, whoever opens it (SQLAlchemy's
pysqlite dialect, a raw `sqlite3` store), gets `set_trace_callback`, which
SQLite calls for every statement it executes, the implicit `BEGIN` the
`sqlite3` module issues and `commit()`'s `COMMIT` included. The wrapper
rewrites `--out` four times a second and at exit; the benchmark process calls
`install()` on itself and reads `counts()`.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import sqlite3
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

_counts: Counter[str] = Counter()
_lock = threading.Lock()
_KINDS = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _trace(statement: str) -> None:
    word = statement.lstrip()[:9].split(None, 1)[0].upper() if statement.strip() else ""
    with _lock:
        _counts["statements"] += 1
        if word in _KINDS:
            _counts[word.lower()] += 1


def install() -> None:
    """Trace every SQLite connection this process opens from now on."""
    original = sqlite3.connect
    if getattr(original, "_bench_counted", False):
        return

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = original(*args, **kwargs)
        connection.set_trace_callback(_trace)
        return connection

    connect._bench_counted = True  # type: ignore[attr-defined]
    sqlite3.connect = connect  # type: ignore[assignment]
    sqlite3.dbapi2.connect = connect  # type: ignore[assignment]  # what SQLAlchemy's dialect calls


def counts() -> dict[str, int]:
    """Statements and transactions (commit + rollback) counted so far."""
    with _lock:
        found = {k: _counts[k] for k in ("statements", "begin", "commit", "rollback")}
    found["transactions"] = found["commit"] + found["rollback"]
    return found


def _write(out: Path) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(counts()))
    os.replace(tmp, out)


def read(out: Path) -> dict[str, int]:
    """What a counted process last wrote (zeros before its first write)."""
    try:
        found: dict[str, int] = json.loads(out.read_text())
    except (OSError, ValueError):
        found = {}
    return {k: int(found.get(k, 0)) for k in ("statements", "begin", "commit", "rollback", "transactions")}


def _keep_writing(out: Path) -> None:
    stop = threading.Event()
    while not stop.wait(0.25):
        _write(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the counts (JSON)")
    parser.add_argument("-m", dest="module", required=True, help="the module to run, as python -m does")
    args, rest = parser.parse_known_args()
    install()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _write(args.out)
    atexit.register(_write, args.out)
    threading.Thread(target=_keep_writing, args=(args.out,), name="sqlite-counts", daemon=True).start()
    sys.argv = [args.module, *rest]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
