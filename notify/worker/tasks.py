"""The task: deliver a delivery, or a burst of them, with this process's deliverer."""

from __future__ import annotations

import logging

from celery import Task

from notify.broker.routing import message_route
from notify.constants import DELIVER_TASK, STORE_RETRY_MAX
from notify.delivery.attempt import Deliverer
from notify.errors import StoreUnavailable
from notify.observability import tracing
from notify.worker import services
from notify.worker.app import app

log = logging.getLogger("notify.worker")


def deliverer() -> Deliverer:
    """This process's deliverer (notify.worker.services starts it before the first task)."""
    running = services.running() or services.boot_pool_process(app)
    if running is None or running.runtime.deliverer is None:
        raise RuntimeError("no deliverer in this process: the worker's services did not start")
    return running.runtime.deliverer


@app.task(name=DELIVER_TASK, bind=True, ignore_result=True)
def deliver(self: Task[[str | list[str]], str | list[str]], delivery_ids: str | list[str]) -> str | list[str]:
    """Attempt one delivery, or a burst's deliveries one after another (notify.broker.routing.group_size).

    Each is claimed only when its turn comes: the rest stay "queued" in the
    store (kept from the sweep while this worker lives), so a worker that
    dies mid-message leaves them to the sweep untouched, their tries uncounted.
    """
    channel, priority = message_route(self.request.delivery_info)
    urgent = priority is not None and priority.urgent
    try:
        with tracing.consumed(self.request):  # each delivery's span a child of the message's
            if isinstance(delivery_ids, str):
                return deliverer().attempt(delivery_ids, channel=channel, urgent=urgent).status
            outcomes = deliverer().attempt_burst(delivery_ids, channel=channel, urgent=urgent)
            return [outcome.status for outcome in outcomes]
    except StoreUnavailable as exc:
        # Nothing was claimed: keep a message for it and try again, backing off,
        # rather than ack it away and leave it to the sweep. The ones this
        # message already finished are refused at their claim next time.
        delay = min(2.0 ** min(self.request.retries, 10), STORE_RETRY_MAX)
        log.error("delivery %s: %s, again in %.1fs", delivery_ids, exc, delay)
        raise self.retry(countdown=delay, max_retries=None) from None
