"""The FCM push provider, through the real pyfcm and google-auth against local fakes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth.exceptions import RefreshError, TransportError
from pyfcm import FCMNotification
from pyfcm.errors import FCMServerError
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from notify.channels.push import PushMessage
from notify.channels.sms import SmsMessage
from notify.errors import (
    ConfigurationError,
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notify.providers.fcm import FcmProvider, build_request, classify
from notify.providers.http import MAX_RETRY_AFTER
from notify.settings import Settings
from tests.fakes.fcm import FakeFcm, FakeOAuth
from tests.support.trickle import TricklingReceiver

pytestmark = pytest.mark.timeout(60)

PROJECT = "notify-test"
DEVICE = "device-token-1"


def push(token: str = DEVICE, delivery_id: str = "d-1") -> PushMessage:
    return PushMessage(
        delivery_id=delivery_id,
        token=token,
        title="Welcome",
        body="Hello Ada",
        data={"notify_delivery_id": delivery_id, "screen": "home"},
    )


@pytest.fixture
def oauth() -> Iterator[FakeOAuth]:
    with FakeOAuth() as fake:
        yield fake


@pytest.fixture
def fcm(oauth: FakeOAuth) -> Iterator[FakeFcm]:
    with FakeFcm(oauth) as fake:
        yield fake


@pytest.fixture
def credentials(oauth: FakeOAuth, tmp_path: Path) -> Path:
    return oauth.service_account(tmp_path, project_id=PROJECT)


def settings_for(
    fcm: FakeFcm, credentials: Path, *, delivery_timeout: float = 30.0, **overrides: str
) -> Settings:
    """Settings for `fcm` with `credentials`; `overrides` set more NOTIFY_FCM_* variables."""
    return Settings(delivery_timeout=delivery_timeout).with_environ(
        NOTIFY_FCM_CREDENTIALS=str(credentials), NOTIFY_FCM_BASE_URL=fcm.url, **overrides
    )


@pytest.fixture
def provider(fcm: FakeFcm, credentials: Path) -> Iterator[FcmProvider]:
    provider = FcmProvider.from_settings(settings_for(fcm, credentials))
    yield provider
    provider.close()


def deliver_error(provider: FcmProvider, message: PushMessage) -> NotifyError:
    with pytest.raises(NotifyError) as caught:
        provider.deliver(message)
    return caught.value


def config_error(settings: Settings) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        FcmProvider.from_settings(settings)
    return caught.value


# --- through the real clients ---------------------------------------------------


def test_a_push_reaches_fcm_with_token_title_body_and_data(provider: FcmProvider, fcm: FakeFcm) -> None:
    receipt = provider.deliver(push())

    [sent] = fcm.messages
    assert sent.token == DEVICE
    assert sent.notification == {"title": "Welcome", "body": "Hello Ada"}
    assert sent.data == {"notify_delivery_id": "d-1", "screen": "home"}
    assert sent.project == PROJECT
    assert receipt.provider_id == sent.name
    assert sent.name.startswith(f"projects/{PROJECT}/messages/")


def test_the_bearer_token_comes_from_the_token_uri_in_the_credentials_file(
    provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth
) -> None:
    provider.deliver(push())

    assert [sent.bearer for sent in fcm.messages] == oauth.issued
    assert oauth.request_count == 1


def test_the_token_is_fetched_once_and_reused_over_one_connection(
    provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth
) -> None:
    for n in range(30):
        provider.deliver(push(delivery_id=f"d-{n}"))

    assert len(fcm.messages) == 30
    assert oauth.request_count == 1
    assert fcm.connection_count == 1


def test_eight_threads_share_one_token(provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth) -> None:
    start = threading.Barrier(8, timeout=10)  # every thread's first send at once

    def work(worker: int) -> None:
        start.wait()
        for n in range(25):
            provider.deliver(push(delivery_id=f"d-{worker}-{n}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(work, worker) for worker in range(8)]:
            done.result(timeout=30)

    assert len(fcm.messages) == 200
    assert oauth.request_count == 1
    assert {sent.bearer for sent in fcm.messages} == set(oauth.issued)


def test_an_explicit_project_id_overrides_the_credentials_project(fcm: FakeFcm, credentials: Path) -> None:
    provider = FcmProvider.from_settings(
        settings_for(fcm, credentials, NOTIFY_FCM_PROJECT_ID="other-project")
    )
    try:
        receipt = provider.deliver(push())
    finally:
        provider.close()

    assert [sent.project for sent in fcm.messages] == ["other-project"]
    assert receipt.provider_id is not None
    assert receipt.provider_id.startswith("projects/other-project/messages/")


def test_a_revoked_token_is_replaced_once_and_the_push_goes_through(
    provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth
) -> None:
    provider.deliver(push())
    fcm.revoke_tokens()

    provider.deliver(push(delivery_id="d-2"))

    assert oauth.request_count == 2
    assert [sent.bearer for sent in fcm.messages] == oauth.issued


@pytest.mark.timeout(20)  # a sleep on Retry-After (an hour) would blow this
def test_429_with_retry_after_is_transient_after_exactly_one_request(
    provider: FcmProvider, fcm: FakeFcm
) -> None:
    fcm.fail_next(1, status=429, error_code="QUOTA_EXCEEDED", headers={"Retry-After": "3600"})

    error = deliver_error(provider, push())

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == 3600
    assert error.code == "QUOTA_EXCEEDED"
    assert (error.channel, error.provider) == ("push", "fcm")
    assert fcm.request_count == 1
    assert fcm.messages == []


@pytest.mark.parametrize(("status", "error_code"), [(503, "UNAVAILABLE"), (500, "INTERNAL")])
def test_server_errors_are_transient_after_exactly_one_request(
    provider: FcmProvider, fcm: FakeFcm, status: int, error_code: str
) -> None:
    fcm.fail_next(3, status=status, error_code=error_code)

    error = deliver_error(provider, push())

    assert isinstance(error, TransientDeliveryError)
    assert error.code == error_code
    assert fcm.request_count == 1


@pytest.mark.parametrize(("status", "error_code"), [(404, "UNREGISTERED"), (400, "INVALID_ARGUMENT")])
def test_a_rejected_device_token_is_permanent_with_fcms_code(
    provider: FcmProvider, fcm: FakeFcm, status: int, error_code: str
) -> None:
    fcm.fail_for("bad-token", status=status, error_code=error_code)

    error = deliver_error(provider, push(token="bad-token"))

    assert isinstance(error, PermanentDeliveryError)
    assert error.code == error_code
    assert error.reason
    assert fcm.request_count == 1
    provider.deliver(push())  # other devices still get theirs
    assert len(fcm.messages) == 1


def test_fcm_down_is_transient(provider: FcmProvider, fcm: FakeFcm) -> None:
    fcm.down = True
    assert isinstance(deliver_error(provider, push()), TransientDeliveryError)

    fcm.stop()
    assert isinstance(deliver_error(provider, push()), TransientDeliveryError)


def test_a_failing_token_endpoint_is_transient_after_one_token_request(
    provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth
) -> None:
    oauth.fail_next(1, status=500)

    error = deliver_error(provider, push())

    assert isinstance(error, TransientDeliveryError)
    assert oauth.request_count == 1  # google-auth's own sleep-and-retry never ran
    assert fcm.request_count == 0
    provider.deliver(push())  # the next attempt fetches a token
    assert len(fcm.messages) == 1


def test_an_unreachable_token_endpoint_is_transient(provider: FcmProvider, oauth: FakeOAuth) -> None:
    oauth.stop()

    assert isinstance(deliver_error(provider, push()), TransientDeliveryError)


def test_refused_credentials_are_a_configuration_error(
    provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth
) -> None:
    oauth.fail_next(1, status=400, error="invalid_grant")

    error = deliver_error(provider, push())

    assert isinstance(error, ConfigurationError)
    assert error.setting == "NOTIFY_FCM_CREDENTIALS"
    assert "invalid_grant" in str(error)
    assert fcm.request_count == 0


def test_a_401_that_survives_a_fresh_token_is_a_configuration_error(
    provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth
) -> None:
    fcm.fail_next(2, status=401, error_code=None)

    error = deliver_error(provider, push())

    assert isinstance(error, ConfigurationError)
    assert error.setting == "NOTIFY_FCM_CREDENTIALS"
    assert (fcm.request_count, oauth.request_count) == (2, 2)


def test_sender_id_mismatch_points_at_the_project_id(provider: FcmProvider, fcm: FakeFcm) -> None:
    fcm.fail_next(1, status=403, error_code="SENDER_ID_MISMATCH")

    error = deliver_error(provider, push())

    assert isinstance(error, ConfigurationError)
    assert error.setting == "NOTIFY_FCM_PROJECT_ID"


@pytest.mark.timeout(20)  # the old fixed 30 s per request would blow this
def test_a_slow_fcm_is_abandoned_at_the_budget_as_outcome_unknown_with_one_push(
    fcm: FakeFcm, credentials: Path
) -> None:
    provider = FcmProvider.from_settings(settings_for(fcm, credentials, delivery_timeout=1.0))
    fcm.hold_answers()  # FCM takes the push, then answers only when released

    error = deliver_error(provider, push())
    unanswered = fcm.answer_count
    fcm.release()
    provider.close()

    assert isinstance(error, OutcomeUnknownError)  # failed into the DLQ, never retried
    assert "ReadTimeout" in error.reason
    assert unanswered == 0  # our budget ended the wait, not FCM
    assert [sent.token for sent in fcm.messages] == [DEVICE]
    assert fcm.request_count == 1


def test_a_connection_cut_after_the_push_is_outcome_unknown(provider: FcmProvider, fcm: FakeFcm) -> None:
    fcm.drop_answers()

    error = deliver_error(provider, push())

    assert isinstance(error, OutcomeUnknownError)
    assert [sent.token for sent in fcm.messages] == [DEVICE]


def test_a_refused_connection_sends_nothing_and_stays_transient(provider: FcmProvider, fcm: FakeFcm) -> None:
    provider.deliver(push())  # a token and a pooled connection
    fcm.stop()

    error = deliver_error(provider, push(delivery_id="d-2"))

    assert type(error) is TransientDeliveryError
    assert len(fcm.messages) == 1


@pytest.mark.timeout(20)
def test_a_slow_token_endpoint_spends_the_budget_and_sends_nothing(
    fcm: FakeFcm, oauth: FakeOAuth, credentials: Path
) -> None:
    provider = FcmProvider.from_settings(settings_for(fcm, credentials, delivery_timeout=1.0))
    oauth.hold_answers()

    error = deliver_error(provider, push())
    unanswered = oauth.answer_count
    oauth.release()
    provider.close()

    assert type(error) is TransientDeliveryError  # no push went out: safe to retry
    assert unanswered == 0
    assert oauth.request_count == 1
    assert fcm.request_count == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [("1.5", 1.5), ("99999999999999", MAX_RETRY_AFTER), ("Fri, 01 Jan 2499 00:00:00 GMT", MAX_RETRY_AFTER)],
)
def test_retry_after_is_read_with_decimals_and_capped(
    provider: FcmProvider, fcm: FakeFcm, header: str, expected: float
) -> None:
    fcm.fail_next(1, status=429, error_code="QUOTA_EXCEEDED", headers={"Retry-After": header})

    error = deliver_error(provider, push())

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == expected


@pytest.mark.parametrize(
    ("status", "error_code", "setting"),
    [
        (401, "THIRD_PARTY_AUTH_ERROR", "NOTIFY_FCM_PROJECT_ID"),
        (403, "PERMISSION_DENIED", "NOTIFY_FCM_CREDENTIALS"),
    ],
)
def test_sender_side_failures_are_configuration_not_the_devices(
    provider: FcmProvider, fcm: FakeFcm, status: int, error_code: str, setting: str
) -> None:
    fcm.fail_for(DEVICE, status=status, error_code=error_code)

    error = deliver_error(provider, push())

    assert isinstance(error, ConfigurationError)
    assert error.setting == setting


def test_only_push_messages_are_delivered(provider: FcmProvider) -> None:
    with pytest.raises(TypeError):
        provider.deliver(SmsMessage(delivery_id="d-1", to="+14155550100", body="hi"))


# --- configuration ----------------------------------------------------------------


def test_missing_credentials_setting_names_the_variable(fcm: FakeFcm) -> None:
    error = config_error(Settings().with_environ(NOTIFY_FCM_BASE_URL=fcm.url))

    assert error.setting == "NOTIFY_FCM_CREDENTIALS"
    assert "NOTIFY_FCM_CREDENTIALS" in str(error)


def test_a_missing_credentials_file_names_the_variable(fcm: FakeFcm, tmp_path: Path) -> None:
    error = config_error(settings_for(fcm, tmp_path / "nowhere.json"))

    assert error.setting == "NOTIFY_FCM_CREDENTIALS"
    assert "NOTIFY_FCM_CREDENTIALS" in str(error)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda info: "not json {", id="not-json"),
        pytest.param(lambda info: json.dumps([info]), id="not-an-object"),
        pytest.param(lambda info: json.dumps({**info, "type": "authorized_user"}), id="wrong-type"),
        pytest.param(
            lambda info: json.dumps({k: v for k, v in info.items() if k != "client_email"}), id="no-email"
        ),
        pytest.param(
            lambda info: json.dumps({k: v for k, v in info.items() if k != "token_uri"}), id="no-token-uri"
        ),
        pytest.param(
            lambda info: json.dumps({**info, "private_key": info["private_key"][:400]}), id="broken-key"
        ),
    ],
)
def test_an_invalid_credentials_file_names_the_variable_and_hides_the_key(
    fcm: FakeFcm, credentials: Path, change: Any
) -> None:
    info = json.loads(credentials.read_text())
    credentials.write_text(change(info))

    error = config_error(settings_for(fcm, credentials))

    assert error.setting == "NOTIFY_FCM_CREDENTIALS"
    assert key_fragment(info) not in f"{error!s} {error!r}"


def test_credentials_without_a_project_need_the_project_id(fcm: FakeFcm, credentials: Path) -> None:
    info = json.loads(credentials.read_text())
    del info["project_id"]
    credentials.write_text(json.dumps(info))

    error = config_error(settings_for(fcm, credentials))
    assert error.setting == "NOTIFY_FCM_PROJECT_ID"

    provider = FcmProvider.from_settings(settings_for(fcm, credentials, NOTIFY_FCM_PROJECT_ID="explicit"))
    provider.deliver(push())
    provider.close()
    assert [sent.project for sent in fcm.messages] == ["explicit"]


def key_fragment(info: dict[str, Any]) -> str:
    """A line from the middle of the private key's PEM body."""
    return str(info["private_key"]).splitlines()[5]


