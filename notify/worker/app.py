"""The Celery app workers run.

Run it with `notify worker CHANNEL`, or `celery -A workers.email worker` (the
repository's operator modules, one per channel: `serve_only`), or `celery -A
workers.app worker -Q notify.email.high,notify.email.normal,notify.email.low`
(on RabbitMQ the one queue `notify.email`). Settings are read when Celery first needs its
configuration, not at import. Each worker runs its channel's maintenance
(releases, sweeps, purges) in a thread of its own: no scheduler process is
needed, and no backlog on the broker delays it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, celeryd_init, worker_ready, worker_shutdown

from notify import channels as registry
from notify.broker.publisher import Publisher
from notify.broker.routing import celery_config, consume_queues
from notify.delivery.maintenance import Maintenance
from notify.settings import Settings, get_settings
from notify.store import Store

log = logging.getLogger("notify.worker")

# Celery's own line per task received and per task done, beside notify's one
# per outcome: below -l debug they are skipped before they are formatted.
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def worker_config(settings: Settings) -> dict[str, Any]:
    config = celery_config(settings)
    config.update(
        imports=["notify.worker.tasks", "notify.worker.express"],  # express: the high queues' own consumer
        worker_pool="threads",  # delivery waits on the network, not the CPU
        worker_concurrency=16,
        # Nobody watches these per task: the store has every outcome.
        worker_send_task_events=False,
        task_track_started=False,
    )
    return config


app = Celery("notify")
_maintenance: list[Maintenance] = []
_served: list[str] = []  # serve_only's channels


def serve_only(channel: str) -> Celery:
    """Make a worker started in this process consume only `channel`'s queues, highest priority first.

    For `celery -A workers.<channel> worker`: the queues follow the configured
    broker (notify.broker.routing.consume_queues), chosen when the worker starts, so
    importing reads no settings. A `-Q` given on the command line still wins.
    """
    if channel not in registry.channels():
        raise ValueError(f"no channel {channel!r}; channels: {', '.join(registry.names())}")
    _served.append(channel)
    return app


@celeryd_init.connect
def _select_served_queues(instance: Any, **_: Any) -> None:
    if _served:
        url = instance.app.conf.broker_url
        instance.app.amqp.queues.select([q for c in _served for q in consume_queues(url, c)])


@after_setup_logger.connect
def _quiet_per_message_lines(loglevel: int = logging.INFO, **_: Any) -> None:
    # twilio logs every request's URL and headers at INFO: eleven lines a message.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    if loglevel > logging.DEBUG:
        for name in CELERY_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.config_from_object(worker_config(get_settings()))


def consumed_channels(celery: Celery) -> list[str]:
    """The channels whose queues this worker consumes."""
    names = set(celery.amqp.queues.consume_from)
    url = celery.conf.broker_url
    return [c for c in registry.names() if names & set(consume_queues(url, c))]


class Backlog:
    """Messages waiting on a channel's queues, read over one broker connection of its own."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self._connection: Any = None

    def __call__(self, channel: str) -> int | None:
        """How many wait, or None if the broker cannot say (the sweep then waits longer)."""
        queues = {q.name: q for q in self.celery.conf.task_queues}
        try:
            if self._connection is None:
                self._connection = self.celery.connection_for_read()
            bound = [queues[name](self._connection.default_channel) for name in self._names(channel)]
            # A declare (idempotent, with the queue's own arguments) rather than a
            # passive one: Redis calls an empty queue missing.
            return sum(int(q.queue_declare().message_count) for q in bound)
        except Exception as exc:
            log.warning("cannot read the %s backlog: %s: %s", channel, type(exc).__name__, exc)
            self.close()
            return None

    def _names(self, channel: str) -> list[str]:
        return consume_queues(self.celery.conf.broker_url, channel)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None


def start_maintenance(celery: Celery, channels: list[str]) -> Maintenance:
    settings = get_settings()

    maintenance = Maintenance(
        Store(settings.resolved_database_url),
        settings,
        functools.partial(Publisher(celery).publish, grouped=True),
        channels=channels,
        backlog=Backlog(celery),
    )
    _maintenance.append(maintenance.start())
    return maintenance


@worker_ready.connect
def _start_maintenance(sender: Any, **_: Any) -> None:
    channels = consumed_channels(sender.app)
    if channels:
        start_maintenance(sender.app, channels)
        log.info("maintenance running for %s", ", ".join(channels))


@worker_shutdown.connect
def _stop_maintenance(**_: Any) -> None:
    while _maintenance:
        _maintenance.pop().stop()
