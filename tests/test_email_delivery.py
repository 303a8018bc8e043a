"""Email end to end: real worker processes, a real broker, a real SMTP server.

The provider-level tests at the end drive SmtpProvider against the server
directly: what a slow or vanishing server does to one delivery.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiosmtplib
import pytest

from notify.api import Notifier
from notify.broker.routing import enqueue
from notify.errors import OutcomeUnknownError, TransientDeliveryError
from notify.models import Status
from notify.worker.express import LANES
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer, email, provider_for

HOSTILE_NAME = (
    "=?utf-8?q?=0D=0AReply-To:_attacker@evil.example=0D=0AContent-Type:_text/html=0D=0A=0D=0A"
    "<a_href=3Dhttp://evil>Reset</a>?="
)


@pytest.fixture(params=["embedded+sqlite", "redis+postgresql"])
def stack(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """The broker and store a test runs on: the embedded defaults, or Redis + PostgreSQL."""
    if request.param == "redis+postgresql":
        env["NOTIFY_BROKER_URL"] = request.getfixturevalue("redis_url")
        env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return env


def sent(notifier: Notifier, notification_id: str) -> bool:
    return all(d.status == Status.SENT for d in notifier.status(notification_id))


def test_an_email_arrives_with_tracking_headers_and_both_parts(
    stack: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    start_worker("email", "-c", "4")
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada <& Co>"})

    wait_for(lambda: sent(producer, result.id), what="the email to be sent")
    [message] = smtp_server.messages
    [delivery] = producer.status(result.id)
    assert message["X-Notify-Delivery-Id"] == delivery.id
    assert message["Message-ID"] == f"<{delivery.id}@example.com>"
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Welcome, Ada <& Co>!"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and "Hello Ada <& Co>," in text.get_content()
    assert html is not None and "Hello Ada &lt;&amp; Co&gt;," in html.get_content()
    assert delivery.attempts == 1
    assert delivery.provider_id == "Q000001"  # the SMTP server's queue id
    assert delivery.sent_at is not None


def test_many_emails_share_a_few_smtp_connections(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    start_worker("email", "-c", "4")
    producer = notifier()

    ids = [producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}).id for i in range(40)]

    wait_for(lambda: all(sent(producer, i) for i in ids), what="40 emails to be sent")
    assert len(smtp_server.messages) == 40
    assert smtp_server.sessions <= 4  # one connection per concurrent delivery, reused


def test_the_worker_reconnects_when_the_smtp_server_restarts(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    env["NOTIFY_CONFIG"] = str(_fast_retries(Path(env["NOTIFY_HOME"]).parent))
    start_worker("email", "-c", "1")
    producer = notifier()
    first = producer.send("welcome", {"email": "a@example.com"}, data={"name": "A"})
    wait_for(lambda: sent(producer, first.id), what="the first email")

    smtp_server.stop()
    smtp_server.start()  # same port, every old connection gone
    second = producer.send("welcome", {"email": "b@example.com"}, data={"name": "B"})

    wait_for(lambda: sent(producer, second.id), what="the email after the restart")
    assert sorted(smtp_server.delivery_ids().values()) == [1, 1]


def test_a_redelivered_message_of_a_sent_delivery_sends_nothing(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    worker = start_worker("email", "-c", "2")
    producer = notifier()
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    wait_for(lambda: sent(producer, result.id), what="the email to be sent")
    [delivery] = result.deliveries

    for _ in range(3):  # what a broker does after a worker died before acking
        enqueue(producer.producer, delivery.id, "email", "normal")

    wait_for(
        lambda: worker.output().count("is sent: its message has nothing to do") == 3,
        what="the redelivered messages",
    )
    assert smtp_server.delivery_ids() == {delivery.id: 1}
    assert producer.status(result.id)[0].attempts == 1


@contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """`processes` busy loops beside the test's worker: a loaded machine, on purpose."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def overtaken(order: list[str]) -> int:
    """The most more-urgent emails that arrived after any one email (0: strict priority order)."""
    rank = {"high": 0, "normal": 1, "low": 2}
    return max(
        (sum(1 for later in order[i + 1 :] if rank[later] < rank[p]) for i, p in enumerate(order)), default=0
    )


@pytest.mark.parametrize("load", [0, 3], ids=["quiet", "loaded"])
@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_a_worker_drains_high_before_normal_before_low(
    broker: str,
    load: int,
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    request: pytest.FixtureRequest,
) -> None:
    """What is promised (README "Priority order"): a worker takes a lower message only when no
    more urgent one waits on its queues, so an email can be overtaken only by the more urgent
    ones in flight beside it, in the worker's other threads: none with one pool thread on the
    embedded broker, at most 2 on Redis (its 2 express lanes). Loaded or not."""
    if broker == "redis":
        env["NOTIFY_BROKER_URL"] = request.getfixturevalue("redis_url")
    queue_a_backlog(notifier())
    threads = 1 + (LANES if broker == "redis" else 0)

    with cpu_load(load):
        start_worker("email", "-c", "1")
        order = arrival_order(smtp_server)

    assert sorted(order) == sorted(BACKLOG)
    assert overtaken(order) <= threads - 1, order
    assert order[0] == "high" and order[-1] == "low"


