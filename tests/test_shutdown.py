"""A warm shutdown (a deploy's SIGTERM) waits for every attempt in flight, whatever runs it."""

from __future__ import annotations

from collections.abc import Callable

from notify.api import Notifier
from notify.models import Status
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer

POOL_REPLY, LANE_REPLY = 5.0, 15.0  # seconds the server takes to answer each: the lane's ends last


def test_sigterm_waits_for_the_pool_and_the_express_lane_before_closing_what_they_use(
    env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    worker = start_worker("email", "-c", "1").wait_ready()
    producer = notifier()
    smtp_server.delay_data_reply(POOL_REPLY)
    low = producer.send("welcome", {"email": "bulk@example.com"}, data={"name": "A"}, priority="low")
    wait_for(lambda: smtp_server.attempts_of(low.deliveries[0].id), what="the low one at the server")
    smtp_server.delay_data_reply(LANE_REPLY)
    high = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}, priority="high")
    ids = [low.deliveries[0].id, high.deliveries[0].id]
    wait_for(lambda: smtp_server.attempts_of(ids[1]), what="the high one at the server")

    worker.process.terminate()  # the pool thread has the low one, an express lane the high one

    worker.process.wait(timeout=LANE_REPLY + 45)
    assert worker.process.returncode == 0, worker.output()
    assert [producer.store.get(i).status for i in ids] == [Status.SENT, Status.SENT]  # type: ignore[union-attr]
    assert smtp_server.delivery_ids() == {ids[0]: 1, ids[1]: 1}
