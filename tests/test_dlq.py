"""notify.dlq's public functions, end to end on the process-wide notifier, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from notify import ValidationError, api, dlq
from notify.models import Status, utcnow
from notify.settings import get_settings
from notify.store import Claim, NewDelivery, Store
from tests.support.records import a_worker, record_one

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> Iterator[Store]:
    """The store behind `notify.dlq`: the process-wide notifier's, built from the environment."""
    url = (
        f"sqlite:///{tmp_path}/store.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    for name in [k for k in os.environ if k.startswith(("NOTIFY_", "TWILIO_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the repo's
    monkeypatch.setenv("NOTIFY_HOME", str(tmp_path / ".notify"))
    monkeypatch.setenv("NOTIFY_DATABASE_URL", url)
    monkeypatch.setenv("NOTIFY_BROKER_URL", redis_url)
    monkeypatch.setenv("NOTIFY_TEMPLATES_DIR", str(REPO / "templates"))
    get_settings.cache_clear()
    api._notifier.cache_clear()
    notifier = api.default_notifier()
    start = utcnow() - timedelta(days=1)  # a day ago, then a second per dead letter
    notifier.store.now = lambda: start
    yield notifier.store
    notifier.close()
    get_settings.cache_clear()
    api._notifier.cache_clear()


def dead_letter(
    store: Store, channel: str = "email", address: str = "ada@example.com", dedup_key: str | None = None
) -> str:
    """A delivery that failed for good, a second after the previous one (the store's clock)."""
    delivery = NewDelivery(
        id=str(uuid.uuid4()),
        channel=channel,
        address=address,
        priority="normal",
        status=Status.QUEUED,
        dedup_key=dedup_key,
        dedup_window=3600 if dedup_key else 0.0,
    )
    record_one(store, str(uuid.uuid4()), "welcome", None, '{"name": "Ada"}', [delivery])
    _advance(store, seconds=1)
    claim = store.claim(delivery.id, a_worker(store))
    assert isinstance(claim, Claim), claim
    assert store.mark_failed(claim, "550 no such user", "550")
    return delivery.id


def _advance(store: Store, *, seconds: float) -> None:
    later = store.now() + timedelta(seconds=seconds)
    store.now = lambda: later


def published(redis_url: str) -> str:
    """Every message on the broker's queues, as one text to search for delivery ids."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return "".join(
            str(message)
            for key in client.keys("notify.*")
            if client.type(key) == "list"
            for message in client.lrange(key, 0, -1)
        )
    finally:
        client.close()


def test_letters_lists_failed_deliveries_newest_first(store: Store) -> None:
    first, second, third = dead_letter(store), dead_letter(store, "sms", "+14155550100"), dead_letter(store)

    letters = dlq.letters()

    assert [x.id for x in letters] == [third, second, first]
    [sms] = [x for x in letters if x.id == second]
    assert (sms.channel, sms.address, sms.template) == ("sms", "+14155550100", "welcome")
    assert (sms.reason, sms.code, sms.attempts) == ("550 no such user", "550", 1)
    assert isinstance(sms.failed_at, datetime) and sms.failed_at.utcoffset() == timedelta(0)


def test_letters_leaves_out_deliveries_that_did_not_fail(store: Store) -> None:
    failed = dead_letter(store)
    pending = NewDelivery(
        id=str(uuid.uuid4()),
        channel="email",
        address="bob@example.com",
        priority="normal",
        status=Status.QUEUED,
    )
    record_one(store, str(uuid.uuid4()), "welcome", None, "{}", [pending])

    assert [x.id for x in dlq.letters()] == [failed]


def test_letters_filters_by_channel(store: Store) -> None:
    email = dead_letter(store)
    sms = dead_letter(store, "sms", "+14155550100")

    assert [x.id for x in dlq.letters(channel="sms")] == [sms]
    assert [x.id for x in dlq.letters(channel="email")] == [email]
    assert dlq.letters(channel="push") == []


def test_letters_returns_at_most_limit_the_newest(store: Store) -> None:
    ids = [dead_letter(store) for _ in range(5)]

    assert [x.id for x in dlq.letters(limit=2)] == ids[:-3:-1]
    assert len(dlq.letters()) == 5


def test_replay_puts_the_given_dead_letters_back_to_queued_with_no_attempts(
    store: Store, redis_url: str
) -> None:
    replayed, left = dead_letter(store), dead_letter(store)

    result = dlq.replay([replayed])

    assert result == dlq.Replayed(replayed=[replayed], not_found=[])
    delivery = store.get(replayed)
    assert delivery is not None
    assert (delivery.id, delivery.status, delivery.attempts) == (replayed, Status.QUEUED, 0)
    assert [x.id for x in dlq.letters()] == [left]
    assert replayed in published(redis_url)  # on the broker when replay() returns
    assert left not in published(redis_url)


def test_replay_names_ids_that_are_unknown_or_not_failed(store: Store) -> None:
    failed = dead_letter(store)
    sent = NewDelivery(
        id=str(uuid.uuid4()),
        channel="email",
        address="bob@example.com",
        priority="normal",
        status=Status.QUEUED,
    )
    record_one(store, str(uuid.uuid4()), "welcome", None, "{}", [sent])
    claim = store.claim(sent.id, a_worker(store))
    assert isinstance(claim, Claim)
    store.mark_sent(claim, "provider-1")
    unknown = str(uuid.uuid4())

    result = dlq.replay([unknown, failed, sent.id])

    assert result.replayed == [failed]
    assert result.not_found == [unknown, sent.id]
    assert store.get(sent.id).status == Status.SENT  # type: ignore[union-attr]


# Hostile ids: PostgreSQL answered a raw DataError (NUL) or ProgrammingError (an int), SQLite and
# PostgreSQL a UnicodeEncodeError (a lone surrogate), and a bare string replayed its characters.
HOSTILE_IDS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "a bare string": (lambda good: good, "ids", "must be a list of ids, not str"),
    "an int": (lambda good: 42, "ids", "must be a list of ids, not int"),
    "an id with a NUL": (lambda good: [good, "x\0y"], "ids[1]", "control characters"),
    "an id that is an int": (lambda good: [good, 1], "ids[1]", "must be a string, not int"),
    "an id that is None": (lambda good: [None, good], "ids[0]", "must be a string, not NoneType"),
    "an id with a lone surrogate": (lambda good: [good, "\ud800"], "ids[1]", "lone surrogates"),
    "an id over 36 characters": (lambda good: [good, "x" * 37], "ids[1]", "over the limit of 36"),
    "an empty id": (lambda good: [good, good, ""], "ids[2]", "must not be empty"),
}


@pytest.mark.parametrize(("ids", "field", "phrase"), HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
def test_replay_refuses_what_is_not_a_list_of_ids_naming_it_and_replays_nothing(
    store: Store, redis_url: str, ids: Callable[[str], Any], field: str, phrase: str
) -> None:
    failed = dead_letter(store)

    with pytest.raises(ValidationError) as raised:
        dlq.replay(ids(failed))

    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ") and phrase in str(raised.value)
    assert [x.id for x in dlq.letters()] == [failed]  # still failed, and not published
    assert failed not in published(redis_url)


@pytest.mark.parametrize(
    ("limit", "phrase"),
    [
        (-1, "must be at least 1"),
        (0, "must be at least 1"),
        (2**63, "must be at most 100000"),
        (True, "must be an integer, not bool"),
        ("5", "must be an integer, not str"),
        (2.5, "must be an integer, not float"),
    ],
)
def test_letters_refuses_a_limit_out_of_bounds_naming_it(store: Store, limit: Any, phrase: str) -> None:
    dead_letter(store)

    with pytest.raises(ValidationError) as raised:
        dlq.letters(limit=limit)

    assert (raised.value.field, str(raised.value)) == ("limit", f"limit: {phrase}")


def test_letters_refuses_a_channel_no_one_registered_naming_it(store: Store) -> None:
    dead_letter(store)

    with pytest.raises(ValidationError) as raised:
        dlq.letters(channel="e\0mail")

    assert raised.value.field == "channel" and "not a registered channel" in str(raised.value)


def test_letters_accepts_a_limit_at_its_bounds(store: Store) -> None:
    ids = [dead_letter(store) for _ in range(2)]

    assert [x.id for x in dlq.letters(limit=1)] == ids[-1:]
    assert [x.id for x in dlq.letters(limit=100_000)] == ids[::-1]


def test_a_replayed_delivery_can_fail_again_and_be_listed_again(store: Store) -> None:
    delivery_id = dead_letter(store)
    dlq.replay([delivery_id])

    claim = store.claim(delivery_id, a_worker(store))
    assert isinstance(claim, Claim) and claim.attempts == 1  # a fresh attempt cycle
    store.mark_failed(claim, "550 still no such user", "550")

    [letter] = dlq.letters()
    assert (letter.id, letter.reason, letter.attempts) == (delivery_id, "550 still no such user", 1)


def test_replay_all_replays_every_dead_letter(store: Store, redis_url: str) -> None:
    ids = {
        dead_letter(store),
        dead_letter(store, "sms", "+14155550100"),
        dead_letter(store, "push", "token-1"),
    }

    result = dlq.replay_all()

    assert set(result.replayed) == ids and result.not_found == []
    assert dlq.letters() == []
    assert all(store.get(i).status == Status.QUEUED for i in ids)  # type: ignore[union-attr]
    assert all(i in published(redis_url) for i in ids)
    assert dlq.replay_all() == dlq.Replayed(replayed=[], not_found=[])


def test_purge_deletes_every_dead_letter_and_returns_how_many(store: Store) -> None:
    failed = [dead_letter(store), dead_letter(store, "sms", "+14155550100")]
    kept = NewDelivery(
        id=str(uuid.uuid4()),
        channel="email",
        address="bob@example.com",
        priority="normal",
        status=Status.QUEUED,
    )
    record_one(store, str(uuid.uuid4()), "welcome", None, "{}", [kept])

    assert dlq.purge() == 2

    assert dlq.letters() == []
    assert all(store.get(i) is None for i in failed)
    assert store.get(kept.id) is not None
    assert dlq.purge() == 0


def test_purge_frees_the_dedup_keys_the_dead_letters_held(store: Store) -> None:
    dead_letter(store, dedup_key="order-7")
    again = NewDelivery(
        id=str(uuid.uuid4()), channel="email", address="ada@example.com", priority="normal",
        status=Status.QUEUED, dedup_key="order-7", dedup_window=3600,
    )  # fmt: skip
    [before] = record_one(store, str(uuid.uuid4()), "welcome", None, "{}", [again])
    assert before.status == Status.DUPLICATE  # the dead letter still holds the key

    assert dlq.purge() == 1

    retry = NewDelivery(
        id=str(uuid.uuid4()), channel="email", address="ada@example.com", priority="normal",
        status=Status.QUEUED, dedup_key="order-7", dedup_window=3600,
    )  # fmt: skip
    [after] = record_one(store, str(uuid.uuid4()), "welcome", None, "{}", [retry])
    assert after.status == Status.QUEUED


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("ada@example.com", "a***@example.com"),
        ("a@b.c", "a***@b.c"),
        ("+14155550100", "+141******00"),
        ("fcm-token-abcdef", "fcm-to…"),
        ("short", "***"),
        ("123456", "***"),
        ("https://hooks.example.com/in/t0ken?sig=abc", "https://hooks.example.com/…"),
        ("http://[2001:db8::1]:8080/x@y", "http://[2001:db8::1]:8080/…"),
    ],
)
def test_mask_keeps_enough_to_recognise_an_address_not_to_harvest_it(address: str, masked: str) -> None:
    assert dlq.mask(address) == masked


def test_a_dead_letter_shows_its_address_masked_and_its_age(store: Store) -> None:
    dead_letter(store)  # about a day ago, by the store's clock

    [letter] = dlq.letters()

    assert letter.masked_address == "a***@example.com"
    assert 86_000 < letter.age_seconds < 87_000


def test_the_cli_replays_every_dead_letter_in_batches_and_sums_up(
    store: Store, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`notify dlq replay --all`: batch by batch behind a progress bar, then one summary line,
    with the ones left failed for their suppressed address named on stderr."""
    import importlib

    from click.testing import CliRunner

    from notify.cli import main

    monkeypatch.setattr(importlib.import_module("notify.cli.dlq"), "REPLAY_BATCH", 2)
    ids = [dead_letter(store, address=f"u{i}@example.com") for i in range(5)]
    kept = dead_letter(store, "sms", "+14155550100")
    store.suppress("sms", "+14155550100", "opted_out", "21610")

    result = CliRunner().invoke(main, ["dlq", "replay", "--all"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "replayed 5 of 6 dead letters; 1 left failed, their address suppressed"
    ]
    assert f"left failed: {kept}'s address is suppressed" in result.stderr
    assert all(store.get(i).status == Status.QUEUED for i in ids)  # type: ignore[union-attr]
    assert all(i in published(redis_url) for i in ids)
    assert store.get(kept).status == Status.FAILED  # type: ignore[union-attr]

    again = CliRunner().invoke(main, ["dlq", "replay", "--all"], catch_exceptions=False)
    assert again.stdout.splitlines() == [
        "replayed 0 of 1 dead letters; 1 left failed, their address suppressed"
    ]


def test_the_cli_says_how_far_replay_all_got_when_the_store_fails_midway(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batches replayed before the store failed stay replayed, and the output says so."""
    import importlib

    from click.testing import CliRunner

    from notify.cli import main
    from notify.errors import StoreUnavailable

    monkeypatch.setattr(importlib.import_module("notify.cli.dlq"), "REPLAY_BATCH", 2)
    ids = [dead_letter(store, address=f"u{i}@example.com") for i in range(5)]
    replay, calls = api.Notifier.replay, []

    def failing_on_the_second_batch(self: api.Notifier, chunk: list[str], **options: Any) -> Any:
        calls.append(chunk)
        if len(calls) == 2:
            raise StoreUnavailable("the store is unavailable (sqlite:///x): OperationalError: disk I/O error")
        return replay(self, chunk, **options)

    monkeypatch.setattr(api.Notifier, "replay", failing_on_the_second_batch)

    result = CliRunner().invoke(main, ["dlq", "replay", "--all"], catch_exceptions=False)

    assert result.exit_code == 2
    assert result.stderr.splitlines()[-2:] == [
        "replayed 2 of 5 dead letters before it stopped",
        "error: the store is unavailable (sqlite:///x): OperationalError: disk I/O error",
    ]
    assert [store.get(i).status for i in ids] == [Status.QUEUED] * 2 + [Status.FAILED] * 3  # type: ignore[union-attr]
