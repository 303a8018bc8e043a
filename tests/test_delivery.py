"""One attempt, as a worker makes it, against a real SQLite store and a scripted provider.

What must never happen: a second copy because the store or the provider
misbehaved after the message was handed over.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import pytest

from notify.delivery.attempt import AttemptStatus, Deliverer
from notify.errors import (
    ConfigurationError,
    CoreCode,
    CoreProvider,
    OutcomeUnknownError,
    PermanentDeliveryError,
    StoreUnavailable,
    TransientDeliveryError,
)
from notify.models import Status
from notify.providers.base import Message, Receipt
from notify.settings import Settings
from notify.store import Claim, NewDelivery, Refusal
from tests.conftest import REPO
from tests.support.processes import wait_for
from tests.support.records import a_worker, record_one


class ScriptedProvider:
    """Counts deliveries; raises what the test scripts, after counting (the message went out)."""

    name = "scripted"
    delivered: ClassVar[list[str]] = []
    raise_after_sending: ClassVar[BaseException | None] = None
    meanwhile: ClassVar[Callable[[], None] | None] = None  # what happens while the provider has it

    @classmethod
    def from_settings(cls, settings: Settings) -> ScriptedProvider:
        return cls()

    def deliver(self, message: Message) -> Receipt:
        ScriptedProvider.delivered.append(message.delivery_id)
        if ScriptedProvider.meanwhile is not None:
            ScriptedProvider.meanwhile()
        if ScriptedProvider.raise_after_sending is not None:
            raise ScriptedProvider.raise_after_sending
        return Receipt(provider_id="p-" + message.delivery_id)

    def close(self) -> None:
        pass


def scripted_settings(tmp_path: Path, database_url: str | None = None) -> Settings:
    return Settings.from_env(
        {
            **({"NOTIFY_DATABASE_URL": database_url} if database_url else {}),
            "NOTIFY_HOME": str(tmp_path),
            "NOTIFY_TEMPLATES_DIR": str(REPO / "templates"),
            "NOTIFY_EMAIL_FROM": "notify@example.com",
            "NOTIFY_EMAIL_BACKEND": "tests.test_delivery:ScriptedProvider",
            "NOTIFY_DELIVERY_TIMEOUT": "1",
            "NOTIFY_LEASE": "1",
        }
    )


@pytest.fixture
def deliverer(tmp_path: Path) -> Iterator[Deliverer]:
    ScriptedProvider.delivered = []
    ScriptedProvider.raise_after_sending = None
    ScriptedProvider.meanwhile = None
    built = Deliverer(scripted_settings(tmp_path))
    yield built
    built.close()


def queued(deliverer: Deliverer, template: str = "welcome") -> str:
    delivery_id = str(uuid.uuid4())
    new = NewDelivery(delivery_id, "email", "ada@example.com", "normal", Status.QUEUED)
    record_one(deliverer.store, str(uuid.uuid4()), template, None, '{"name": "Ada"}', [new])
    return delivery_id


def test_an_outcome_waits_out_a_store_outage_longer_than_the_budget(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Giving up on mark_sent would let the claim lapse and a second worker send it again."""
    delivery_id = queued(deliverer)
    real, failures = deliverer.store.mark_sent, list[int]()

    def store_away_for_three_seconds(*args: object, **kwargs: object) -> bool:
        if len(failures) < 12:  # about 3 s of retries, three times NOTIFY_DELIVERY_TIMEOUT
            failures.append(1)
            raise StoreUnavailable("the store is unavailable: OperationalError")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(deliverer.store, "mark_sent", store_away_for_three_seconds)

    outcome = deliverer.attempt(delivery_id)

    assert outcome.status is AttemptStatus.SENT
    assert ScriptedProvider.delivered == [delivery_id]
    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.attempts) == (Status.SENT, 1)


def test_an_unexpected_error_from_the_provider_is_an_unknown_outcome_not_a_retry(
    deliverer: Deliverer,
) -> None:
    """Twilio's client raises a plain ValueError for a 201 whose body is not JSON: the SMS exists."""
    ScriptedProvider.raise_after_sending = ValueError("Expecting value: line 1 column 1 (char 0)")
    delivery_id = queued(deliverer)

    outcome = deliverer.attempt(delivery_id)

    assert outcome.status is AttemptStatus.FAILED
    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.error_code) == (
        Status.FAILED,
        OutcomeUnknownError.CODE,
    )
    assert deliverer.attempt(delivery_id).status is AttemptStatus.SKIPPED  # never sent again by itself
    assert ScriptedProvider.delivered == [delivery_id]


