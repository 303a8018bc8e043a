"""Which workers are dead, as one observer sees their beats on its own clock."""

from __future__ import annotations

from notify.delivery.liveness import Liveness

LEASE = 10.0


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def observer(step_max: float = 4.0) -> tuple[Liveness, Monotonic]:
    clock = Monotonic()
    return Liveness(LEASE, step_max, clock=clock), clock


def test_a_worker_whose_count_stands_still_for_a_lease_is_dead_and_one_that_moves_is_not() -> None:
    liveness, clock = observer()
    assert liveness.observe({"a": 1, "b": 1}) == []
    for beat in range(2, 7):  # 5 sweeps, 2 s apart: b moves on, a stands still
        clock.now += 2.0
        dead = liveness.observe({"a": 1, "b": beat})

    assert dead == [("a", 1)]


def test_a_store_outage_of_any_length_gives_every_worker_a_whole_lease_from_its_return() -> None:
    liveness, clock = observer()
    liveness.observe({"a": 1})
    clock.now += 8.0
    liveness.observe({"a": 1})  # stood still 4 s (a gap counts 4 s at most)
    liveness.missed()  # the store is away...
    clock.now += 3600.0  # ...for an hour

    seen = [liveness.observe({"a": 1})]
    for _ in range(4):
        clock.now += 2.0
        seen.append(liveness.observe({"a": 1}))

    assert seen == [[], [], [], [], []]  # 8 s of the store answering: not yet a lease
    clock.now += 2.0
    assert liveness.observe({"a": 1}) == [("a", 1)]


def test_a_stalled_observer_counts_a_long_gap_as_step_max_only() -> None:
    liveness, clock = observer(step_max=4.0)
    liveness.observe({"a": 1})
    clock.now += 60.0  # this observer stalled: it saw nothing meanwhile

    assert liveness.observe({"a": 1}) == []


def test_the_clock_going_back_counts_nothing() -> None:
    liveness, clock = observer()
    liveness.observe({"a": 1})
    clock.now -= 30.0

    assert liveness.observe({"a": 1}) == []


def test_a_new_observer_needs_a_lease_of_its_own_before_it_declares_anyone_dead() -> None:
    liveness, clock = observer()
    verdicts = []
    for _ in range(6):
        verdicts.append(liveness.observe({"gone": 7}))
        clock.now += 2.0

    assert verdicts == [[], [], [], [], [], [("gone", 7)]]
