"""Local fakes of Google's OAuth token endpoint and FCM HTTP v1, for the real clients.

Both are real HTTP servers (127.0.0.1, ephemeral port, own thread), so pyfcm
and google-auth talk to them unchanged:

    with FakeOAuth() as oauth, FakeFcm(oauth) as fcm:
        path = oauth.service_account(tmp_path, project_id="notify-test")
        settings = Settings.from_env({"NOTIFY_FCM_CREDENTIALS": str(path), "NOTIFY_FCM_BASE_URL": fcm.url})
        ...
        oauth.request_count    # token requests that reached the endpoint, granted or not
        oauth.issued           # access tokens granted, in order
        fcm.messages           # accepted pushes, as `SentPush`es, in order
        fcm.request_count      # send requests that reached FCM, accepted or not
        fcm.connection_count   # TCP connections accepted (shows connection reuse)

`oauth.service_account()` writes a service-account JSON with a fresh RSA key
whose `token_uri` is this fake. `POST /token` takes the JWT-bearer grant,
checks the assertion's RS256 signature against that key, its `iss` and scope,
and answers `{"access_token", "expires_in": 3600, "token_type": "Bearer"}`.

`POST /v1/projects/{project}/messages:send` checks `Authorization: Bearer`
against the tokens `oauth` granted (401 UNAUTHENTICATED otherwise), takes
`{"message": {"token", "notification", "data"}}` (data values must be strings)
and answers `{"name": "projects/{project}/messages/<id>"}`. Errors use FCM's
JSON shape, `{"error": {"code", "message", "status", "details": [FcmError]}}`.

Faults:

    fcm.fail_next(1, status=429, error_code="QUOTA_EXCEEDED", headers={"Retry-After": "30"})
    fcm.fail_for("bad-token", status=404, error_code="UNREGISTERED")   # every push to it
    fcm.revoke_tokens()       # tokens granted so far get 401 (ACCESS_TOKEN_EXPIRED)
    fcm.down = True           # every request answers 503 UNAVAILABLE
    fcm.stop()                # closes the port and open connections: connection refused
    oauth.fail_next(1, status=500)                          # token endpoint broken
    oauth.fail_next(1, status=400, error="invalid_grant")   # credentials refused
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from tests.fakes._http import Answer, JsonFake, JsonServer

__all__ = ["SCOPE", "FakeFcm", "FakeOAuth", "SentPush"]

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the JWT's `aud`, whatever token_uri is
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
_CONTENT_TYPE = "application/json; charset=UTF-8"
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_MESSAGES = {
    "UNREGISTERED": "Requested entity was not found.",
    "INVALID_ARGUMENT": "The registration token is not a valid FCM registration token",
    "QUOTA_EXCEEDED": "Quota exceeded for quota metric 'Send requests'.",
    "UNAVAILABLE": "The service is currently unavailable.",
    "INTERNAL": "Internal error encountered.",
    "SENDER_ID_MISMATCH": "SenderId mismatch",
    "THIRD_PARTY_AUTH_ERROR": "Auth error from APNS or Web Push Service",
}


@dataclass(frozen=True)
class SentPush:
    """A push the fake accepted."""

    name: str  # projects/{project}/messages/{id}
    project: str
    bearer: str  # the access token it was sent with
    token: str
    notification: dict[str, str]
    data: dict[str, str]


def fcm_error(
    status: int,
    error_code: str | None = None,
    message: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """FCM's error answer: google.rpc status plus an FcmError detail."""
    error: dict[str, Any] = {
        "code": status,
        "message": message or _MESSAGES.get(error_code or "", f"Fake failure {status}"),
        "status": _RPC_STATUS.get(status, "UNKNOWN"),
    }
    if error_code:
        error["details"] = [{"@type": _FCM_ERROR, "errorCode": error_code}]
    return Answer(status, {"error": error}, dict(headers or {}))


def _unauthenticated(reason: str) -> Answer:
    answer = fcm_error(401, message="Request had invalid authentication credentials.")
    answer.payload["error"]["details"] = [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}
    ]
    return answer


def _oauth_error(status: int, error: str, description: str | None = None) -> Answer:
    payload = {"error": error, "error_description": description or f"Fake {error}"}
    return Answer(status, payload)


