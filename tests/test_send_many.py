"""send_many(): every intent validated first, recorded in batches, results in order; `notify send-many`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import notify
import notify.api
import notify.settings
from notify import Intent
from notify.api import Notifier
from notify.cli import main
from notify.models import Status
from notify.store import NewNotification, Store
from notify.store.schema import deliveries, notifications
from tests.support.outages import store_outage
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer


def welcome(i: int, **options: object) -> Intent:
    return Intent("welcome", to={"email": f"user{i}@example.com"}, data={"name": f"User {i}"}, **options)  # type: ignore[arg-type]


def counts(producer: Notifier) -> tuple[int, int]:
    """Rows in the store: (notifications, deliveries)."""
    producer.store.get("none")  # the store makes its schema on first use
    with producer.store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (notifications, deliveries)
        )


def address_of(producer: Notifier, delivery_id: str) -> str:
    with producer.store.engine.connect() as conn:
        query = sa.select(deliveries.c.address).where(deliveries.c.id == delivery_id)
        return str(conn.execute(query).scalar_one())


@pytest.fixture(params=["sqlite", "postgresql"])
def producer(
    request: pytest.FixtureRequest, env: dict[str, str], notifier: Callable[[], Notifier]
) -> Notifier:
    if request.param == "postgresql":
        env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return notifier()


# -- validation first -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field", "error"),
    [
        (
            Intent("welcome", to={"email": "not-an-address"}, data={"name": "X"}),
            "intents[3].to.email",
            notify.ValidationError,
        ),
        (
            Intent("welcome", to={"email": "x@example.com"}, data={}),
            "intents[3].data.name",
            notify.TemplateError,
        ),
        (
            Intent("welcome", to={"email": "x@example.com"}, data={"name": "X"}, priority="urgent"),
            "intents[3].priority",
            notify.ValidationError,
        ),
        (Intent("nope", to={"email": "x@example.com"}), "intents[3].template", notify.TemplateError),
        ("welcome", "intents[3]", notify.ValidationError),
    ],
)
def test_an_invalid_intent_is_named_by_its_index_and_nothing_is_recorded(
    producer: Notifier, bad: object, field: str, error: type[Exception]
) -> None:
    intents = [welcome(0), welcome(1), welcome(2), bad, welcome(4)]

    with pytest.raises(error) as raised:
        producer.send_many(intents)  # type: ignore[arg-type]

    assert isinstance(raised.value, notify.ValidationError)
    assert raised.value.field.startswith(field)
    assert counts(producer) == (0, 0)


def test_send_reports_its_fields_without_an_index(producer: Notifier) -> None:
    with pytest.raises(notify.ValidationError) as raised:
        producer.send("welcome", {"email": "not-an-address"}, data={"name": "X"})
    assert raised.value.field == "to.email"


def test_intents_must_be_a_list(producer: Notifier) -> None:
    with pytest.raises(notify.ValidationError, match="intents"):
        producer.send_many(welcome(0))  # type: ignore[arg-type]


# -- recording ------------------------------------------------------------------------------


def test_results_come_back_in_the_order_of_the_intents(producer: Notifier) -> None:
    results = producer.send_many([welcome(i) for i in range(25)], batch_size=7)

    assert [address_of(producer, r.deliveries[0].id) for r in results] == [
        f"user{i}@example.com" for i in range(25)
    ]
    assert all(r.deliveries[0].status == Status.QUEUED for r in results)
    assert counts(producer) == (25, 25)
    assert producer.status(results[24].id)[0].status == Status.QUEUED


def test_a_dedup_key_repeated_in_one_call_makes_the_later_intent_a_duplicate(producer: Notifier) -> None:
    first, other, again = producer.send_many(
        [welcome(1, dedup_key="k"), welcome(2, dedup_key="k"), welcome(1, dedup_key="k")]
    )

    assert first.deliveries[0].status == Status.QUEUED
    assert other.deliveries[0].status == Status.QUEUED  # another address: another identity
    assert again.deliveries[0].status == Status.DUPLICATE
    assert again.deliveries[0].duplicate_of == first.deliveries[0].id
    assert producer.status(again.id)[0].duplicate_of == first.deliveries[0].id


def test_dedup_holds_across_batches_and_across_calls(producer: Notifier) -> None:
    results = producer.send_many([welcome(i, dedup_key=f"k{i % 4}") for i in range(10)], batch_size=3)
    later = producer.send_many([welcome(1, dedup_key="k1")])

    statuses = [r.deliveries[0].status for r in results]
    assert statuses == [Status.QUEUED] * 10  # each address is its own identity
    repeat = producer.send_many([welcome(i, dedup_key=f"k{i % 4}") for i in range(10)], batch_size=4)
    assert all(r.deliveries[0].status == Status.DUPLICATE for r in repeat)
    assert [r.deliveries[0].duplicate_of for r in repeat] == [r.deliveries[0].id for r in results]
    assert later[0].deliveries[0].duplicate_of == results[1].deliveries[0].id


def test_send_at_in_the_future_is_scheduled(producer: Notifier) -> None:
    from datetime import UTC, datetime, timedelta

    [result] = producer.send_many([welcome(0, send_at=datetime.now(UTC) + timedelta(hours=1))])
    assert result.deliveries[0].status == Status.SCHEDULED


def test_an_empty_list_records_nothing(producer: Notifier) -> None:
    assert producer.send_many([]) == []
    assert counts(producer) == (0, 0)


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_the_batch_size_must_be_a_positive_integer(producer: Notifier, size: object) -> None:
    with pytest.raises(notify.ValidationError, match="batch_size"):
        producer.send_many([welcome(0)], batch_size=size)  # type: ignore[arg-type]
    assert counts(producer) == (0, 0)


def test_the_module_function_uses_the_process_wide_notifier(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(env, monkeypatch)
    try:
        results = notify.send_many([welcome(0), welcome(1)])
        assert [notify.status(r.id)[0].status for r in results] == [Status.QUEUED] * 2
    finally:
        reset()


# -- a store lost part way ----------------------------------------------------------------


def lose_the_store_at_batch(monkeypatch: pytest.MonkeyPatch, database_url: str, lost: int) -> None:
    """The store goes away (for real: PostgreSQL refuses and drops connections) just before batch `lost`."""
    record_many = Store.record_many
    calls = 0

    def recording(store: Store, batch: Sequence[NewNotification]) -> list[list[notify.Delivery]]:
        nonlocal calls
        calls += 1
        if calls != lost:
            return record_many(store, batch)
        with store_outage(database_url):
            return record_many(store, batch)

    monkeypatch.setattr(Store, "record_many", recording)


def test_a_store_lost_part_way_says_what_was_recorded_and_a_retry_records_nothing_twice(
    env: dict[str, str], postgres_url: str, notifier: Callable[[], Notifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    env["NOTIFY_DATABASE_URL"] = postgres_url
    producer = notifier()
    intents = [welcome(i) for i in range(2000)]
    lose_the_store_at_batch(monkeypatch, postgres_url, lost=3)

    with pytest.raises(notify.PartiallyRecorded) as lost:
        producer.send_many(intents, batch_size=500)

    assert isinstance(lost.value, notify.StoreUnavailable)
    assert str(lost.value).startswith("recorded 1000 of 2000 intents, then: ")
    assert len(lost.value.results) == 1000
    assert lost.value.remaining == intents[1000:]
    monkeypatch.undo()
    assert counts(producer) == (1000, 1000)
    kept = [address_of(producer, r.deliveries[0].id) for r in lost.value.results]
    assert kept == [f"user{i}@example.com" for i in range(1000)]

    retried = producer.send_many(lost.value.remaining, batch_size=500)

    assert len(retried) == 1000
    assert counts(producer) == (2000, 2000)
    with producer.store.engine.connect() as conn:
        copies = conn.execute(sa.select(deliveries.c.address, sa.func.count()).group_by(deliveries.c.address))
        assert {address: n for address, n in copies} == {f"user{i}@example.com": 1 for i in range(2000)}


def test_a_store_lost_before_the_first_batch_recorded_nothing(
    env: dict[str, str], postgres_url: str, notifier: Callable[[], Notifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    env["NOTIFY_DATABASE_URL"] = postgres_url
    producer = notifier()
    lose_the_store_at_batch(monkeypatch, postgres_url, lost=1)

    with pytest.raises(notify.StoreUnavailable) as lost:
        producer.send_many([welcome(i) for i in range(10)], batch_size=5)

    assert not isinstance(lost.value, notify.PartiallyRecorded)
    monkeypatch.undo()
    assert counts(producer) == (0, 0)


# -- end to end ---------------------------------------------------------------------------


def test_a_worker_delivers_each_intent_once(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    start_worker("email", "-c", "4")
    producer = notifier()

    results = producer.send_many(
        [welcome(i) for i in range(30)] + [welcome(0, dedup_key="d")] * 2, batch_size=8
    )

    def all_sent() -> bool:
        return all(
            d.status in (Status.SENT, Status.DUPLICATE) for r in results for d in producer.status(r.id)
        )

    wait_for(all_sent, timeout=60, what="every delivery sent")
    expected = {r.deliveries[0].id: 1 for r in results if r.deliveries[0].status == Status.QUEUED}
    assert len(expected) == 31
    assert dict(smtp_server.delivery_ids()) == expected


# -- notify send-many -----------------------------------------------------------------------


def configure(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith(("NOTIFY_", "TWILIO_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset()


def reset() -> None:
    if notify.api._notifier.cache_info().currsize:
        notify.api.default_notifier().close()
    notify.settings.get_settings.cache_clear()
    notify.api._notifier.cache_clear()


@pytest.fixture
def cli(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, notifier: Callable[[], Notifier]
) -> Iterator[Notifier]:
    """The CLI's environment, and a notifier on the same store to look at what it recorded."""
    configure(env, monkeypatch)
    yield notifier()
    reset()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_send_many_from_csv_with_addresses_data_and_a_dedup_column(cli: Notifier, tmp_path: Path) -> None:
    rows = tmp_path / "people.csv"
    rows.write_text(
        "email,phone,data.name,order\n"
        "ada@example.com,+14155550100,Ada,1\n"
        "bob@example.com,,Bob,2\n"
        "ada@example.com,+14155550100,Ada,1\n"
    )

    code, out, err = run(
        "send-many", str(rows), "--template", "welcome", "--dedup-key-column", "order", "--json"
    )

    assert code == 0, err
    results = json.loads(out)
    assert [r["line"] for r in results] == [2, 3, 4]
    assert [len(r["deliveries"]) for r in results] == [2, 1, 2]  # email, and sms where a phone is given
    assert {d["status"] for d in results[2]["deliveries"]} == {"duplicate"}
    assert "3 notifications" in err
    assert counts(cli) == (3, 5)


