"""The task: deliver a delivery, or a burst of them."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_shutdown

from notify.constants import DELIVER_TASK, STORE_RETRY_MAX
from notify.delivery.attempt import Deliverer
from notify.errors import StoreUnavailable
from notify.settings import get_settings, load_hook
from notify.worker.app import app

log = logging.getLogger("notify.worker")

_deliverer: Deliverer | None = None
_lock = threading.Lock()


def deliverer() -> Deliverer:
    """This worker process's deliverer, built on first use (after a prefork pool forks)."""
    global _deliverer
    with _lock:
        if _deliverer is None:
            settings = get_settings()
            _deliverer = Deliverer(settings, on_permanent_failure=load_hook(settings))
        return _deliverer


@worker_shutdown.connect
def _close(**_: Any) -> None:
    if _deliverer is not None:
        _deliverer.close()


@app.task(name=DELIVER_TASK, bind=True, ignore_result=True)
def deliver(self: Task[[str | list[str]], str | list[str]], delivery_ids: str | list[str]) -> str | list[str]:
    """Attempt one delivery, or a burst's deliveries one after another (notify.broker.routing.group_size).

    Each is claimed only when its turn comes: the rest stay "queued" in the
    store (kept from the sweep while this worker lives), so a worker that
    dies mid-message leaves them to the sweep untouched, their tries uncounted.
    """
    try:
        if isinstance(delivery_ids, str):
            return deliverer().attempt(delivery_ids).status
        return [outcome.status for outcome in deliverer().attempt_burst(delivery_ids)]
    except StoreUnavailable as exc:
        # Nothing was claimed: keep a message for it and try again, backing off,
        # rather than ack it away and leave it to the sweep. The ones this
        # message already finished are refused at their claim next time.
        delay = min(2.0 ** min(self.request.retries, 10), STORE_RETRY_MAX)
        log.error("delivery %s: %s, again in %.1fs", delivery_ids, exc, delay)
        raise self.retry(countdown=delay, max_retries=None) from None
