"""The relay: send() returns once the store has a delivery; its message follows from a thread.

The relay's own seam (the publish callable) is exercised with a recorder;
the Redis tests publish for real, and a producer process that exits right
after send() shows its message still reaches the broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

import pytest
import redis

from notify.api import Notifier
from notify.broker.relay import Relay
from notify.models import Status
from notify.store import Queued
from tests.conftest import REPO
from tests.support.processes import wait_for


class Recorder:
    """A publish callable that records what it was given; it can be made to fail or to wait."""

    def __init__(self) -> None:
        self.published: list[tuple[list[str], bool]] = []
        self.fail_next = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows: Sequence[Queued], grouped: bool) -> None:
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker down")
        self.published.append(([r.id for r in rows], grouped))


def rows(*ids: str) -> list[Queued]:
    return [Queued(i, "email", "normal") for i in ids]


def test_what_is_submitted_is_published_in_order_by_the_time_flush_returns() -> None:
    recorder = Recorder()
    relay = Relay(recorder)
    for i in range(100):
        relay.submit(rows(f"d{i}"), grouped=False)

    assert relay.flush(timeout=10)
    assert [i for ids, _ in recorder.published for i in ids] == [f"d{i}" for i in range(100)]
    relay.close()


def test_single_sends_go_before_a_burst_waiting_beside_them() -> None:
    recorder = Recorder()
    relay = Relay(recorder)
    recorder.gate.clear()  # the thread holds the first batch while the rest pile up
    relay.submit(rows("first"), grouped=False)
    wait_for(lambda: not relay._pending, what="the relay to take the first batch")
    relay.submit(rows("b1", "b2"), grouped=True)
    relay.submit(rows("single"), grouped=False)
    recorder.gate.set()

    assert relay.flush(timeout=10)
    assert recorder.published == [(["first"], False), (["single"], False), (["b1", "b2"], True)]
    relay.close()


def test_a_failed_publish_is_logged_and_the_relay_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    relay = Relay(recorder)
    recorder.fail_next = True
    relay.submit(rows("lost-for-now"), grouped=False)
    assert relay.flush(timeout=10)

    relay.submit(rows("next"), grouped=False)
    assert relay.flush(timeout=10)

    assert recorder.published == [(["next"], False)]
    assert "1 deliveries stay queued in the store until a worker's sweep publishes them" in caplog.text
    relay.close()


def test_a_closed_relay_has_published_everything_and_publishes_more_in_the_callers_thread() -> None:
    recorder = Recorder()
    relay = Relay(recorder)
    relay.submit(rows("a", "b"), grouped=True)
    relay.close()
    assert recorder.published == [(["a", "b"], True)]

    relay.submit(rows("c"), grouped=False)  # an exiting process: never raise after the record

    assert recorder.published == [(["a", "b"], True), (["c"], False)]


def test_flush_gives_up_at_its_timeout_while_the_broker_hangs() -> None:
    recorder = Recorder()
    relay = Relay(recorder)
    recorder.gate.clear()
    relay.submit(rows("stuck"), grouped=False)

    assert relay.flush(timeout=0.2) is False
    recorder.gate.set()
    assert relay.flush(timeout=10)
    relay.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_publish_its_parents_pending_messages_and_publishes_its_own_at_once() -> None:
    recorder = Recorder()
    relay = Relay(recorder)
    recorder.gate.clear()
    relay.submit(rows("taken"), grouped=False)
    wait_for(lambda: not relay._pending, what="the relay to take the first batch")
    relay.submit(rows("pending"), grouped=False)

    pid = os.fork()
    if pid == 0:  # the child: nothing pending, no thread, publishing in the caller's thread
        ok = relay._pending == [] and relay._thread is None and relay.flush(timeout=1)
        ok = ok and relay._synchronous and Relay(recorder)._synchronous
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    recorder.gate.set()

    assert os.waitstatus_to_exitcode(status) == 0
    assert relay.flush(timeout=10)
    assert [ids for ids, _ in recorder.published] == [["taken"], ["pending"]]
    relay.close()


# -- for real, on Redis ----------------------------------------------------------------


def test_a_delivery_is_on_the_broker_once_flush_returns(
    env: dict[str, str], redis_url: str, notifier: Callable[[], Notifier]
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    producer = notifier()
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    assert producer.flush(timeout=10)
    assert redis.Redis.from_url(redis_url).llen("notify.email.normal") == 1
    assert producer.status(result.id)[0].status == Status.QUEUED


def test_a_process_that_exits_right_after_send_still_publishes_its_message(
    env: dict[str, str], redis_url: str
) -> None:
    script = (
        "import notify\nnotify.send('welcome', to={'email': 'ada@example.com'}, data={'name': 'Ada'})\n"
        # no close(), no flush(): a script that simply ends
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "NOTIFY_BROKER_URL": redis_url},
        cwd=REPO,
        check=True,
        timeout=60,
    )

    assert redis.Redis.from_url(redis_url).llen("notify.email.normal") == 1


def test_a_closed_notifier_publishes_what_was_pending_and_can_send_again(
    env: dict[str, str], redis_url: str, notifier: Callable[[], Notifier]
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    producer = notifier()
    producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    producer.close()
    assert redis.Redis.from_url(redis_url).llen("notify.email.normal") == 1

    producer.send("welcome", {"email": "bob@example.com"}, data={"name": "Bob"})
    assert producer.flush(timeout=10)
    assert redis.Redis.from_url(redis_url).llen("notify.email.normal") == 2


CHILDREN = 10


def test_a_multiprocessing_child_that_returns_after_send_has_published_its_message(
    env: dict[str, str], redis_url: str
) -> None:
    # multiprocessing (like a prefork pool) ends a forked child with os._exit: no atexit
    # flush runs, so a child's relay publishes in the caller's thread.
    script = f"""
import multiprocessing, sys
import notify

def job(i):
    notify.send('welcome', to={{'email': f'u{{i}}@example.com'}}, data={{'name': 'U'}})

if __name__ == '__main__':
    ctx = multiprocessing.get_context('fork')
    for i in range({CHILDREN}):
        p = ctx.Process(target=job, args=(i,))
        p.start(); p.join()
        if p.exitcode != 0:
            sys.exit(p.exitcode)
"""
    subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "NOTIFY_BROKER_URL": redis_url},
        cwd=REPO,
        check=True,
        timeout=120,
    )

    assert redis.Redis.from_url(redis_url).llen("notify.email.normal") == CHILDREN


def test_a_send_after_the_exit_flush_records_once_and_does_not_raise(
    env: dict[str, str], redis_url: str, notifier: Callable[[], Notifier]
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    producer = notifier()
    producer.send("welcome", {"email": "first@example.com"}, data={"name": "A"})
    producer.relay.close()  # what notify.broker.relay's atexit hook does to every relay

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    assert producer.status(result.id)[0].status == Status.QUEUED
    assert (
        redis.Redis.from_url(redis_url).llen("notify.email.normal") == 2
    )  # published in the caller's thread
