"""kombu's Redis transport, with one client for a channel's synchronous commands.

kombu builds a new `redis.Redis` for every message it publishes, receives and
acks (its ack emulation's bookkeeping); redis-py 8's constructor alone costs
about as much as the command it is built for (0.1-0.7 ms). Producers and
workers use this transport for plain `redis://` URLs (notify.broker.routing).

It overrides `Channel.conn_or_acquire`, which kombu's channel and QoS call
for every such command; tests/test_worker_memory.py fails loudly if an
upgrade stops calling it or changes what it yields.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, with one client for its synchronous commands.

    kombu builds a new `redis.Redis` for every message it receives and every
    ack (its ack emulation's bookkeeping), about 0.1 ms each in a worker.
    Clients over one pool are thread-safe, so one serves them all; a new pool
    (after a fork or a disconnect) gets a new client. `conn_or_acquire` is
    what kombu's QoS and channel call; tests/test_worker_memory.py fails if
    they stop calling it.
    """

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            # kombu's own way to build one (its credential provider included)
            shared = self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
