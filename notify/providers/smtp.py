"""Email over SMTP with aiosmtplib.

One event loop thread per worker process owns a small pool of SMTP
connections, reused across deliveries and replaced when they drop; worker
threads hand it messages and wait for the answer.
The message itself is built in `notify.providers.mime`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import threading
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from email.utils import parseaddr

import aiosmtplib

from notify.channels.email import SENDER_VARIABLE, EmailMessage, email_settings
from notify.constants import RFC5321_DATA_REPLY, SMTP_LOOP_SLACK
from notify.errors import (
    ConfigurationError,
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notify.providers.base import Message, Receipt
from notify.providers.mime import build_mime, mailbox
from notify.settings import Secret, Settings, check_bounds, masked_repr, required

_IDLE_CHECK_AFTER = 5.0  # seconds idle after which a pooled connection is NOOP-checked
_QUEUED_AS = re.compile(r"queued as\s+(\S+)", re.IGNORECASE)


TLS_MODES = ("none", "starttls", "tls")


@dataclass(frozen=True, repr=False)
class SmtpSettings:
    """The SMTP provider's own settings, from NOTIFY_SMTP_* (the From address is the channel's)."""

    host: str = field(default="localhost", metadata={"env": "NOTIFY_SMTP_HOST"})
    port: int = field(default=25, metadata={"env": "NOTIFY_SMTP_PORT", "bounds": (1, 65535)})
    username: str | None = field(default=None, metadata={"env": "NOTIFY_SMTP_USERNAME"})
    password: Secret | None = field(default=None, metadata={"env": "NOTIFY_SMTP_PASSWORD"})
    tls: str = field(default="starttls", metadata={"env": "NOTIFY_SMTP_TLS"})
    # Each SMTP command's; the delivery as a whole has NOTIFY_DELIVERY_TIMEOUT.
    timeout: float = field(default=30.0, metadata={"env": "NOTIFY_SMTP_TIMEOUT", "bounds": (0.1, 600.0)})

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.tls not in TLS_MODES:
            raise ConfigurationError(
                f"NOTIFY_SMTP_TLS must be none, starttls or tls, not {self.tls!r}", setting="NOTIFY_SMTP_TLS"
            )
        if self.tls == "none" and (self.username or self.password) and not _loopback(self.host):
            raise ConfigurationError(
                f"NOTIFY_SMTP_TLS=none would send the SMTP login in clear to {self.host}; "
                "use starttls or tls (none with a login is for a loopback host only)",
                setting="NOTIFY_SMTP_TLS",
            )

    def __repr__(self) -> str:
        return masked_repr(self)


def _loopback(host: str) -> bool:
    """Whether `host` is this machine by its spelling alone (no lookup): localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    tls: str = "starttls"  # none | starttls | tls
    username: str | None = None
    password: Secret | None = None
    timeout: float = 30.0  # each SMTP command
    deadline: float = 60.0  # a delivery until its data is sent, connecting included
    pool_size: int = 16


