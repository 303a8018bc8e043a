"""The embedded broker: kombu's SQLAlchemy transport on a local SQLite file.

Chosen over the filesystem transport because it is FIFO and stays fast with
a backlog (a fetch is an indexed query, not a directory scan). Three changes
make it fit notify:

- queues are polled in the order the worker consumes them (high, normal,
  low) on every fetch, instead of kombu's round robin, so priorities hold;
- a fetched message is deleted rather than kept as an invisible row, so the
  table does not grow forever;
- it polls every 100 ms instead of every second (`polling_interval` as a
  transport option would be forwarded to `create_engine()` and crash).

The file is switched to WAL once, with the stdlib's sqlite3, when a process
first connects (WAL persists in the file); the lock wait is sqlite3's own
`timeout` connect argument, which routing passes as a transport option
(kombu forwards those to `create_engine()`). Nothing here imports SQLAlchemy.

Two kombu private methods are still overridden, because neither behaviour has
a public hook: `Channel._reset_cycle` (the virtual channel builds its
round-robin `FairCycle` there and has no option or attribute to pick
another) and `Channel._get` (kombu's marks a row invisible and never deletes
it). tests/test_embedded_broker.py pins both, with their signatures, and
fails with a message on a kombu release that changes them.

Like every virtual transport it cannot redeliver a message whose worker was
SIGKILLed: the store's sweeper re-enqueues such deliveries.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime
from queue import Empty
from typing import Any

from kombu.transport import sqlalchemy as sql_transport
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from kombu.utils.scheduling import FairCycle

from notify.broker.routing import FRONT_HEADER
from notify.constants import SQLITE_LOCK_WAIT

_wal_files: set[str] = set()
_wal_lock = threading.Lock()


def sqlite_path(url: str) -> str | None:
    """The file a `sqlite:///path` URL names; None for an in-memory database or another scheme."""
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme.startswith("sqlite"):
        return None
    path = rest.removeprefix("/").split("?", 1)[0]
    return path if path and path != ":memory:" else None


def enable_wal(path: str) -> None:
    """Switch the SQLite file at `path` to WAL (persistent), once per process."""
    with _wal_lock:
        if path in _wal_files:
            return
        connection = sqlite3.connect(path, timeout=SQLITE_LOCK_WAIT)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
        _wal_files.add(path)


class InOrderCycle(FairCycle):
    """Try the resources in their given order on every get: strict priority."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(sql_transport.Channel):
    # Private override: kombu's virtual Channel builds its FairCycle (round
    # robin over the consumed queues) here and offers no public way to choose
    # the cycle; without it a backlog of low messages would interleave with high.
    def _reset_cycle(self) -> None:
        self._cycle = InOrderCycle(self._get_and_deliver, self._active_queues, Empty)

    # Private override: kombu's `_put` writes no `sent_at` (the column stays NULL, and
    # kombu orders by it, then id: FIFO); a message published to the front of its
    # queue (a release, a recovery: FRONT_HEADER) is written with one, and `_get`
    # takes those first.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        headers = payload.get("headers") if isinstance(payload, dict) else None
        if not headers or not headers.get(FRONT_HEADER):
            super()._put(queue, payload, **kwargs)
            return
        row = self.message_cls(dumps(payload), self._get_or_create(queue))  # type: ignore[attr-defined]
        row.sent_at = datetime.now()
        self.session.add(row)
        try:
            self.session.commit()
        except Exception:  # as kombu's: the publish fails, and can be retried
            self.session.rollback()
            raise

    # Private override: kombu's `_get` keeps a fetched row with visible=False
    # forever, and has no hook to delete it; this one deletes it in the same
    # transaction. Order: the front's messages first, then kombu's FIFO by id.
    def _get(self, queue: str, timeout: float | None = None) -> Any:
        session = self.session
        message, queues = self.message_cls, self.queue_cls
        # sqlite3 begins a transaction only before a write: take the write
        # lock before the read, so two workers never fetch the same row.
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        try:
            queue_id = session.query(queues.id).filter(queues.name == queue).scalar_subquery()
            here = session.query(message).filter(message.queue_id == queue_id)
            row = (
                here.filter(message.sent_at.is_not(None)).order_by(message.sent_at, message.id).first()
                or here.filter(message.sent_at.is_(None)).order_by(message.id).first()
            )
            if row is None:
                raise Empty()
            payload = json.loads(bytes_to_str(row.payload))
            session.delete(row)
            return payload
        finally:
            session.commit()


class Transport(sql_transport.Transport):
    Channel = Channel
    polling_interval = 0.1
    # enable_wal's sqlite3 errors are connection errors too, so Celery retries
    # them (mypy infers kombu's tuple as SQLAlchemy's error only).
    connection_errors: tuple[type[Exception], ...] = (  # type: ignore[assignment]
        *sql_transport.Transport.connection_errors,
        sqlite3.OperationalError,
    )

    def establish_connection(self) -> Any:
        path = sqlite_path(self.client.hostname or "") if self.client is not None else None
        if path is not None:
            enable_wal(path)
        return super().establish_connection()
