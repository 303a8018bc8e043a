"""A channel's rate limit in one worker: each delivery waits its turn, spaced evenly."""

from __future__ import annotations

import threading
import time

import pytest

from notify.delivery.pace import Pace
from notify.policy import ChannelPolicy
from tests.support.processes import wait_for


def test_calls_are_spaced_one_interval_apart_and_the_first_goes_at_once() -> None:
    pace = Pace(20.0)  # 50 ms apart

    waits = [pace.wait() for _ in range(4)]
    stamps = [time.monotonic()]
    pace.wait()
    stamps.append(time.monotonic())

    assert waits[0] == 0.0
    assert all(w > 0.0 for w in waits[1:])
    assert stamps[1] - stamps[0] >= pace.interval * 0.9  # a lower bound: a loaded machine is only slower


def test_an_urgent_caller_takes_the_next_turn_ahead_of_those_already_waiting() -> None:
    pace = Pace(5.0)  # 200 ms apart
    pace.wait()
    order: list[str] = []

    def call(name: str, urgent: bool) -> None:
        pace.wait(urgent=urgent)
        order.append(name)

    lows = [threading.Thread(target=call, args=(f"low{i}", False)) for i in range(3)]
    for thread in lows:
        thread.start()
    wait_for(lambda: pace.waiting == 3, what="three low callers waiting", timeout=10)
    urgent = threading.Thread(target=call, args=("urgent", True))
    urgent.start()
    for thread in [*lows, urgent]:
        thread.join(10)

    assert order[0] == "urgent", order
    assert sorted(order[1:]) == ["low0", "low1", "low2"]


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        ("100/s", 100.0),
        ("120/m", 2.0),
        ("3600/h", 1.0),
        ("5", 5.0),
        ("0.5/s", 0.5),
        ("0", None),
        (None, None),
    ],
)
def test_a_policys_rate_limit_in_deliveries_per_second(rate: str | None, per_second: float | None) -> None:
    assert ChannelPolicy(rate_limit=rate).rate_per_second == per_second
