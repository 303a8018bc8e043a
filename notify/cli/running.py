"""`notify worker` and `notify beat`: the long-running processes.

A worker starts the way every notify worker does (notify.worker.app): its
settings, templates, hook, policies and provider are checked before Celery
takes a message, and a bad one ends the start with status 2 and one line.
A worker runs its channel's maintenance itself; `notify beat` is the same
maintenance for every channel in a process of its own, for those who want it
apart from workers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from notify import channels as registry
from notify.cli.output import ChannelChoice, reports_errors
from notify.errors import ValidationError
from notify.settings import Settings, get_settings, revealed

if TYPE_CHECKING:
    from celery import Celery


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("channel", type=ChannelChoice())
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 1000),
    default=16,
    show_default=True,
    help="Deliveries at once: threads, or processes for prefork.",
)
@click.option(
    "--pool",
    "-P",
    type=click.Choice(["threads", "prefork", "solo"]),
    default="threads",
    show_default=True,
    help="Celery pool; threads suit delivery, which waits on the network.",
)
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus /metrics on this port (sets NOTIFY_METRICS_PORT).",
)
@click.argument("celery_options", nargs=-1, type=click.UNPROCESSED)
@reports_errors
def worker(
    channel: str,
    concurrency: int,
    pool: str,
    loglevel: str,
    metrics_port: int | None,
    celery_options: tuple[str, ...],
) -> None:
    """Run a Celery worker for CHANNEL's queues, high before normal before low.

    It also releases CHANNEL's due deliveries and sweeps what nobody works on.
    Options notify does not know go to Celery's worker as they are (-n NAME,
    -E, --max-tasks-per-child N, ...); the node is named CHANNEL-<pid>@<host>
    unless -n says otherwise.
    """
    from notify.broker.routing import consume_queues
    from notify.observability import logs
    from notify.worker.app import node_name
    from notify.worker.startup import preflight

    if {"-D", "--detach"} & set(celery_options):
        # Celery would start `celery worker ...` again without notify's app and queues.
        raise ValidationError("--detach", "is not supported: run notify worker under a process supervisor")
    if metrics_port is not None:  # Celery's start reads the settings again, from the environment
        os.environ["NOTIFY_METRICS_PORT"] = str(metrics_port)
    settings = get_settings()
    if settings.log_format == "json":  # what preflight logs comes before Celery sets up its log
        logs.configure(settings.log_format, loglevel)
    preflight(settings, (channel,))  # before Celery says anything: the worker's start checks it too
    app = configured_app(settings)
    # Celery reads "-P prefork" as "no -P given" and takes the configured pool
    # instead, so the choice goes into the configuration itself.
    app.conf.worker_pool = pool
    argv = [
        "worker",
        "-Q",
        ",".join(consume_queues(revealed(settings.broker_url), channel)),
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        *_default_node_name(celery_options, node_name([channel])),
        *celery_options,
    ]
    app.worker_main(argv)


def _default_node_name(celery_options: tuple[str, ...], name: str) -> list[str]:
    """`-n NAME` unless the options name the node: before Celery expands %n in --pidfile and --statedb."""
    named = any(o in ("-n", "--hostname") or o.startswith(("-n", "--hostname=")) for o in celery_options)
    return [] if named else ["-n", name]


@click.command()
@click.option("--loglevel", "-l", default="info", show_default=True)
@reports_errors
def beat(loglevel: str) -> None:
    """Run the maintenance of every channel alone: release due sends and retries, sweep, purge."""
    import logging
    import signal
    import threading

    from notify.observability import logs
    from notify.observability.metrics import OFF, Metrics, Served, serve
    from notify.worker.services import new_maintenance
    from notify.worker.startup import preflight

    settings = get_settings()
    logs.configure(settings.log_format, loglevel)
    preflight(settings, channels=())  # NOTIFY_HOME first: the embedded broker's file lives there
    counted: Metrics = OFF
    served: Served | None = None
    if settings.metrics_port is not None:  # its sweep's recoveries, on /metrics
        counted, served = serve(settings.metrics_port)
    app = configured_app(settings)
    maintenance = new_maintenance(app, settings, registry.names(), counted).start()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    logging.getLogger("notify.beat").info(
        "notify beat ready: maintenance for %s", ", ".join(registry.names())
    )
    stopped.wait()
    maintenance.stop()
    if served is not None:
        served.close()


def configured_app(settings: Settings) -> Celery:
    """The worker's app, configured now rather than in Celery's signal, which hides errors."""
    from notify.worker.app import app, worker_config

    app.config_from_object(worker_config(settings))
    return app