def test_the_private_key_never_shows_in_reprs_or_errors(
    provider: FcmProvider, fcm: FakeFcm, oauth: FakeOAuth, credentials: Path
) -> None:
    fragment = key_fragment(json.loads(credentials.read_text()))
    fcm.fail_for("bad-token")
    fcm.fail_next(1, status=429, error_code="QUOTA_EXCEEDED", headers={"Retry-After": "1"})
    errors = [deliver_error(provider, push()), deliver_error(provider, push(token="bad-token"))]
    oauth.fail_next(1, status=400, error="invalid_grant")
    fcm.revoke_tokens()
    errors.append(deliver_error(provider, push()))

    texts = [repr(provider), str(provider)] + [f"{e!s} {e!r} {e.args!r}" for e in errors]
    assert not [text for text in texts if fragment in text]
    assert not [text for text in texts if any(token in text for token in oauth.issued)]


# --- the pure parts ---------------------------------------------------------------


def test_build_request_maps_a_push_to_pyfcm_arguments() -> None:
    assert build_request(push()) == {
        "fcm_token": DEVICE,
        "notification_title": "Welcome",
        "notification_body": "Hello Ada",
        "data_payload": {"notify_delivery_id": "d-1", "screen": "home"},
    }


def test_pyfcm_builds_the_fcm_v1_body_from_build_request() -> None:
    # The one part of pyfcm used: if an upgrade changes its output, this fails.
    payload = FCMNotification(credentials=object()).parse_payload(**build_request(push()))

    assert json.loads(payload) == {
        "message": {
            "token": DEVICE,
            "notification": {"title": "Welcome", "body": "Hello Ada"},
            "data": {"notify_delivery_id": "d-1", "screen": "home"},
        },
        "validate_only": False,
    }


