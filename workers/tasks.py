"""The tasks: deliver one delivery; release what is due; sweep what is stuck."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_shutdown
from kombu.utils.imports import symbol_by_name
from sqlalchemy.exc import InterfaceError, OperationalError

from notify.constants import DELIVER_TASK, PURGE_TASK, RELEASE_DUE_TASK, SWEEP_TASK
from notify.delivery import Deliverer
from notify.routing import enqueue
from notify.settings import get_settings
from workers.app import app

log = logging.getLogger("notify.worker")

_deliverer: Deliverer | None = None
_lock = threading.Lock()


def deliverer() -> Deliverer:
    """This worker process's deliverer, built on first use."""
    global _deliverer
    with _lock:
        if _deliverer is None:
            settings = get_settings()
            hook = settings.on_permanent_failure
            _deliverer = Deliverer(settings, on_permanent_failure=symbol_by_name(hook) if hook else None)
        return _deliverer


@worker_shutdown.connect
def _close(**_: Any) -> None:
    if _deliverer is not None:
        _deliverer.close()


@app.task(name=DELIVER_TASK, bind=True, ignore_result=True)
def deliver(self: Task[[str], str], delivery_id: str) -> str:
    try:
        outcome = deliverer().attempt(delivery_id)
    except (OperationalError, InterfaceError) as exc:
        # The store is unreachable: keep the message and try again, backing off,
        # rather than let Celery ack a failed task and leave it to the sweeper.
        delay = min(2.0 ** min(self.request.retries, 10), get_settings().max_broker_delay)
        log.error(
            "delivery %s: store unavailable (%s), again in %.1fs", delivery_id, type(exc).__name__, delay
        )
        raise self.retry(countdown=delay, max_retries=None) from None
    if outcome.again_in is not None:
        # A new message on the queue this one came from; this one is acked.
        raise self.retry(countdown=outcome.again_in, max_retries=None)
    return outcome.status


@app.task(name=RELEASE_DUE_TASK, ignore_result=True)
def release_due() -> int:
    """Enqueue deliveries whose `send_at` or long retry delay has come."""
    released = deliverer().store.release_due()
    for delivery_id, channel, priority in released:
        enqueue(app, delivery_id, channel, priority)
    return len(released)


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> int:
    """Re-enqueue deliveries nobody is working on: lost by a broker or a dead worker."""
    settings = get_settings()
    store = deliverer().store
    stuck = store.reclaim_stuck(queued_for=settings.sweep_after)
    for delivery_id, channel, priority in stuck:
        enqueue(app, delivery_id, channel, priority)
    if stuck:
        log.warning("sweeper re-enqueued %d stuck deliveries", len(stuck))
    return len(stuck)


@app.task(name=PURGE_TASK, ignore_result=True)
def purge() -> int:
    """Delete sent and duplicate deliveries older than NOTIFY_RETENTION; dead letters stay."""
    return deliverer().store.purge_finished(older_than=get_settings().retention)