def test_each_try_is_an_attempt_row_naming_the_provider_that_answered(
    deliverer: Deliverer, tmp_path: Path
) -> None:
    """A 4xx from the provider, then its acceptance: two rows, each with the provider's name."""
    (tmp_path / "notify.toml").write_text('[channels.email]\nbackoff_initial = "10ms"\njitter = false\n')
    settings = replace(scripted_settings(tmp_path), config_path=tmp_path / "notify.toml")
    fast = Deliverer(settings)
    ScriptedProvider.raise_after_sending = TransientDeliveryError(
        "451 later", channel="email", provider=ScriptedProvider.name, code="451"
    )
    delivery_id = queued(fast)
    assert fast.attempt(delivery_id).status is AttemptStatus.RETRYING
    ScriptedProvider.raise_after_sending = None
    wait_for(lambda: bool(fast.store.release_due()), timeout=10, what="the retry to be due")
    assert fast.attempt(delivery_id).status is AttemptStatus.SENT
    tries = fast.store.attempts_of(delivery_id)
    fast.close()

    assert [(a.number, a.provider, a.outcome, a.code) for a in tries] == [
        (1, "scripted", "retry", "451"),
        (2, "scripted", "sent", None),
    ]


def test_the_heartbeat_survives_an_error_that_is_not_an_outage(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead heartbeat thread would let this worker be taken for dead mid-call."""
    beats = threading.Semaphore(0)
    calls: list[int] = []

    def beat(worker_id: str) -> bool:
        calls.append(1)
        beats.release()
        if len(calls) == 1:
            raise RuntimeError("cannot execute UPDATE in a read-only transaction")
        return True

    assert deliverer.heartbeat.worker_id  # registered, beating
    monkeypatch.setattr(deliverer.heartbeat.store, "beat", beat)

    assert beats.acquire(timeout=10) and beats.acquire(timeout=10), "the heartbeat stopped beating"


def test_a_delivery_whose_worker_dies_every_time_ends_in_the_dead_letters(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead worker's claims are handed on without a retry decision: attempts must still run out."""
    delivery_id = queued(deliverer)
    store = deliverer.store
    for _ in range(deliverer.policies["email"].max_attempts):
        dying = a_worker(store)
        assert isinstance(store.claim(delivery_id, dying), Claim)  # its worker "died" holding it
        assert store.declare_dead(dying, 0)
        assert [q.id for q in store.reclaim_from_dead()] == [delivery_id]

    outcome = deliverer.attempt(delivery_id)

    assert outcome.status is AttemptStatus.FAILED
    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.error_code) == (
        Status.FAILED,
        OutcomeUnknownError.CODE,
    )
    assert ScriptedProvider.delivered == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_worker_taken_for_dead_mid_handover_has_nothing_handed_on_and_its_outcome_lands(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Cut off from the store while the provider has the message, a worker looks dead to the
    others: the store knows the handover began, so the sweep ends the claim as an unknown
    outcome rather than hand it to another worker, and the answer, once it comes back, wins."""
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    deliverer = (
        request.getfixturevalue("deliverer") if url is None else Deliverer(scripted_settings(tmp_path, url))
    )
    delivery_id = queued(deliverer)
    store = deliverer.store
    other = Deliverer(scripted_settings(tmp_path, url))
    swept: list[object] = []

    def taken_for_dead() -> None:  # another worker's sweep, while this one waits for the answer
        worker = deliverer.heartbeat.worker_id
        assert store.declare_dead(worker, store.worker_beats()[worker])
        swept.append(store.reclaim_from_dead())
        swept.append(store.end_unknown_from_dead())
        swept.append(other.attempt(delivery_id).status)
        delivery = store.get(delivery_id)
        assert delivery is not None
        swept.append((delivery.status, delivery.error_code))

    ScriptedProvider.delivered, ScriptedProvider.meanwhile = [], taken_for_dead
    try:
        outcome = deliverer.attempt(delivery_id)
        delivery = store.get(delivery_id)
    finally:
        other.close()
        if url is not None:
            deliverer.close()

    assert swept == [
        [],
        [delivery_id],
        AttemptStatus.SKIPPED,
        (Status.FAILED, OutcomeUnknownError.CODE),
    ]
    assert ScriptedProvider.delivered == [delivery_id]  # once
    assert outcome.status is AttemptStatus.SENT
    assert delivery is not None and (delivery.status, delivery.provider_id) == (
        Status.SENT,
        f"p-{delivery_id}",
    )


def test_an_answer_that_comes_after_the_heartbeat_gave_up_on_it_replaces_the_unknown_outcome(
    deliverer: Deliverer,
) -> None:
    """Cut off past the heartbeat's ceiling: the heartbeat ends the try as unknown (after the
    sweep did, or not); the provider's answer, recorded once the store is back, wins."""
    delivery_id = queued(deliverer)
    store = deliverer.store

    def cut_off_past_the_ceiling() -> None:
        worker = deliverer.heartbeat.worker_id
        assert store.declare_dead(worker, store.worker_beats()[worker])
        assert store.end_unknown_from_dead() == [delivery_id]
        deliverer.heartbeat.ceiling = 0.0  # the store is back only after longest_attempt + lease
        deliverer.heartbeat.beat()  # the heartbeat's beat lands before the outcome

    ScriptedProvider.meanwhile = cut_off_past_the_ceiling
    outcome = deliverer.attempt(delivery_id)

    assert outcome.status is AttemptStatus.SENT
    assert ScriptedProvider.delivered == [delivery_id]
    found = store.get(delivery_id)
    assert found is not None and (found.status, found.error_code) == (Status.SENT, None)


