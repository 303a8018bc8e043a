"""What the store tells the console, on SQLite and PostgreSQL: counts per status, search, one delivery."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from notify.models import Status, utcnow
from notify.store import Claim, NewDelivery, Store
from tests.support.records import a_worker, record_one


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        f"sqlite:///{tmp_path}/store.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = Store(url)
    yield store
    store.close()


def recorded(store: Store, channel: str = "email", address: str = "ada@example.com") -> tuple[str, str]:
    """A queued delivery, a second after the previous one; its notification id and delivery id."""
    later = store.now() + timedelta(seconds=1)
    store.now = lambda: later
    notification_id, delivery_id = str(uuid.uuid4()), str(uuid.uuid4())
    delivery = NewDelivery(delivery_id, channel, address, "high", Status.QUEUED)
    record_one(store, notification_id, "welcome", "de", '{"name": "Ada"}', [delivery])
    return notification_id, delivery_id


def failed(store: Store, delivery_id: str) -> None:
    claim = store.claim(delivery_id, a_worker(store))
    assert isinstance(claim, Claim)
    assert store.mark_failed(claim, "554 refused", "554")


def test_status_counts_are_per_channel_and_status(store: Store) -> None:
    store.now = utcnow
    for _ in range(3):
        recorded(store)
    failed(store, recorded(store, "sms", "+14155550100")[1])
    recorded(store, "sms", "+14155550100")

    assert store.status_counts() == {("email", "queued"): 3, ("sms", "failed"): 1, ("sms", "queued"): 1}


def test_records_find_by_each_key_newest_first_and_bounded(store: Store) -> None:
    store.now = utcnow
    first, first_delivery = recorded(store)
    _, second_delivery = recorded(store)
    _, other = recorded(store, address="bo@example.com")
    failed(store, other)

    def ids(**search: object) -> list[str]:
        return [r.id for r in store.records(**search)]  # type: ignore[arg-type]

    assert ids(key=first) == [first_delivery]
    assert ids(key=second_delivery) == [second_delivery]
    assert ids(addresses=["ada@example.com"]) == [second_delivery, first_delivery]
    assert ids(addresses=["ada@example.com"], limit=1) == [second_delivery]
    assert ids(status="failed") == [other]
    assert ids(key="nothing", addresses=["nobody@example.com"]) == []
    assert ids() == []


def test_a_record_has_what_the_delivery_page_shows(store: Store) -> None:
    notification_id, delivery_id = recorded(store)
    failed(store, delivery_id)

    found = store.record(delivery_id)

    assert found is not None
    assert (found.notification_id, found.template, found.locale, found.priority) == (
        notification_id,
        "welcome",
        "de",
        "high",
    )
    assert (found.status, found.attempts, found.error_code, found.last_error) == (
        Status.FAILED,
        1,
        "554",
        "554 refused",
    )
    assert found.failed_at is not None and found.created_at <= found.failed_at
    assert store.record("no-such-delivery") is None
