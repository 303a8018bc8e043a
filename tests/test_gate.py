"""The priority gate: lower attempts wait while a high one starts, never for long."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from notify.delivery.gate import PriorityGate

BOUND = 10.0  # seconds any wait in these tests may take at most


@pytest.fixture
def gate() -> PriorityGate:
    return PriorityGate(hold=60.0)  # long: only a high attempt leaving lets the low ones go


def run_low(gate: PriorityGate, priority: str = "low") -> tuple[threading.Thread, threading.Event]:
    """A lower attempt in a thread of its own; the event is set once it is past the gate."""
    passed = threading.Event()

    def attempt() -> None:
        with gate.turn(priority):
            passed.set()

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    return thread, passed


@pytest.fixture
def high_in_flight(gate: PriorityGate) -> Iterator[threading.Event]:
    """A high attempt holding the gate until the event it yields is set."""
    entered, finish = threading.Event(), threading.Event()

    def attempt() -> None:
        with gate.turn("high"):
            entered.set()
            finish.wait(BOUND)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    assert entered.wait(BOUND)
    yield finish
    finish.set()
    thread.join(BOUND)


def test_nothing_urgent_in_flight_means_no_wait(gate: PriorityGate) -> None:
    assert gate.wait() == 0.0
    with gate.turn("low") as waited:
        assert waited == 0.0  # the lock-free path: nothing urgent was in flight


@pytest.mark.parametrize("priority", ["low", "normal"])
def test_a_lower_attempt_waits_until_the_high_one_is_done(
    gate: PriorityGate, high_in_flight: threading.Event, priority: str
) -> None:
    thread, passed = run_low(gate, priority)
    assert not passed.wait(0.2)  # a negative check: it could only ever pass early

    high_in_flight.set()

    assert passed.wait(BOUND)
    thread.join(BOUND)


def test_high_attempts_never_wait_for_each_other(gate: PriorityGate, high_in_flight: threading.Event) -> None:
    with gate.turn("high") as waited:
        assert waited == 0.0
        assert gate.checkpoint("high") == 0.0  # while two urgent attempts hold the gate


def test_a_checkpoint_holds_a_lower_attempt_already_under_way(
    gate: PriorityGate, high_in_flight: threading.Event
) -> None:
    passed = threading.Event()

    def attempt() -> None:
        gate.checkpoint("low")
        passed.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert not passed.wait(0.2)
    high_in_flight.set()
    assert passed.wait(BOUND)


def test_a_lower_attempt_goes_after_hold_even_while_the_high_one_runs() -> None:
    """Bounded: a high attempt stuck on the network holds nobody back for longer than `hold`."""
    gate = PriorityGate(hold=0.05)
    finish = threading.Event()
    entered = threading.Event()

    def high() -> None:
        with gate.turn("high"):
            entered.set()
            finish.wait(BOUND)

    threading.Thread(target=high, daemon=True).start()
    assert entered.wait(BOUND)
    try:
        _, passed = run_low(gate)
        assert passed.wait(BOUND)  # while the high attempt is still in flight
        assert not finish.is_set()
        assert gate.wait() == 0.0  # and once `hold` has passed, nobody waits at all
    finally:
        finish.set()


def test_an_urgent_attempt_that_raises_still_releases_the_gate(gate: PriorityGate) -> None:
    with pytest.raises(RuntimeError), gate.turn("high"):
        raise RuntimeError("provider blew up")
    assert gate.wait() == 0.0
