"""The Celery app workers run.

Run it with `notify worker CHANNEL` (or `celery -A workers.app worker -Q
notify.email.high,notify.email.normal,notify.email.low,notify.maintenance`).
Settings are read when Celery first needs its configuration, not at import.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

from notify.constants import MAINTENANCE_QUEUE, PURGE_TASK, RELEASE_DUE_TASK, SWEEP_TASK
from notify.routing import celery_config
from notify.settings import Settings, get_settings

RELEASE_EVERY = 1.0  # seconds: how late a due send_at or long retry may start
PURGE_EVERY = 3600.0


def worker_config(settings: Settings) -> dict[str, Any]:
    sweep_every = max(1.0, min(30.0, settings.sweep_after / 2))
    # Beat keeps its schedule file here; without the folder it dies at start
    # and the worker runs on without a scheduler.
    settings.home.mkdir(parents=True, exist_ok=True)
    config = celery_config(settings)
    config.update(
        imports=["workers.tasks"],
        worker_pool="threads",  # delivery waits on the network, not the CPU
        worker_concurrency=16,
        beat_schedule={
            "release-due": {
                "task": RELEASE_DUE_TASK,
                "schedule": RELEASE_EVERY,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": 10},
            },
            "purge": {
                "task": PURGE_TASK,
                "schedule": PURGE_EVERY,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": PURGE_EVERY},
            },
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": sweep_every,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": sweep_every},
            },
        },
        beat_schedule_filename=str(settings.home / "beat-schedule"),
    )
    return config


app = Celery("notify")


@after_setup_logger.connect
def _quiet_provider_clients(**_: Any) -> None:
    # twilio logs every request's URL and headers at INFO: eleven lines a message.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.config_from_object(worker_config(get_settings()))
