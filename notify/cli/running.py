"""`notify worker` and `notify beat`: the long-running processes.

Both check every setting before they start: Celery only logs an error raised
while it configures itself and then runs on its defaults. A worker runs its
channel's maintenance itself; `notify beat` is the same maintenance for every
channel in a process of its own, for those who want it apart from workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from notify import channels as registry
from notify.api import Notifier
from notify.cli.output import ChannelChoice, reports_errors
from notify.constants import DELIVER_TASK
from notify.errors import ConfigurationError
from notify.settings import Settings, get_settings, load_hook

if TYPE_CHECKING:
    from celery import Celery


@click.command()
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
@reports_errors
def worker(channel: str, concurrency: int, pool: str, loglevel: str) -> None:
    """Run a Celery worker for CHANNEL's queues, high before normal before low.

    It also releases CHANNEL's due deliveries and sweeps what nobody works on.
    """
    from notify.broker.routing import consume_queues

    settings = checked_settings()
    check_provider(channel, settings)
    app = configured_app(settings)
    # Celery reads "-P prefork" as "no -P given" and takes the configured pool
    # instead, so the choice goes into the configuration itself.
    app.conf.worker_pool = pool
    rate = Notifier(settings).policies[channel].rate_limit
    if rate:
        app.conf.task_annotations = {DELIVER_TASK: {"rate_limit": rate}}
    argv = [
        "worker",
        "-Q",
        ",".join(consume_queues(settings.broker_url, channel)),
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-n",
        f"{channel}@%h",
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


@click.command()
@click.option("--loglevel", "-l", default="info", show_default=True)
@reports_errors
def beat(loglevel: str) -> None:
    """Run the maintenance of every channel alone: release due sends and retries, sweep, purge."""
    import logging
    import signal
    import threading

    from notify.worker.app import start_maintenance

    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    maintenance = start_maintenance(configured_app(checked_settings()), list(registry.names()))
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    logging.getLogger("notify.beat").info(
        "notify beat ready: maintenance for %s", ", ".join(registry.names())
    )
    stopped.wait()
    maintenance.stop()


def checked_settings() -> Settings:
    """The settings, every one checked: values, NOTIFY_HOME, the hook, templates, policies."""
    settings = get_settings()
    settings.validate()
    load_hook(settings)
    if not settings.templates_dir.is_dir():
        raise ConfigurationError(
            f"NOTIFY_TEMPLATES_DIR {str(settings.templates_dir)!r} is not a directory",
            setting="NOTIFY_TEMPLATES_DIR",
        )
    Notifier(settings)  # reads NOTIFY_CONFIG's policies
    return settings


def check_provider(channel: str, settings: Settings) -> None:
    """Build CHANNEL's provider once, so a missing or broken setting stops the start."""
    from notify.providers import load_provider

    load_provider(channel, settings).close()


def configured_app(settings: Settings) -> Celery:
    """The worker's app, configured now rather than in Celery's signal, which hides errors."""
    from notify.worker.app import app, worker_config

    app.config_from_object(worker_config(settings))
    return app
