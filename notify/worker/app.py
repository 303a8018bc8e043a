"""The Celery app workers run, and the one path every worker starts by.

Run it with `notify worker CHANNEL`, `celery -A notify.worker.app worker`
(every channel's queues, or those `-Q` names) or `celery -A workers.<channel>
worker` (the repository's operator modules: `serve_only`). Whichever it is,
Celery's signals below make the same start: the settings, templates, hook,
policies and the served channels' providers are checked (`preflight`; a bad
one ends the start with status 2 and one line), the node gets a name of its
own unless `-n` gives one, and the worker's services (notify.worker.services:
heartbeat, maintenance, gate, attempts, express lanes) start in order and
stop in reverse. Settings are read when Celery first needs its configuration,
not at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from celery import Celery
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery.utils.log import get_multiprocessing_logger
from celery.utils.nodenames import default_nodename, nodesplit

from notify import channels as registry
from notify.broker.routing import celery_config, consume_queues
from notify.constants import queue_channel
from notify.errors import ConfigurationError, NotifyError
from notify.observability import logs, metrics
from notify.settings import Settings, get_settings
from notify.text import escape_logs
from notify.worker import services
from notify.worker.startup import preflight, refuse_to_start

log = logging.getLogger("notify.worker")

# Celery's own line per task received and per task done, beside notify's one
# per outcome: below -l debug they are skipped before they are formatted.
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def worker_config(settings: Settings) -> dict[str, Any]:
    config = celery_config(settings)
    config.update(
        imports=["notify.worker.tasks"],
        worker_pool="threads",  # delivery waits on the network, not the CPU
        worker_concurrency=16,
        # Nobody watches these per task: the store has every outcome.
        worker_send_task_events=False,
        task_track_started=False,
    )
    return config


app = Celery("notify")
_served: list[str] = []  # serve_only's channels


def serve_only(channel: str) -> Celery:
    """Make a worker started in this process consume only `channel`'s queues, highest priority first.

    For `celery -A workers.<channel> worker`: the queues follow the configured
    broker (notify.broker.routing.consume_queues), chosen when the worker
    starts, so importing reads no settings. A `-Q` given on the command line still wins.
    """
    if channel not in registry.channels():
        raise ValueError(f"no channel {channel!r}; channels: {', '.join(registry.names())}")
    if channel not in _served:
        _served.append(channel)
    return app


def consumed_channels(celery: Celery) -> list[str]:
    """The channels whose queues this worker consumes."""
    names = set(celery.amqp.queues.consume_from)
    url = celery.conf.broker_url
    return [c for c in registry.names() if names & set(consume_queues(url, c))]


def runs_tasks_here(pool: Any) -> bool:
    """Whether the pool (its class or an instance) runs tasks in the worker's own process:
    every pool but prefork (threads, solo; gevent and eventlet too)."""
    cls = pool if isinstance(pool, type) else type(pool)
    return not issubclass(cls, PreforkPool)


def has_express_lanes(pool: Any) -> bool:
    """Whether the express lanes (threads of the worker's process) run beside the pool: threads, solo.

    Not prefork: a deliverer built in the parent would be inherited, its SMTP
    thread dead, by every child forked later; each child builds its own.
    """
    cls = pool if isinstance(pool, type) else type(pool)
    return issubclass(cls, ThreadPool | SoloPool)


# -- the start path: Celery's signals, in the order Celery sends them ---------------------


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    # Celery would log a bad setting and run on its defaults; the worker's start refuses instead.
    with contextlib.suppress(NotifyError):
        settings = get_settings()
        settings.validate()  # NOTIFY_HOME first: the embedded broker's file lives there
        sender.config_from_object(worker_config(settings))


@celeryd_init.connect
def _select_queues_and_name(instance: Any, options: dict[str, Any], **_: Any) -> None:
    if _served:
        url = instance.app.conf.broker_url
        instance.app.amqp.queues.select([q for c in _served for q in consume_queues(url, c)])
    if instance.hostname == default_nodename(""):  # no -n given
        instance.hostname = node_name(_served or _channels_of(options.get("queues")))


def node_name(channels: list[str]) -> str:
    """`<channels>-<pid>@<host>`: two workers of one channel on one host never share a name
    (Celery warns about that on Redis, and on RabbitMQ the second one's pidbox queue is locked)."""
    _, host = nodesplit(default_nodename(""))
    return f"{'+'.join(channels) or 'notify'}-{os.getpid()}@{host}"


def _channels_of(queues: str | list[str] | None) -> list[str]:
    """The channels `-Q` names (celery's CLI gives a list, a caller may give "a,b")."""
    names = queues.split(",") if isinstance(queues, str) else queues or []
    return list(dict.fromkeys(c for c in map(queue_channel, names) if c is not None))


@worker_init.connect
def _check_and_start(sender: Any, **_: Any) -> None:
    """Before the pool starts and a message is taken: check, then start the main process's services."""
    try:
        settings = get_settings()
        channels = tuple(consumed_channels(sender.app))
        preflight(settings, channels)
        pool = get_implementation(sender.pool_cls)
        tasks_here = runs_tasks_here(pool)
        processes = 1 if tasks_here else _pool_size(sender)
        runtime = services.Runtime(
            settings,
            sender.app,
            channels,
            True,
            tasks_here,
            processes,
            lanes=has_express_lanes(pool),
            # -E: the express lanes send the task events Celery's consumer would (Flower's list)
            events_from=sender.hostname if sender.task_events else None,
        )
        services.boot(runtime)
    except NotifyError as exc:
        refuse_to_start(exc)
    except Exception as exc:  # a plugin's bug, say: Celery would log it and start with no services
        refuse_to_start(ConfigurationError(f"the worker cannot start: {type(exc).__name__}: {exc}"))


def _pool_size(worker: Any) -> int:
    """The most processes a prefork pool runs (its autoscale maximum), as each takes a share of
    a rate limit; "auto" is resolved by Celery only after this, to the CPUs it may use."""
    autoscale = (getattr(worker, "options", None) or {}).get("autoscale")  # "max,min" or [max, min]
    if autoscale:
        size = (
            int(str(autoscale).strip("[]() ").split(",")[0]) if isinstance(autoscale, str) else autoscale[0]
        )
    else:
        size = worker.concurrency
    if not isinstance(size, int) or size < 1:
        size = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return size


@worker_ready.connect
def _say_what_runs(sender: Any, **_: Any) -> None:
    running = services.running()
    channels = ", ".join(consumed_channels(sender.app))
    log.info("notify worker for %s: %s", channels, ", ".join(running.names() if running else ["nothing"]))


@worker_process_init.connect
def _start_in_pool_process(**_: Any) -> None:
    """A prefork child: its own heartbeat, gate and deliverer (the solo pool sends this in the
    worker's own process, whose services are running already)."""
    if services.running() is None:
        services.boot_pool_process(app)


@worker_shutting_down.connect
def _drain(**_: Any) -> None:
    services.drain()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _stop(**_: Any) -> None:
    services.stop()


@worker_process_shutdown.connect
def _forget_pool_process(pid: int | None = None, **_: Any) -> None:
    # Its gauges leave what the worker's /metrics serves; its counters still count.
    metrics.process_ended(pid or os.getpid())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _escape_control_characters(logger: logging.Logger, **_: Any) -> None:
    # A provider's reason phrase may hold ESC sequences and a bare CR: the log shows them escaped.
    escape_logs(logger)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    # NOTIFY_LOG_FORMAT=json: Celery's own handlers write one JSON object a line.
    log_format = _configured_log_format()
    logs.use_format(logger, log_format)
    if logger is logging.getLogger():  # the pool's (billiard's) logger has a handler of its own
        mp_logger = get_multiprocessing_logger()
        if mp_logger is not None:
            logs.use_format(mp_logger, log_format)


@celeryd_init.connect
def _json_from_the_start(instance: Any, options: dict[str, Any], **_: Any) -> None:
    """In JSON, the lines logged before Celery sets up its log (the checks, the services' start)
    are JSON too, and there is no banner: a log collector would take each of its lines for a record."""
    if _configured_log_format() == "json":
        instance.quiet = True
        logs.configure("json", options.get("loglevel") or logging.INFO)


def _configured_log_format() -> str:
    """NOTIFY_LOG_FORMAT, or text while the settings do not load (the start then refuses anyway)."""
    try:
        return get_settings().log_format
    except NotifyError:
        return "text"


@after_setup_logger.connect
def _quiet_per_message_lines(loglevel: int = logging.INFO, **_: Any) -> None:
    # twilio logs every request's URL and headers at INFO: eleven lines a message.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    if loglevel > logging.DEBUG:
        for name in CELERY_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