def test_a_worker_declared_dead_before_its_handover_hands_nothing_over(deliverer: Deliverer) -> None:
    delivery_id = queued(deliverer)
    store = deliverer.store
    real_claim = store.claim

    def claimed_then_taken_for_dead(
        delivery_id: str, worker_id: str, token: str | None = None
    ) -> Claim | Refusal:
        claim = real_claim(delivery_id, worker_id, token)
        worker = deliverer.heartbeat.worker_id
        assert store.declare_dead(worker, store.worker_beats()[worker])
        return claim

    store.claim = claimed_then_taken_for_dead  # type: ignore[method-assign]
    outcome = deliverer.attempt(delivery_id)
    store.claim = real_claim  # type: ignore[method-assign]

    assert outcome.status is AttemptStatus.LOST
    assert ScriptedProvider.delivered == []
    assert [q.id for q in store.reclaim_from_dead()] == [delivery_id]  # for another worker to send


def test_a_burst_stamps_only_the_deliveries_that_wait_and_delivers_each_in_turn(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, burst = queued(deliverer), [queued(deliverer) for _ in range(3)]
    stamped: list[list[str]] = []
    keep_queued = deliverer.store.keep_queued

    def stamp(ids: Collection[str]) -> None:
        stamped.append(list(ids))
        keep_queued(ids)

    monkeypatch.setattr(deliverer.store, "keep_queued", stamp)

    assert [o.status for o in deliverer.attempt_burst([one])] == [AttemptStatus.SENT]
    assert stamped == []  # claimed at once: nothing waits
    sent = [o.status for o in deliverer.attempt_burst([*burst, 42])]  # 42: not an id
    assert sent == [AttemptStatus.SENT] * 3

    assert stamped[0] == burst[1:]  # the first of a burst is claimed at once; the heartbeat may add more
    assert ScriptedProvider.delivered == [one, *burst]
    assert deliverer.heartbeat._waiting == {}


def test_the_attempt_statuses_and_core_codes_keep_the_strings_tasks_logs_and_operators_see() -> None:
    """The task returns these strings and the store keeps the codes: renaming one breaks a filter."""
    assert list(AttemptStatus) == ["sent", "retrying", "failed", "skipped", "lost", "suppressed", "error"]
    assert list(CoreProvider) == ["templates", "config", "notify"]
    assert list(CoreCode) == ["template", "configuration", "address", "bug", "outcome_unknown"]
    assert OutcomeUnknownError.CODE == "outcome_unknown"


def test_a_template_gone_since_send_fails_for_good_with_the_template_code(deliverer: Deliverer) -> None:
    delivery_id = queued(deliverer, template="no_such_template")

    outcome = deliverer.attempt(delivery_id)

    assert outcome.status is AttemptStatus.FAILED
    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.error_code) == (Status.FAILED, "template")
    assert ScriptedProvider.delivered == []


def test_an_address_refused_since_send_fails_for_good_with_the_address_code(deliverer: Deliverer) -> None:
    """A webhook URL send() accepted under NOTIFY_WEBHOOK_ALLOW_PRIVATE=1, in a worker without it."""
    delivery_id = str(uuid.uuid4())
    new = NewDelivery(delivery_id, "webhook", "http://127.0.0.1:9/hook", "normal", Status.QUEUED)
    record_one(deliverer.store, str(uuid.uuid4()), "welcome", None, '{"name": "Ada"}', [new])

    outcome = deliverer.attempt(delivery_id)

    assert outcome.status is AttemptStatus.FAILED
    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.error_code) == (Status.FAILED, "address")
    assert delivery.last_error is not None and "loopback" in delivery.last_error


def test_a_provider_configuration_error_keeps_the_delivery_for_retry_with_the_configuration_code(
    deliverer: Deliverer,
) -> None:
    ScriptedProvider.raise_after_sending = ConfigurationError("bad credentials", setting="NOTIFY_SMTP_USER")
    delivery_id = queued(deliverer)

    outcome = deliverer.attempt(delivery_id)

    assert outcome.status is AttemptStatus.RETRYING
    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.error_code) == (
        Status.RETRYING,
        "configuration",
    )


