"""A model of the store's delivery protocol, checked by hypothesis on SQLite and PostgreSQL.

Workers register, claim, beat, record outcomes late and are declared dead
(with the count an observer saw, or a stale one); the clock jumps; sweeps,
releases, give-backs, replays and purges run in any order. After every step
the store must agree with what the protocol promises:

- at most one live claim per delivery, and only the current claim records an outcome;
- only a worker declared dead loses its claims, and a dead worker claims nothing;
- a delivery that was sent is never claimable again, and is sent at most once;
- an outcome from a stale claim never overwrites a newer one;
- every delivery that is not finished becomes claimable again within its bound;
- one dedup key yields exactly one winner per window.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from notify.models import Status
from notify.store import Claim, NewDelivery, Refusal, Store
from notify.store.schema import metadata
from tests.support.records import record_one

WINDOW = 60.0
ADDRESSES = ["a@example.com", "b@example.com"]
KEYS = [None, "k1", "k2"]
DELAYS = st.floats(0, 20)
FINISHED = {Status.SENT, Status.FAILED, Status.DUPLICATE}


class Clock:
    """The store's clock, moved by the model: forward, and sometimes back a little."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Held:
    """A claim the model knows a worker holds."""

    claim: Claim
    worker: str
    done: bool = False  # its outcome was recorded (or refused), or it was handed on


