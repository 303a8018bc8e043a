"""The webhook channel end to end: real workers on Redis, the real provider, a local signed receiver."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3

import notify
from notify.api import Notifier
from notify.models import FINAL_STATUSES, Delivery, Status
from notify.settings import Settings
from tests.fakes.webhook import FakeWebhook, Received, verifies
from tests.support import webhook_secrets
from tests.support.processes import Worker, wait_for
from tests.test_send_validation import count_rows
from tests.test_worker_start import start_and_wait

SECRET = "whsec-end-to-end"
# Receivers' own secrets, in the Standard Webhooks format (whsec_ and base64).
SECRET_A, SECRET_B = "whsec_" + "QUFB" * 8, "whsec_" + "QkJC" * 8
OLD, NEW = SECRET_A, "whsec_" + "TmV3" * 8
ORDER = {
    "name": "Ada",
    "order_id": "A-1042",
    "carrier": "DHL",
    "tracking_number": "JD0146000032",
    "items": [{"title": "Lamp", "quantity": 2}],
}
BODY = {
    "event": "order.shipped",
    "order_id": "A-1042",
    "carrier": "DHL",
    "tracking_number": "JD0146000032",
    "items": [{"title": "Lamp", "quantity": 2}],
}
WAIT = 60.0  # two cores shared with another test run


@pytest.fixture
def fake() -> Iterator[FakeWebhook]:
    with FakeWebhook(SECRET) as receiver:
        yield receiver


@pytest.fixture
def webhook_env(env: dict[str, str], redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Redis broker, SQLite store, fast retries without jitter, a signing secret, loopback allowed."""
    policy = tmp_path / "notify.toml"
    policy.write_text('[channels.webhook]\nbackoff_initial = "200ms"\nbackoff_max = "5s"\njitter = false\n')
    env.update(
        {
            "NOTIFY_BROKER_URL": redis_url,
            "NOTIFY_CONFIG": str(policy),
            "NOTIFY_WEBHOOK_SECRET": SECRET,
            "NOTIFY_WEBHOOK_ALLOW_PRIVATE": "1",
        }
    )
    return env


@pytest.fixture
def producers(webhook_env: dict[str, str]) -> Iterator[Callable[[dict[str, str]], Notifier]]:
    """Producers built from an environment, as `notify.send()` would; closed afterwards."""
    built: list[Notifier] = []

    def build(environ: dict[str, str]) -> Notifier:
        built.append(Notifier(Settings.from_env(environ)))
        return built[-1]

    yield build
    for producer in built:
        producer.close()


def send(producer: Notifier, url: str) -> str:
    """Send order_shipped to the webhook `url` only; the delivery's id."""
    result = producer.send("order_shipped", to={"webhook": url}, data=ORDER, channels=["webhook"])
    [delivery] = result.deliveries
    return delivery.id


def delivery_of(producer: Notifier, delivery_id: str) -> Delivery:
    found = producer.store.get(delivery_id)
    assert found is not None, f"delivery {delivery_id} is not in the store"
    return found


def finished(producer: Notifier, delivery_id: str) -> Delivery | None:
    delivery = delivery_of(producer, delivery_id)
    return delivery if delivery.status in FINAL_STATUSES else None


def wait_finished(producer: Notifier, delivery_id: str, what: str) -> Delivery:
    done = wait_for(lambda: finished(producer, delivery_id), timeout=WAIT, what=what)
    assert done is not None
    return done


