"""Push over FCM HTTP v1: pyfcm builds the payload, this module sends it.

pyfcm's own sending does what a worker cannot afford: Google's hard-coded
host and the credentials' project, an OAuth token fetched per thread with
no timeout, an adapter retrying 502/503 and a sleep on any Retry-After that
re-sends without bound. So only its public `parse_payload()` is used; the
POST, the token (one for every thread) and the time budget are ours.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import google.auth.transport.requests
import requests
from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError
from google.auth.transport import DEFAULT_RETRYABLE_STATUS_CODES
from google.oauth2 import service_account
from pyfcm import FCMNotification

from notify.channels.push import PushMessage
from notify.errors import ConfigurationError, DeliveryError, TransientDeliveryError
from notify.providers import http
from notify.providers.base import Message, Receipt
from notify.providers.http import (
    PERMANENT,
    TRANSIENT,
    Budget,
    BudgetSpent,
    EnvironmentOnceSession,
    RequestsProvider,
    Verdict,
    WatchedAdapter,
    configuration,
    gone,
)
from notify.settings import Settings, check_url, masked_repr, required

__all__ = ["BY_CODE", "DEFAULT_BASE_URL", "SCOPE", "FcmProvider", "FcmSettings", "build_request", "classify"]

SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_BASE_URL: Final = "https://fcm.googleapis.com"
_POOL_SIZE: Final = 32  # connections kept to FCM, shared by a worker's threads

_CHANNEL: Final = "push"
_PROVIDER: Final = "fcm"
_CREDENTIALS: Final = "NOTIFY_FCM_CREDENTIALS"
_PROJECT: Final = "NOTIFY_FCM_PROJECT_ID"
_BASE_URL: Final = "NOTIFY_FCM_BASE_URL"
_FCM_ERROR: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_CONTENT_TYPE: Final = "application/json; charset=UTF-8"
# OAuth errors google-auth would sleep on and ask again (RFC 6749 section 4.1.2.1).
_RETRYABLE_OAUTH: Final = frozenset({"internal_failure", "server_error", "temporarily_unavailable"})

# FCM's errorCode (else the google.rpc status) -> what it means for us
# (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode). Only the
# first two blame the device token; the sender's problems fail every push.
BY_CODE: Final[dict[str, Verdict]] = {
    "UNREGISTERED": gone("unregistered"),  # the app was uninstalled or the token expired: never again
    "INVALID_ARGUMENT": PERMANENT,  # the token (or this message) is malformed
    "SENDER_ID_MISMATCH": configuration(_PROJECT),  # the token belongs to another project
    "THIRD_PARTY_AUTH_ERROR": configuration(
        _PROJECT, "the APNs or Web Push credentials of the Firebase project"
    ),
    "UNAUTHENTICATED": configuration(_CREDENTIALS),
    "PERMISSION_DENIED": configuration(_CREDENTIALS),  # the account may not send for the project
    "NOT_FOUND": configuration(_PROJECT),  # a bare 404 (no FcmError): no such project
    "QUOTA_EXCEEDED": TRANSIENT,
    "UNAVAILABLE": TRANSIENT,
    "INTERNAL": TRANSIENT,
}
_BY_STATUS: Final = {401: configuration(_CREDENTIALS), 403: configuration(_CREDENTIALS)}


@dataclass(frozen=True, repr=False)
class FcmSettings:
    """The FCM provider's own settings, from NOTIFY_FCM_*."""

    credentials: Path | None = field(default=None, metadata={"env": _CREDENTIALS})  # service-account JSON
    project_id: str | None = field(default=None, metadata={"env": _PROJECT})  # default: the credentials'
    base_url: str = field(default=DEFAULT_BASE_URL, metadata={"env": _BASE_URL})

    def __post_init__(self) -> None:
        check_url(_BASE_URL, self.base_url, ("http", "https"))

    def __repr__(self) -> str:
        return masked_repr(self)


class FcmProvider(RequestsProvider):
    """Delivers `PushMessage`s through FCM; build one per worker process."""

    name = _PROVIDER
    channel = _CHANNEL

    def __init__(
        self, credentials: service_account.Credentials, endpoint: str, *, delivery_timeout: float = 30.0
    ) -> None:
        # One pool for every thread's session; no retries, the retry policy decides.
        adapter = WatchedAdapter(max_retries=0, pool_maxsize=_POOL_SIZE)
        super().__init__(delivery_timeout=delivery_timeout, adapter=adapter)
        self.endpoint = endpoint
        self._payloads = FCMNotification(credentials=credentials)  # for parse_payload() only
        self._tokens = _Tokens(credentials)

    @classmethod
    def from_settings(cls, settings: Settings) -> FcmProvider:
        """A provider from NOTIFY_FCM_*; `ConfigurationError` naming a missing or bad one."""
        own = settings.provider_settings(FcmSettings)
        credentials = _load_credentials(required(own.credentials, _CREDENTIALS))
        project = own.project_id or credentials.project_id
        if not project:
            raise ConfigurationError(
                f"{_PROJECT} is required: the credentials name no project_id", setting=_PROJECT
            )
        base = own.base_url.rstrip("/")
        endpoint = f"{base}/v1/projects/{project}/messages:send"
        return cls(credentials, endpoint, delivery_timeout=settings.delivery_timeout)

    def deliver(self, message: Message) -> Receipt:
        """Send one push within `delivery_timeout`; a failure raises our classified error."""
        if not isinstance(message, PushMessage):
            raise TypeError(f"FcmProvider delivers PushMessage, not {type(message).__name__}")
        budget = self.budget()
        payload: bytes = self._payloads.parse_payload(**build_request(message))
        try:
            response = self._send(payload, budget)
        except GoogleAuthError as exc:
            raise classify(exc) from exc
        if response.status_code != 200:
            raise _from_response(response)
        return Receipt(provider_id=_message_name(response))

    def close(self) -> None:
        super().close()
        self._tokens.close()

    def __repr__(self) -> str:
        return f"FcmProvider(endpoint={self.endpoint!r})"

    def _send(self, payload: bytes, budget: Budget) -> requests.Response:
        token = self._tokens.get(budget)
        response = self._post(payload, token, budget)
        if response.status_code == 401:  # expired or revoked early: one fresh token
            response = self._post(payload, self._tokens.get(budget, refused=token), budget)
        return response

    def _post(self, payload: bytes, token: str, budget: Budget) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": _CONTENT_TYPE}
        return self.request("POST", self.endpoint, budget, data=payload, headers=headers)


