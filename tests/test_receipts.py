"""Provider receipts: Twilio's status callbacks, through a real SMS worker on the real twilio
client (pointed at tests/fakes/twilio.py, which records StatusCallback and posts receipts signed
as Twilio signs them) and a real `notify web` process; and the receipt lattice on both stores.

A verified receipt moves a `sent` delivery to `delivered` or `undelivered` once; an unsigned one,
or one signed for another URL, key or account, is refused (403) and changes nothing; a repeat or
a later, lesser receipt changes nothing; NOTIFY_ON_STATUS hears each status once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from notify.api import Notifier
from notify.models import Status
from notify.receipts import RECEIPT_WAIT, Receipts, Taken
from notify.settings import Settings
from notify.store import Claim, NewReceipt, Store
from tests.fakes.twilio import FakeTwilio, SentMessage
from tests.support.processes import Worker, wait_for
from tests.support.records import a_worker
from tests.support.web import Web, web_env
from tests.test_store import claimed, new, record

PHONE = "+14155550100"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def sms_env(env: dict[str, str], twilio: FakeTwilio, tmp_path: Path) -> dict[str, str]:
    """SMS over the real twilio client to the fake, receipts asked for, NOTIFY_ON_STATUS recorded."""
    policy = tmp_path / "notify.toml"
    policy.write_text('[channels.sms]\nbackoff_initial = "200ms"\njitter = false\n')
    env.update(
        {
            "NOTIFY_SMS_BACKEND": "twilio",
            "NOTIFY_TWILIO_ACCOUNT_SID": twilio.account_sid,
            "NOTIFY_TWILIO_AUTH_TOKEN": twilio.auth_token,
            "NOTIFY_TWILIO_FROM": "+15005550006",
            "NOTIFY_TWILIO_BASE_URL": twilio.url,
            "NOTIFY_CONFIG": str(policy),
            "NOTIFY_ON_STATUS": "tests.support.hooks:status",
            "NOTIFY_TEST_STATUS_FILE": str(tmp_path / "status.jsonl"),
        }
    )
    return env


@pytest.fixture
def web(sms_env: dict[str, str], tmp_path: Path) -> Iterator[Web]:
    port = web_env(sms_env)
    process = Web(sms_env, tmp_path / "web.log", port)
    yield process.wait_ready()
    process.stop()


def told(env: dict[str, str]) -> list[tuple[str, str]]:
    """(delivery id, status) of each NOTIFY_ON_STATUS call so far, in order."""
    path = Path(env["NOTIFY_TEST_STATUS_FILE"])
    lines = path.read_text().splitlines() if path.exists() else []
    return [(c["delivery_id"], c["status"]) for c in map(json.loads, lines)]


def sent_sms(producer: Notifier, twilio: FakeTwilio, count: int = 1) -> tuple[str, SentMessage]:
    delivery = producer.send("welcome", {"phone": PHONE}, data={"name": "Ada"}).deliveries[0]
    wait_for(lambda: status(producer, delivery.id) == Status.SENT, what="the SMS sent")
    return delivery.id, twilio.messages[count - 1]


def status(producer: Notifier, delivery_id: str) -> Status:
    found = producer.store.get(delivery_id)
    assert found is not None
    return found.status


def test_an_sms_asks_for_receipts_and_a_signed_one_moves_it_once(
    sms_env: dict[str, str],
    twilio: FakeTwilio,
    web: Web,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    start_worker("sms").wait_ready()
    producer = notifier()
    delivery_id, sms = sent_sms(producer, twilio)

    assert sms.status_callback == f"{web.url}/hooks/twilio/status?delivery_id={delivery_id}"
    for step in ("queued", "sent"):  # what Twilio says before the end changes nothing
        assert twilio.receipt(sms, step).status_code == 204
    assert status(producer, delivery_id) == Status.SENT

    assert twilio.receipt(sms, "delivered").status_code == 204
    assert status(producer, delivery_id) == Status.DELIVERED
    # Twilio's retry of it, then a late "sent" and an "undelivered": none changes the final status.
    for late in ("delivered", "sent", "undelivered"):
        assert (
            twilio.receipt(sms, late, error_code="30005" if late == "undelivered" else None).status_code
            == 204
        )
    assert status(producer, delivery_id) == Status.DELIVERED
    wait_for(lambda: len(told(sms_env)) >= 2, what="the hook, for sent and delivered")
    assert told(sms_env) == [(delivery_id, "sent"), (delivery_id, "delivered")]
    kept = producer.store.receipts_of(delivery_id)
    assert [(r["status"], r["effect"]) for r in kept] == [("delivered", "delivered"), ("undelivered", None)]


def test_an_unverified_receipt_is_refused_and_changes_nothing(
    sms_env: dict[str, str],
    twilio: FakeTwilio,
    web: Web,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    start_worker("sms").wait_ready()
    producer = notifier()
    delivery_id, sms = sent_sms(producer, twilio)
    other_id, other = sent_sms(producer, twilio, count=2)
    assert sms.status_callback is not None

    refused = {
        "unsigned": twilio.receipt(sms, "undelivered", signed=False),
        "another key": twilio.receipt(sms, "undelivered", auth_token="f" * 32),
        "another account": twilio.receipt(sms, "undelivered", account_sid="AC" + "1" * 32),
        # a good signature, replayed on another delivery's URL: that delivery must not move
        "replayed elsewhere": twilio.receipt(sms, "undelivered", url=other.status_callback),
        "signed for another URL": twilio.receipt(sms, "undelivered", signed_for=other.status_callback),
        "signed for another host": twilio.receipt(
            sms, "undelivered", signed_for=sms.status_callback.replace("127.0.0.1", "notify.example.com")
        ),
    }

    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 403)
    assert all("Traceback" not in r.text and twilio.auth_token not in r.text for r in refused.values())
    assert (status(producer, delivery_id), status(producer, other_id)) == (Status.SENT, Status.SENT)
    assert producer.store.receipts_of(delivery_id) == producer.store.receipts_of(other_id) == []
    # a signed request that is not a receipt: 400, nothing kept
    bare = requests.post(
        web.url + "/hooks/twilio/status", data={"AccountSid": twilio.account_sid}, timeout=10
    )
    assert bare.status_code == 403  # unsigned
    assert requests.get(web.url + "/hooks/twilio/status", timeout=10).status_code == 405


def test_an_undelivered_receipt_keeps_its_code_30003_is_retried_once_and_21610_suppresses(
    sms_env: dict[str, str],
    twilio: FakeTwilio,
    web: Web,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    start_worker("sms").wait_ready()
    producer = notifier()

    final_id, final = sent_sms(producer, twilio)
    assert twilio.receipt(final, "undelivered", error_code="30007").status_code == 204
    moved = producer.store.get(final_id)
    assert moved is not None and (moved.status, moved.error_code) == (Status.UNDELIVERED, "30007")

    unreachable_id, first = sent_sms(producer, twilio, count=2)
    assert twilio.receipt(first, "undelivered", error_code="30003").status_code == 204
    wait_for(lambda: len(twilio.messages) == 3, what="30003: sent once more")
    wait_for(lambda: status(producer, unreachable_id) == Status.SENT, what="the second send recorded")
    second = twilio.messages[2]
    assert second.sid != first.sid and second.status_callback == first.status_callback
    assert twilio.receipt(first, "undelivered", error_code="30003").status_code == 204  # a repeat
    assert status(producer, unreachable_id) == Status.SENT
    assert twilio.receipt(second, "undelivered", error_code="30003").status_code == 204  # once only
    assert status(producer, unreachable_id) == Status.UNDELIVERED
    assert twilio.receipt(first, "delivered").status_code == 204  # the first final status stays
    assert status(producer, unreachable_id) == Status.UNDELIVERED
    assert len(twilio.messages) == 3

    stopped_id, stopped = sent_sms(producer, twilio, count=4)
    assert twilio.receipt(stopped, "failed", error_code="21610").status_code == 204
    assert status(producer, stopped_id) == Status.UNDELIVERED
    assert [(s.channel, s.address, s.reason.value) for s in producer.suppressions()] == [
        ("sms", PHONE, "opted_out")
    ]
    assert (
        producer.send("welcome", {"phone": PHONE}, data={"name": "A"}).deliveries[0].status
        == Status.SUPPRESSED
    )
    wait_for(lambda: len(told(sms_env)) >= 7, what="the hook")
    assert sorted(s for _, s in told(sms_env)) == ["sent"] * 4 + ["undelivered"] * 3  # no hook for the retry


def test_a_receipt_that_beats_the_sent_record_is_applied_once_sent_is_recorded(
    sms_env: dict[str, str],
    twilio: FakeTwilio,
    web: Web,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    start_worker("sms").wait_ready()
    producer = notifier()
    twilio.hold_answers()  # Twilio accepts it, and its answer is slow to come back
    delivery = producer.send("welcome", {"phone": PHONE}, data={"name": "Ada"}).deliveries[0]
    wait_for(lambda: twilio.held_count == 1, what="the request held")
    [sms] = twilio.messages

    assert twilio.receipt(sms, "delivered").status_code == 204  # before the worker knows the sid
    assert status(producer, delivery.id) == Status.SENDING
    twilio.release()

    wait_for(lambda: status(producer, delivery.id) == Status.DELIVERED, what="the waiting receipt applied")
    wait_for(lambda: len(told(sms_env)) >= 2, what="the hook")
    assert told(sms_env) == [(delivery.id, "sent"), (delivery.id, "delivered")]


# -- the lattice, on both stores ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path}/n.db"
    )
    made = Store(url)
    yield made
    made.close()


def claimed_sms(store: Store) -> Claim:
    """An SMS delivery, recorded and claimed by a live worker (its outcome not recorded yet)."""
    [delivery_id] = record(store, new("sms", PHONE))
    return claimed(store, delivery_id, a_worker(store))


def test_receipts_move_a_sent_delivery_once_whatever_their_order(store: Store, tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    receipts = Receipts(
        store,
        Settings.from_env({"NOTIFY_HOME": str(tmp_path)}),
        on_status=lambda d, c, s, k: calls.append((d, s)),
    )
    claim = claimed_sms(store)
    store.handing_over(claim)
    assert store.mark_sent(claim, "SM1")
    delivered = NewReceipt(claim.delivery_id, "model", "SM1", Status.DELIVERED)
    undelivered = NewReceipt(claim.delivery_id, "model", "SM1", Status.UNDELIVERED, code="30005")
    earlier = NewReceipt(claim.delivery_id, "model", "SM0", Status.UNDELIVERED)

    assert receipts.take(earlier) == Taken.IGNORED  # about another send of it
    assert receipts.take(undelivered) == Taken.MOVED
    assert receipts.take(delivered) == Taken.IGNORED  # a final status is never overwritten
    assert receipts.take(undelivered) == Taken.REPEATED
    moved = store.get(claim.delivery_id)
    assert moved is not None and (moved.status, moved.error_code) == (Status.UNDELIVERED, "30005")
    assert calls == [(claim.delivery_id, "undelivered")]
    assert receipts.take(NewReceipt("no-such-delivery", "model", "SM1", Status.DELIVERED)) == Taken.IGNORED
    assert store.unsettled_receipts() == []


def test_a_receipt_waits_for_its_sent_record_and_no_longer_than_receipt_wait(
    store: Store, tmp_path: Path
) -> None:
    receipts = Receipts(store, Settings.from_env({"NOTIFY_HOME": str(tmp_path)}))
    claim = claimed_sms(store)
    early = NewReceipt(claim.delivery_id, "model", "SM1", Status.DELIVERED)

    assert receipts.take(early) == Taken.WAITING
    assert receipts.settle_waiting() == 0
    store.handing_over(claim)
    assert store.mark_sent(claim, "SM1")
    assert receipts.settle_waiting() == 1
    assert status_of(store, claim.delivery_id) == Status.DELIVERED
    assert store.unsettled_receipts() == []

    stuck = claimed_sms(store)  # its worker never records an outcome
    assert receipts.take(NewReceipt(stuck.delivery_id, "model", "SM2", Status.DELIVERED)) == Taken.WAITING
    postgres = store.engine.dialect.name == "postgresql"
    earlier = "received_at - interval '2 hours'" if postgres else "datetime(received_at, '-2 hours')"
    with store.engine.begin() as conn:  # as if it came two hours ago
        conn.exec_driver_sql(f"UPDATE notify_receipts SET received_at = {earlier}")
    assert RECEIPT_WAIT < 7200
    receipts.settle_waiting()
    assert store.unsettled_receipts() == []
    assert status_of(store, stuck.delivery_id) == Status.SENDING


def status_of(store: Store, delivery_id: str) -> Status:
    found = store.get(delivery_id)
    assert found is not None
    return found.status


def unknown_outcome(store: Store) -> Claim:
    """An SMS a worker was handing over when it was taken for dead: failed as outcome_unknown."""
    claim = claimed_sms(store)
    assert store.handing_over(claim)
    assert store.abandon(claim.delivery_id, claim.token, "taken for dead", handed_over=True)
    return claim


def test_a_delivered_receipt_resolves_an_unknown_outcome_and_its_late_answer_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    """Review: it stayed in the dead letters, and `dlq replay` sent the SMS again."""
    receipts = Receipts(store, Settings.from_env({"NOTIFY_HOME": str(tmp_path)}))
    claim = unknown_outcome(store)

    assert receipts.take(NewReceipt(claim.delivery_id, "model", "SM1", Status.DELIVERED)) == Taken.MOVED

    known = store.get(claim.delivery_id)
    assert known is not None
    assert (known.status, known.provider_id, known.error_code) == (Status.DELIVERED, "SM1", None)
    assert not store.mark_sent(claim, "SM1")  # the worker's late answer: told nothing new
    assert store.replay([claim.delivery_id]) == []  # not a dead letter any more


def test_an_undelivered_receipt_waits_for_an_unknown_outcome_to_be_answered(
    store: Store, tmp_path: Path
) -> None:
    receipts = Receipts(store, Settings.from_env({"NOTIFY_HOME": str(tmp_path)}))
    claim = unknown_outcome(store)

    assert (
        receipts.take(NewReceipt(claim.delivery_id, "model", "SM1", Status.UNDELIVERED, code="30007"))
        == Taken.WAITING
    )
    assert store.mark_sent(claim, "SM1")  # its worker came back with Twilio's answer
    assert receipts.settle_waiting() == 1

    assert status_of(store, claim.delivery_id) == Status.UNDELIVERED


def test_a_delivered_receipt_for_the_first_send_stops_its_30003_retry(store: Store, tmp_path: Path) -> None:
    """Review: the retry went out although the first SMS had arrived."""
    receipts = Receipts(store, Settings.from_env({"NOTIFY_HOME": str(tmp_path)}))
    claim = claimed_sms(store)
    assert store.handing_over(claim) and store.mark_sent(claim, "SM1")
    unreachable = NewReceipt(claim.delivery_id, "twilio", "SM1", Status.UNDELIVERED, code="30003")

    assert receipts.take(unreachable) == Taken.MOVED
    assert status_of(store, claim.delivery_id) == Status.RETRYING
    assert receipts.take(NewReceipt(claim.delivery_id, "twilio", "SM1", Status.DELIVERED)) == Taken.MOVED

    assert status_of(store, claim.delivery_id) == Status.DELIVERED
    assert store.release_due() == []  # nothing left to send again
    kept = {r["status"]: r["effect"] for r in store.receipts_of(claim.delivery_id)}
    assert kept == {"undelivered": "retrying", "delivered": "delivered"}


def test_a_receipt_settled_twice_keeps_the_effect_of_the_settler_that_moved_it(
    store: Store, tmp_path: Path
) -> None:
    """Review: web and the sweep settling one waiting receipt at once: the loser wiped the effect."""
    claim = claimed_sms(store)
    assert store.handing_over(claim) and store.mark_sent(claim, "SM1")
    receipt = NewReceipt(claim.delivery_id, "model", "SM1", Status.DELIVERED)
    assert store.add_receipt(receipt)

    assert store.settle_receipt(receipt, Status.DELIVERED)
    assert not store.settle_receipt(receipt, Status.DELIVERED)  # the other settler, a moment later

    assert [(r["status"], r["effect"]) for r in store.receipts_of(claim.delivery_id)] == [
        ("delivered", "delivered")
    ]
