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

Like every virtual transport it cannot redeliver a message whose worker was
SIGKILLed: the store's sweeper re-enqueues such deliveries.
"""

from __future__ import annotations

import json
from queue import Empty
from typing import Any

from kombu.transport import sqlalchemy as sql_transport
from kombu.utils.encoding import bytes_to_str
from kombu.utils.scheduling import FairCycle
from sqlalchemy import event, text


class InOrderCycle(FairCycle):
    """Try the resources in their given order on every get: strict priority."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(sql_transport.Channel):
    def _reset_cycle(self) -> None:
        self._cycle = InOrderCycle(self._get_and_deliver, self._active_queues, Empty)

    def _engine_from_config(self) -> Any:
        engine = super()._engine_from_config()

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        return engine

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        obj = self._get_or_create(queue)  # type: ignore[attr-defined]
        session = self.session
        session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = (
                session.query(self.message_cls)
                .filter(self.message_cls.queue_id == obj.id)
                .order_by(self.message_cls.sent_at, self.message_cls.id)
                .limit(1)
                .first()
            )
            if msg is None:
                raise Empty()
            payload = json.loads(bytes_to_str(msg.payload))
            session.delete(msg)
            return payload
        finally:
            session.commit()


class Transport(sql_transport.Transport):
    Channel = Channel
    polling_interval = 0.1