def test_send_many_from_json_lines_with_per_row_options(cli: Notifier, tmp_path: Path) -> None:
    rows = tmp_path / "people.jsonl"
    lines = [
        {"to": {"email": "ada@example.com"}, "data": {"name": "Ada"}},
        {"to": {"email": "bob@example.com"}, "data": {"name": "Bob"}, "send_at": "2999-01-01T09:00:00+01:00"},
    ]
    rows.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")

    code, out, err = run(
        "send-many", str(rows), "--template", "welcome", "--priority", "high", "--channel", "email"
    )

    assert code == 0, err
    assert out.strip() == "2 notifications sent: 1 queued, 1 scheduled"
    assert counts(cli) == (2, 2)


def test_a_csv_data_column_of_json(cli: Notifier, tmp_path: Path) -> None:
    rows = tmp_path / "people.csv"
    rows.write_text('email,data\nada@example.com,"{""name"": ""Ada""}"\n')
    code, _out, err = run("send-many", str(rows), "--template", "welcome")
    assert code == 0, err
    assert counts(cli) == (1, 1)


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        (
            "bad.csv",
            "email,data.name\n" + "a@example.com,A\n" * 5 + "not-an-address,B\n",
            "line 7: to.email: ",
        ),
        ("bad.csv", "email,data.name,colour\na@example.com,A,red\n", "line 2: colour: unknown column"),
        ("bad.csv", "email\na@example.com\n", "line 2: data.name: "),
        (
            "bad.jsonl",
            '{"to": {"email": "a@example.com"}, "data": {"name": "A"}}\n[1]\n',
            "line 2: must be a JSON object",
        ),
        (
            "bad.jsonl",
            '{"to": {"email": "a@example.com"}, "data": {"name": "A"}}\n{nope\n',
            "line 2: not JSON",
        ),
        (
            "bad.jsonl",
            '\n\n{"to": {"email": "a@example.com"}, "data": {"name": "A"}, "priority": "x"}\n',
            "line 3: priority: ",
        ),
    ],
)
def test_a_bad_row_is_named_by_its_line_and_nothing_is_recorded(
    cli: Notifier, tmp_path: Path, name: str, text: str, reason: str
) -> None:
    rows = tmp_path / name
    rows.write_text(text)

    code, _out, err = run("send-many", str(rows), "--template", "welcome")

    assert code == 2
    assert err.startswith(f"error: {reason}"), err
    assert counts(cli) == (0, 0)


def test_a_store_lost_part_way_names_the_first_row_not_recorded(
    env: dict[str, str], postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env["NOTIFY_DATABASE_URL"] = postgres_url
    configure(env, monkeypatch)
    rows = tmp_path / "people.csv"
    rows.write_text("email,data.name\n" + "".join(f"u{i}@example.com,U{i}\n" for i in range(30)))
    lose_the_store_at_batch(monkeypatch, postgres_url, lost=3)
    try:
        code, _out, err = run("send-many", str(rows), "--template", "welcome", "--batch-size", "10")
    finally:
        reset()

    assert code == 2
    assert "20 notifications sent: 20 queued" in err
    assert "error: the rows before line 22 were recorded; that row and those after it were not" in err, err
