"""Recording straight into a store, as send() would, for tests of the store and the worker side."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from notify.models import Delivery
from notify.store import NewDelivery, NewNotification, Store


def record_one(
    store: Store,
    notification_id: str,
    template: str,
    locale: str | None,
    data_json: str,
    new: Iterable[NewDelivery],
) -> list[Delivery]:
    """One notification (its data already JSON) and its deliveries, through `Store.record_many`."""
    [recorded] = store.record_many(
        [NewNotification(notification_id, template, locale, data_json, tuple(new))]
    )
    return recorded


def a_worker(store: Store) -> str:
    """A worker process, registered (alive) in the store, as a heartbeat registers one."""
    worker_id = str(uuid.uuid4())
    store.register_worker(worker_id, host="test-host", pid=1)
    return worker_id