def assert_signed_for(request: Received, delivery_id: str) -> None:
    assert request.signature_ok, request.headers
    assert request.headers["webhook-id"] == request.headers["x-notify-delivery-id"] == delivery_id
    assert request.headers["content-type"].startswith("application/json")
    assert json.loads(request.body) == BODY


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_webhook_is_posted_once_signed_with_the_rendered_body(
    store: str,
    request: pytest.FixtureRequest,
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    if store == "postgresql":
        webhook_env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    start_worker("webhook", "-c", "2")
    producer = producers(webhook_env)

    delivery_id = send(producer, fake.url)

    delivery = wait_finished(producer, delivery_id, "the webhook")
    assert (delivery.status, delivery.attempts) == (Status.SENT, 1), delivery
    [posted] = fake.wait_for_requests(1, timeout=WAIT)
    assert posted.path == "/hook"
    assert_signed_for(posted, delivery_id)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_webhook_url_outside_ascii_is_posted_once_percent_encoded(
    store: str,
    request: pytest.FixtureRequest,
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    """Before: the worker could not write "/hook/café" on the request line: outcome_unknown, 0 POSTs."""
    if store == "postgresql":
        webhook_env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    start_worker("webhook", "-c", "1")
    producer = producers(webhook_env)

    delivery_id = send(producer, f"{fake.url}/café?name=Jürgen")

    delivery = wait_finished(producer, delivery_id, "the webhook")
    assert (delivery.status, delivery.attempts) == (Status.SENT, 1), delivery
    [posted] = fake.wait_for_requests(1, timeout=WAIT)
    assert posted.path == "/hook/caf%C3%A9?name=J%C3%BCrgen"
    assert_signed_for(posted, delivery_id)
    assert len(fake.requests) == 1


def test_a_429_waits_for_its_retry_after_then_is_sent(
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    fake.answer_next(429, headers={"Retry-After": "1"})  # longer than the policy's 200 ms: it wins
    start_worker("webhook", "-c", "1")
    producer = producers(webhook_env)

    delivery_id = send(producer, fake.url)

    delivery = wait_finished(producer, delivery_id, "the webhook after its retry")
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.SENT, 2, "http_429"), delivery
    first, second = fake.wait_for_requests(2, timeout=WAIT)
    assert second.at - first.at >= 0.95, f"retried {second.at - first.at:.3f} s after the 429"
    for posted in (first, second):
        assert_signed_for(posted, delivery_id)
    assert len(fake.requests) == 2


def test_a_500_is_retried_then_sent(
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    fake.answer_next(500)
    start_worker("webhook", "-c", "1")
    producer = producers(webhook_env)

    delivery_id = send(producer, fake.url)

    delivery = wait_finished(producer, delivery_id, "the webhook after its retry")
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.SENT, 2, "http_500"), delivery
    requests = fake.wait_for_requests(2, timeout=WAIT)
    assert len(requests) == 2
    for posted in requests:
        assert_signed_for(posted, delivery_id)


def test_a_410_fails_at_once_into_the_dead_letters(
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    fake.answer_next(410)
    start_worker("webhook", "-c", "1")
    producer = producers(webhook_env)

    delivery_id = send(producer, fake.url)

    delivery = wait_finished(producer, delivery_id, "the webhook to fail")
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.FAILED, 1, "http_410")
    [letter] = producer.store.dead_letters(channel="webhook")
    assert (letter.id, letter.code, letter.attempts) == (delivery_id, "http_410", 1)
    assert "410" in (letter.reason or "")
    [posted] = fake.requests
    assert_signed_for(posted, delivery_id)


def test_a_410_puts_the_url_on_the_suppression_list(
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    """The receiver says the URL is gone for good: later sends to it are recorded `suppressed`."""
    fake.answer_next(410)
    start_worker("webhook", "-c", "1").wait_ready()
    producer = producers(webhook_env)

    delivery_id = send(producer, fake.url)
    wait_finished(producer, delivery_id, "the 410")

    assert [(s.channel, s.address, s.reason) for s in producer.suppressions()] == [
        ("webhook", fake.url, "unregistered")
    ]
    again = send(producer, fake.url)
    assert delivery_of(producer, again).status == Status.SUPPRESSED
    assert len(fake.requests) == 1


def enqueued(redis_url: str) -> int:
    """Messages waiting in the Redis broker's lists."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.llen(key)) for key in client.scan_iter() if client.type(key) == b"list")
    finally:
        client.close()


def test_send_refuses_a_loopback_webhook_and_records_nothing(
    webhook_env: dict[str, str],
    redis_url: str,
    producers: Callable[[dict[str, str]], Notifier],
    fake: FakeWebhook,
) -> None:
    strict = {k: v for k, v in webhook_env.items() if k != "NOTIFY_WEBHOOK_ALLOW_PRIVATE"}
    producer = producers(strict)

    with pytest.raises(notify.ValidationError) as refused:
        send(producer, f"http://127.0.0.1:{fake.port}/hook")

    assert "to.webhook" in str(refused.value)
    assert "NOTIFY_WEBHOOK_ALLOW_PRIVATE" in str(refused.value)
    database = Path(webhook_env["NOTIFY_HOME"]) / "notify.db"
    assert count_rows(database, "notify_notifications") == 0
    assert count_rows(database, "notify_deliveries") == 0
    assert producer.flush(timeout=10)
    assert enqueued(redis_url) == 0
    assert fake.requests == []


def loopback_name() -> str:
    """A host name (not "localhost") that resolves to loopback only, or skip."""
    name = socket.gethostname()
    try:
        found = {str(a[4][0]) for a in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError as exc:
        pytest.skip(f"this host's name {name!r} does not resolve: {exc}")
    if not found or not all(a.startswith("127.") or a == "::1" for a in found):
        pytest.skip(f"this host's name {name!r} resolves to {sorted(found)}, not loopback only")
    return name


@pytest.mark.parametrize(
    ("host", "code"),
    [("literal", "address"), ("name", "private_address")],
    ids=["ip-literal-by-the-url-check", "name-by-the-dns-check"],
)
def test_a_worker_that_does_not_allow_private_addresses_refuses_them(
    host: str,
    code: str,
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    """The producer allows loopback, its worker does not: failed for good, nothing sent."""
    address = "127.0.0.1" if host == "literal" else loopback_name()
    strict = {k: v for k, v in webhook_env.items() if k != "NOTIFY_WEBHOOK_ALLOW_PRIVATE"}
    start_worker("webhook", "-c", "1", environ=strict)
    producer = producers(webhook_env)

    delivery_id = send(producer, f"http://{address}:{fake.port}/hook")

    delivery = wait_finished(producer, delivery_id, "the webhook to be refused")
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.FAILED, 1, code), delivery
    assert "NOTIFY_WEBHOOK_ALLOW_PRIVATE" in (delivery.last_error or "")
    [letter] = producer.store.dead_letters(channel="webhook")
    assert (letter.id, letter.code) == (delivery_id, code)
    assert fake.requests == []
    assert fake.connection_count == 0


def test_a_worker_without_the_secret_refuses_to_start_naming_it(
    webhook_env: dict[str, str], tmp_path: Path
) -> None:
    del webhook_env["NOTIFY_WEBHOOK_SECRET"]

    returncode, stdout, stderr = start_and_wait(["worker", "webhook", "-l", "info"], webhook_env, tmp_path)

    assert returncode == 2, f"it started instead:\n{stdout}{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: NOTIFY_WEBHOOK_SECRET"), stderr
    assert "ready" not in stdout + stderr


def test_a_worker_killed_while_its_post_is_held_leaves_an_unknown_outcome_posted_once(
    webhook_env: dict[str, str],
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    """The POST went out, its worker died before the answer: the receiver may have acted on it.
    The next worker's sweep fails it as `outcome_unknown` (never POSTed again by itself); an
    operator's replay sends it again, the same delivery id, for the receiver to deduplicate."""
    webhook_env["NOTIFY_LEASE"] = "1"  # the dead worker is taken for dead fast
    fake.answer_next(200, stall=True)
    first = start_worker("webhook", "-c", "1")
    producer = producers(webhook_env)
    delivery_id = send(producer, fake.url)
    [held] = fake.wait_for_requests(1, timeout=WAIT)
    assert delivery_of(producer, delivery_id).status == Status.SENDING

    first.kill()
    fake.release()  # the answer goes to a closed connection
    start_worker("webhook", "-c", "1").wait_ready()

    delivery = wait_finished(producer, delivery_id, "the dead worker's webhook, ended")
    assert (delivery.status, delivery.error_code) == (Status.FAILED, "outcome_unknown"), delivery
    assert len(fake.requests) == 1
    assert producer.replay([delivery_id]).replayed == [delivery_id]
    wait_for(
        lambda: delivery_of(producer, delivery_id).status == Status.SENT, timeout=WAIT, what="the replay"
    )
    requests = fake.requests
    assert len(requests) == 2, requests  # the one the dead worker sent, and the operator's replay
    for posted in requests:
        assert_signed_for(posted, delivery_id)
    assert held.headers["x-notify-delivery-id"] == delivery_id


# each receiver its own secret (NOTIFY_WEBHOOK_SECRETS)


@pytest.fixture
def secrets_file(webhook_env: dict[str, str], tmp_path: Path) -> Path:
    """The test hook's answers (`tests.support.webhook_secrets`), set as NOTIFY_WEBHOOK_SECRETS."""
    path = tmp_path / "webhook-secrets.json"
    webhook_secrets.write(path, {})
    webhook_env["NOTIFY_WEBHOOK_SECRETS"] = "tests.support.webhook_secrets:secrets_for"
    webhook_env["NOTIFY_TEST_WEBHOOK_SECRETS"] = str(path)
    return path


def signatures_of(request: Received) -> list[str]:
    return request.headers["webhook-signature"].split(" ")


def test_two_receivers_are_each_signed_with_their_own_secret_and_refuse_the_others(
    webhook_env: dict[str, str],
    secrets_file: Path,
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
    fake: FakeWebhook,
) -> None:
    """A and B hold their own secrets only; `fake`, a URL the hook does not know, the default one."""
    with (
        FakeWebhook(SECRET_A, refuse_unverified=True) as receiver_a,
        FakeWebhook(SECRET_B, refuse_unverified=True) as receiver_b,
    ):
        webhook_secrets.write(secrets_file, {receiver_a.url: SECRET_A, receiver_b.url: SECRET_B})
        start_worker("webhook", "-c", "2")
        producer = producers(webhook_env)

        sent = {url: send(producer, url) for url in (receiver_a.url, receiver_b.url, fake.url)}

        for url, delivery_id in sent.items():
            delivery = wait_finished(producer, delivery_id, f"the webhook to {url}")
            assert (delivery.status, delivery.attempts) == (Status.SENT, 1), delivery
        [to_a], [to_b], [to_default] = (r.wait_for_requests(1, WAIT) for r in (receiver_a, receiver_b, fake))
        assert_signed_for(to_a, sent[receiver_a.url])
        assert_signed_for(to_b, sent[receiver_b.url])
        assert_signed_for(to_default, sent[fake.url])
        for request, others in (
            (to_a, (SECRET_B, SECRET)),
            (to_b, (SECRET_A, SECRET)),
            (to_default, (SECRET_A,)),
        ):
            assert len(signatures_of(request)) == 1
            assert not any(verifies(other, request.headers, request.body) for other in others)

        replayed = urllib3.request("POST", receiver_b.url, body=to_a.body, headers=dict(to_a.headers))
        assert replayed.status == 401  # B refuses A's request
        assert [r.signature_ok for r in receiver_b.requests] == [True, False]


def test_a_secret_rotated_while_deliveries_are_in_flight_verifies_with_the_old_and_the_new(
    webhook_env: dict[str, str],
    secrets_file: Path,
    producers: Callable[[dict[str, str]], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    """The hook's answer goes from OLD to [NEW, OLD] while a delivery waits for its retry,
    then to NEW once the receiver holds it: each attempt is signed with what the hook says then."""
    with FakeWebhook(OLD, refuse_unverified=True) as receiver:  # holds the old secret only
        webhook_secrets.write(secrets_file, {receiver.url: OLD})
        receiver.answer_next(503, headers={"Retry-After": "2"})
        start_worker("webhook", "-c", "2")
        producer = producers(webhook_env)
        waiting = send(producer, receiver.url)
        [first_try] = receiver.wait_for_requests(1, WAIT)

        webhook_secrets.write(secrets_file, {receiver.url: [NEW, OLD]})  # the rotation starts
        after = send(producer, receiver.url)
        for delivery_id in (waiting, after):
            delivery = wait_finished(producer, delivery_id, "the webhooks during the rotation")
            assert delivery.status == Status.SENT, delivery
        during = receiver.requests[1:]

        receiver.secret = NEW  # the receiver now holds the new secret only
        webhook_secrets.write(secrets_file, {receiver.url: NEW})  # the rotation ends
        last = send(producer, receiver.url)
        assert wait_finished(producer, last, "the webhook after the rotation").status == Status.SENT
        [ended] = receiver.requests[3:]

    assert delivery_of(producer, waiting).attempts == 2
    assert sorted(r.headers["webhook-id"] for r in during) == sorted([waiting, after])
    assert_signed_for(first_try, waiting)
    assert len(signatures_of(first_try)) == 1 and not verifies(NEW, first_try.headers, first_try.body)
    for request in during:  # the in-flight one's retry, and the one sent after the change
        assert request.signature_ok  # verified with OLD, by the receiver that holds only it
        assert verifies(NEW, request.headers, request.body)
        assert len(signatures_of(request)) == 2
    assert_signed_for(ended, last)
    assert len(signatures_of(ended)) == 1 and not verifies(OLD, ended.headers, ended.body)


def test_a_worker_whose_secrets_hook_does_not_import_refuses_to_start_naming_it(
    webhook_env: dict[str, str], tmp_path: Path
) -> None:
    webhook_env["NOTIFY_WEBHOOK_SECRETS"] = "tests.support.no_such_module:secrets_for"

    returncode, stdout, stderr = start_and_wait(["worker", "webhook", "-l", "info"], webhook_env, tmp_path)

    assert returncode == 2, f"it started instead:\n{stdout}{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    hook = "'tests.support.no_such_module:secrets_for'"
    assert lines[0].startswith(f"error: NOTIFY_WEBHOOK_SECRETS {hook} does not import"), stderr
    assert "ready" not in stdout + stderr