@pytest.mark.parametrize(
    "refused",
    [
        PermanentDeliveryError(
            "550 5.1.1 Empf\udce4nger unbekannt", channel="email", provider="smtp", code="550"
        ),
        PermanentDeliveryError("400 Bad\x00Request", channel="email", provider="webhook", code="http_400"),
    ],
)
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_refusal_in_text_the_store_cannot_hold_as_written_fails_once_and_calls_the_hook(
    tmp_path: Path, refused: PermanentDeliveryError, store: str, request: pytest.FixtureRequest
) -> None:
    """Latin-1 from a relay, a NUL from a receiver: one try, the hook, a readable reason."""
    ScriptedProvider.delivered = []
    ScriptedProvider.raise_after_sending = refused
    calls: list[str] = []
    url = request.getfixturevalue("postgres_url") if store == "postgresql" else None
    settings = scripted_settings(tmp_path, url)
    deliverer = Deliverer(settings, on_permanent_failure=lambda c, a, e: calls.append(c))
    delivery_id = queued(deliverer)

    outcomes = [deliverer.attempt(delivery_id).status for _ in range(3)]

    deliverer.close()
    assert outcomes == [AttemptStatus.FAILED, AttemptStatus.SKIPPED, AttemptStatus.SKIPPED]
    assert ScriptedProvider.delivered == [delivery_id] and calls == ["email"]


def test_an_outcome_the_store_refuses_outright_is_recorded_without_the_providers_text(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the write fails on after the provider answered, the outcome lands: never a resend."""
    delivery_id = queued(deliverer)
    mark_sent = deliverer.store.mark_sent

    def refuse_odd_ids(claim: Claim, provider_id: str | None, *, provider: str | None = None) -> bool:
        if provider_id is not None:
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "the driver says no")
        return mark_sent(claim, provider_id, provider=provider)

    monkeypatch.setattr(deliverer.store, "mark_sent", refuse_odd_ids)

    assert deliverer.attempt(delivery_id).status is AttemptStatus.SENT
    assert deliverer.attempt(delivery_id).status is AttemptStatus.SKIPPED
    assert ScriptedProvider.delivered == [delivery_id]


def test_a_claim_whose_answer_was_lost_is_given_back_by_the_heartbeat(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim committed, then the connection dropped before its row came back: not stuck."""
    delivery_id = queued(deliverer)
    claim = deliverer.store.claim

    def lost_answer(delivery_id: str, worker_id: str, token: str | None = None) -> object:
        claim(delivery_id, worker_id, token)
        raise StoreUnavailable("the store is unavailable: connection lost")

    monkeypatch.setattr(deliverer.store, "claim", lost_answer)
    with pytest.raises(StoreUnavailable):
        deliverer.attempt(delivery_id)
    monkeypatch.undo()

    deliverer.heartbeat.beat()

    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.attempts) == (Status.RETRYING, 0)
    assert ScriptedProvider.delivered == []


def test_an_attempt_that_raises_after_the_handover_ends_as_an_unknown_outcome(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider took it, and no outcome could be written at all: a dead letter, never a resend."""
    delivery_id = queued(deliverer)

    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("a bug in the outcome write")

    monkeypatch.setattr(deliverer.store, "mark_sent", broken)
    with pytest.raises(RuntimeError):
        deliverer.attempt(delivery_id)
    monkeypatch.undo()

    deliverer.heartbeat.beat()

    delivery = deliverer.store.get(delivery_id)
    assert delivery is not None and (delivery.status, delivery.error_code) == (
        Status.FAILED,
        OutcomeUnknownError.CODE,
    )
    assert ScriptedProvider.delivered == [delivery_id]


def test_a_retrys_time_is_read_when_the_store_answers(
    deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider answered 4xx while the store was away: the retry is recorded once it returns."""
    ScriptedProvider.raise_after_sending = TransientDeliveryError("451 later", channel="email", provider="s")
    delivery_id = queued(deliverer)
    now, calls = deliverer.store.now, [0]

    def clock_away() -> datetime:  # the claim reads it, then the store is away for three reads
        calls[0] += 1
        if 2 <= calls[0] <= 4:
            raise StoreUnavailable("the store is unavailable: connection lost")
        return now()

    monkeypatch.setattr(deliverer.store, "now", clock_away)

    assert deliverer.attempt(delivery_id).status is AttemptStatus.RETRYING
    assert deliverer.store.get(delivery_id).status == Status.RETRYING  # type: ignore[union-attr]
