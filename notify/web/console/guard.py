"""Who may use the console, and what keeps its forms and pages safe in a browser.

HTTP basic auth: user `admin`, password NOTIFY_WEB_PASSWORD. Without a
password the console is open, because `notify web` then listens on loopback
only (notify.cli.web refuses any other address).

Every form carries a CSRF token: an HMAC-SHA256, keyed with NOTIFY_SECRET_KEY
under a purpose of its own (an unsubscribe token never passes for one), over
the time it was made and the credentials in use; it lasts CSRF_LIFETIME. A
page from another site cannot read one, so it cannot make the operator's
browser POST here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from notify.settings import Secret, Settings, revealed
from notify.web.headers import headers_added

USER = "admin"
CSRF_LIFETIME = 8 * 3600  # seconds: a working day with the page left open
CSRF_FIELD = "csrf"
_PURPOSE = b"notify console csrf v1\x00"
_SKEW = 60  # seconds: a token from a little ahead of this clock still counts
# The email previews are srcdoc iframes: they inherit this policy, so their scripts,
# images and fonts stay off too, and only inline styles apply.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser posts the console's own forms with
    # Origin: null, which cross_site could not tell from another site's.
    "Referrer-Policy": "same-origin",
}


def authorised(settings: Settings, header: str | None) -> bool:
    """Whether an Authorization header carries the console's credentials (any does without a password)."""
    if settings.web_password is None:
        return True
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, colon, password = decoded.partition(b":")
    good_user = hmac.compare_digest(user, USER.encode())
    # Digests of equal length: compare_digest on the raw bytes would tell the password's length.
    given, expected = (
        hashlib.sha256(v).digest() for v in (password, settings.web_password.reveal().encode())
    )
    return bool(colon) and good_user and hmac.compare_digest(given, expected)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def cross_site(settings: Settings, scope: Scope) -> str | None:
    """Why a request must be refused as another site's, or None.

    Without a password the console trusts whoever reaches loopback, so a Host
    naming anything else is a page of another site whose name was pointed at
    this machine (DNS rebinding): refused. A form posted from another origin
    (its Origin, or the browser's Sec-Fetch-Site) is refused with or without one.
    """
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    host = headers.get("host", "")
    if settings.web_password is None:
        name = (urlsplit(f"//{host}").hostname or "") if host.isascii() else ""
        if not (name in LOOPBACK_NAMES or name.startswith("127.")):
            return "the console without a password answers only to a loopback Host"
    if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "a form posted from another site"
        origin = headers.get("origin")
        ours = {host, urlsplit(settings.public_url or "").netloc}  # behind a proxy: its public name
        if origin not in (None, "null") and urlsplit(origin).netloc not in ours:
            return "a form posted from another origin"
    return None


def csrf_token(settings: Settings, now: float | None = None) -> str:
    """A token for the console's forms, made now ("" without NOTIFY_SECRET_KEY: no form is taken)."""
    if settings.secret_key is None:
        return ""
    issued = str(int(time.time() if now is None else now))
    return f"{issued}.{_mac(settings.secret_key, settings.web_password, issued)}"


def csrf_valid(settings: Settings, token: str | None, now: float | None = None) -> bool:
    """Whether `token` is one of ours, made at most CSRF_LIFETIME ago with today's credentials."""
    if settings.secret_key is None or token is None or len(token) > 100:
        return False
    issued, _, mac = token.partition(".")
    if not (issued.isascii() and issued.isdigit()) or len(issued) > 12:
        return False
    age = (time.time() if now is None else now) - int(issued)
    if not -_SKEW <= age <= CSRF_LIFETIME:
        return False
    expected = _mac(settings.secret_key, settings.web_password, issued)
    return hmac.compare_digest(mac.encode(), expected.encode())


def _mac(key: Secret, password: Secret | None, issued: str) -> str:
    # The password too: a token made before it changed is no good after.
    signed = _PURPOSE + f"{USER}\x00{revealed(password) or ''}\x00{issued}".encode()
    digest = hmac.new(key.reveal().encode(), signed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Guard:
    """Basic auth in front of every console page (401 otherwise), and HEADERS on every answer."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        sending = headers_added(send, HEADERS, replace=True)
        refused = cross_site(self.settings, scope)
        if refused is not None:
            await _forbid(sending, refused)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if authorised(self.settings, header or None):
            await self.app(scope, receive, sending)
            return
        await _refuse(sending)


async def _forbid(send: Send, why: str) -> None:
    body = f"refused: {why}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send) -> None:
    body = b"authentication required: user admin, the password is NOTIFY_WEB_PASSWORD\n"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", b'Basic realm="notify console", charset="UTF-8"'),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
