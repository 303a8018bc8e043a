"""Webhook URLs through `notify.send()` on both stores: kept as they will be POSTed, and within the
store's limit in that form (issue 17 item 4)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import notify
import notify.api
from notify.constants import MAX_ADDRESS
from tests.test_send_validation import Producer, postgres_rows, reset_process_wide_notifier

ORDER = {"name": "Ada", "order_id": "A-1042", "carrier": "DHL", "tracking_number": "T1", "items": []}


@pytest.fixture(params=["sqlite", "postgresql"])
def producer(
    request: pytest.FixtureRequest, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Producer]:
    """Sends through `notify.send()`, its store SQLite or PostgreSQL."""
    monkeypatch.chdir(tmp_path)  # no stray .env or notify.toml
    made = Producer("notify.send", dict(env), monkeypatch)
    if request.param == "postgresql":
        made.configure(NOTIFY_DATABASE_URL=request.getfixturevalue("postgres_url"))
    else:
        made.configure()
    yield made
    reset_process_wide_notifier()


def send(producer: Producer, url: str) -> notify.SendResult:
    return producer.send("order_shipped", {"webhook": url}, data=ORDER, channels=["webhook"])


def stored_addresses() -> list[str]:
    store = notify.api.default_notifier().store
    store.get("none")  # the store makes its schema on first use
    with store.engine.connect() as conn:
        return [str(a) for a in conn.execute(sa.text("SELECT address FROM notify_deliveries")).scalars()]


def stored_deliveries(producer: Producer) -> tuple[int, int]:
    url = producer.env.get("NOTIFY_DATABASE_URL")
    return postgres_rows(url) if url else (producer.notifications(), producer.deliveries())


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://hooks.example.com/webhooks/café", "https://hooks.example.com/webhooks/caf%C3%A9"),
        ("https://hooks.example.com/in?name=Jürgen", "https://hooks.example.com/in?name=J%C3%BCrgen"),
        (
            "https://hooks.example.com/caf%C3%A9?name=J%C3%BCrgen",
            "https://hooks.example.com/caf%C3%A9?name=J%C3%BCrgen",
        ),
    ],
)
def test_a_webhook_url_outside_ascii_is_accepted_and_stored_percent_encoded(
    producer: Producer, url: str, stored: str
) -> None:
    """Before: stored as given, then the worker could not write it on the request line (0 POSTs)."""
    result = send(producer, url)

    assert [d.status for d in producer.status(result.id)] == [notify.Status.QUEUED]
    assert stored_addresses() == [stored]


GROWING = {
    "legacy IPv4 1.1 to 1.0.0.1": "http://1.1/" + "a" * 501,
    "IDN host to punycode": "https://bücher.example/" + "a" * 489,
    "?q gaining its /": "https://hooks.example.com?" + "q" * 486,
    "é percent-encoded": "https://hooks.example.com/é" + "a" * 485,
}


@pytest.mark.parametrize("name", GROWING)
def test_a_webhook_url_over_the_limit_once_normalised_is_refused_with_nothing_recorded(
    producer: Producer, name: str
) -> None:
    """Before: PostgreSQL raised a raw DataError from send(); SQLite kept an address over its limit."""
    url = GROWING[name]
    assert len(url) == MAX_ADDRESS

    with pytest.raises(notify.ValidationError) as caught:
        send(producer, url)

    assert caught.value.field == "to.webhook"
    assert f"once normalised, over the limit of {MAX_ADDRESS}" in str(caught.value)
    assert "aaaa" not in str(caught.value) and "qqqq" not in str(caught.value)  # never the URL itself
    assert stored_deliveries(producer) == (0, 0)
    assert producer.enqueued() == 0