def test_build_request_sends_data_values_as_strings() -> None:
    message = PushMessage(
        delivery_id="d-1",
        token=DEVICE,
        title="t",
        body="b",
        data={"notify_delivery_id": "d-1", "count": 3, "tags": ["a"]},  # type: ignore[dict-item]
    )

    assert build_request(message)["data_payload"] == {
        "notify_delivery_id": "d-1",
        "count": "3",
        "tags": '["a"]',
    }


def http_error(status: int, payload: object = None, headers: dict[str, str] | None = None) -> Exception:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response._content = b"" if payload is None else json.dumps(payload).encode()
    return requests.HTTPError(f"HTTP {status}", response=response)


def fcm_error(status: int, rpc_status: str, error_code: str | None, message: str = "m") -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if error_code:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}
        ]
    return {"error": error}


def google_error(kind: Callable[..., Exception], message: str, *, retryable: bool = False) -> Exception:
    return kind(message, {}, retryable=retryable)  # google-auth's errors are untyped


def refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, "/v1/x", reason))  # type: ignore[arg-type]


def dropped() -> requests.ConnectionError:
    return requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))


def fcm_answer(status: int, rpc_status: str, error_code: str | None) -> Exception:
    return http_error(status, fcm_error(status, rpc_status, error_code))


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (fcm_answer(404, "NOT_FOUND", "UNREGISTERED"), PermanentDeliveryError, "UNREGISTERED"),
        (fcm_answer(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), PermanentDeliveryError, "INVALID_ARGUMENT"),
        (fcm_answer(400, "INVALID_ARGUMENT", None), PermanentDeliveryError, "INVALID_ARGUMENT"),
        (fcm_answer(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), TransientDeliveryError, "QUOTA_EXCEEDED"),
        (fcm_answer(429, "RESOURCE_EXHAUSTED", None), TransientDeliveryError, "RESOURCE_EXHAUSTED"),
        (fcm_answer(503, "UNAVAILABLE", "UNAVAILABLE"), TransientDeliveryError, "UNAVAILABLE"),
        (fcm_answer(500, "INTERNAL", "INTERNAL"), TransientDeliveryError, "INTERNAL"),
        (http_error(502), OutcomeUnknownError, "outcome_unknown"),  # a gateway gave up after our POST
        (http_error(504, "<html>gateway</html>"), OutcomeUnknownError, "outcome_unknown"),
        (http_error(408), TransientDeliveryError, "408"),
        (http_error(410), PermanentDeliveryError, "410"),
        (refused(), TransientDeliveryError, None),
        (requests.ConnectTimeout("slow to connect"), TransientDeliveryError, None),
        (requests.ReadTimeout("read timed out"), OutcomeUnknownError, "outcome_unknown"),
        (dropped(), OutcomeUnknownError, "outcome_unknown"),
        (FCMServerError("FCM server connection error, the response is empty"), TransientDeliveryError, None),
        (google_error(TransportError, "answered HTTP 500"), TransientDeliveryError, None),
        (
            google_error(TransportError, "ReadTimeout"),
            TransientDeliveryError,
            None,
        ),  # the token, not the push
        (google_error(RefreshError, "server_error: busy", retryable=True), TransientDeliveryError, None),
    ],
)
def test_classify(exc: Exception, kind: type[NotifyError], code: str | None) -> None:
    error = classify(exc)

    assert type(error) is kind
    assert not isinstance(error, ConfigurationError)
    assert error.code == code
    assert (error.channel, error.provider) == ("push", "fcm")


