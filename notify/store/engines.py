"""Engines tuned for the store: SQLite's pragmas, write lock and BEGIN IMMEDIATE; PostgreSQL's pool."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from notify.constants import SQLITE_LOCK_WAIT
from notify.errors import StoreUnavailable
from notify.settings import mask_url

_PING_IF_IDLE_FOR = 10.0  # seconds
_FIRST_PAUSE = 0.0005
_LONGEST_PAUSE = 0.004


def unavailable(engine_url: sa.URL, exc: sa.exc.DBAPIError) -> StoreUnavailable:
    """Which store (its password and secret query values masked), and the driver's own words
    (the first 300 characters, on one line)."""
    where = mask_url(engine_url.render_as_string(hide_password=False))
    words = " ".join(str(exc.orig).split())[:300]
    return StoreUnavailable(
        f"the store is unavailable ({where}): {type(exc.orig).__name__}" + (f": {words}" if words else "")
    )


def create_engine(url: str, *, writer: bool = False) -> sa.Engine:
    """An engine for the store; on SQLite, `writer` gives the one its write transactions use."""
    engine = _engine(url, writer=writer)
    _forget_connections_after_fork(engine)
    return engine


def _forget_connections_after_fork(engine: sa.Engine) -> None:
    """A forked child (a prefork pool's) must not reuse, or close, its parent's connections.

    SQLAlchemy's recipe: the child drops the pool without closing what it holds.
    """
    ref = weakref.ref(engine)

    def _in_child() -> None:
        alive = ref()
        if alive is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=_in_child)


def _engine(url: str, *, writer: bool) -> sa.Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith("sqlite"):
        return _server_engine(url)
    database = sa.make_url(url).database
    if database and database != ":memory:":
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # one line naming the folder, as a store that does not answer
            folder = str(Path(database).parent)
            raise StoreUnavailable(f"the store's folder {folder!r} cannot be made: {exc.strerror}") from None
    engine = sa.create_engine(url, connect_args={"timeout": 0 if writer else SQLITE_LOCK_WAIT})
    sa.event.listen(engine, "connect", _pragmas(busy_ms=0 if writer else int(SQLITE_LOCK_WAIT * 1000)))
    sa.event.listen(engine, "begin", _begin_immediate if writer else _begin_deferred)
    return engine


def write_lock(engine: sa.Engine) -> AbstractContextManager[Any]:
    """The lock a process's writers of this SQLite file take in turn; none on PostgreSQL.

    Threads waiting here are handed the lock as soon as it is free, instead of
    each polling SQLite's write lock with its busy handler's 1-15 ms sleeps.
    """
    if engine.dialect.name != "sqlite":
        return nullcontext()
    database = str(Path(engine.url.database or ":memory:").resolve())
    with _locks_lock:
        return _write_locks.setdefault(database, threading.Lock())


def _fresh_locks_in_child() -> None:
    # A lock some thread of the parent held at the fork stays held in the child,
    # where that thread does not exist: the child would wait for it forever.
    global _locks_lock
    _locks_lock = threading.Lock()
    for database in _write_locks:
        _write_locks[database] = threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks_in_child)


_locks_lock = threading.Lock()
_write_locks: dict[str, threading.Lock] = {}


def _pragmas(*, busy_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let "begin" below emit BEGIN
        cursor = dbapi_connection.cursor()
        # Switching a new file to WAL takes its lock: wait for it (several processes making one
        # store at once), whatever this connection waits later.
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_LOCK_WAIT * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    return on_connect


def _begin_deferred(connection: sa.Connection) -> None:
    # Reads take no lock in WAL mode: they never wait for a writer.
    connection.exec_driver_sql("BEGIN")


def _begin_immediate(connection: sa.Connection) -> None:
    """BEGIN IMMEDIATE, retried after short sleeps while another process holds the write lock.

    Taken up front: a deferred transaction that reads and then writes fails
    with SQLITE_BUSY instead of waiting its turn. SQLite's own busy handler
    sleeps 1, 2, 5, 10, 15... ms and oversleeps the holder's release by up to
    14 ms; these sleeps start at half a millisecond and stay at a few.
    """
    driver = connection.connection.driver_connection
    assert driver is not None
    deadline = time.monotonic() + SQLITE_LOCK_WAIT
    pause = _FIRST_PAUSE
    while time.monotonic() < deadline:
        try:
            driver.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                break
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
    connection.exec_driver_sql("BEGIN IMMEDIATE")  # once more, so the error is SQLAlchemy's


# libpq's defaults wait forever on a peer that vanished (a failover's old address): a beat or
# an outcome stuck on a dead connection for longer than a lease looks like a dead worker.
# Ten seconds without an answer ends a connection; a URL's own values win.
_CONNECTION_LIMITS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms: unacknowledged writes
}


def _server_engine(url: str) -> sa.Engine:
    # A pool for a worker's 16 delivery threads plus the scheduler's, so
    # connections are reused instead of opened and closed per message.
    given = sa.make_url(url).query
    limits = {k: v for k, v in _CONNECTION_LIMITS.items() if k not in given}
    engine = sa.create_engine(url, pool_size=20, max_overflow=10, pool_recycle=1800, connect_args=limits)

    @sa.event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # pool_pre_ping would cost a round trip per transaction; a connection
        # in steady use is known good, one that sat idle may have been dropped
        # (database restart, proxy timeout): check those, and let the pool
        # replace the dead ones.
        if time.monotonic() - record.info.get("idle_since", time.monotonic()) < _PING_IF_IDLE_FOR:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()
        except Exception as exc:
            raise sa.exc.DisconnectionError() from exc

    return engine
