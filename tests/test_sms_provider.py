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
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from notify.channels.email import EmailMessage
from notify.channels.sms import SmsMessage
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notify.providers.http import MAX_RETRY_AFTER, Budget, BudgetSpent
from notify.providers.twilio import (
    MAX_BODY_CHARS,
    TwilioProvider,
    build_request,
    classify,
    parse_retry_after,
    rebase_url,
)
from notify.settings import Settings
from tests.fakes.twilio import FakeTwilio
from tests.support.trickle import TricklingReceiver

pytestmark = pytest.mark.timeout(60)

SENDER = "+15005550006"
SERVICE_SID = "MG" + "ab" * 16
TO = "+14155550100"


def sms(to: str = TO, body: str = "Hello Ada") -> SmsMessage:
    return SmsMessage(delivery_id="d-1", to=to, body=body)


def settings_for(fake: FakeTwilio, *, delivery_timeout: float = 30.0, **overrides: str | None) -> Settings:
    """Settings for `fake`; `overrides` set NOTIFY_TWILIO_* variables (None: unset)."""
    variables: dict[str, str | None] = {
        "NOTIFY_TWILIO_ACCOUNT_SID": fake.account_sid,
        "NOTIFY_TWILIO_AUTH_TOKEN": fake.auth_token,
        "NOTIFY_TWILIO_FROM": SENDER,
        "NOTIFY_TWILIO_BASE_URL": fake.url,
    }
    return Settings(delivery_timeout=delivery_timeout).with_environ(**{**variables, **overrides})


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
    provider = TwilioProvider.from_settings(settings_for(fake, NOTIFY_TWILIO_FROM=SERVICE_SID))
    provider.deliver(sms())
    provider.close()

    [sent] = fake.messages
    assert sent.messaging_service_sid == SERVICE_SID
    assert sent.from_ is None


def test_wrong_auth_token_is_a_configuration_error(fake: FakeTwilio) -> None:
    settings = settings_for(fake, NOTIFY_TWILIO_AUTH_TOKEN="not-the-token")
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


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (503, 20503)])
def test_server_errors_are_transient(
    fake: FakeTwilio, provider: TwilioProvider, status: int, code: int | None
) -> None:
    fake.fail_next(status=status, code=code)

    error = deliver_error(provider, sms())

    assert isinstance(error, TransientDeliveryError)
    assert error.code == str(code or status)
    assert error.retry_after is None


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_that_gave_up_after_the_post_is_an_unknown_outcome(
    fake: FakeTwilio, provider: TwilioProvider, status: int
) -> None:
    """A load balancer timed out waiting for Twilio, which may have made the message: no retry."""
    fake.fail_next(status=status, code=None)

    error = deliver_error(provider, sms())

    assert isinstance(error, OutcomeUnknownError)
    assert error.code == OutcomeUnknownError.CODE


def test_transient_failure_then_success(fake: FakeTwilio, provider: TwilioProvider) -> None:
    fake.fail_next(status=503, code=20503)

    with pytest.raises(TransientDeliveryError):
        provider.deliver(sms())
    receipt = provider.deliver(sms())

    assert receipt.provider_id == fake.messages[0].sid


@pytest.mark.parametrize("code", [21211, 21610, 21614, 21612])
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