def test_two_worker_processes_on_the_embedded_broker_send_each_email_once(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    producer = notifier()
    ids = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}).id for i in range(150)
    ]

    start_worker("email", "-c", "4")
    start_worker("email", "-c", "4")

    wait_for(lambda: all(sent(producer, i) for i in ids), timeout=90, what="150 emails to be sent")
    counts = smtp_server.delivery_ids()
    assert len(counts) == 150
    assert set(counts.values()) == {1}


def test_an_encoded_word_in_data_stays_inside_the_subject(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    start_worker("email", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": HOSTILE_NAME})

    wait_for(lambda: sent(producer, result.id), what="the email to be sent")
    [message] = smtp_server.messages
    assert "Reply-To" not in message
    assert len(message.get_all("Content-Type") or []) == 1
    assert message["Subject"] == f"Welcome, {HOSTILE_NAME}!"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    assert text is not None and "evil" in text.get_content()  # the name, as text, in the body


BACKLOG = ["low"] * 20 + ["normal"] * 5 + ["high"] * 5


def queue_a_backlog(producer: Notifier) -> None:
    """Queue while no worker runs: the backlog a bulk campaign leaves, then urgent mail."""
    for i, priority in enumerate(BACKLOG):
        producer.send(
            "welcome", {"email": f"{priority}-{i}@example.com"}, data={"name": "U"}, priority=priority
        )


def arrival_order(smtp_server: SmtpServer) -> list[str]:
    """The priority of each email, in the order the server received them."""
    wait_for(lambda: len(smtp_server.messages) == len(BACKLOG), what="every email")
    return [str(m["To"]).split("-")[0] for m in smtp_server.messages]


def _fast_retries(folder: Path) -> Path:
    path = folder / "notify.toml"
    path.write_text('[channels.email]\nbackoff_initial = "200ms"\nbackoff_max = "1s"\njitter = false\n')
    return path


# Provider level: a slow or vanishing server and one delivery


def test_a_slow_reply_to_the_data_is_awaited_and_sent_once(smtp_server: SmtpServer) -> None:
    smtp_server.delay_data_reply(2.5)  # beyond the delivery budget and each command's timeout
    provider = provider_for(smtp_server, deadline=1.0, timeout=0.5)
    try:
        receipt = provider.deliver(email("d-slow"))
        again = provider.deliver(email("d-next"))  # the connection is still good afterwards
    finally:
        provider.close()

    assert receipt.provider_id == "Q000001"
    assert again.provider_id == "Q000002"
    assert len(smtp_server.attempts_of("d-slow")) == 1
    assert smtp_server.delivery_ids() == {"d-slow": 1, "d-next": 1}
    assert smtp_server.sessions == 1


def test_a_connection_dropped_after_the_data_is_an_unknown_outcome(smtp_server: SmtpServer) -> None:
    smtp_server.drop_after_data()
    provider = provider_for(smtp_server)
    try:
        with pytest.raises(OutcomeUnknownError) as caught:
            provider.deliver(email("d-drop"))
    finally:
        provider.close()

    assert (caught.value.channel, caught.value.provider) == ("email", "smtp")
    assert len(smtp_server.attempts_of("d-drop")) == 1
    assert len(smtp_server.messages) <= 1


def test_a_server_slow_before_the_data_fails_transiently_within_the_budget(smtp_server: SmtpServer) -> None:
    smtp_server.delay_rcpt(3.0)
    provider = provider_for(smtp_server, deadline=0.5, timeout=10.0)  # the budget, not the command, ends it
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            provider.deliver(email("d-rcpt"))
    finally:
        provider.close()

    assert "NOTIFY_DELIVERY_TIMEOUT" in caught.value.reason
    assert smtp_server.attempts_of("d-rcpt") == []


def test_a_server_gone_before_the_data_is_transient(smtp_server: SmtpServer) -> None:
    provider = provider_for(smtp_server)
    smtp_server.stop()
    try:
        with pytest.raises(TransientDeliveryError):
            provider.deliver(email("d-down"))
    finally:
        provider.close()


def test_aiosmtplib_still_offers_what_the_provider_uses() -> None:
    """The provider writes DATA's content through the protocol: fail loudly if that API goes."""
    protocol = aiosmtplib.protocol.SMTPProtocol
    assert callable(protocol.write) and callable(protocol.read_response)
    assert "protocol" in vars(aiosmtplib.SMTP(hostname="localhost"))


def test_a_stuck_smtp_loop_is_told_apart_from_an_answer() -> None:
    from concurrent.futures import Future

    from notify.providers.smtp import _finished

    pending: Future[str] = Future()
    answered: Future[str] = Future()
    answered.set_exception(TimeoutError("the server's own timeout"))
    cancelled: Future[str] = Future()
    cancelled.cancel()

    assert not _finished(pending, timeout=0.01)
    assert _finished(answered, timeout=0.01)
    assert _finished(cancelled, timeout=0.01)
