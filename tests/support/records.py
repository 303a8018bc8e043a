"""Recording straight into a store, as send() would, for tests of the store and the worker side."""

from __future__ import annotations

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
