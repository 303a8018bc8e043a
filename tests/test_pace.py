"""A channel's rate limit in one worker: each delivery waits its turn, spaced evenly."""

from __future__ import annotations

import pytest

from notify.delivery.pace import Pace
from notify.policy import ChannelPolicy


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_calls_are_spaced_one_interval_apart_and_a_pause_earns_no_burst() -> None:
    time = FakeTime()
    pace = Pace(4.0, clock=time.clock, sleep=time.sleep)

    waits = [pace.wait() for _ in range(3)]  # three at once: 0, 0.25 and 0.5 s later
    time.now += 10.0  # a long pause
    waits += [pace.wait(), pace.wait()]

    assert waits == [0.0, 0.25, 0.5, 0.0, 0.25]
    assert time.slept == [0.25, 0.5, 0.25]


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
