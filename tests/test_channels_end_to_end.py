"""SMS and push end to end: real workers on Redis, the real twilio and pyfcm clients, local fakes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notify.api import Notifier
from notify.models import FINAL_STATUSES, Delivery, Status
from tests.fakes.fcm import FakeFcm, FakeOAuth
from tests.fakes.twilio import FakeTwilio
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer

EVERYONE = {"email": "ada@example.com", "phone": "+14155550100", "push_token": "token-ada"}


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def fcm() -> Iterator[tuple[FakeOAuth, FakeFcm]]:
    with FakeOAuth() as oauth, FakeFcm(oauth) as fake:
        yield oauth, fake


@pytest.fixture
def providers(
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    twilio: FakeTwilio,
    fcm: tuple[FakeOAuth, FakeFcm],
) -> dict[str, str]:
    """Every channel on its real provider client, pointed at the local fakes."""
    oauth, push = fcm
    policy = tmp_path / "notify.toml"
    policy.write_text(
        "".join(
            f'[channels.{c}]\nbackoff_initial = "200ms"\nbackoff_max = "1s"\njitter = false\n'
            for c in ("email", "sms", "push")
        )
    )
    env.update(
        {
            "NOTIFY_BROKER_URL": redis_url,
            "NOTIFY_CONFIG": str(policy),
            "NOTIFY_SMS_BACKEND": "twilio",
            "NOTIFY_TWILIO_ACCOUNT_SID": twilio.account_sid,
            "NOTIFY_TWILIO_AUTH_TOKEN": twilio.auth_token,
            "NOTIFY_TWILIO_FROM": "+15005550006",
            "NOTIFY_TWILIO_BASE_URL": twilio.url,
            "NOTIFY_PUSH_BACKEND": "fcm",
            "NOTIFY_FCM_CREDENTIALS": str(oauth.service_account(tmp_path, project_id="notify-test")),
            "NOTIFY_FCM_BASE_URL": push.url,
            "NOTIFY_ON_PERMANENT_FAILURE": "tests.support.hooks:record",
            "NOTIFY_TEST_HOOK_FILE": str(tmp_path / "hook.jsonl"),
        }
    )
    return env


def by_channel(producer: Notifier, notification_id: str) -> dict[str, Delivery]:
    return {str(d.channel): d for d in producer.status(notification_id)}


def finished(producer: Notifier, notification_id: str) -> bool:
    return all(d.status in FINAL_STATUSES for d in producer.status(notification_id))


def test_one_send_reaches_all_three_providers_through_three_workers(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    twilio: FakeTwilio,
    fcm: tuple[FakeOAuth, FakeFcm],
) -> None:
    oauth, push = fcm
    for channel in ("email", "sms", "push"):
        start_worker(channel, "-c", "4")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"})  # channels omitted: all three

    wait_for(lambda: finished(producer, result.id), what="all three deliveries")
    deliveries = by_channel(producer, result.id)
    assert {c: d.status for c, d in deliveries.items()} == {c: Status.SENT for c in ("email", "sms", "push")}
    [sms] = twilio.messages
    assert (sms.to, sms.from_, sms.body) == (
        "+14155550100",
        "+15005550006",
        "Welcome, Ada! Your account is ready.",
    )
    assert deliveries["sms"].provider_id == sms.sid
    [pushed] = push.messages
    assert pushed.token == "token-ada"
    assert pushed.notification == {"title": "Welcome, Ada!", "body": "Your account is ready."}
    assert pushed.data == {"notify_delivery_id": deliveries["push"].id}
    assert deliveries["push"].provider_id == pushed.name
    assert pushed.bearer in oauth.issued
    [mail] = smtp_server.messages
    assert mail["X-Notify-Delivery-Id"] == deliveries["email"].id


def test_channels_succeed_or_fail_independently(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    twilio: FakeTwilio,
    tmp_path: Path,
) -> None:
    twilio.fail_for("+14155550100", status=400, code=21211)
    for channel in ("email", "sms"):
        start_worker(channel, "-c", "2")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"}, channels=["email", "sms"])

    wait_for(lambda: finished(producer, result.id), what="both deliveries")
    deliveries = by_channel(producer, result.id)
    assert deliveries["email"].status == Status.SENT
    sms = deliveries["sms"]
    assert (sms.status, sms.attempts, sms.error_code) == (Status.FAILED, 1, "21211")
    assert sms.last_error == "Invalid 'To' Phone Number"  # Twilio's own words
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"status": 429, "code": 20429, "headers": {"Retry-After": "1"}}, "20429"),
        ({"status": 503, "code": 20503}, "20503"),
    ],
    ids=["429-retry-after", "503"],
)
def test_twilio_transient_errors_are_retried(
    fault: dict[str, object],
    code: str,
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    twilio: FakeTwilio,
) -> None:
    twilio.fail_next(2, **fault)  # type: ignore[arg-type]
    start_worker("sms", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"}, channels=["sms"])

    wait_for(lambda: finished(producer, result.id), what="the SMS")
    sms = by_channel(producer, result.id)["sms"]
    assert (sms.status, sms.attempts, sms.error_code) == (Status.SENT, 3, code)
    assert len(twilio.messages) == 1


def test_an_unsubscribed_number_fails_at_once_and_keeps_twilios_reason(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    twilio: FakeTwilio,
) -> None:
    twilio.fail_for(
        "+14155550100", status=400, code=21610, message="Attempt to send to unsubscribed recipient"
    )
    start_worker("sms", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"}, channels=["sms"])

    wait_for(lambda: finished(producer, result.id), what="the SMS to fail")
    sms = by_channel(producer, result.id)["sms"]
    assert (sms.status, sms.attempts, sms.error_code) == (Status.FAILED, 1, "21610")
    assert sms.last_error == "Attempt to send to unsubscribed recipient"


def test_wrong_twilio_credentials_are_a_loud_configuration_error(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    twilio: FakeTwilio,
) -> None:
    providers["NOTIFY_TWILIO_AUTH_TOKEN"] = "not-the-token"
    worker = start_worker("sms", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"}, channels=["sms"])

    wait_for(
        lambda: (
            by_channel(producer, result.id)["sms"].attempts >= 1
            and by_channel(producer, result.id)["sms"].status == Status.RETRYING
        ),
        what="the first try",
    )
    sms = by_channel(producer, result.id)["sms"]
    assert sms.error_code == "configuration"
    assert "NOTIFY_TWILIO_AUTH_TOKEN" in (sms.last_error or "")
    wait_for(lambda: "CRITICAL" in worker.output(), what="the critical log line")
    assert "not-the-token" not in worker.output()
    assert twilio.messages == []


def test_an_unregistered_push_token_fails_and_calls_the_hook(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    fcm: tuple[FakeOAuth, FakeFcm],
    tmp_path: Path,
) -> None:
    _, push = fcm
    push.fail_for("token-ada", status=404, error_code="UNREGISTERED")
    start_worker("push", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"}, channels=["push"])

    wait_for(lambda: finished(producer, result.id), what="the push to fail")
    delivery = by_channel(producer, result.id)["push"]
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.FAILED, 1, "UNREGISTERED")
    hook_file = tmp_path / "hook.jsonl"
    wait_for(hook_file.exists, what="the hook")
    assert [json.loads(line) for line in hook_file.read_text().splitlines()] == [
        {"channel": "push", "address": "token-ada", "code": "UNREGISTERED"}
    ]


def test_an_invalid_push_argument_fails_at_once(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    fcm: tuple[FakeOAuth, FakeFcm],
) -> None:
    _, push = fcm
    push.fail_for("token-ada", status=400, error_code="INVALID_ARGUMENT")
    start_worker("push", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"}, channels=["push"])

    wait_for(lambda: finished(producer, result.id), what="the push to fail")
    delivery = by_channel(producer, result.id)["push"]
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.FAILED, 1, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"status": 429, "error_code": "QUOTA_EXCEEDED", "headers": {"Retry-After": "1"}}, "QUOTA_EXCEEDED"),
        ({"status": 500, "error_code": "INTERNAL"}, "INTERNAL"),
        ({"status": 503, "error_code": "UNAVAILABLE"}, "UNAVAILABLE"),
    ],
    ids=["429-retry-after", "500", "503"],
)
def test_fcm_transient_errors_are_retried(
    fault: dict[str, object],
    code: str,
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    fcm: tuple[FakeOAuth, FakeFcm],
) -> None:
    oauth, push = fcm
    push.fail_next(1, **fault)  # type: ignore[arg-type]
    start_worker("push", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", EVERYONE, data={"name": "Ada"}, channels=["push"])

    wait_for(lambda: finished(producer, result.id), what="the push")
    delivery = by_channel(producer, result.id)["push"]
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.SENT, 2, code)
    assert len(push.messages) == 1 and push.request_count == 2
    assert oauth.request_count == 1  # the token is reused across tries


def test_the_push_worker_fetches_one_token_for_many_deliveries(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    fcm: tuple[FakeOAuth, FakeFcm],
) -> None:
    oauth, push = fcm
    start_worker("push", "-c", "8")
    producer = notifier()

    ids = [producer.send("welcome", {"push_token": f"t{i}"}, data={"name": "U"}).id for i in range(40)]

    wait_for(lambda: all(finished(producer, i) for i in ids), what="40 pushes")
    assert len(push.messages) == 40
    assert oauth.request_count == 1


def test_an_sms_opt_out_and_an_unregistered_push_token_are_suppressed(
    providers: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    twilio: FakeTwilio,
    fcm: tuple[FakeOAuth, FakeFcm],
) -> None:
    """Twilio 21610 (a STOP) and FCM UNREGISTERED put the address on the suppression list; an
    invalid number (21211) fails as well, and is not taken for an opt-out."""
    _, push = fcm
    twilio.fail_for("+14155550100", code=21610, message="Attempt to send to unsubscribed recipient")
    twilio.fail_for("+14155550101", code=21211, message="Invalid 'To' Phone Number")
    push.fail_for("token-ada", status=404, error_code="UNREGISTERED")
    start_worker("sms", "-c", "2").wait_ready()
    start_worker("push", "-c", "2").wait_ready()
    producer = notifier()

    sent = [
        producer.send("welcome", {"phone": "+14155550100", "push_token": "token-ada"}, data={"name": "A"}),
        producer.send("welcome", {"phone": "+14155550101"}, data={"name": "B"}),
    ]
    wait_for(lambda: all(finished(producer, r.id) for r in sent), what="the sends to fail")

    assert {(s.channel, s.address): s.reason for s in producer.suppressions()} == {
        ("sms", "+14155550100"): "opted_out",
        ("push", "token-ada"): "unregistered",
    }
    later = producer.send("welcome", {"phone": "+14155550100", "push_token": "token-ada"}, data={"name": "A"})
    assert {d.status for d in later.deliveries} == {Status.SUPPRESSED}
    assert twilio.messages == []
