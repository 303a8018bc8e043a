"""Local fakes of Google's OAuth token endpoint and FCM HTTP v1, for the real clients.

Both are real HTTP servers (127.0.0.1, ephemeral port, own thread), so pyfcm
and google-auth talk to them unchanged:

    with FakeOAuth() as oauth, FakeFcm(oauth) as fcm:
        path = oauth.service_account(tmp_path, project_id="notify-test")
        settings = Settings(fcm_credentials=path, fcm_base_url=fcm.url)
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

import contextlib
import json
import re
import secrets
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

__all__ = ["SCOPE", "FakeFcm", "FakeOAuth", "SentPush"]

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the JWT's `aud`, whatever token_uri is
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
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


@dataclass
class _Answer:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def fcm_error(
    status: int,
    error_code: str | None = None,
    message: str | None = None,
    headers: dict[str, str] | None = None,
) -> _Answer:
    """FCM's error answer: google.rpc status plus an FcmError detail."""
    error: dict[str, Any] = {
        "code": status,
        "message": message or _MESSAGES.get(error_code or "", f"Fake failure {status}"),
        "status": _RPC_STATUS.get(status, "UNKNOWN"),
    }
    if error_code:
        error["details"] = [{"@type": _FCM_ERROR, "errorCode": error_code}]
    return _Answer(status, {"error": error}, dict(headers or {}))


def _unauthenticated(reason: str) -> _Answer:
    answer = fcm_error(401, message="Request had invalid authentication credentials.")
    answer.payload["error"]["details"] = [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}
    ]
    return answer


def _oauth_error(status: int, error: str, description: str | None = None) -> _Answer:
    payload = {"error": error, "error_description": description or f"Fake {error}"}
    return _Answer(status, payload)


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 that can cut its open connections."""

    def __init__(self, name: str, answer: Callable[[str, Any, bytes], _Answer]) -> None:
        self._answer = answer
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.connection_count = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=name, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already gone
                connection.shutdown(socket.SHUT_RDWR)

    def connected(self, connection: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(connection)
                self.connection_count += 1
            else:
                self._connections.discard(connection)

    def answer(self, path: str, headers: Any, body: bytes) -> _Answer:
        return self._answer(path, headers, body)


class _Fake:
    """Lifecycle shared by both fakes."""

    _server: _Server

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def connection_count(self) -> int:
        return self._server.connection_count

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections, so clients get refused."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class FakeOAuth(_Fake):
    """Google's OAuth 2.0 token endpoint for service accounts; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, str]] = {}  # private_key_id -> (client_email, public PEM)
        self._failures: deque[_Answer] = deque()
        self._issued: list[str] = []
        self._requests = 0
        self._server = _Server("fake-oauth", self._answer)

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    @property
    def issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._requests

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

    def _answer(self, path: str, headers: Any, body: bytes) -> _Answer:
        with self._lock:
            self._requests += 1
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
        return _Answer(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _refusal(self, assertion: str) -> _Answer | None:
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


class FakeFcm(_Fake):
    """FCM HTTP v1 `messages:send`; see the module docstring."""

    def __init__(self, oauth: FakeOAuth) -> None:
        self.down = False
        self._oauth = oauth
        self._lock = threading.Lock()
        self._messages: list[SentPush] = []
        self._failures: deque[_Answer] = deque()
        self._rules: dict[str, _Answer] = {}
        self._revoked: set[str] = set()
        self._requests = 0
        self._server = _Server("fake-fcm", self._answer)

    @property
    def messages(self) -> list[SentPush]:
        with self._lock:
            return list(self._messages)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._requests

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

    def _answer(self, path: str, headers: Any, body: bytes) -> _Answer:
        with self._lock:
            self._requests += 1
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

    def _send(self, project: str, bearer: str, body: bytes) -> _Answer:
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
        return _Answer(200, {"name": push.name})


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


def _handler_for(server: _Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Google does
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def setup(self) -> None:
            super().setup()
            server.connected(self.connection, alive=True)

        def finish(self) -> None:
            server.connected(self.connection, alive=False)
            super().finish()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = server.answer(self.path, self.headers, body)
            payload = json.dumps(answer.payload).encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler
