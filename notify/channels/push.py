"""Push over FCM HTTP v1, through pyfcm and a google-auth service account.

pyfcm builds the payload and sends; `_Client` overrides what a worker cannot
afford: Google's hard-coded host and the credentials' project, one OAuth
token fetched per thread, and retries and sleeps the retry policy never sees.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import google.auth.transport.requests
import requests
from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError
from google.auth.transport import DEFAULT_RETRYABLE_STATUS_CODES
from google.oauth2 import service_account
from pyfcm import FCMNotification
from pyfcm.errors import FCMError
from requests.adapters import HTTPAdapter

from notify.channels.base import Message, PushMessage, Receipt
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

if TYPE_CHECKING:
    from notify.settings import Settings

__all__ = ["SCOPE", "TIMEOUT", "FcmProvider", "build_request", "classify"]

SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
TIMEOUT: Final = 30.0  # seconds, for FCM and the token endpoint alike
_POOL_SIZE: Final = 32  # connections kept to FCM, shared by a worker's threads

_CHANNEL: Final = "push"
_PROVIDER: Final = "fcm"
_CREDENTIALS: Final = "NOTIFY_FCM_CREDENTIALS"
_PROJECT: Final = "NOTIFY_FCM_PROJECT_ID"
_FCM_ERROR: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_PERMANENT: Final = frozenset({"UNREGISTERED", "INVALID_ARGUMENT"})
_REFUSED: Final = frozenset(
    {"SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", "PERMISSION_DENIED"}
)
_TRANSIENT: Final = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})


class FcmProvider:
    """Delivers `PushMessage`s through FCM; build one per worker process."""

    name = "fcm"

    def __init__(self, credentials: service_account.Credentials, endpoint: str) -> None:
        self._client = _Client(credentials, endpoint)
        self.endpoint = endpoint

    @classmethod
    def from_settings(cls, settings: Settings) -> FcmProvider:
        settings.require("fcm_credentials")
        credentials = _load_credentials(cast(Path, settings.fcm_credentials))  # required above
        project = settings.fcm_project_id or credentials.project_id
        if not project:
            raise ConfigurationError(
                f"{_PROJECT} is required: the credentials name no project_id", setting=_PROJECT
            )
        base = settings.fcm_base_url.rstrip("/")
        return cls(credentials, f"{base}/v1/projects/{project}/messages:send")

    def deliver(self, message: Message) -> Receipt:
        """Send one push; a failure raises our classified error."""
        if not isinstance(message, PushMessage):
            raise TypeError(f"FcmProvider delivers PushMessage, not {type(message).__name__}")
        try:
            answer = self._client.notify(**build_request(message), timeout=TIMEOUT)
        except (FCMError, requests.RequestException, GoogleAuthError) as exc:
            raise classify(exc) from exc
        return Receipt(provider_id=answer.get("name"))

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"FcmProvider(endpoint={self.endpoint!r})"


def build_request(message: PushMessage) -> dict[str, Any]:
    """The `FCMNotification.notify()` arguments for `message`."""
    return {
        "fcm_token": message.token,
        "notification_title": message.title,
        "notification_body": message.body,
        # FCM rejects data values that are not strings.
        "data_payload": {
            key: value if isinstance(value, str) else json.dumps(value) for key, value in message.data.items()
        },
    }


def classify(exc: Exception) -> ConfigurationError | DeliveryError:
    """Our error for a failed send, judged by FCM's answer where there is one."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return _from_response(exc.response)
    if isinstance(exc, RefreshError) and not exc.retryable:
        return ConfigurationError(
            f"the OAuth token endpoint refused the credentials in {_CREDENTIALS}: {exc.args[0]}",
            setting=_CREDENTIALS,
        )
    if isinstance(exc, GoogleAuthError):
        return _transient(f"OAuth token endpoint: {exc.args[0] if exc.args else exc}")
    return _transient(f"{type(exc).__name__}: {exc}")  # network, timeout, empty answer


def _from_response(response: requests.Response) -> ConfigurationError | DeliveryError:
    status: int = response.status_code
    code, reason = _fcm_error(response)
    if code in _PERMANENT:
        return PermanentDeliveryError(reason, channel=_CHANNEL, provider=_PROVIDER, code=code)
    if code in _REFUSED or status in (401, 403):
        setting = _PROJECT if code == "SENDER_ID_MISMATCH" else _CREDENTIALS
        return ConfigurationError(
            f"FCM refused the sender ({code or status}): {reason}; check {setting}",
            setting=setting,
        )
    if code in _TRANSIENT or status in (408, 429) or status >= 500:
        return _transient(reason, code, _retry_after(response.headers.get("Retry-After")))
    return PermanentDeliveryError(reason, channel=_CHANNEL, provider=_PROVIDER, code=code or f"HTTP {status}")


