"""A local fake of Twilio's Messages API: a real HTTP server for the real client.

    with FakeTwilio() as fake:            # 127.0.0.1, ephemeral port, own thread
        settings = Settings.from_env({
            "NOTIFY_TWILIO_ACCOUNT_SID": fake.account_sid,
            "NOTIFY_TWILIO_AUTH_TOKEN": fake.auth_token,
            "NOTIFY_TWILIO_FROM": "+15005550006",
            "NOTIFY_TWILIO_BASE_URL": fake.url,
        })
        ...
        fake.messages          # accepted messages, as `SentMessage`s, in order
        fake.request_count     # requests that reached the server, accepted or not
        fake.connection_count  # TCP connections accepted (shows connection reuse)

It answers `POST /2010-04-01/Accounts/{sid}/Messages.json` (form-encoded To,
From or MessagingServiceSid, Body), checks HTTP Basic auth against
`account_sid`/`auth_token` (401, code 20003 otherwise) and answers 201 with a
Twilio-shaped message resource. Errors use Twilio's JSON error shape, so the
real client raises `TwilioRestException` with `.status` and `.code`.

Faults:

    fake.fail_next(2, status=503, code=20503, headers={"Retry-After": "2"})
    fake.fail_for("+15005550001", status=400, code=21211)   # every message to it
    fake.down = True    # every request answers 503
    fake.hang = True    # requests get no answer (until stop(), 30 s at most)
    fake.hold_answers() # a slow Twilio: the message is accepted, the answer held until release()
    fake.drop_answers() # the message is accepted, then the connection is cut
    fake.stop()         # closes the port and open connections: connection refused
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

import requests
from twilio.request_validator import RequestValidator

from tests.fakes._http import Answer, JsonFake, JsonServer

__all__ = ["FakeTwilio", "SentMessage"]

MAX_BODY_CHARS = 1600
HANG_LIMIT = 30.0  # seconds a hung request waits at most, so no test thread leaks
_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21211: "Invalid 'To' Phone Number",
    21212: "Invalid 'From' Phone Number",
    21408: "Permission to send an SMS has not been enabled for the region",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    21608: "The 'To' phone number provided is not yet verified for this account.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21612: "The 'To' phone number is not currently reachable via SMS",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21659: "'From' is not a Twilio phone number or Short Code country mismatch",
    21660: "Mismatch between the 'From' number and the account",
}


@dataclass(frozen=True)
class SentMessage:
    """A message the fake accepted."""

    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None = None  # StatusCallback: where Twilio posts this message's receipts


@dataclass(frozen=True)
class _Fault:
    status: int
    code: int | None
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def _fault(status: int, code: int | None, message: str | None, headers: dict[str, str] | None) -> _Fault:
    text = message or _MESSAGES.get(code or 0, f"Fake failure {status}")
    return _Fault(status, code, text, dict(headers or {}))


def _error(fault: _Fault) -> Answer:
    payload = {
        "code": fault.code,
        "message": fault.message,
        "more_info": f"https://www.twilio.com/docs/errors/{fault.code}",
        "status": fault.status,
    }
    return Answer(fault.status, payload, fault.headers)


def _invalid(form: dict[str, str]) -> int | None:
    """The Twilio code for a request Twilio would reject, or None."""
    if not form.get("To"):
        return 21604
    if not (form.get("From") or form.get("MessagingServiceSid")):
        return 21603
    if not form.get("Body"):
        return 21602
    if len(form["Body"]) > MAX_BODY_CHARS:
        return 21617
    return None


def _segments(body: str) -> int:
    single, multi = (160, 153) if body.isascii() else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // multi)


class FakeTwilio(JsonFake):
    """Twilio's Messages API on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token or secrets.token_hex(16)
        self.down = False
        self.hang = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._messages: list[SentMessage] = []
        self._failures: deque[_Fault] = deque()
        self._rules: dict[str, _Fault] = {}
        self._server = JsonServer("fake-twilio", self._respond, methods=("GET", "POST"))

    @property
    def messages(self) -> list[SentMessage]:
        with self._lock:
            return list(self._messages)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        code: int | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `n` requests with this error, whatever they ask."""
        with self._lock:
            self._failures.extend([_fault(status, code, message, headers)] * n)

    def fail_for(
        self,
        to: str,
        *,
        status: int = 400,
        code: int | None = 21211,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer every authenticated message to `to` with this error."""
        with self._lock:
            self._rules[to] = _fault(status, code, message, headers)

    def receipt(
        self,
        sent: SentMessage,
        status: str,
        *,
        error_code: str | None = None,
        url: str | None = None,
        signed_for: str | None = None,
        auth_token: str | None = None,
        account_sid: str | None = None,
        signed: bool = True,
    ) -> requests.Response:
        """POST a status callback for `sent` as Twilio does: form fields signed with X-Twilio-Signature
        (the auth token's HMAC-SHA1 over the URL and the sorted fields, as twilio's RequestValidator
        computes it). `url`: where to post it (default: the message's StatusCallback); `signed_for`,
        `auth_token`, `account_sid`: another URL, key or account to sign it for than the message's
        own (a forgery, or a replay); `signed=False`: no signature at all."""
        target = url or sent.status_callback
        assert target is not None, "the message asked for no receipts"
        form = {
            "AccountSid": account_sid or self.account_sid,
            "ApiVersion": "2010-04-01",
            "From": sent.from_ or "",
            "MessageSid": sent.sid,
            "MessageStatus": status,
            "SmsSid": sent.sid,
            "SmsStatus": status,
            "To": sent.to,
        }
        if error_code is not None:
            form["ErrorCode"] = error_code
        headers = {}
        if signed:
            signer = RequestValidator(auth_token or self.auth_token)
            headers["X-Twilio-Signature"] = signer.compute_signature(
                signed_for or sent.status_callback or target, form
            )
        return requests.post(target, data=form, headers=headers, timeout=10, allow_redirects=False)

    def stop(self) -> None:
        """Stop serving and cut open connections, so clients get refused."""
        self._stopped.set()  # hung requests end, unanswered
        super().stop()

    def _respond(self, method: str, path: str, headers: Message, body: bytes) -> Answer | None:
        form: dict[str, str] = {}
        if method == "POST":
            fields = parse_qs(body.decode(), keep_blank_values=True)
            form = {k: v[0] for k, v in fields.items()}
        return self._answer(path, headers.get("Authorization"), form)

    def _answer(self, path: str, authorization: str | None, form: dict[str, str]) -> Answer | None:
        """What to answer; None means no answer at all (hang)."""
        if self.hang:
            self._stopped.wait(HANG_LIMIT)
            return None
        with self._lock:
            scripted = self._failures.popleft() if self._failures else None
        if self.down:
            return _error(_fault(503, 20503, None, None))
        if scripted is not None:
            return _error(scripted)
        match = _PATH.match(path)
        if not self._authorized(authorization):
            return _error(_fault(401, 20003, None, None))
        if match is None or match["sid"] != self.account_sid:
            return _error(_fault(404, 20404, None, None))
        return self._create(form)

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, encoded = (authorization or "").partition(" ")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = f"{self.account_sid}:{self.auth_token}"
        return scheme.lower() == "basic" and hmac.compare_digest(decoded, expected)

    def _create(self, form: dict[str, str]) -> Answer:
        with self._lock:
            rule = self._rules.get(form.get("To", ""))
        if rule is not None:
            return _error(rule)
        invalid = _invalid(form)
        if invalid is not None:
            return _error(_fault(400, invalid, None, None))
        sent = SentMessage(
            sid="SM" + uuid.uuid4().hex,
            to=form["To"],
            from_=form.get("From") or None,
            messaging_service_sid=form.get("MessagingServiceSid") or None,
            body=form["Body"],
            status_callback=form.get("StatusCallback") or None,
        )
        with self._lock:
            self._messages.append(sent)
        return Answer(201, self._resource(sent))

    def _resource(self, sent: SentMessage) -> dict[str, Any]:
        now = formatdate(usegmt=True)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sent.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": sent.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sent.from_,
            "messaging_service_sid": sent.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(_segments(sent.body)),
            "price": None,
            "price_unit": "USD",
            "sid": sent.sid,
            "status": "queued" if sent.from_ else "accepted",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": sent.to,
            "uri": f"{uri}.json",
        }