# A reply naming a setting of ours as the cause fails every message alike: it
# is configuration, not the recipient. Basic codes per RFC 4954 and RFC 3207;
# enhanced (subject, detail) per RFC 3463 and the IANA registry it founded.
_SETTING_BY_CODE = {
    530: "NOTIFY_SMTP_USERNAME",  # authentication required
    534: "NOTIFY_SMTP_PASSWORD",  # authentication mechanism too weak
    535: "NOTIFY_SMTP_PASSWORD",  # credentials invalid
    538: "NOTIFY_SMTP_TLS",  # encryption required for the mechanism
}
_SETTING_BY_ENHANCED = {
    (1, 7): "NOTIFY_EMAIL_FROM",  # bad sender's mailbox address syntax
    (1, 8): "NOTIFY_EMAIL_FROM",  # bad sender's system address
    (7, 8): "NOTIFY_SMTP_PASSWORD",  # authentication credentials invalid
    (7, 9): "NOTIFY_SMTP_PASSWORD",  # authentication mechanism too weak
    (7, 10): "NOTIFY_SMTP_TLS",  # encryption needed
    (7, 11): "NOTIFY_SMTP_TLS",  # encryption required for the mechanism
}
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
# "try again in 60 seconds", "retry after 5 minutes", "greylisted for 300s":
# a number standing as a word after in/after/for/wait, never digits inside a token.
_HINT = re.compile(
    r"(?<!\S)(?:in|after|for|wait)\s+(\d{1,7})\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|h)(?=[\s.,;:!)]|$)",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def classify(exc: BaseException) -> NotifyError:
    """Our error for an SMTP failure.

    A reply blaming our settings is configuration; otherwise the basic code
    decides permanence (5xx permanent, 4xx transient, whatever an odd
    enhanced code says), and network trouble before the data is transient.
    """
    if isinstance(exc, NotifyError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and exc.code >= 500:
        return ConfigurationError(
            f"SMTP server refused the login ({exc.code}); check NOTIFY_SMTP_USERNAME and "
            "NOTIFY_SMTP_PASSWORD",
            setting="NOTIFY_SMTP_PASSWORD",
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, aiosmtplib.SMTPConnectError):
        return _classify_reply(
            exc.code, exc.message, at_mail_from=isinstance(exc, aiosmtplib.SMTPSenderRefused)
        )
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TransientDeliveryError(reason, channel="email", provider="smtp")


def _classify_reply(code: int, text: str, *, at_mail_from: bool = False) -> NotifyError:
    setting = _setting_at_fault(code, text)
    if setting is None and at_mail_from and code >= 500:
        setting = "NOTIFY_EMAIL_FROM"  # our sender refused: every message alike, not the recipient's fault
    if setting is not None:
        return ConfigurationError(f"SMTP server answered {code} {text}; check {setting}", setting=setting)
    args = {"channel": "email", "provider": "smtp", "code": str(code)}
    if 400 <= code < 500:
        return TransientDeliveryError(text, retry_after=_retry_hint(text), **args)
    return PermanentDeliveryError(text, suppress="bounced" if _no_such_mailbox(code, text) else None, **args)


# A hard bounce: the recipient's mailbox is gone for good. An RFC 3463 code decides where the
# reply has one (anywhere in it: qmail writes "(#5.1.1)"): 5.1.1 bad mailbox and 5.1.10
# (Microsoft's RecipientNotFound), 5.1.2 no such domain, 5.1.3 bad address syntax; 5.1.0 only
# with words that say so; anything else (5.1.6 moved, 5.2.2 full, 5.7.x policy) is no bounce.
# Without a code, a 550/551/553/554 whose words say the user is unknown. Never a reply about
# the sender (a server that refuses our sender at RCPT would suppress every recipient).
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_NO_SUCH_USER = re.compile(
    r"no such (user|mailbox|recipient|address)|user unknown|unknown (user|recipient|mailbox)|"
    r"(user|mailbox|recipient|address) (not found|does not exist|doesn't exist)|recipientnotfound|"
    r"no mailbox|invalid (recipient|mailbox)|doesn't have an? [\w.-]{1,60} account",
    re.IGNORECASE,
)
_ABOUT_THE_SENDER = re.compile(r"\bsender\b", re.IGNORECASE)


def _no_such_mailbox(code: int, text: str) -> bool:
    """Whether a 5xx reply says the recipient's mailbox is gone for good: a hard bounce, suppressed."""
    if _ABOUT_THE_SENDER.search(text):
        return False
    words = _NO_SUCH_USER.search(text) is not None
    status = _ENHANCED.search(text)
    if status is None:
        return code in (550, 551, 553, 554) and words
    klass, subject, detail = status.groups()
    if (klass, subject) != ("5", "1"):
        return False
    return detail in ("1", "2", "3", "10") or (detail == "0" and words)


def _setting_at_fault(code: int, text: str) -> str | None:
    """The setting a 5xx reply blames, if any: RFC 4954 codes, then RFC 3463 ones."""
    if not 500 <= code < 600:
        return None
    if code == 530 and "TLS" in text.upper():  # RFC 3207: "Must issue a STARTTLS command first"
        return "NOTIFY_SMTP_TLS"
    if "RELAY" in text.upper():  # "554 5.7.1 Relay access denied": we may not send through it
        return "NOTIFY_SMTP_USERNAME"
    enhanced = _ENHANCED.match(text)
    if enhanced is not None and enhanced[1] == "5":
        setting = _SETTING_BY_ENHANCED.get((int(enhanced[2]), int(enhanced[3])))
        if setting is not None:
            return setting
    return _SETTING_BY_CODE.get(code)


def _retry_hint(text: str) -> float | None:
    """Seconds from a 4xx reply like "try again in 60 seconds" (greylisting)."""
    match = _HINT.search(text)
    if not match:
        return None
    return float(match[1]) * _UNIT_SECONDS[match[2][0].lower()]


class SmtpProvider:
    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._envelope_sender = _envelope_sender(config.sender)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="notify-smtp", daemon=True)
        self._thread.start()
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # touched only on the loop
        self._slots = asyncio.run_coroutine_threadsafe(self._semaphore(), self._loop).result()

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpProvider:
        """A provider from NOTIFY_EMAIL_FROM and NOTIFY_SMTP_*; `ConfigurationError` naming a bad one."""
        own = settings.provider_settings(SmtpSettings)
        sender = required(email_settings(settings).sender, SENDER_VARIABLE)
        return cls(
            SmtpConfig(
                host=required(own.host, "NOTIFY_SMTP_HOST"),
                port=own.port,
                sender=sender,
                tls=own.tls,
                username=own.username,
                password=own.password,
                timeout=own.timeout,
                deadline=settings.delivery_timeout,
            )
        )

    def __repr__(self) -> str:
        return f"SmtpProvider({self.config.host}:{self.config.port}, tls={self.config.tls})"

    def deliver(self, message: Message) -> Receipt:
        assert isinstance(message, EmailMessage)
        try:
            data = build_mime(message, self.config.sender)
        except ValueError as exc:
            raise PermanentDeliveryError(str(exc), channel="email", provider="smtp", code="header") from None
        future = asyncio.run_coroutine_threadsafe(self._send(message.to, data), self._loop)
        # _send bounds itself: the budget, then RFC 5321's wait. Abandoning it
        # sooner, once the data is out, is what sends a second copy.
        if not _finished(future, self.config.deadline + RFC5321_DATA_REPLY + SMTP_LOOP_SLACK):
            future.cancel()  # only if the loop thread is stuck; it may have sent the message
            raise OutcomeUnknownError("the SMTP loop did not answer", channel="email", provider="smtp")
        try:
            response = future.result()
        except NotifyError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        queued = _QUEUED_AS.search(response)
        return Receipt(provider_id=queued[1] if queued else message.message_id)

    def close(self) -> None:
        async def _quit_all() -> None:
            while self._idle:
                client, _ = self._idle.pop()
                try:
                    await client.quit()
                except aiosmtplib.SMTPException:
                    client.close()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(_quit_all(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    async def _semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.config.pool_size)

    async def _send(self, recipient: str, data: bytes) -> str:
        """Until the data is sent, within the delivery budget; then RFC 5321's wait."""
        try:
            async with asyncio.timeout(self.config.deadline) as budget, self._slots:
                client = await self._checkout()
                try:
                    response = await self._transact(client, recipient, data, budget)
                except BaseException:
                    client.close()  # state unknown: never reuse it
                    raise
                self._idle.append((client, time.monotonic()))
                return response
        except TimeoutError:
            if not budget.expired():
                raise
            raise TransientDeliveryError(
                f"not sent within NOTIFY_DELIVERY_TIMEOUT ({self.config.deadline:g}s)",
                channel="email",
                provider="smtp",
            ) from None

    async def _transact(
        self, client: aiosmtplib.SMTP, recipient: str, data: bytes, budget: asyncio.Timeout
    ) -> str:
        await client.mail(self._envelope_sender)
        await client.rcpt(recipient)
        start = await client.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        budget.reschedule(None)  # handed over from here on: only RFC 5321's wait bounds it
        reply = await _transmit(client, data)
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return reply.message

    async def _checkout(self) -> aiosmtplib.SMTP:
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and await self._still_alive(client, since):
                return client
            client.close()
        return await self._connect()

    async def _still_alive(self, client: aiosmtplib.SMTP, since: float) -> bool:
        if time.monotonic() - since < _IDLE_CHECK_AFTER:
            return True
        try:
            await client.noop()
        except (aiosmtplib.SMTPException, OSError):
            return False
        except BaseException:
            client.close()  # cancelled by the budget mid-NOOP: drop it, not leak it
            raise
        return True

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, timeout=c.timeout, use_tls=c.tls == "tls", start_tls=False
        )
        await client.connect()
        try:
            if c.tls == "starttls":
                await self._starttls(client)
            if c.username:
                await self._login(client, c.username, c.password.reveal() if c.password else "")
        except BaseException:
            client.close()
            raise
        return client

    async def _starttls(self, client: aiosmtplib.SMTP) -> None:
        await client.ehlo()
        if not client.supports_extension("starttls"):
            raise ConfigurationError(
                f"{self.config.host}:{self.config.port} does not offer STARTTLS; set NOTIFY_SMTP_TLS "
                "to tls for a TLS port, or to none for a server without TLS",
                setting="NOTIFY_SMTP_TLS",
            )
        await client.starttls()

    async def _login(self, client: aiosmtplib.SMTP, username: str, password: str) -> None:
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        if not client.supports_extension("auth"):
            raise ConfigurationError(
                f"{self.config.host}:{self.config.port} offers no AUTH; unset NOTIFY_SMTP_USERNAME "
                "or check NOTIFY_SMTP_TLS",
                setting="NOTIFY_SMTP_USERNAME",
            )
        await client.login(username, password)


def _finished(future: Future[str], timeout: float) -> bool:
    """Whether `future` is done within `timeout`: a cheaper wait than `concurrent.futures.wait`."""
    try:
        future.exception(timeout=timeout)  # returns the exception; raises only if not done in time
    except TimeoutError:
        return future.done()
    except CancelledError:
        pass
    return True


async def _transmit(client: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
    """Send the message after DATA's 354 and wait up to RFC 5321's 10 minutes for the reply.

    aiosmtplib's data() waits for 354 and for the final reply with one
    timeout, and cannot say which one failed; its protocol's write() and
    read_response() (public methods; tests/test_email_delivery.py pins them)
    let the wait before the handover stay short and the one after it long.
    """
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before the data was sent")
    protocol.write(_dot_stuffed(data))  # no await before read_response: no reply can slip by
    try:
        return await protocol.read_response(timeout=RFC5321_DATA_REPLY)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        client.close()
        raise OutcomeUnknownError(
            f"no reply to the end of DATA ({type(exc).__name__}); the server may have accepted it",
            channel="email",
            provider="smtp",
        ) from exc


def _dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line starting with "." gets another; then the terminating line."""
    return re.sub(rb"(?m)^\.", b"..", data) + b".\r\n"


def _envelope_sender(sender: str) -> str:
    """MAIL FROM's address; a sender From cannot carry is refused at start, not per message."""
    try:
        mailbox(sender, "From")
        return parseaddr(sender)[1]
    except ValueError:
        raise ConfigurationError(
            "NOTIFY_EMAIL_FROM must be an address like 'Name <notify@example.com>'",
            setting="NOTIFY_EMAIL_FROM",
        ) from None