def _fcm_error(response: requests.Response) -> tuple[str | None, str]:
    """FCM's errorCode (else the google.rpc status) and message, from its error JSON."""
    try:
        error = response.json()["error"]
        details = [d for d in error.get("details", []) if d.get("@type") == _FCM_ERROR]
        code = details[0].get("errorCode") if details else error.get("status")
        return code or None, str(error.get("message") or f"HTTP {response.status_code}")[:300]
    except (ValueError, KeyError, TypeError, AttributeError):  # not FCM's JSON
        return None, f"HTTP {response.status_code}"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _transient(
    reason: str, code: str | None = None, retry_after: float | None = None
) -> TransientDeliveryError:
    return TransientDeliveryError(
        reason, channel=_CHANNEL, provider=_PROVIDER, code=code, retry_after=retry_after
    )


def _load_credentials(path: Path) -> service_account.Credentials:
    """The service account in `path`; errors never echo the file's content."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ValueError("not a service account")
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[SCOPE]
        )
        return cast(service_account.Credentials, credentials)
    except OSError:
        problem = "cannot be read"
    except (ValueError, KeyError, TypeError):  # bad JSON, missing fields, bad key
        problem = "is not a Google service-account JSON file"
    raise ConfigurationError(f"{_CREDENTIALS}: {path} {problem}", setting=_CREDENTIALS)


class _TokenTransport(google.auth.transport.requests.Request):
    """google-auth's transport with our timeout, failing fast on a busy token endpoint."""

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = TIMEOUT,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        response: google.auth.transport.Response = super().__call__(  # type: ignore[no-untyped-call]
            url, method, body, headers, timeout=timeout, **kwargs
        )
        if response.status in DEFAULT_RETRYABLE_STATUS_CODES:
            # google-auth would sleep and ask again in this worker thread;
            # the delivery's retry policy is the one place that waits.
            raise TransportError(f"answered HTTP {response.status}")  # type: ignore[no-untyped-call]
        return response


class _Client(FCMNotification):  # type: ignore[misc]  # pyfcm is untyped
    """pyfcm with our endpoint, one token for all threads, one request per send."""

    def __init__(self, credentials: service_account.Credentials, endpoint: str) -> None:
        # Shared by every thread's session; max_retries=0 because the default
        # adapter re-sends 502/503 up to ten times with backoff.
        self._adapter = HTTPAdapter(max_retries=0, pool_maxsize=_POOL_SIZE)
        super().__init__(credentials=credentials, adapter=self._adapter)
        self._endpoint = endpoint
        self._token_lock = threading.Lock()
        self._token_transport = _TokenTransport()

    @property
    def fcm_end_point(self) -> str:
        # pyfcm prefers the credentials' project to ours and fixes Google's host.
        return self._endpoint

    def _get_access_token(self, refused: str | None = None) -> str:
        # pyfcm fetches a token on each thread's first send; one token, refreshed
        # only when google-auth deems it stale or FCM refused it, serves them all.
        with self._token_lock:
            if not self.credentials.valid or self.credentials.token == refused:
                self.credentials.refresh(self._token_transport)
            return cast(str, self.credentials.token)

    def send_request(self, payload: bytes, timeout: float) -> requests.Response:
        # One POST and never a sleep: pyfcm sleeps out any Retry-After and
        # re-sends without bound; waiting is the retry policy's job.
        token = self._get_access_token()
        response = self._post(payload, timeout, token)
        if response.status_code == 401:  # expired or revoked early: one fresh token
            response = self._post(payload, timeout, self._get_access_token(refused=token))
        return response

    def _post(self, payload: bytes, timeout: float, token: str) -> requests.Response:
        # Overrides the per-thread session's copy, which pyfcm renews every 30 min.
        headers = {"Authorization": f"Bearer {token}"}
        session: requests.Session = self.requests_session
        return session.post(self.fcm_end_point, data=payload, timeout=timeout, headers=headers)

    def parse_response(self, response: requests.Response) -> dict[str, Any]:
        # Keep the response: pyfcm's exceptions drop FCM's errorCode and headers.
        if response.status_code != 200:
            raise requests.HTTPError(f"FCM answered HTTP {response.status_code}", response=response)
        return cast(dict[str, Any], super().parse_response(response))

    def close(self) -> None:
        self._adapter.close()
        self._token_transport.session.close()
