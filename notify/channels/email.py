"""Email over SMTP with aiosmtplib.

One event loop thread per worker process owns a small pool of SMTP
connections, reused across deliveries and replaced when they drop; worker
threads hand it messages and wait for the answer.
"""

from __future__ import annotations

import asyncio
import email.policy
import re
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.message import EmailMessage as MimeMessage
from email.utils import format_datetime

import aiosmtplib

from notify.channels.base import EmailMessage, Message, Receipt
from notify.errors import (
    ConfigurationError,
    NotifyError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notify.schema import utcnow
from notify.settings import Secret, Settings

_IDLE_CHECK_AFTER = 5.0  # seconds idle after which a pooled connection is NOOP-checked
_QUEUED_AS = re.compile(r"queued as\s+(\S+)", re.IGNORECASE)
_HINT = re.compile(r"(\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    tls: str = "starttls"  # none | starttls | tls
    username: str | None = None
    password: Secret | None = None
    timeout: float = 30.0  # each SMTP command
    deadline: float = 60.0  # a whole delivery, connecting included
    pool_size: int = 16


def build_mime(message: EmailMessage, sender: str) -> MimeMessage:
    """The MIME message for `message`: text part, HTML alternative, tracking headers."""
    mime = MimeMessage(policy=email.policy.SMTP)
    mime["From"] = sender
    mime["To"] = message.to
    mime["Subject"] = message.subject
    mime["Date"] = format_datetime(utcnow())
    mime["Message-ID"] = message.message_id
    mime["X-Notify-Delivery-Id"] = message.delivery_id
    mime.set_content(message.text)
    if message.html:
        mime.add_alternative(message.html, subtype="html")
    return mime


def classify(exc: BaseException) -> NotifyError:
    """Our error for an SMTP failure: 4xx and network trouble transient, 5xx permanent."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return ConfigurationError(
            f"SMTP server refused the login ({exc.code}); check NOTIFY_SMTP_USERNAME and "
            "NOTIFY_SMTP_PASSWORD",
            setting="NOTIFY_SMTP_PASSWORD",
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return ConfigurationError(f"SMTP server does not support it: {exc}", setting="NOTIFY_SMTP_TLS")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, aiosmtplib.SMTPConnectError):
        args = {"channel": "email", "provider": "smtp", "code": str(exc.code)}
        if 400 <= exc.code < 500:
            return TransientDeliveryError(exc.message, retry_after=_retry_hint(exc.message), **args)
        return PermanentDeliveryError(exc.message, **args)
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TransientDeliveryError(reason, channel="email", provider="smtp")


def _retry_hint(text: str) -> float | None:
    """Seconds from a 4xx reply like "try again in 60 seconds" (greylisting)."""
    match = _HINT.search(text)
    if not match:
        return None
    return float(match[1]) * (60.0 if match[2].lower().startswith("m") else 1.0)


class SmtpProvider:
    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="notify-smtp", daemon=True)
        self._thread.start()
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # touched only on the loop
        self._slots = asyncio.run_coroutine_threadsafe(self._semaphore(), self._loop).result()

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpProvider:
        settings.require("email_from", "smtp_host")
        return cls(
            SmtpConfig(
                host=settings.smtp_host,
                port=settings.smtp_port,
                sender=str(settings.email_from),
                tls=settings.smtp_tls,
                username=settings.smtp_username,
                password=settings.smtp_password,
                timeout=settings.smtp_timeout,
                deadline=settings.delivery_timeout,
            )
        )

    def __repr__(self) -> str:
        return f"SmtpProvider({self.config.host}:{self.config.port}, tls={self.config.tls})"

    def deliver(self, message: Message) -> Receipt:
        assert isinstance(message, EmailMessage)
        mime = build_mime(message, self.config.sender)
        future = asyncio.run_coroutine_threadsafe(self._send(mime), self._loop)
        try:
            response = future.result(timeout=self.config.deadline)
        except FutureTimeout:
            future.cancel()
            raise TransientDeliveryError("timed out", channel="email", provider="smtp") from None
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

    async def _semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.config.pool_size)

    async def _send(self, mime: MimeMessage) -> str:
        async with self._slots:
            client = await self._checkout()
            try:
                _, response = await client.send_message(mime)
            except BaseException:
                client.close()  # state unknown: never reuse it
                raise
            self._idle.append((client, time.monotonic()))
            return response

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
        return True

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            timeout=c.timeout,
            use_tls=c.tls == "tls",
            start_tls=c.tls == "starttls",
            username=c.username,
            password=c.password.reveal() if c.password else None,
        )
        await client.connect()
        return client