class Protocol(RuleBasedStateMachine):
    url: str = ""

    claims = Bundle("claims")
    deliveries = Bundle("deliveries")
    workers = Bundle("workers")

    @initialize()
    def open_store(self) -> None:
        self.clock = Clock()
        self.store = Store(self.url, clock=self.clock)
        self.store.get("none")  # the store makes its schema on first use
        with self.store.engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
        self.channel_of: dict[str, tuple[str, str | None]] = {}  # id -> (address, key)
        self.current: dict[str, Held] = {}  # delivery id -> its newest claim
        self.sent: dict[str, int] = {}  # delivery id -> successful mark_sent count
        self.holder: dict[tuple[str, str], tuple[str, datetime]] = {}  # (address, key) -> (id, expires)
        self.purged: set[str] = set()
        self.dead: set[str] = set()
        self.beats: dict[str, int] = {}

    def teardown(self) -> None:
        self.store.close()

    # -- producers -------------------------------------------------------------

    @rule(
        target=deliveries,
        address=st.sampled_from(ADDRESSES),
        key=st.sampled_from(KEYS),
        later=st.sampled_from([None, 0.0, 5.0, 30.0]),
    )
    def send(self, address: str, key: str | None, later: float | None) -> str:
        delivery_id = str(uuid.uuid4())
        release_at = None if later is None else self.clock.now + timedelta(seconds=later)
        status = Status.QUEUED if release_at is None else Status.SCHEDULED
        new = NewDelivery(delivery_id, "email", address, "normal", status, key, WINDOW, release_at)
        [recorded] = record_one(self.store, str(uuid.uuid4()), "welcome", None, "{}", [new])
        self.channel_of[delivery_id] = (address, key)
        if key is not None:
            self._check_dedup(address, key, recorded.status, recorded.duplicate_of, delivery_id)
        return delivery_id

    def _check_dedup(
        self, address: str, key: str, status: str, duplicate_of: str | None, new_id: str
    ) -> None:
        held = self.holder.get((address, key))
        if held is not None and held[1] > self.clock.now and held[0] not in self.purged:
            assert (status, duplicate_of) == (Status.DUPLICATE, held[0]), "a second winner in one window"
        else:
            assert status != Status.DUPLICATE, "a duplicate with no live holder"
            self.holder[(address, key)] = (new_id, self.clock.now + timedelta(seconds=WINDOW))

    # -- workers ---------------------------------------------------------------

    @rule(target=workers)
    def start_worker(self) -> str:
        return self._register()

    def _register(self) -> str:
        worker_id = str(uuid.uuid4())
        self.store.register_worker(worker_id, host="model", pid=1)
        self.beats[worker_id] = 0
        return worker_id

    @rule(target=claims, delivery_id=deliveries, worker=workers)
    def claim(self, delivery_id: str, worker: str) -> object:
        before = self.store.get(delivery_id)
        result = self.store.claim(delivery_id, worker)
        claimable = before is not None and before.status == Status.QUEUED and worker not in self.dead
        if isinstance(result, Refusal):
            assert not claimable, (before, worker in self.dead)
            return multiple()
        assert claimable, (before, worker in self.dead)
        assert self.sent.get(delivery_id, 0) == 0, "a sent delivery was claimed again"
        held = Held(result, worker)
        self.current[delivery_id] = held
        return held

    @rule(worker=workers)
    def beat(self, worker: str) -> None:
        assert self.store.beat(worker) == (worker not in self.dead)
        if worker not in self.dead:
            self.beats[worker] += 1

    @rule(worker=workers, stale=st.booleans())
    def declare_dead(self, worker: str, stale: bool) -> None:
        """An observer that saw the worker's count stand still (or saw it an instant too early)."""
        count = self.beats[worker] - 1 if stale else self.beats[worker]
        won = self.store.declare_dead(worker, count)
        assert won == (worker not in self.dead and not stale and count >= 0)
        if won:
            self.dead.add(worker)

    @rule(held=consumes(claims), handed_over=st.booleans())
    def heartbeat_ends_an_abandoned_try(self, held: Held, handed_over: bool) -> None:
        """A try left without an outcome: its worker's heartbeat ends the claim, given back or unknown."""
        delivery_id = held.claim.delivery_id
        before = self.store.get(delivery_id)
        won = self.store.abandon(delivery_id, held.claim.token, "abandoned", handed_over=handed_over)
        assert won == (self.current.get(delivery_id) is held and not held.done)
        after = self.store.get(delivery_id)
        if won:
            assert before is not None and after is not None
            expected = (
                (Status.FAILED, before.attempts) if handed_over else (Status.RETRYING, before.attempts - 1)
            )
            assert (after.status, after.attempts) == expected
        else:
            assert after == before, "a stale claim changed the delivery"
        held.done = True

    @rule(held=consumes(claims))
    def give_back(self, held: Held) -> None:
        delivery_id = held.claim.delivery_id
        before = self.store.get(delivery_id)
        won = self.store.give_back(held.claim, "not sent")
        is_current = self.current.get(delivery_id) is held and not held.done
        assert won == is_current
        after = self.store.get(delivery_id)
        if won:
            assert before is not None and after is not None
            assert (after.status, after.attempts) == (Status.RETRYING, before.attempts - 1)
        else:
            assert after == before, "a stale claim changed the delivery"
        held.done = True

    @rule(held=consumes(claims), outcome=st.sampled_from(["sent", "retry", "failed"]), delay=st.floats(0, 20))
    def record_outcome(self, held: Held, outcome: str, delay: float) -> None:
        delivery_id = held.claim.delivery_id
        before = self.store.get(delivery_id)
        if outcome == "sent":
            won = self.store.mark_sent(held.claim, "p")
        elif outcome == "retry":
            won = self.store.mark_retrying(
                held.claim, "451", "451", self.clock.now + timedelta(seconds=delay)
            )
        else:
            won = self.store.mark_failed(held.claim, "550", "550")
        is_current = self.current.get(delivery_id) is held and not held.done
        assert won == (is_current and before is not None and before.status == Status.SENDING)
        after = self.store.get(delivery_id)
        if not won:
            assert after == before, "a stale claim changed the delivery"
        held.done = True
        if won and outcome == "sent":
            self.sent[delivery_id] = self.sent.get(delivery_id, 0) + 1
            assert self.sent[delivery_id] == 1, "sent twice"

    @rule(delivery_ids=st.lists(deliveries, min_size=1, max_size=4, unique=True))
    def keep_a_burst(self, delivery_ids: list[str]) -> None:
        """A worker holding a burst's message stamps its waiting deliveries: nothing else changes."""
        before = {i: self.store.get(i) for i in delivery_ids}
        self.store.keep_queued(delivery_ids)
        assert {i: self.store.get(i) for i in delivery_ids} == before, "keeping a burst changed a delivery"
        swept = {q.id for q in self.store.queued_since(5.0)}
        assert not swept & set(delivery_ids), "a kept delivery was published again as lost"

    # -- time and maintenance --------------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 3.0, 11.0, 40.0, 120.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += timedelta(seconds=seconds)

    @rule(seconds=st.sampled_from([0.5, 2.0, 3600.0]))
    def clock_steps_back(self, seconds: float) -> None:
        self.clock.now -= timedelta(seconds=seconds)  # no clock decides who is alive

    @rule()
    def release(self) -> None:
        for queued in self.store.release_due():
            assert self.store.get(queued.id).status == Status.QUEUED  # type: ignore[union-attr]

    @rule()
    def sweep(self) -> None:
        orphaned = {i for i, h in self.current.items() if not h.done and h.worker in self.dead}
        orphaned &= {i for i in orphaned if (d := self.store.get(i)) and d.status == Status.SENDING}
        reclaimed = {queued.id for queued in self.store.reclaim_from_dead()}
        assert reclaimed == orphaned, "a live worker's claim was handed on, or a dead one's kept"
        for delivery_id in reclaimed:
            self.current[delivery_id].done = True  # its holder may still answer: no longer current
        self.store.queued_since(5.0)
        self.store.forget_dead_workers()

    @rule(delivery_id=deliveries)
    def replay(self, delivery_id: str) -> None:
        before = self.store.get(delivery_id)
        replayed = [q.id for q in self.store.replay([delivery_id])]
        assert replayed == ([delivery_id] if before is not None and before.status == Status.FAILED else [])

    @rule()
    def purge_dead_letters(self) -> None:
        failed = {i for i in self.channel_of if (d := self.store.get(i)) and d.status == Status.FAILED}
        assert self.store.purge_dead_letters() == len(failed)
        self.purged |= failed

    @rule()
    def everything_recovers(self) -> None:
        """Once each delivery's bound has passed, maintenance has made it claimable.

        The bound: its release time when held (send_at, retry); when claimed, its
        worker being declared dead (every worker stops beating here).
        """
        bounds = [self.clock.now]
        for delivery_id in self.channel_of:
            delivery = self.store.get(delivery_id)
            if delivery is not None and delivery.next_attempt_at is not None:
                bounds.append(delivery.next_attempt_at)
        self.clock.now = max(bounds) + timedelta(milliseconds=1)
        for worker, count in self.store.worker_beats().items():
            assert self.store.declare_dead(worker, count)
            self.dead.add(worker)
        self.store.release_due()
        self.store.reclaim_from_dead()
        survivor = self._register()
        for delivery_id in self.channel_of:
            delivery = self.store.get(delivery_id)
            if delivery is None or delivery.status in FINISHED:
                continue
            assert delivery.status == Status.QUEUED, delivery
            self.current.pop(delivery_id, None)
            claim = self.store.claim(delivery_id, survivor)
            assert isinstance(claim, Claim)
            self.current[delivery_id] = Held(claim, survivor)

    # -- invariants --------------------------------------------------------------

    @invariant()
    def at_most_one_live_claim_and_status_matches(self) -> None:
        if not hasattr(self, "store"):
            return
        with self.store.engine.connect() as conn:
            query = "SELECT id, status, claim_token, error_code FROM notify_deliveries"
            rows = conn.execute(sa.text(query)).all()
        for delivery_id, status, token, code in rows:
            # A claim ended as an unknown outcome keeps its token, for its late answer to replace it.
            unknown = status == Status.FAILED and code == "outcome_unknown"
            if status == Status.SENDING:
                assert token is not None, (status, token)
            elif not unknown:
                assert token is None, (status, token)
            if token is not None:
                assert self.current[delivery_id].claim.token == token, "the store's claim is not the newest"
            if self.sent.get(delivery_id):
                assert status == Status.SENT


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/model.db"
    else:
        yield request.getfixturevalue("postgres_url")


def test_the_delivery_protocol_keeps_its_promises(store_url: str) -> None:
    machine = type("ProtocolOnThisStore", (Protocol,), {"url": store_url})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
