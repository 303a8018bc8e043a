"""A model of the system: real workers' parts against the real store, the faults around them.

Each simulated worker process has the real `Deliverer` (its real `Heartbeat`)
and the real `Maintenance`, each with stores of its own, on SQLite (a file) or
PostgreSQL. A seeded schedule of steps drives them from the test thread:
maintenance passes and heartbeats are called as their threads would call
them, and each message a worker takes runs the real `attempt_burst` in a
thread of its own (as a Celery task would), so a provider call can be held
while the rest of the system moves on. Only the edges are fakes:

- the provider (tests/support/fake_provider.py, loaded as NOTIFY_PUSH_BACKEND)
  counts every handover and answers at once, late (held while time passes),
  never (until the provider's own deadline, then an unknown outcome), with a
  transient or permanent failure, an unknown outcome, a bug, or hostile text
  (NUL, a lone surrogate, a 1 MB reason);
- the broker is a list: a message is taken by a worker (acked when its attempt
  returns, put back when the store was away), lost, or delivered twice;
- the provider's receipts come to `notify web`, played by the real `Receipts`
  on a store of its own (every worker's `Maintenance` has one too, to settle
  those that came before `sent`), each with a NOTIFY_ON_STATUS hook that counts.

Besides sends, the steps put an address of the model's deliveries on the
suppression list (one still to be sent, preferably: queued, scheduled, held by
the provider, retrying; for every category, or for one the template has not)
and take it off again, send to an address already used (one on the list,
preferably), and send receipts: delivered or undelivered for a message the
provider accepted (or holds: before its worker recorded `sent`; or any other
send's id), sent again, the opposite one after it, and two at once (the second
taken whole between the first's read of its delivery and its write).

Time is virtual: each process's monotonic clock (a fixed offset of its own)
and the store's clock (each SQLite process's wall clock, or the database's
clock behind each store's real `DatabaseClock` on PostgreSQL) move only when
the model says so; the clocks step forward and back. Faults: store outages
(a real one on PostgreSQL, the driver failing every statement on SQLite), one
process cut off from the store, workers killed (idle, holding a message,
after the provider accepted, while recording), a heartbeat late by one beat,
rows an older release left (`release_at` NULL), and on PostgreSQL a claim
landing between a maintenance statement's SELECT and its UPDATE.

Invariants:

- a delivery is handed over again only after every earlier handover was
  refused, even if the process that made it was killed or cut off from the
  store meanwhile (the handover is recorded before it starts: a claim whose
  worker is taken for dead after that ends as an unknown outcome);
- a message still on the broker is not published again within QUEUED_GRACE
  unless a worker took it meanwhile or a clock stepped;
- no delivery is handed over on a claim taken after its address was put on
  the list for every category (and before it was taken off): the claim reads
  the list in its own statement, so only one taken before may still hand over;
  a delivery ends `suppressed` only if its address was on the list;
- a receipt taken while nothing else moves does what its delivery's status
  says: a repeat nothing, one for a `sending` delivery waits, one for the very
  send a `sent` delivery was sent by moves it, one for a final delivery nothing;
- a delivery is `delivered` or `undelivered` only by such a receipt (undelivered:
  for the send it was sent by), never the one after the other nor back, and
  NOTIFY_ON_STATUS tells each of sent, delivered, undelivered once at most and
  never both delivered and undelivered;
- once the faults stop and time passes, every delivery is final (one to a
  suppressed address too); one a provider accepted is `sent`, `delivered` or
  `undelivered` (or failed as `outcome_unknown`), one recorded so was accepted
  (or proven `delivered` by a receipt); a receipt that came while its delivery
  was `sending` is applied once it is `sent` by that message (unless a clock
  stepped by RECEIPT_WAIT since).

Each violation raises an AssertionError starting with "INVARIANT"; the
mutants (tests/support/mutants.py) are checked against that.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import subprocess
import sys
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

import notify.delivery.attempt
import notify.delivery.heartbeat
import notify.delivery.maintenance
import notify.store.clock
from notify.constants import QUEUED_GRACE
from notify.delivery.attempt import Deliverer, Outcome, longest_attempt
from notify.delivery.heartbeat import Heartbeat
from notify.delivery.liveness import Liveness
from notify.delivery.maintenance import Maintenance
from notify.errors import (
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    StoreUnavailable,
    TransientDeliveryError,
)
from notify.models import FINAL_STATUSES, Delivery, Status, SuppressionReason
from notify.providers.base import Message, Receipt
from notify.receipts import RECEIPT_WAIT, Receipts, Taken
from notify.settings import Secret, Settings
from notify.store import Claim, NewDelivery, NewReceipt, Queued, ReceiptTarget, Refusal, Store
from notify.store.clock import Clock, DatabaseClock
from notify.store.schema import deliveries, workers
from tests.conftest import REPO
from tests.support import fake_provider
from tests.support.outages import store_outage
from tests.support.processes import wait_for
from tests.support.records import record_one

T = TypeVar("T")
LEASE = 3.0
HALF = 0.5  # the model's time step: maintenance's release cadence
PROVIDER_DEADLINE = 10.0  # NOTIFY_DELIVERY_TIMEOUT: a call that never answers ends as unknown then
END_BOUND = 240.0  # virtual seconds after the faults stop by which every delivery is final
BASE = datetime(2026, 1, 1, tzinfo=UTC)
FINAL = FINAL_STATUSES  # sent, delivered, undelivered, failed, duplicate, suppressed
SENT_BY_IT = {Status.SENT, Status.DELIVERED, Status.UNDELIVERED}  # its provider accepted it
SAID = {Status.DELIVERED, Status.UNDELIVERED}  # what a receipt says, once per delivery
TOLD_ONCE = {str(s) for s in (Status.SENT, *SAID)}  # NOTIFY_ON_STATUS, at most once per delivery each
POLICY = """
[channels.push]
max_attempts = 4
backoff_initial = 5.0
backoff_max = 10.0
jitter = false
"""
HOSTILE = "\x00 \udce4 " + "é" * 1_000_000


class Killed(BaseException):
    """The process died here: nothing after this point of it runs."""


class Violation(AssertionError):
    def __init__(self, what: str) -> None:
        super().__init__(f"INVARIANT: {what}")


_here = threading.local()  # .proc: the simulated process this thread belongs to; .run: its attempt


@dataclass(eq=False)
class Handover:
    number: int
    delivery_id: str
    proc: Process
    worker: str | None  # its process's registration as a worker when it was made
    at: float
    result: str = "pending"  # accepted, refused, unknown
    provider_id: str = ""  # the provider's id of this message, if it accepts it at once ("accept")

    def may_have_counted(self) -> bool:
        """Whether a second handover would be a second copy the system should have prevented:
        unless it was refused, always, even if its process was killed or taken for dead since
        (the store knows it was handed over: its claim ends as an unknown outcome)."""
        return self.result != "refused"


@dataclass(eq=False)
class Run:
    """One message a worker took: `attempt_burst` in a thread of its own."""

    proc: Process
    ids: list[str]
    plan: str
    started: float
    state: str = "running"  # parked (in the provider), sleeping (recording again), done
    answer: str | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None
    claimed_listed: set[str] = field(default_factory=set)  # claimed while its address was suppressed


@dataclass(eq=False)
class Taking:
    """One receipt the provider sent to `notify web`, and what taking it did."""

    receipt: NewReceipt
    at: float
    result: Taken | None = None  # None: the store did not answer (the provider sends it again)
    judged: bool = True  # False: its result depends on a rival receipt taken meanwhile


@dataclass(eq=False)
class Process:
    name: str
    mono_offset: float
    killed: bool = False
    cut_off: bool = False
    cut_ended: float = -1e9  # when it last got the store back (a cut-off's or an outage's end)
    worker_ids: set[str] = field(default_factory=set)
    known_dead: set[str] = field(default_factory=set)  # its registrations declared dead, and why was checked
    late_beat: bool = False
    next_beat: float = 0.0
    redeliver_on_death: bool = True
    deliverer: Deliverer | None = None
    heartbeat: Heartbeat | None = None
    maintenance: Maintenance | None = None
    stores: list[Store] = field(default_factory=list)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        previous = getattr(_here, "proc", None)
        _here.proc = self
        try:
            yield
        finally:
            _here.proc = previous


class VirtualTime(types.SimpleNamespace):
    """The `time` of notify's delivery modules: each process's monotonic clock, moved by the model."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self._model = model

    def monotonic(self) -> float:
        proc: Process | None = getattr(_here, "proc", None)
        return self._model.t + (proc.mono_offset if proc is not None else 0.0)

    def sleep(self, seconds: float) -> None:  # notify's own retry pauses: a killed process ends here
        proc: Process | None = getattr(_here, "proc", None)
        run: Run | None = getattr(_here, "run", None)
        if proc is not None and proc.killed:
            raise Killed
        if run is not None:
            run.state = "sleeping"
        time.sleep(min(seconds, 0.01))
        if proc is not None and proc.killed:
            raise Killed
        if run is not None:
            run.state = "running"

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class Broker:
    """Maintenance's `publish`, and the workers' queue: the model takes, loses and redelivers."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.messages: list[tuple[list[str], float]] = []  # ids, when published (true time)
        self.taken: dict[str, float] = {}  # delivery id -> when a worker last took a message of it
        self.lock = threading.Lock()

    def publish(self, queued: list[Queued]) -> None:
        now = self.model.t
        with self.lock:
            for q in queued:
                for ids, at in self.messages:
                    waited = q.id in ids and now - at < QUEUED_GRACE and self.taken.get(q.id, -1e9) < at
                    # A step lingers: each store's DatabaseClock takes the new time within a minute.
                    stepped = self.model.clock_stepped_at > at - DatabaseClock.RESYNC_EVERY - QUEUED_GRACE
                    if waited and not stepped:
                        raise Violation(
                            f"delivery {q.id} published again {now - at:.1f}s after its message, still on "
                            "the broker and taken by no worker"
                        )
                self.messages.append(([q.id], now))

    def put_back(self, ids: list[str]) -> None:
        with self.lock:
            self.messages.append((ids, self.model.t))

    def backlog(self, _channel: str, _priority: str) -> int:
        with self.lock:
            return len(self.messages)

    def take(self, index: int, *, keep: bool = False) -> list[str]:
        with self.lock:
            ids, _at = self.messages[index] if keep else self.messages.pop(index)
            for i in ids:
                self.taken[i] = self.model.t
            return ids


class Model:
    def __init__(self, url: str, home: Path, seed: int) -> None:
        self.url, self.home, self.rng = url, home, random.Random(seed)
        self.postgres = url.startswith("postgresql")
        self.t = 0.0
        self.db_step = 0.0
        self.clock_stepped_at = -1e9
        self.outage: contextlib.ExitStack | None = None
        self.sqlite_outage = False
        self.procs: list[Process] = []
        self.runs: list[Run] = []
        self.handovers: dict[str, list[Handover]] = {}
        self.ids: list[str] = []
        self.broker = Broker(self)
        self.lock = threading.Lock()
        self.race_armed = False
        self.violations: list[str] = []
        self.address_of: dict[str, str] = {}
        self.listed: set[str] = set()  # addresses suppressed for every category, as the model put them
        self.ever_listed: set[str] = set()
        self.on_list: set[str] = set()  # for every category or for one
        self.list_version = 0  # moves before and after each change of the list
        self.told: Counter[tuple[str, str]] = Counter()  # NOTIFY_ON_STATUS calls per (delivery, status)
        self.takings: list[Taking] = []
        self.seen: dict[str, tuple[Status, str | None]] = {}  # each delivery's status as last observed
        self.big_steps: list[float] = []  # when a clock stepped forward by RECEIPT_WAIT or more
        self.rival: NewReceipt | None = None  # taken whole amid the next receipt notify web takes
        self.raced = False
        config = home / "notify.toml"
        config.write_text(POLICY)
        self.settings = Settings(
            home=home,
            database_url=Secret(url),
            templates_dir=REPO / "templates",
            config_path=config,
            lease_seconds=LEASE,
            delivery_timeout=PROVIDER_DEADLINE,
            backends=(("push", fake_provider.PATH),),
        )
        self.producer = Store(url, clock=self.db_time)
        self.producer.get("none")  # the schema
        self.web = Store(url, clock=self.db_time)  # `notify web`'s: the providers' receipts come there
        self.web_target = self.web.receipt_target
        self.web.receipt_target = self.receipt_target  # type: ignore[method-assign]
        self.web_receipts = Receipts(self.web, self.settings, on_status=self.on_status)

    # -- clocks ------------------------------------------------------------------

    def db_time(self) -> datetime:
        return BASE + timedelta(seconds=self.t + self.db_step)

    def store_clock(self, proc: Process) -> Clock:
        if self.postgres:  # each store reads the database's time, carried on by its process's clock
            return DatabaseClock(self.db_time)
        return self.db_time  # SQLite: the host's clock, which every process shares

    # -- processes -----------------------------------------------------------------

    def start_worker(self) -> Process:
        proc = Process(f"w{len(self.procs)}", mono_offset=self.rng.uniform(0, 1e6), next_beat=self.t)
        with proc.running():
            heartbeat_store = Store(self.url, clock=self.store_clock(proc))
            heartbeat = Heartbeat(
                heartbeat_store,
                self.settings.lease,
                self.settings.heartbeat_every,
                longest_attempt(self.settings) + self.settings.lease,
            )
            heartbeat.stop()  # no thread: the model beats it, as its thread would
            deliverer = Deliverer(self.settings, heartbeat=heartbeat, on_status=self.on_status)
            deliverer.store.now = self.store_clock(proc)
            deliverer.store.claim = functools.partial(self.claim, deliverer.store.claim)  # type: ignore[method-assign]
            maintenance_store = Store(self.url, clock=self.store_clock(proc))
            proc.maintenance = Maintenance(
                maintenance_store,
                self.settings,
                self.broker.publish,
                channels=["push"],
                backlog=self.broker.backlog,
                receipts=Receipts(maintenance_store, self.settings, on_status=self.on_status),
            )
        proc.deliverer, proc.heartbeat = deliverer, heartbeat
        proc.stores = [heartbeat_store, deliverer.store, maintenance_store]
        self.procs.append(proc)
        return proc

    def another_worker(self) -> None:
        self.start_worker()

    def live(self) -> list[Process]:
        return [p for p in self.procs if not p.killed]

    def close(self) -> None:
        for run in self.runs:
            if run.state == "parked":
                run.answer = "accept"
                run.wake.set()
        for proc in self.procs:
            proc.killed = True  # threads still recording end at their next pause
        for run in self.runs:
            if run.state == "parked":
                run.wake.set()
        if self.outage is not None:
            self.outage.close()
        self.sqlite_outage = False
        wait_for(lambda: all(r.state == "done" for r in self.runs), timeout=30, what="every attempt to end")
        for proc in self.procs:
            for store in proc.stores:
                store.close()
        self.producer.close()
        self.web.close()

    # -- the provider's edge ---------------------------------------------------------

    def deliver(self, message: Message) -> Receipt:
        proc: Process = _here.proc
        run: Run = _here.run
        assert proc.heartbeat is not None
        worker = proc.heartbeat._worker_id  # read only: which registration hands this over
        if worker is not None:
            proc.worker_ids.add(worker)
        with self.lock:
            earlier = self.handovers.setdefault(message.delivery_id, [])
            number = sum(len(h) for h in self.handovers.values()) + 1
            handover = Handover(number, message.delivery_id, proc, worker, self.t, provider_id=f"h{number}")
            counted = [h for h in earlier if h.may_have_counted()]
            earlier.append(handover)
        if counted:
            self.violations.append(
                f"delivery {message.delivery_id} handed over again by {proc.name} after "
                + ", ".join(f"{h.proc.name}'s handover ({h.result})" for h in counted)
            )
        if message.delivery_id in run.claimed_listed:
            self.violations.append(
                f"delivery {message.delivery_id} handed over by {proc.name} on a claim taken after its "
                f"address {self.address_of[message.delivery_id]} was suppressed (and not unsuppressed since)"
            )
        answer = run.plan
        if answer in ("late", "never"):
            run.state = "parked"
            if not run.wake.wait(60):
                raise AssertionError("a held provider call was never answered by the model")
            run.state = "running"
            answer = run.answer or "accept"
        return self.answer(handover, answer, proc)

    def answer(self, handover: Handover, answer: str, proc: Process) -> Receipt:
        channel, provider = "push", "fake"
        if answer == "killed" or proc.killed:
            raise Killed
        if answer in ("accept", "hostile_accept", "accept_then_die"):
            handover.result = "accepted"
            if answer == "accept_then_die":
                self.kill(proc, settle=False)
                raise Killed
            return Receipt(handover.provider_id if answer == "accept" else HOSTILE)
        if answer in ("transient", "hostile_transient"):
            handover.result = "refused"
            hostile = answer == "hostile_transient"
            raise TransientDeliveryError(
                HOSTILE if hostile else "busy",
                channel=channel,
                provider=provider,
                code="\x00\udce4" if hostile else "503",
            )
        if answer == "permanent":
            handover.result = "refused"
            raise PermanentDeliveryError("unregistered \x00\udce4", channel=channel, provider=provider)
        handover.result = "unknown"
        if answer == "bug":
            raise ValueError("the answer does not parse: \udce4")
        raise OutcomeUnknownError("no answer in time", channel=channel, provider=provider)

    # -- attempts ----------------------------------------------------------------------

    def take(self, proc: Process, index: int, plan: str, *, keep: bool = False) -> Run:
        ids = self.broker.take(index, keep=keep)
        return self.attempt(proc, ids, plan)

    def attempt(self, proc: Process, ids: list[str], plan: str) -> Run:
        run = Run(proc, ids, plan, self.t)
        self.runs.append(run)
        deliverer = proc.deliverer
        assert deliverer is not None

        def work() -> None:
            _here.proc, _here.run = proc, run
            try:
                run.outcomes = deliverer.attempt_burst(ids, channel="push")
            except StoreUnavailable:  # the task is retried: its message goes back on the broker
                self.broker.put_back(ids)
            except Killed:
                if proc.redeliver_on_death:  # unacked: the broker hands it out again
                    self.broker.put_back(ids)
            except BaseException as exc:  # a bug: reported at the end
                run.error = exc
            finally:
                run.state = "done"

        threading.Thread(target=work, name=f"attempt-{proc.name}", daemon=True).start()
        self.settle()
        return run

    def settle(self) -> None:
        """Wait until every attempt is done, held by the provider, or recording through a fault."""

        def blocked(run: Run) -> bool:
            away = self.outage is not None or self.sqlite_outage or run.proc.cut_off
            return run.state in ("done", "parked") or (run.state == "sleeping" and away)

        wait_for(lambda: all(blocked(r) for r in self.runs), timeout=30, what="the attempts to settle")

    def resolve(self, run: Run, answer: str) -> None:
        run.answer = answer
        run.wake.set()
        wait_for(lambda: run.state != "parked", timeout=10, what="a held call to resume")
        self.settle()

    def kill(self, proc: Process, *, settle: bool = True) -> None:
        proc.killed = True
        proc.redeliver_on_death = self.rng.random() < 0.6
        for run in self.runs:
            if run.proc is proc and run.state == "parked":
                run.answer = "killed"
                run.wake.set()
        if settle:
            self.settle()

    # -- time ----------------------------------------------------------------------------

    def advance(self, steps: int) -> None:
        """Time passes: each live process beats and runs maintenance as its threads would."""
        for _ in range(steps):
            self.t += HALF
            work: list[tuple[Process, str]] = []
            for proc in self.live():
                if self.t >= proc.next_beat:
                    proc.next_beat += self.settings.heartbeat_every
                    if proc.late_beat:  # this beat comes one interval late
                        proc.late_beat = False
                    else:
                        work.append((proc, "beat"))
                work.append((proc, "tick"))
            self.rng.shuffle(work)
            for proc, what in work:
                self.step_of(proc, what)
            for run in self.runs:
                overdue = run.state == "parked" and self.t - run.started >= PROVIDER_DEADLINE
                if overdue and run.plan == "never":
                    self.resolve(run, "unknown")
            self.settle()

    def step_of(self, proc: Process, what: str) -> None:
        with proc.running():
            if what == "beat":
                assert proc.heartbeat is not None
                proc.heartbeat.beat()  # logs and returns when the store is away
                if proc.heartbeat._worker_id is not None:  # read only: its registration now
                    proc.worker_ids.add(proc.heartbeat._worker_id)
                return
            assert proc.maintenance is not None
            _here.maintenance = True
            try:
                proc.maintenance.tick()
            except NotifyError:  # the store is away: the thread tries again next time
                pass
            finally:
                _here.maintenance = False

    # -- the store's side ------------------------------------------------------------------

    def fail_statement(self, conn: sa.Connection, statement: str, parameters: Any) -> None:
        """Every statement of the model's processes passes here (a SQLAlchemy event)."""
        proc: Process | None = getattr(_here, "proc", None)
        if getattr(_here, "model", False):  # the model's own reads, from a worker's thread
            return
        if self.sqlite_outage or (proc is not None and proc.cut_off):
            raise conn.dialect.loaded_dbapi.OperationalError("the model: the store is away")
        requeue = statement.lstrip().upper().startswith("UPDATE NOTIFY_DELIVERIES SET STATUS")
        if self.race_armed and getattr(_here, "maintenance", False) and requeue:
            self.race(parameters)

    def race(self, parameters: Any) -> None:
        """A worker claims one of the deliveries a maintenance statement chose, before its UPDATE."""
        values = parameters.values() if isinstance(parameters, dict) else parameters
        chosen = [v for v in values if isinstance(v, str) and v in self.ids]
        queued = [i for i in chosen if self.status(i) == Status.QUEUED]
        others = [p for p in self.live() if not p.cut_off and p is not getattr(_here, "proc", None)]
        if not queued or not others:
            return
        self.race_armed = False
        _here.maintenance = False
        try:
            self.attempt(self.rng.choice(others), [queued[0]], "late")
        finally:
            _here.maintenance = True

    def status(self, delivery_id: str) -> Status | None:
        found = self.get(delivery_id)
        return None if found is None else found.status

    def raw_row(self, delivery_id: str) -> dict[str, Any]:
        """A delivery's whole row and its worker's, to say why it is stuck."""
        d, w = deliveries.c, workers.c
        query = sa.select(deliveries, w.dead, w.beats).outerjoin(workers, w.id == d.worker_id)
        with self.producer.engine.connect() as conn:
            row = conn.execute(query.where(d.id == delivery_id)).mappings().first()
        return dict(row) if row else {"id": delivery_id}

    def get(self, delivery_id: str) -> Delivery | None:
        return self.again(lambda: self.producer.get(delivery_id))

    def again(self, call: Callable[[], T]) -> T:
        """The model's own call, once more if it met a connection a past outage killed."""
        before = getattr(_here, "model", False)
        _here.model = True
        try:
            for _ in range(3):
                with contextlib.suppress(StoreUnavailable, sa.exc.OperationalError):
                    return call()
            return call()
        finally:
            _here.model = before

    def dead_workers(self) -> set[str]:
        """The registrations the model saw that are dead now (or forgotten, which only the dead are)."""

        def read() -> set[str]:
            with self.producer.engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT id FROM notify_workers WHERE NOT dead")).scalars()
                return set(rows)

        live = self.again(read)
        return {w for p in self.procs for w in p.worker_ids} - live

    def declared_dead_only_when_cut_off_or_killed(self) -> None:
        """A worker whose beats reach the store is not declared dead: only a killed one, or one
        whose beats failed (cut off, or its connections lost in an outage) within the last lease
        and two sweeps, as an observer may count them."""
        dead = self.dead_workers()
        window = LEASE + 2 * self.settings.sweep_every + 2 * HALF
        for proc in self.procs:
            newly = (proc.worker_ids & dead) - proc.known_dead
            if newly and not proc.killed and not proc.cut_off and self.t - proc.cut_ended > window:
                raise Violation(f"{proc.name}, beating, declared dead ({sorted(newly)[0]})")
            proc.known_dead |= newly

    def send(self, *, later: float | None = None, legacy: bool = False, address: str | None = None) -> None:
        delivery_id = str(uuid.uuid4())
        release_at = None if later is None else self.db_time() + timedelta(seconds=later)
        status = Status.QUEUED if release_at is None else Status.SCHEDULED
        address = address or f"token-{len(self.ids)}"
        new = NewDelivery(delivery_id, "push", address, "normal", status, None, 0.0, release_at)
        notification = str(uuid.uuid4())
        [recorded] = self.again(
            lambda: record_one(self.producer, notification, "welcome", None, '{"name": "Ada"}', [new])
        )
        self.ids.append(delivery_id)
        self.address_of[delivery_id] = address
        if recorded.status is Status.SUPPRESSED:  # its address is on the list: nothing to publish
            return
        if legacy:  # a retry as notify 0.3 left it: its time in next_attempt_at only
            with self.producer.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE notify_deliveries SET status = 'retrying', release_at = NULL, "
                        "attempts = 1, next_attempt_at = :at WHERE id = :id"
                    ),
                    {"at": self.db_time(), "id": delivery_id},
                )
        elif release_at is None:
            self.broker.publish([Queued(delivery_id, "push", "normal")])

    # -- the suppression list ----------------------------------------------------------------

    def list_and_receipt_steps(self, away: bool) -> list[tuple[int, Callable[[], None]]]:
        """The steps of the suppression list and of the receipts, while the store answers."""
        steps: list[tuple[int, Callable[[], None]]] = []
        if away:
            return steps
        if self.ids and len(self.ids) < 12:  # to an address already used: one on the list, preferably
            addresses = sorted(self.on_list) or sorted(set(self.address_of.values()))
            steps.append((1, lambda: self.send(address=self.rng.choice(addresses))))
        if self.ids:
            steps.append((2, self.suppress))
        if self.on_list:
            steps.append((1, self.unsuppress))
        if self.handovers:
            steps.append((3, self.receipt))
        if self.takings:
            steps.append((1, self.receipt_again))
        if any(h.result == "accepted" for hs in self.handovers.values() for h in hs):
            steps.append((1, self.receipts_at_once))
        return steps

    def claim(
        self, claim: Callable[..., Claim | Refusal], delivery_id: str, *args: Any, **kwargs: Any
    ) -> Claim | Refusal:
        """A worker's `Store.claim`, unchanged; noted on its attempt if the list had its address,
        for every category, all along (from before the statement to after its answer)."""
        address = self.address_of.get(delivery_id)
        before = (self.list_version, address in self.listed)
        found = claim(delivery_id, *args, **kwargs)
        after = (self.list_version, address in self.listed)
        run: Run | None = getattr(_here, "run", None)
        if isinstance(found, Claim) and before == after and before[1] and run is not None:
            run.claimed_listed.add(delivery_id)
        return found

    def suppress(self) -> None:
        """An address of the model's deliveries goes on the list (an operator, a complaint): one
        still to be sent preferably (queued, scheduled, held by the provider, retrying); for every
        category, or for one its template does not have."""
        unfinished = [i for i in self.ids if self.seen.get(i, (Status.QUEUED, None))[0] not in FINAL]
        address = self.address_of[self.rng.choice(unfinished or self.ids)]
        category = self.rng.choice(["", "", "news"])
        self.list_version += 1  # a claim overlapping the change is not judged
        if not category:
            self.ever_listed.add(address)
        reason = SuppressionReason.MANUAL
        self.again(lambda: self.producer.suppress("push", address, reason, "the model", category=category))
        self.on_list.add(address)
        if not category:
            self.listed.add(address)
        self.list_version += 1

    def unsuppress(self) -> None:
        """An operator takes an address off the list (every category)."""
        address = self.rng.choice(sorted(self.on_list))
        self.list_version += 1
        self.again(lambda: self.producer.unsuppress("push", address))
        self.on_list.discard(address)
        self.listed.discard(address)
        self.list_version += 1

    # -- receipts ----------------------------------------------------------------------------

    def on_status(self, delivery_id: str, _channel: str, status: str, _code: str | None) -> None:
        """NOTIFY_ON_STATUS: every worker's (sent, failed), and every Receipts' (web's, the sweeps')."""
        with self.lock:
            self.told[(delivery_id, status)] += 1
            times = self.told[(delivery_id, status)]
            both = all(self.told[(delivery_id, str(s))] for s in SAID)
        if status in TOLD_ONCE and times > 1:
            self.violations.append(f"delivery {delivery_id}: NOTIFY_ON_STATUS told {status} {times} times")
        if both:
            self.violations.append(f"delivery {delivery_id}: NOTIFY_ON_STATUS told delivered and undelivered")

    def new_receipt(self, handover: Handover, status: Status) -> NewReceipt:
        code = None if status is Status.DELIVERED else self.rng.choice(["30003", "30005", "30008"])
        return NewReceipt(handover.delivery_id, "model", handover.provider_id, status, code, "the model's")

    def receipt(self) -> None:
        """The provider sends a receipt for a message handed to it: mostly one it accepted, or one
        it still holds (the worker has not recorded `sent`), else any (a refused send's id, an
        earlier send's); delivered or undelivered, often the opposite of one it sent before."""
        handed = [h for hs in self.handovers.values() for h in hs]
        accepted = [h for h in handed if h.result == "accepted"]
        held = [h for h in handed if h.result == "pending"]
        handover = self.rng.choice(self.rng.choices([accepted, held, handed], [6, 3, 1])[0] or handed)
        earlier = [
            t.receipt.status
            for t in self.takings
            if (t.receipt.delivery_id, t.receipt.provider_id) == (handover.delivery_id, handover.provider_id)
        ]
        if earlier and self.rng.random() < 0.5:  # out of order: the other one
            status = Status.DELIVERED if earlier[-1] is Status.UNDELIVERED else Status.UNDELIVERED
        else:
            status = self.rng.choice([Status.DELIVERED, Status.UNDELIVERED])
        self.take_receipt(self.new_receipt(handover, status))

    def receipt_again(self) -> None:
        """The provider sends a receipt again (it did not hear notify web's answer)."""
        self.take_receipt(self.rng.choice(self.takings).receipt)

    def receipts_at_once(self) -> None:
        """Delivered and undelivered for one accepted message, taken by two of notify web's requests
        at once: the second taken whole between the first's read of its delivery and its write."""
        handover = self.rng.choice(
            [h for hs in self.handovers.values() for h in hs if h.result == "accepted"]
        )
        first, second = self.rng.sample([Status.DELIVERED, Status.UNDELIVERED], 2)
        self.rival = self.new_receipt(handover, second)
        try:
            self.take_receipt(self.new_receipt(handover, first))
        finally:
            self.rival = None

    def receipt_target(self, delivery_id: str) -> ReceiptTarget | None:
        """notify web's `Store.receipt_target`; a rival receipt, if one is due, is taken right after it."""
        found = self.web_target(delivery_id)
        rival, self.rival = self.rival, None
        if rival is not None:
            self.take_receipt(rival)
            self.raced = True
        return found

    def take_receipt(self, receipt: NewReceipt) -> None:
        """notify web takes `receipt` (`Receipts.take`), sent again while the store did not answer;
        what it did is judged against what the model read just before (unless a rival raced it)."""
        key = (receipt.delivery_id, receipt.provider_id, receipt.status)
        earlier = [
            t for t in self.takings if (t.receipt.delivery_id, t.receipt.provider_id, t.receipt.status) == key
        ]
        found = self.get(receipt.delivery_id)
        taking = Taking(receipt, self.t)
        self.takings.append(taking)
        self.raced = False
        for _ in range(3):
            try:
                taking.result = self.web_receipts.take(receipt)
                break
            except StoreUnavailable:  # a connection a past outage killed: kept, or kept the next time
                taking.judged = False
        if self.raced:
            taking.judged = False
        self.raced = False
        after = self.get(receipt.delivery_id)
        if after is not None:
            self.saw(after.id, after.status, after.provider_id)
        if taking.result is None or not taking.judged or any(t.result is None for t in earlier):
            return
        expected = self.what_a_receipt_does(receipt, found, repeated=bool(earlier))
        shown = "gone" if found is None else f"{found.status} by {found.provider_id}"
        if expected is not None and taking.result is not expected:
            self.violations.append(
                f"a receipt {receipt.status} for {receipt.provider_id} of delivery {receipt.delivery_id} "
                f"({shown}) was taken as {taking.result}, not {expected}"
            )
        elif expected is Taken.MOVED and (after is None or after.status is not receipt.status):
            self.violations.append(f"a receipt {receipt.status} moved {receipt.delivery_id} to {after}")

    @staticmethod
    def what_a_receipt_does(receipt: NewReceipt, found: Delivery | None, *, repeated: bool) -> Taken | None:
        """What taking `receipt` does to its delivery, `found` just before (nothing else moving);
        None where that is a judgement of its own (a `delivered` receipt for another send, one for
        an unknown outcome: notify.receipts says what it makes of those)."""
        if repeated:
            return Taken.REPEATED
        if found is None:
            return Taken.IGNORED
        if found.status is Status.SENDING:
            return Taken.WAITING
        if found.status is Status.SENT and found.provider_id == receipt.provider_id:
            return Taken.MOVED
        if found.status in SAID or found.status in (Status.DUPLICATE, Status.SUPPRESSED):
            return Taken.IGNORED  # final already, or never sent
        return None

    def saw(self, delivery_id: str, status: Status, provider_id: str | None) -> None:
        """A delivery's status as the model read it: a receipt's status stays, and comes only from
        a receipt for its send; `suppressed` only to an address the list had for every category."""
        before = self.seen.get(delivery_id)
        self.seen[delivery_id] = (status, provider_id)
        if before is not None and before[0] in SAID and status is not before[0]:
            self.violations.append(f"delivery {delivery_id} was {before[0]} (a receipt's), then {status}")
        if status in SAID and not self.said(delivery_id, status, provider_id):
            self.violations.append(
                f"delivery {delivery_id} {status}: no such receipt for its send {provider_id}"
            )
        if status is Status.SUPPRESSED and self.address_of.get(delivery_id) not in self.ever_listed:
            self.violations.append(f"delivery {delivery_id} suppressed: its address never on the list")

    def said(self, delivery_id: str, status: Status, provider_id: str | None) -> bool:
        """Whether the provider sent a receipt that could make it `status`: `undelivered` for the very
        send it is `sent` by; `delivered` for any of its sends (the recipient has it: it may end an
        unknown outcome or a retry as delivered)."""
        return any(
            t.receipt.delivery_id == delivery_id
            and t.receipt.status is status
            and (status is Status.DELIVERED or t.receipt.provider_id == provider_id)
            for t in self.takings
        )

    def observe(self) -> None:
        """Every delivery's status now (each step the store answers), for `saw`."""

        def read() -> list[Any]:
            with self.producer.engine.connect() as conn:
                query = "SELECT id, status, provider_id FROM notify_deliveries"
                return list(conn.execute(sa.text(query)).all())

        for row in self.again(read):
            self.saw(row.id, Status(row.status), row.provider_id)

    def receipts_due(self) -> list[Taking]:
        """Receipts that came while their delivery was `sending`, whose delivery is `sent` by that very
        message now (as last observed), and that no clock step of RECEIPT_WAIT or more let lapse:
        the sweep's to apply."""
        return [
            t
            for t in self.takings
            if t.result is Taken.WAITING
            and not any(at >= t.at for at in self.big_steps)
            and self.seen.get(t.receipt.delivery_id) == (Status.SENT, t.receipt.provider_id)
        ]

    # -- the schedule -----------------------------------------------------------------------

    PLANS = (
        ["accept"] * 6
        + ["late"] * 3
        + ["never", "transient", "transient", "hostile_transient", "hostile_accept", "permanent"]
        + ["bug", "accept_then_die"]
    )

    def run(self, steps: int) -> None:
        self.send(legacy=True)
        self.start_worker()
        self.start_worker()
        for _ in range(3):
            self.send()
        for _ in range(steps):
            self.one_step()
        self.everything_ends()

    def one_step(self) -> None:
        rng = self.rng
        live = [p for p in self.live() if not p.cut_off]
        away = self.outage is not None or self.sqlite_outage
        choices: list[tuple[int, Callable[[], None]]] = [(6, lambda: self.advance(rng.randint(1, 4)))]
        if not away and len(self.ids) < 12:
            choices += [(3, self.send), (1, lambda: self.send(later=rng.choice([0.0, 2.0, 7.0])))]
        choices += self.list_and_receipt_steps(away)
        if self.broker.messages and live:

            def take(keep: bool = False) -> None:
                index = rng.randrange(len(self.broker.messages))
                self.take(rng.choice(live), index, rng.choice(self.PLANS), keep=keep)

            choices += [(8, take), (1, lambda: take(keep=True)), (1, self.lose)]
        parked = [r for r in self.runs if r.state == "parked" and r.plan == "late" and not r.proc.killed]
        if parked:
            answers = ["accept", "accept", "transient", "hostile_transient", "permanent", "unknown"]
            choices.append((4, lambda: self.resolve(rng.choice(parked), rng.choice(answers))))
        if len(self.live()) > 1:
            choices.append((1, lambda: self.kill(rng.choice(self.live()))))
        if len(self.live()) < 3:
            choices.append((1, self.another_worker))
        choices += [(1, self.toggle_outage), (1, self.toggle_cut), (1, self.step_clock)]
        if live:
            choices.append((1, lambda: setattr(rng.choice(live), "late_beat", True)))
        if self.postgres and not away:
            choices.append((1, lambda: setattr(self, "race_armed", True)))
        weights = [w for w, _ in choices]
        chosen = rng.choices([c for _, c in choices], weights)[0]
        if os.environ.get("NOTIFY_MODEL_TRACE"):
            cut = [p.name for p in self.procs if p.cut_off]
            print(f"t={self.t} {getattr(chosen, '__name__', '?')} cut={cut} outage={away}")
        chosen()
        self.check()

    def lose(self) -> None:
        with self.broker.lock:
            self.broker.messages.pop(self.rng.randrange(len(self.broker.messages)))

    def toggle_outage(self) -> None:
        if self.postgres:
            if self.outage is None:
                self.outage = contextlib.ExitStack()
                self.outage.enter_context(store_outage(self.url))
            else:
                self.outage.close()
                self.outage = None
        else:
            self.sqlite_outage = not self.sqlite_outage
        for proc in self.procs:
            proc.cut_ended = self.t
        self.settle()

    def toggle_cut(self) -> None:
        cut = [p for p in self.procs if p.cut_off]
        if cut:
            for proc in cut:
                proc.cut_off, proc.cut_ended = False, self.t
        elif self.live():
            self.rng.choice(self.live()).cut_off = True
        self.settle()

    def step_clock(self) -> None:
        """The database's clock (PostgreSQL) or the host's (SQLite, every process's) steps.

        Back by at most 30 s: a held retry waits out a step back (its time is the store's).
        """
        self.clock_stepped_at = self.t
        step = self.rng.choice([-30.0, -2.0, 2.0, 30.0, 86400.0])
        self.db_step += step
        if step >= RECEIPT_WAIT:  # a receipt waiting for its delivery's `sent` may be settled unused
            self.big_steps.append(self.t)

    def check(self) -> None:
        if self.outage is None and not self.sqlite_outage:
            self.declared_dead_only_when_cut_off_or_killed()
            self.observe()
        if self.violations:
            raise Violation(self.violations[0])
        errors = [r.error for r in self.runs if r.error is not None]
        if errors:
            raise errors[0]

    # -- the end: the faults stop, time passes -----------------------------------------------

    def everything_ends(self) -> None:
        if self.outage is not None or self.sqlite_outage:
            self.toggle_outage()
        for proc in self.procs:
            proc.cut_off, proc.cut_ended = False, self.t
        self.race_armed = False  # a fault too: none from here on
        self.settle()
        if not self.live():
            self.start_worker()
        until = self.t + END_BOUND
        while self.t < until:
            for run in self.runs:  # the late answers come
                if run.state == "parked" and run.plan == "late" and not run.proc.killed:
                    self.resolve(run, "accept")
            while self.broker.messages:
                self.take(self.rng.choice(self.live()), 0, self.rng.choice(["accept", "accept", "transient"]))
            self.check()
            statuses = {i: self.status(i) for i in self.ids}
            if all(s in FINAL for s in statuses.values()) and not self.receipts_due():
                break
            self.advance(4)
        stuck = {i: s for i, s in statuses.items() if s not in FINAL}
        if stuck:
            rows = [self.raw_row(i) for i in stuck]
            raise Violation(f"deliveries not final {END_BOUND:.0f}s after the faults stopped: {rows}")
        self.outcomes_kept()

    def outcomes_kept(self) -> None:
        due = [(t.receipt, t.at) for t in self.receipts_due()]
        if due:
            raise Violation(
                f"receipts that came while their delivery was sending, still not applied {END_BOUND:.0f}s "
                f"after the faults stopped though it was sent by their message: {due}"
            )

        for delivery_id in self.ids:
            found = self.get(delivery_id)
            assert found is not None
            handed = self.handovers.get(delivery_id, [])
            accepted = [h for h in handed if h.result == "accepted"]
            kept = [h for h in accepted if not h.proc.killed]
            proven = found.status is Status.DELIVERED and self.said(delivery_id, found.status, None)
            if found.status in SENT_BY_IT and not accepted and not proven:
                raise Violation(f"delivery {delivery_id} recorded {found.status}, never accepted")
            unknown = found.status == Status.FAILED and found.error_code == "outcome_unknown"
            if kept and found.status not in SENT_BY_IT and not unknown:
                raise Violation(f"delivery {delivery_id} accepted, recorded {found.status}: an outcome lost")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/model.db"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> Callable[[Model], None]:
    """The model's clocks for notify's delivery modules (as libfaketime would give each process)."""

    def install(model: Model) -> None:
        fake = VirtualTime(model)
        for module in (notify.delivery.attempt, notify.delivery.heartbeat, notify.delivery.maintenance):
            monkeypatch.setattr(module, "time", fake)
        monkeypatch.setattr(notify.store.clock, "time", fake)
        liveness = functools.partial(Liveness, clock=fake.monotonic)
        monkeypatch.setattr(notify.delivery.maintenance, "Liveness", liveness)

    return install