class FakeOAuth(JsonFake):
    """Google's OAuth 2.0 token endpoint for service accounts; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, str]] = {}  # private_key_id -> (client_email, public PEM)
        self._failures: deque[Answer] = deque()
        self._issued: list[str] = []
        self._server = JsonServer("fake-oauth", self._answer, content_type=_CONTENT_TYPE)

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    @property
    def issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def service_account(self, directory: Path, *, project_id: str = "notify-test") -> Path:
        """Write a service-account JSON with a fresh key this endpoint trusts."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = uuid.uuid4().hex
        email = f"notify-{key_id[:8]}@{project_id}.iam.gserviceaccount.com"
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        info = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": key_id,
            "private_key": private.decode(),
            "client_email": email,
            "client_id": str(uuid.uuid4().int)[:21],
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        }
        with self._lock:
            self._keys[key_id] = (email, public.decode())
        path = directory / f"service-account-{key_id[:8]}.json"
        path.write_text(json.dumps(info, indent=2), encoding="utf-8")
        return path

    def fail_next(self, n: int = 1, *, status: int = 500, error: str | None = None) -> None:
        """Answer the next `n` token requests with this OAuth error."""
        code = error or ("invalid_grant" if status < 500 else "internal_failure")
        with self._lock:
            self._failures.extend([_oauth_error(status, code)] * n)

    def is_issued(self, token: str) -> bool:
        with self._lock:
            return token in self._issued

    def _answer(self, method: str, path: str, headers: Message, body: bytes) -> Answer:
        with self._lock:
            scripted = self._failures.popleft() if self._failures else None
        if path != "/token":
            return _oauth_error(404, "not_found")
        if scripted is not None:
            return scripted
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != JWT_GRANT:
            return _oauth_error(400, "unsupported_grant_type")
        refusal = self._refusal(form.get("assertion", ""))
        if refusal is not None:
            return refusal
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._issued.append(token)
        return Answer(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _refusal(self, assertion: str) -> Answer | None:
        """Why Google would refuse this assertion, or None."""
        with self._lock:
            keys = dict(self._keys)
        try:
            kid = jwt.decode_header(assertion).get("kid", "")  # type: ignore[no-untyped-call]
            email, public = keys[kid]
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                assertion, certs={kid: public}, audience=GOOGLE_TOKEN_URI
            )
        except (ValueError, KeyError):
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != email:
            return _oauth_error(400, "invalid_grant", "Invalid JWT: iss does not match the key")
        if SCOPE not in str(claims.get("scope", "")).split():
            return _oauth_error(400, "invalid_scope", "Invalid OAuth scope or ID token audience")
        return None


class FakeFcm(JsonFake):
    """FCM HTTP v1 `messages:send`; see the module docstring."""

    def __init__(self, oauth: FakeOAuth) -> None:
        self.down = False
        self._oauth = oauth
        self._lock = threading.Lock()
        self._messages: list[SentPush] = []
        self._failures: deque[Answer] = deque()
        self._rules: dict[str, Answer] = {}
        self._revoked: set[str] = set()
        self._server = JsonServer("fake-fcm", self._answer, content_type=_CONTENT_TYPE)

    @property
    def messages(self) -> list[SentPush]:
        with self._lock:
            return list(self._messages)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        error_code: str | None = "UNAVAILABLE",
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `n` authenticated requests with this error."""
        with self._lock:
            self._failures.extend([fcm_error(status, error_code, message, headers)] * n)

    def fail_for(
        self,
        token: str,
        *,
        status: int = 404,
        error_code: str | None = "UNREGISTERED",
        message: str | None = None,
    ) -> None:
        """Answer every authenticated push to device `token` with this error."""
        with self._lock:
            self._rules[token] = fcm_error(status, error_code, message)

    def revoke_tokens(self) -> None:
        """Refuse every access token granted so far, as FCM does once they expire."""
        revoked = set(self._oauth.issued)
        with self._lock:
            self._revoked |= revoked

    def _answer(self, method: str, path: str, headers: Message, body: bytes) -> Answer:
        match = _SEND_PATH.match(path)
        if match is None:
            return fcm_error(404, message=f"The requested URL {path} was not found.")
        scheme, _, bearer = str(headers.get("Authorization", "")).partition(" ")
        with self._lock:
            revoked = bearer in self._revoked
        if revoked:
            return _unauthenticated("ACCESS_TOKEN_EXPIRED")
        if scheme != "Bearer" or not self._oauth.is_issued(bearer):
            return _unauthenticated("CREDENTIALS_MISSING")
        with self._lock:
            scripted = self._failures.popleft() if self._failures else None
        if self.down:
            return fcm_error(503, "UNAVAILABLE")
        return scripted or self._send(match["project"], bearer, body)

    def _send(self, project: str, bearer: str, body: bytes) -> Answer:
        message = _message(body)
        if message is None:
            return fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        with self._lock:
            rule = self._rules.get(message["token"])
        if rule is not None:
            return rule
        push = SentPush(
            name=f"projects/{project}/messages/{uuid.uuid4().int % 10**19}",
            project=project,
            bearer=bearer,
            token=message["token"],
            notification=dict(message.get("notification", {})),
            data=dict(message.get("data", {})),
        )
        with self._lock:
            self._messages.append(push)
        return Answer(200, {"name": push.name})


def _message(body: bytes) -> dict[str, Any] | None:
    """The request's `message` if FCM would take it: a token and string data values."""
    try:
        message = json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("token"), str):
        return None
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return None
    return message