def build_request(message: PushMessage) -> dict[str, Any]:
    """The `FCMNotification.parse_payload()` arguments for `message`."""
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
    if isinstance(exc, requests.RequestException):
        return http.network_error(exc, channel=_CHANNEL, provider=_PROVIDER)
    if isinstance(exc, RefreshError) and not exc.retryable:
        return ConfigurationError(
            f"the OAuth token endpoint refused the credentials in {_CREDENTIALS}: {exc.args[0]}",
            setting=_CREDENTIALS,
        )
    # The token endpoint, whose failures never sent the push, or the unexpected.
    reason = f"OAuth token endpoint: {exc.args[0] if exc.args else exc}"
    if not isinstance(exc, GoogleAuthError):
        reason = f"{type(exc).__name__}: {exc}"
    return TransientDeliveryError(reason, channel=_CHANNEL, provider=_PROVIDER)


def _from_response(response: requests.Response) -> ConfigurationError | DeliveryError:
    code, reason = _fcm_error(response)
    retry_after = http.parse_retry_after(response.headers.get("Retry-After"))
    answer = http.Answer(response.status_code, code, reason, retry_after)
    error = http.error_for(
        http.judge(answer, BY_CODE, _BY_STATUS), answer, channel=_CHANNEL, provider=_PROVIDER
    )
    return cast(ConfigurationError | DeliveryError, error)


def _fcm_error(response: requests.Response) -> tuple[str | None, str]:
    """FCM's errorCode (else the google.rpc status) and message, from its error JSON."""
    try:
        error = response.json()["error"]
        details = [d for d in error.get("details", []) if d.get("@type") == _FCM_ERROR]
        code = details[0].get("errorCode") if details else error.get("status")
        return code or None, str(error.get("message") or f"HTTP {response.status_code}")[:300]
    except (ValueError, KeyError, TypeError, AttributeError):  # not FCM's JSON
        return None, f"HTTP {response.status_code}"


def _message_name(response: requests.Response) -> str | None:
    """FCM's id for an accepted push; a 200 is accepted even if its body is odd."""
    try:
        name = response.json().get("name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


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


class _Tokens:
    """One OAuth token for every thread, refreshed under a lock within the caller's budget.

    pyfcm fetched one per thread and its lazy loading raced; a refresh here
    happens only when google-auth deems the token stale or FCM refused it.
    """

    def __init__(self, credentials: service_account.Credentials) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._session = EnvironmentOnceSession()  # used only under the lock

    def get(self, budget: Budget, refused: str | None = None) -> str:
        if not self._lock.acquire(timeout=budget.left):
            raise TransportError("another thread's token refresh outlasted this attempt's budget")  # type: ignore[no-untyped-call]
        try:
            if not self._credentials.valid or self._credentials.token == refused:
                self._credentials.refresh(_TokenTransport(self._session, budget))  # type: ignore[no-untyped-call]
            return cast(str, self._credentials.token)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._session.close()


class _TokenTransport(google.auth.transport.requests.Request):
    """google-auth's transport for one refresh: one request, within the budget.

    google-auth would sleep and ask again in this worker thread; the
    delivery's retry policy is the one place that waits.
    """

    def __init__(self, session: requests.Session, budget: Budget) -> None:
        super().__init__(session)
        self._budget = budget
        self._asked = False

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # google-auth's, replaced by the budget
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        if self._asked:
            raise TransportError("google-auth asked the token endpoint again")  # type: ignore[no-untyped-call]
        self._asked = True
        try:
            budgeted = self._budget.timeout()
        except BudgetSpent as exc:
            raise TransportError(str(exc)) from exc  # type: ignore[no-untyped-call]
        response: google.auth.transport.Response = super().__call__(  # type: ignore[no-untyped-call]
            url, method, body, headers, timeout=budgeted, **kwargs
        )
        if _would_retry(response):
            raise TransportError(f"answered HTTP {response.status}")  # type: ignore[no-untyped-call]
        return response


def _would_retry(response: google.auth.transport.Response) -> bool:
    if response.status in DEFAULT_RETRYABLE_STATUS_CODES:
        return True
    try:
        answer = json.loads(response.data)
    except ValueError:
        return False
    if not isinstance(answer, dict):
        return False
    values = (answer.get("error"), answer.get("error_description"))
    return any(isinstance(value, str) and value in _RETRYABLE_OAUTH for value in values)