SEEDS = [int(s) for s in os.environ.get("NOTIFY_MODEL_SEEDS", "1,2,3").split(",")]  # more: a longer search
STEPS = 70


@pytest.mark.parametrize("seed", SEEDS)
def test_the_system_keeps_its_promises(
    store_url: str, seed: int, tmp_path: Path, virtual_time: Callable[[Model], None]
) -> None:
    home = tmp_path / f"home-{seed}"
    home.mkdir()
    model = Model(store_url, home, seed)
    virtual_time(model)
    listener = model.fail_statement

    def on_execute(conn: sa.Connection, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        listener(conn, statement, parameters)

    fake_provider.RUNNING.append(model)
    sa.event.listen(sa.Engine, "before_cursor_execute", on_execute)
    try:
        model.run(STEPS)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", on_execute)
        fake_provider.RUNNING.remove(model)
        model.close()


# -- the mutants: each must make something fail, on each store where it can change anything --
#
# The model's schedules are random and short: it catches a mutant that leaves deliveries unfinished
# (release_skips_null on both stores, frozen_database_clock on PostgreSQL) but not every one that
# needs a race at a precise moment. Each mutant therefore names the tests that must catch it:
# a focused test first (deterministic, seconds), then the model where it catches the mutant too.

from tests.support.mutants import MUTANTS  # noqa: E402

# Mutants that cannot change what a store does: no test can catch them there.
EQUIVALENT = {
    (
        "requeue_unchecked",
        "sqlite",
    ): "SQLite's BEGIN IMMEDIATE: no other writer between its SELECT and UPDATE",
    ("frozen_database_clock", "sqlite"): "SQLite's store reads the host's clock, not a DatabaseClock",
}


def catchers(mutant: str, store: str) -> list[str]:
    """The tests that must fail with `mutant` on `store`, fastest first."""
    focused = {
        "requeue_unchecked": [
            "tests/test_store.py::"
            "test_a_delivery_released_and_claimed_by_another_process_mid_release_keeps_its_claim"
        ],
        "liveness_early": ["tests/test_liveness.py"],
        "frozen_database_clock": [
            "tests/test_store.py::test_the_database_clock_moves_on_between_reads_and_reads_the_database_again"
        ],
        "release_skips_null": [
            f"tests/test_store.py::test_a_held_delivery_without_a_release_time_is_released[{store}]"
        ],
        "queued_since_created_at": [
            "tests/test_store.py::"
            f"test_a_sweep_publishes_each_lost_delivery_once_however_slow_publishing_is[{store}]"
        ],
        "outcome_unfenced": [
            f"tests/test_store.py::test_a_claim_taken_over_cannot_record_its_outcome[{store}]"
        ],
        "handover_unrecorded": [
            "tests/test_delivery.py::"
            f"test_a_worker_taken_for_dead_mid_handover_has_nothing_handed_on_and_its_outcome_lands[{store}]"
        ],
        "reclaim_handed_over": [
            "tests/test_store.py::"
            f"test_a_dead_workers_claim_it_was_handing_over_ends_unknown_until_its_outcome_comes_back[{store}]"
        ],
        "claim_ignores_suppression": [
            "tests/test_suppressions.py::"
            f"test_what_was_queued_or_scheduled_before_the_suppression_is_not_sent[{store}]"
        ],
        "receipt_overwrites_final": [
            "tests/test_receipts.py::"
            f"test_a_receipt_settled_twice_keeps_the_effect_of_the_settler_that_moved_it[{store}]"
        ],
    }[mutant]
    # The seeds of the model that catch it too (release_skips_null on PostgreSQL as well, in 60 s more).
    caught_by_the_model = {
        ("release_skips_null", "sqlite"): (1, 2, 3),
        ("handover_unrecorded", "sqlite"): (3,),
        ("handover_unrecorded", "postgresql"): (5,),
        ("reclaim_handed_over", "sqlite"): (3,),
        ("claim_ignores_suppression", "sqlite"): (1,),
        ("claim_ignores_suppression", "postgresql"): (1,),
        ("receipt_overwrites_final", "sqlite"): (2,),
        ("receipt_overwrites_final", "postgresql"): (6,),  # needs its two receipts at once: seeds 6, 7, 8
    }.get((mutant, store), ())
    model = [
        f"tests/test_system_model.py::test_the_system_keeps_its_promises[{store}-{seed}]"
        for seed in caught_by_the_model
    ]
    return focused + model


# Every pair but the equivalent ones (no test could catch those: they change nothing there).
PAIRS = [(m, s) for m in sorted(MUTANTS) for s in ("sqlite", "postgresql") if (m, s) not in EQUIVALENT]


@pytest.mark.parametrize(("mutant", "store"), PAIRS, ids=[f"{m}-{s}" for m, s in PAIRS])
def test_each_mutant_is_caught(mutant: str, store: str) -> None:
    if os.environ.get("NOTIFY_MUTANT"):
        pytest.skip("already inside a mutant's run")
    for target in catchers(mutant, store):
        seeds = ",".join(str(s) for s in range(1, 11))  # collected: the seeds a catcher may name
        env = {**os.environ, "NOTIFY_MUTANT": mutant, "PYTHONPATH": str(REPO), "NOTIFY_MODEL_SEEDS": seeds}
        argv = [
            sys.executable,
            "-m",
            "pytest",
            target,
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
        ]
        done = subprocess.run(
            argv,
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=600,
            check=False,
        )
        output = done.stdout + done.stderr
        # 1: tests ran and failed (2 would be an error before any ran: the mutant's import, say).
        assert done.returncode == 1, f"mutant {mutant} survived {target} on {store}:\n{output[-3000:]}"
        assert "Error" in output or "INVARIANT:" in output, output[-3000:]