def test_connection_refused_sends_nothing_and_stays_transient(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    fake.stop()

    error = deliver_error(provider, sms())

    assert type(error) is TransientDeliveryError
    assert fake.messages == []


@pytest.mark.timeout(20)  # the old fixed 30 s per request would blow this
def test_a_slow_twilio_is_abandoned_at_the_budget_as_outcome_unknown_with_one_message(
    fake: FakeTwilio,
) -> None:
    provider = TwilioProvider.from_settings(settings_for(fake, delivery_timeout=1.0))
    fake.hold_answers()  # Twilio takes the message, then answers only when released

    error = deliver_error(provider, sms())
    unanswered = fake.answer_count
    fake.release()
    provider.close()

    assert isinstance(error, OutcomeUnknownError)  # failed into the DLQ, never retried
    assert "ReadTimeout" in error.reason
    assert unanswered == 0  # our budget ended the wait, not Twilio
    assert [m.to for m in fake.messages] == [TO]
    assert fake.request_count == 1


def test_a_connection_cut_after_the_request_is_outcome_unknown(
    fake: FakeTwilio, provider: TwilioProvider
) -> None:
    fake.drop_answers()

    error = deliver_error(provider, sms())

    assert isinstance(error, OutcomeUnknownError)
    assert [m.to for m in fake.messages] == [TO]


@pytest.mark.timeout(20)
def test_a_hung_twilio_is_abandoned_at_the_budget(fake: FakeTwilio) -> None:
    provider = TwilioProvider.from_settings(settings_for(fake, delivery_timeout=1.0))
    fake.hang = True

    error = deliver_error(provider, sms())
    provider.close()

    # The request was out: Twilio may have taken it, so it must not be resent.
    assert isinstance(error, OutcomeUnknownError)
    assert "Timeout" in error.reason


@pytest.mark.parametrize(
    ("status", "code", "setting"),
    [
        (400, 21606, "NOTIFY_TWILIO_FROM"),
        (400, 21659, "NOTIFY_TWILIO_FROM"),
        (400, 21212, "NOTIFY_TWILIO_FROM"),
        (404, 20404, "NOTIFY_TWILIO_ACCOUNT_SID"),
        (400, 21408, "NOTIFY_TWILIO_ACCOUNT_SID"),
    ],
)
def test_a_misconfigured_sender_or_account_is_a_configuration_error_not_the_recipients(
    fake: FakeTwilio, provider: TwilioProvider, status: int, code: int, setting: str
) -> None:
    fake.fail_for(TO, status=status, code=code)

    error = deliver_error(provider, sms())

    assert isinstance(error, ConfigurationError)  # kept and retried loudly; no permanent-failure hook
    assert error.setting == setting
    assert str(code) in str(error)
    assert setting in str(error)


def test_a_full_sender_queue_is_transient(fake: FakeTwilio, provider: TwilioProvider) -> None:
    fake.fail_next(status=400, code=21611, headers={"Retry-After": "1.5"})

    error = deliver_error(provider, sms())
    provider.deliver(sms())

    assert isinstance(error, TransientDeliveryError)
    assert (error.code, error.retry_after) == ("21611", 1.5)
    assert len(fake.messages) == 1


@pytest.mark.parametrize(
    "header",
    ["99999999999999", "1e308", "inf", "Fri, 01 Jan 2499 00:00:00 GMT", "Fri, 01 Jan 99999 00:00:00 GMT"],
)
def test_a_huge_retry_after_is_capped(fake: FakeTwilio, provider: TwilioProvider, header: str) -> None:
    fake.fail_next(status=429, code=20429, headers={"Retry-After": header})

    error = deliver_error(provider, sms())

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == MAX_RETRY_AFTER


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
    "variable", ["NOTIFY_TWILIO_ACCOUNT_SID", "NOTIFY_TWILIO_AUTH_TOKEN", "NOTIFY_TWILIO_FROM"]
)
def test_missing_setting_is_named(fake: FakeTwilio, variable: str) -> None:
    settings = settings_for(fake).with_environ(**{variable: None})

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
        TwilioProvider.from_settings(settings_for(fake, NOTIFY_TWILIO_BASE_URL=url))


def test_auth_token_never_shows(fake: FakeTwilio, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = fake.auth_token
    provider = TwilioProvider.from_settings(settings_for(fake))
    fake.fail_next(status=429, code=20429, headers={"Retry-After": "1"})
    fake.fail_for("+15005550001", status=400, code=21211)
    errors = [deliver_error(provider, sms()), deliver_error(provider, sms("+15005550001"))]
    bad = TwilioProvider.from_settings(settings_for(fake, NOTIFY_TWILIO_AUTH_TOKEN="x"))
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


def refused() -> requests.ConnectionError:
    """What requests raises when nothing listens: urllib3's connect failure, wrapped."""
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, "/Messages.json", reason))  # type: ignore[arg-type]


def dropped() -> requests.ConnectionError:
    """What requests raises when the server hangs up after reading the request."""
    return requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (rest_error(429, 20429), TransientDeliveryError, "20429"),
        (rest_error(400, 20429), TransientDeliveryError, "20429"),
        (rest_error(408, None), TransientDeliveryError, "408"),
        (rest_error(500, 20500), TransientDeliveryError, "20500"),
        (rest_error(503, None), TransientDeliveryError, "503"),
        (rest_error(400, 21611), TransientDeliveryError, "21611"),  # From's queue is full
        (rest_error(400, 21211), PermanentDeliveryError, "21211"),
        (rest_error(400, 21610), PermanentDeliveryError, "21610"),
        (rest_error(400, 21614), PermanentDeliveryError, "21614"),
        (rest_error(400, 21612), PermanentDeliveryError, "21612"),
        (rest_error(400, 21617), PermanentDeliveryError, "21617"),
        (rest_error(403, None), PermanentDeliveryError, "403"),
        (refused(), TransientDeliveryError, None),
        (requests.ConnectTimeout("slow to connect"), TransientDeliveryError, None),
        (BudgetSpent("no time left"), TransientDeliveryError, None),
        (requests.exceptions.SSLError("handshake"), TransientDeliveryError, None),
        (requests.ReadTimeout("slow"), OutcomeUnknownError, "outcome_unknown"),
        (dropped(), OutcomeUnknownError, "outcome_unknown"),
        (requests.exceptions.ChunkedEncodingError("cut"), OutcomeUnknownError, "outcome_unknown"),
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