@pytest.mark.parametrize(
    ("exc", "setting"),
    [
        (fcm_answer(401, "UNAUTHENTICATED", None), "NOTIFY_FCM_CREDENTIALS"),
        (fcm_answer(403, "PERMISSION_DENIED", None), "NOTIFY_FCM_CREDENTIALS"),
        (fcm_answer(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), "NOTIFY_FCM_PROJECT_ID"),
        (fcm_answer(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"), "NOTIFY_FCM_PROJECT_ID"),
        (fcm_answer(404, "NOT_FOUND", None), "NOTIFY_FCM_PROJECT_ID"),  # no FcmError: no such project
        (http_error(403), "NOTIFY_FCM_CREDENTIALS"),
        (google_error(RefreshError, "invalid_grant: Invalid JWT Signature."), "NOTIFY_FCM_CREDENTIALS"),
    ],
)
def test_classify_sender_side_failures_as_configuration(exc: Exception, setting: str) -> None:
    error = classify(exc)

    assert isinstance(error, ConfigurationError)
    assert error.setting == setting


def test_classify_keeps_fcms_message() -> None:
    error = classify(
        http_error(404, fcm_error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."))
    )

    assert isinstance(error, PermanentDeliveryError)
    assert error.reason == "Requested entity was not found."


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("1.5", 1.5),
        (None, None),
        ("soon", None),
        (formatdate(0, usegmt=True), 0.0),
        ("99999999999999", MAX_RETRY_AFTER),
    ],
)
def test_classify_reads_retry_after(header: str | None, expected: float | None) -> None:
    headers = {"Retry-After": header} if header is not None else {}

    error = classify(http_error(429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), headers))

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == expected


def test_classify_reads_a_future_retry_after_date() -> None:
    later = formatdate(2**31 - 1, usegmt=True)  # far in the future, whatever the clock says

    error = classify(http_error(503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"), {"Retry-After": later}))

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after is not None
    assert error.retry_after > 3600


@pytest.mark.timeout(20)
def test_an_fcm_that_trickles_its_answer_cannot_hold_the_attempt_past_its_budget(
    fcm: FakeFcm, credentials: Path
) -> None:
    """One byte every 0.25 s, each in time for requests' read timeout, would take 20 s; the 1 s
    budget ends it, an unknown outcome, one request (the token from the local OAuth endpoint)."""
    receiver = TricklingReceiver()
    settings = settings_for(fcm, credentials, delivery_timeout=1.0)
    provider = FcmProvider.from_settings(
        settings.with_environ(NOTIFY_FCM_BASE_URL=f"http://127.0.0.1:{receiver.port}")
    )
    try:
        with pytest.raises(OutcomeUnknownError, match="no complete answer within the time budget"):
            provider.deliver(push())
        assert not receiver.finished.is_set()
        assert receiver.cut.wait(10)
        assert receiver.requests == 1
    finally:
        receiver.close()
        provider.close()
