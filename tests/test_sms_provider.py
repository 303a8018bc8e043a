"""The Twilio SMS provider, through the real twilio client against a local fake."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest
import requests
from twilio.base.exceptions import (
    TwilioRestException,
    TwilioServiceException,
)

from notify.channels.base import EmailMessage, SmsMessage
from notify.channels.sms import (
    MAX_BODY_CHARS,
    TwilioProvider,
    build_request,
    classify,
    parse_retry_after,
    rebase_url,
)
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    NotifyError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notify.settings import Secret, Settings
from tests.fakes.twilio import FakeTwilio

pytestmark = pytest.mark.timeout(60)

SENDER = "+15005550006"
SERVICE_SID = "MG" + "ab" * 16
TO = "+14155550100"


def sms(to: str = TO, body: str = "Hello Ada") -> SmsMessage:
    return SmsMessage(delivery_id="d-1", to=to, body=body)


def settings_for(fake: FakeTwilio, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "twilio_account_sid": fake.account_sid,
        "twilio_auth_token": Secret(fake.auth_token),
        "twilio_from": SENDER,
        "twilio_base_url": fake.url,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def provider(fake: FakeTwilio) -> Iterator[TwilioProvider]:
    provider = TwilioProvider.from_settings(settings_for(fake))
    yield provider
    provider.close()


def deliver_error(provider: TwilioProvider, message: SmsMessage) -> NotifyError:
    with pytest.raises(NotifyError) as caught:
        provider.deliver(message)
    return caught.value


# --- through the real client ---------------------------------------------------


def test_send_reaches_twilio_and_returns_the_message_sid(fake: FakeTwilio, provider: TwilioProvider) -> None:
    receipt = provider.deliver(sms())

    [sent] = fake.messages
    assert (sent.to, sent.from_, sent.body) == (TO, SENDER, "Hello Ada")
    assert sent.messaging_service_sid is None
    assert receipt.provider_id == sent.sid
    assert sent.sid.startswith("SM")
    assert len(sent.sid) == 34


def test_one_thread_reuses_one_connection(fake: FakeTwilio, provider: TwilioProvider) -> None:
    for _ in range(5):
        provider.deliver(sms())

    assert len(fake.messages) == 5
    assert fake.connection_count == 1


def test_messaging_service_sid_is_sent_as_messaging_service(fake: FakeTwilio) -> None:
    provider = TwilioProvider.from_settings(settings_for(fake, twilio_from=SERVICE_SID))
    provider.deliver(sms())
    provider.close()

    [sent] = fake.messages
    assert sent.messaging_service_sid == SERVICE_SID
    assert sent.from_ is None


def test_wrong_auth_token_is_a_configuration_error(fake: FakeTwilio) -> None:
    settings = settings_for(fake, twilio_auth_token=Secret("not-the-token"))
    provider = TwilioProvider.from_settings(settings)

    error = deliver_error(provider, sms())
    provider.close()

    assert isinstance(error, ConfigurationError)
    assert error.setting == "NOTIFY_TWILIO_AUTH_TOKEN"
    assert "20003" in str(error)
    assert "Authenticate" in str(error)
    assert fake.request_count == 1
    assert fake.messages == []


@pytest.mark.parametrize(
    "env",
    [
        {"TWILIO_EDGE": "sydney"},
        {"TWILIO_REGION": "au1"},
        {"TWILIO_EDGE": "dublin", "TWILIO_REGION": "ie1"},
    ],
)
def test_base_url_is_used_even_with_twilio_edge_or_region(
    fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    provider = TwilioProvider.from_settings(settings_for(fake))

    receipt = provider.deliver(sms())
    provider.close()

    assert receipt.provider_id == fake.messages[0].sid


@pytest.mark.parametrize("retry_after", ["7", "7.0"])
def test_429_is_transient_with_retry_after_seconds(
    fake: FakeTwilio, provider: TwilioProvider, retry_after: str
) -> None:
    fake.fail_next(status=429, code=20429, headers={"Retry-After": retry_after})

    error = deliver_error(provider, sms())

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == 7.0
    assert (error.code, error.reason) == ("20429", "Too Many Requests")
    assert (error.channel, error.provider) == ("sms", "twilio")


def test_retry_after_as_http_date(fake: FakeTwilio, provider: TwilioProvider) -> None:
    when = formatdate(time.time() + 120, usegmt=True)
    fake.fail_next(status=503, code=20503, headers={"Retry-After": when})

    error = deliver_error(provider, sms())

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after is not None
    assert 60 < error.retry_after <= 120


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (503, 20503), (502, None)])
def test_server_errors_are_transient(
    fake: FakeTwilio, provider: TwilioProvider, status: int, code: int | None
) -> None:
    fake.fail_next(status=status, code=code)

    error = deliver_error(provider, sms())

    assert isinstance(error, TransientDeliveryError)
    assert error.code == str(code or status)
    assert error.retry_after is None


def test_transient_failure_then_success(fake: FakeTwilio, provider: TwilioProvider) -> None:
    fake.fail_next(status=503, code=20503)

    with pytest.raises(TransientDeliveryError):
        provider.deliver(sms())
    receipt = provider.deliver(sms())

    assert receipt.provider_id == fake.messages[0].sid


@pytest.mark.parametrize("code", [21211, 21610, 21614, 21612, 21408])
def test_invalid_or_unsubscribed_numbers_are_permanent(
    fake: FakeTwilio, provider: TwilioProvider, code: int
) -> None:
    bad = "+15005550001"
    fake.fail_for(bad, status=400, code=code)

    error = deliver_error(provider, sms(to=bad))
    provider.deliver(sms())  # other numbers still go through

    assert isinstance(error, PermanentDeliveryError)
    assert error.code == str(code)
    assert error.reason
    assert "Unable to create record" not in error.reason
    assert [m.to for m in fake.messages] == [TO]


def test_down_provider_is_transient(fake: FakeTwilio, provider: TwilioProvider) -> None:
    fake.down = True

    error = deliver_error(provider, sms())

    assert isinstance(error, TransientDeliveryError)
    assert error.code == "20503"


def test_connection_refused_is_transient(fake: FakeTwilio, provider: TwilioProvider) -> None:
    provider.deliver(sms())  # leaves a pooled keep-alive connection behind
    fake.stop()

    error = deliver_error(provider, sms())

    assert isinstance(error, TransientDeliveryError)
    assert error.code is None
    assert "ConnectionError" in error.reason


def test_hung_provider_times_out_as_transient(fake: FakeTwilio) -> None:
    settings = settings_for(fake)
    provider = TwilioProvider(
        account_sid=fake.account_sid,
        auth_token=Secret(fake.auth_token),
        sender=SENDER,
        base_url=settings.twilio_base_url,
        timeout=0.5,
    )
    fake.hang = True

    error = deliver_error(provider, sms())
    provider.close()

    assert isinstance(error, TransientDeliveryError)
    assert "Timeout" in error.reason


def test_body_over_1600_characters_fails_before_any_request(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    error = deliver_error(provider, sms(body="x" * (MAX_BODY_CHARS + 1)))
    provider.deliver(sms(body="x" * MAX_BODY_CHARS))

    assert isinstance(error, PermanentDeliveryError)
    assert error.code == "21617"
    assert "x" * 20 not in str(error)
    assert fake.request_count == 1


def test_deliver_refuses_other_channels_messages(provider: TwilioProvider) -> None:
    email = EmailMessage("d-1", "ada@example.com", "Hi", "text", None, "<id@x>")

    with pytest.raises(TypeError, match="EmailMessage"):
        provider.deliver(email)


def test_close_then_deliver_opens_a_new_connection(fake: FakeTwilio, provider: TwilioProvider) -> None:
    provider.deliver(sms())
    provider.close()
    provider.deliver(sms())

    assert len(fake.messages) == 2
    assert fake.connection_count == 2


def test_threads_deliver_concurrently(fake: FakeTwilio, provider: TwilioProvider) -> None:
    numbers = [f"+1415555{i:04d}" for i in range(200)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        receipts = list(pool.map(lambda to: provider.deliver(sms(to=to)), numbers))

    sid_to_number = {m.sid: m.to for m in fake.messages}
    assert [sid_to_number[r.provider_id or ""] for r in receipts] == numbers
    assert fake.connection_count <= 8


# --- settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("twilio_account_sid", "NOTIFY_TWILIO_ACCOUNT_SID"),
        ("twilio_auth_token", "NOTIFY_TWILIO_AUTH_TOKEN"),
        ("twilio_from", "NOTIFY_TWILIO_FROM"),
    ],
)
def test_missing_setting_is_named(fake: FakeTwilio, missing: str, variable: str) -> None:
    settings = settings_for(fake, **{missing: None})

    with pytest.raises(ConfigurationError, match=variable) as caught:
        TwilioProvider.from_settings(settings)

    assert caught.value.setting == variable


def test_from_env_names_the_missing_auth_token() -> None:
    environ = {"NOTIFY_TWILIO_ACCOUNT_SID": "AC1", "NOTIFY_TWILIO_FROM": SENDER}

    with pytest.raises(ConfigurationError, match="NOTIFY_TWILIO_AUTH_TOKEN"):
        TwilioProvider.from_settings(Settings.from_env(environ))


@pytest.mark.parametrize("url", ["api.twilio.com", "ftp://example.com", "http://"])
def test_bad_base_url_is_a_configuration_error(fake: FakeTwilio, url: str) -> None:
    with pytest.raises(ConfigurationError, match="NOTIFY_TWILIO_BASE_URL"):
        TwilioProvider.from_settings(settings_for(fake, twilio_base_url=url))


def test_auth_token_never_shows(fake: FakeTwilio, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = fake.auth_token
    provider = TwilioProvider.from_settings(settings_for(fake))
    fake.fail_next(status=429, code=20429, headers={"Retry-After": "1"})
    fake.fail_for("+15005550001", status=400, code=21211)
    errors = [deliver_error(provider, sms()), deliver_error(provider, sms("+15005550001"))]
    bad = TwilioProvider.from_settings(settings_for(fake, twilio_auth_token=Secret("x")))
    errors.append(deliver_error(bad, sms()))
    fake.stop()
    errors.append(deliver_error(provider, sms()))
    provider.close()
    bad.close()

    shown = [repr(provider), str(provider), caplog.text]
    for error in errors:
        shown += [str(error), repr(error), str(error.__cause__), repr(error.__cause__)]
    assert all(token not in text for text in shown)


# --- pure functions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        (SENDER, {"to": TO, "from_": SENDER, "body": "Hi"}),
        ("NotifyCo", {"to": TO, "from_": "NotifyCo", "body": "Hi"}),
        ("MGShop", {"to": TO, "from_": "MGShop", "body": "Hi"}),
        (SERVICE_SID, {"to": TO, "messaging_service_sid": SERVICE_SID, "body": "Hi"}),
    ],
)
def test_build_request(sender: str, expected: dict[str, str]) -> None:
    assert build_request(sms(body="Hi"), sender) == expected


def test_build_request_accepts_exactly_the_limit() -> None:
    assert build_request(sms(body="é" * MAX_BODY_CHARS), SENDER)["body"]
    with pytest.raises(PermanentDeliveryError, match="1601 characters"):
        build_request(sms(body="é" * (MAX_BODY_CHARS + 1)), SENDER)


def rest_error(status: int, code: int | None, message: str = "Oops") -> Exception:
    uri = "/Accounts/AC1/Messages.json"
    error: Exception = TwilioRestException(status, uri, f"Unable to create record: {message}", code, "POST")
    return error


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (rest_error(429, 20429), TransientDeliveryError, "20429"),
        (rest_error(400, 20429), TransientDeliveryError, "20429"),
        (rest_error(500, 20500), TransientDeliveryError, "20500"),
        (rest_error(503, None), TransientDeliveryError, "503"),
        (rest_error(400, 21211), PermanentDeliveryError, "21211"),
        (rest_error(400, 21610), PermanentDeliveryError, "21610"),
        (rest_error(400, 21614), PermanentDeliveryError, "21614"),
        (rest_error(400, 21612), PermanentDeliveryError, "21612"),
        (rest_error(400, 21408), PermanentDeliveryError, "21408"),
        (rest_error(404, 20404), PermanentDeliveryError, "20404"),
        (rest_error(403, None), PermanentDeliveryError, "403"),
        (requests.ConnectionError("refused"), TransientDeliveryError, None),
        (requests.ConnectTimeout("slow"), TransientDeliveryError, None),
        (requests.ReadTimeout("slow"), TransientDeliveryError, None),
        (requests.exceptions.ChunkedEncodingError("cut"), TransientDeliveryError, None),
        (ValueError("odd"), PermanentDeliveryError, None),
    ],
)
def test_classify(exc: Exception, kind: type[DeliveryError], code: str | None) -> None:
    error = classify(exc, retry_after=3.0)

    assert type(error) is kind
    assert isinstance(error, DeliveryError)
    assert (error.code, error.channel, error.provider) == (code, "sms", "twilio")
    if isinstance(error, TransientDeliveryError) and code:
        assert error.retry_after == 3.0


def test_classify_keeps_twilios_message() -> None:
    error = classify(rest_error(400, 21211, "Invalid 'To' Phone Number"), None)

    assert isinstance(error, DeliveryError)
    assert error.reason == "Invalid 'To' Phone Number"


@pytest.mark.parametrize(("status", "code"), [(401, 20003), (401, None), (403, 20003)])
def test_classify_bad_credentials_as_configuration(status: int, code: int | None) -> None:
    error = classify(rest_error(status, code, "Authenticate"), None)

    assert isinstance(error, ConfigurationError)
    assert error.setting == "NOTIFY_TWILIO_AUTH_TOKEN"
    assert str(code or status) in str(error)


def test_classify_rfc9457_service_exception() -> None:
    exc = TwilioServiceException("about:blank", "Unavailable", 503, 20503, "Try later")

    error = classify(exc, 2.0)

    assert isinstance(error, TransientDeliveryError)
    assert (error.code, error.reason, error.retry_after) == ("20503", "Try later", 2.0)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (" 12 ", 12.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("", None),
        (None, None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_future_http_date() -> None:
    seconds = parse_retry_after(formatdate(time.time() + 3600, usegmt=True))

    assert seconds is not None
    assert 3500 < seconds <= 3600


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/2010-04-01/A/M.json?x=1"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/2010-04-01/A/M.json?x=1"),
        ("https://proxy.example/twilio", "https://proxy.example/twilio/2010-04-01/A/M.json?x=1"),
    ],
)
def test_rebase_url(base: str, expected: str) -> None:
    url = "https://api.sydney.au1.twilio.com/2010-04-01/A/M.json?x=1"

    assert rebase_url(url, base) == expected