@pytest.mark.parametrize(
    ("status", "code", "setting"),
    [
        (401, 20003, "NOTIFY_TWILIO_AUTH_TOKEN"),
        (401, None, "NOTIFY_TWILIO_AUTH_TOKEN"),
        (403, 20003, "NOTIFY_TWILIO_AUTH_TOKEN"),
        (404, 20404, "NOTIFY_TWILIO_ACCOUNT_SID"),
        (400, 21408, "NOTIFY_TWILIO_ACCOUNT_SID"),  # the account lacks the region's geo permission
        (400, 21608, "NOTIFY_TWILIO_ACCOUNT_SID"),  # a trial account
        (400, 21212, "NOTIFY_TWILIO_FROM"),
        (400, 21603, "NOTIFY_TWILIO_FROM"),
        (400, 21606, "NOTIFY_TWILIO_FROM"),
        (400, 21659, "NOTIFY_TWILIO_FROM"),
        (400, 21660, "NOTIFY_TWILIO_FROM"),
    ],
)
def test_classify_sender_and_account_problems_as_configuration(
    status: int, code: int | None, setting: str
) -> None:
    error = classify(rest_error(status, code, "Refused"), 3.0)

    assert isinstance(error, ConfigurationError)
    assert error.setting == setting
    assert str(code or status) in str(error)
    assert setting in str(error)


def test_classify_keeps_twilios_message() -> None:
    error = classify(rest_error(400, 21211, "Invalid 'To' Phone Number"), None)

    assert isinstance(error, DeliveryError)
    assert error.reason == "Invalid 'To' Phone Number"


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
        (".5", 0.5),
        ("-3", 0.0),
        (" 12 ", 12.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 0.0),  # RFC 850, obsolete but allowed
        ("Wed Oct 21 07:28:00 2015", 0.0),  # asctime, likewise
        ("", None),
        ("   ", None),
        (None, None),
        ("soon", None),
        ("1_000", None),
        ("0x10", None),
        ("7 seconds", None),
        ("99999999999999", MAX_RETRY_AFTER),
        ("1e400", MAX_RETRY_AFTER),
        ("inf", MAX_RETRY_AFTER),
        ("-inf", 0.0),
        ("nan", MAX_RETRY_AFTER),
        ("Fri, 01 Jan 2499 00:00:00 GMT", MAX_RETRY_AFTER),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_reads_an_http_date_against_now() -> None:
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT

    assert parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now=lambda: now) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:30:00 -0000", now=lambda: now) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 08:30:00 +0100", now=lambda: now) == 120.0


def test_budget_hands_out_what_is_left_as_each_requests_timeout() -> None:
    clock = [100.0]
    budget = Budget(8.0, clock=lambda: clock[0])

    assert budget.timeout() == (8.0, 8.0)
    clock[0] += 5.5  # a token fetch took 5.5 s
    assert budget.timeout() == (2.5, 2.5)
    assert budget.left == 2.5
    clock[0] += 2.5
    assert budget.left == 0.0
    with pytest.raises(BudgetSpent):  # nothing was sent: a connect-phase timeout
        budget.timeout()


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


@pytest.mark.timeout(20)
def test_a_twilio_that_trickles_its_answer_cannot_hold_the_attempt_past_its_budget(fake: FakeTwilio) -> None:
    """One byte every 0.25 s, each in time for requests' read timeout, would take 20 s; the 1 s
    budget ends it, an unknown outcome, one request."""
    receiver = TricklingReceiver()
    provider = TwilioProvider.from_settings(
        settings_for(fake, delivery_timeout=1.0, NOTIFY_TWILIO_BASE_URL=f"http://127.0.0.1:{receiver.port}")
    )
    try:
        error = deliver_error(provider, sms())
        assert isinstance(error, OutcomeUnknownError)
        assert "no complete answer within the time budget" in error.reason
        assert not receiver.finished.is_set()  # it ended while the receiver was still trickling
        assert receiver.cut.wait(10)  # and the connection is closed, not left to trickle on
        assert receiver.requests == 1
    finally:
        receiver.close()
        provider.close()
