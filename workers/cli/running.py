"""`notify worker` and `notify beat`: the long-running processes."""

from __future__ import annotations

import click

from notify.api import Notifier
from notify.constants import CHANNELS, DELIVER_TASK, MAINTENANCE_QUEUE, channel_queues
from notify.settings import get_settings
from workers.cli.output import reports_errors


@click.command()
@click.argument("channel", type=click.Choice(CHANNELS))
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 1000),
    default=16,
    show_default=True,
    help="Threads delivering at once (delivery waits on the network).",
)
@click.option(
    "--pool",
    "-P",
    type=click.Choice(["threads", "prefork", "solo"]),
    default="threads",
    show_default=True,
    help="Celery pool; threads suit delivery, which waits on the network.",
)
@click.option("--beat", is_flag=True, help="Also run the scheduler (release due sends, sweep).")
@click.option("--loglevel", "-l", default="info", show_default=True)
@reports_errors
def worker(channel: str, concurrency: int, pool: str, beat: bool, loglevel: str) -> None:
    """Run a Celery worker for CHANNEL's queues, high before normal before low."""
    from notify.channels import load_provider
    from workers.app import app

    settings = get_settings()
    load_provider(channel, settings).close()  # refuse to start on missing settings
    rate = Notifier(settings).policies[channel].rate_limit
    if rate:
        app.conf.task_annotations = {DELIVER_TASK: {"rate_limit": rate}}
    argv = [
        "worker",
        "-Q",
        ",".join([*channel_queues(channel), MAINTENANCE_QUEUE]),
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-n",
        f"{channel}@%h",
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main([*argv, "-B"] if beat else argv)


@click.command()
@click.option("--loglevel", "-l", default="info", show_default=True)
@reports_errors
def beat(loglevel: str) -> None:
    """Run the scheduler alone: release due sends and long retries, sweep stuck deliveries."""
    from workers.app import app

    app.start(["beat", "-l", loglevel])
