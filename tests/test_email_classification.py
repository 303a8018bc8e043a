"""SMTP failures classified once: configuration, permanent or transient, and the retry hint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from notify.errors import (
    ConfigurationError,
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notify.providers.smtp import classify
from tests.support.smtp import SmtpServer, email, provider_for

ADA = "ada@example.com"
FROM = "notify@example.com"

CONFIG, PERMANENT, TRANSIENT = ConfigurationError, PermanentDeliveryError, TransientDeliveryError

TABLE: list[tuple[str, BaseException, type[NotifyError], str | None]] = [
    # (what, the failure, our error, the setting named or the reply code kept)
    ("dead mailbox", SMTPRecipientRefused(550, "5.1.1 No such user", ADA), PERMANENT, "550"),
    (
        "refused, as a list",
        SMTPRecipientsRefused([SMTPRecipientRefused(550, "5.1.1 x", ADA)]),
        PERMANENT,
        "550",
    ),
    ("bad domain", SMTPRecipientRefused(550, "5.1.2 Host unknown", ADA), PERMANENT, "550"),
    ("no enhanced code", SMTPRecipientRefused(553, "mailbox name not allowed", ADA), PERMANENT, "553"),
    ("spam policy", SMTPDataError(550, "5.7.1 Message rejected as spam"), PERMANENT, "550"),
    ("too big", SMTPDataError(552, "5.3.4 Message size exceeds fixed limit"), PERMANENT, "552"),
    ("mailbox busy", SMTPRecipientRefused(450, "4.2.1 Mailbox busy", ADA), TRANSIENT, "450"),
    (
        "4xx with a dead-mailbox subject",
        SMTPRecipientRefused(450, "4.1.1 lookup failed", ADA),
        TRANSIENT,
        "450",
    ),
    ("odd: 5xx with 4.x.x", SMTPDataError(554, "4.4.7 Delivery time expired"), PERMANENT, "554"),
    ("odd: 4xx with 5.x.x", SMTPDataError(451, "5.3.0 Local error"), TRANSIENT, "451"),
    ("greylisted", SMTPRecipientRefused(451, "4.7.1 Greylisted", ADA), TRANSIENT, "451"),
    ("closing", SMTPResponseException(421, "4.3.2 Service shutting down"), TRANSIENT, "421"),
    (
        "auth required",
        SMTPSenderRefused(530, "5.7.0 Authentication required", FROM),
        CONFIG,
        "NOTIFY_SMTP_USERNAME",
    ),
    (
        "STARTTLS first",
        SMTPSenderRefused(530, "5.7.0 Must issue a STARTTLS command first", FROM),
        CONFIG,
        "NOTIFY_SMTP_TLS",
    ),
    (
        "bad credentials",
        SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"),
        CONFIG,
        "NOTIFY_SMTP_PASSWORD",
    ),
    (
        "weak mechanism",
        SMTPAuthenticationError(534, "5.7.9 Authentication mechanism is too weak"),
        CONFIG,
        "NOTIFY_SMTP_PASSWORD",
    ),
    (
        "temporary auth failure",
        SMTPAuthenticationError(454, "4.7.0 Temporary authentication failure"),
        TRANSIENT,
        "454",
    ),
    (
        "encryption required",
        SMTPResponseException(538, "5.7.11 Encryption required"),
        CONFIG,
        "NOTIFY_SMTP_TLS",
    ),
    (
        "encryption needed",
        SMTPSenderRefused(550, "5.7.10 Encryption needed", FROM),
        CONFIG,
        "NOTIFY_SMTP_TLS",
    ),
    (
        "bad sender domain",
        SMTPSenderRefused(553, "5.1.8 Sender address rejected", FROM),
        CONFIG,
        "NOTIFY_EMAIL_FROM",
    ),
    (
        "bad sender syntax",
        SMTPSenderRefused(501, "5.1.7 Bad sender address syntax", FROM),
        CONFIG,
        "NOTIFY_EMAIL_FROM",
    ),
    (
        "sender refused",
        SMTPSenderRefused(550, "5.7.1 Sender address rejected: not owned by user", FROM),
        CONFIG,
        "NOTIFY_EMAIL_FROM",
    ),
    (
        "sender not verified",
        SMTPSenderRefused(550, "Sender verify failed", FROM),
        CONFIG,
        "NOTIFY_EMAIL_FROM",
    ),
    (
        "relay denied",
        SMTPRecipientRefused(554, "5.7.1 <ada@example.com>: Relay access denied", ADA),
        CONFIG,
        "NOTIFY_SMTP_USERNAME",
    ),
    ("greeting refused", SMTPConnectResponseError(554, "no SMTP service here"), TRANSIENT, None),
    ("connection refused", SMTPConnectError("Error connecting to localhost on port 25"), TRANSIENT, None),
    ("dropped before the data", SMTPServerDisconnected("Connection lost"), TRANSIENT, None),
    ("slow command", SMTPReadTimeoutError("Timed out waiting for server response"), TRANSIENT, None),
    ("socket error", ConnectionResetError(104, "Connection reset by peer"), TRANSIENT, None),
]


@pytest.mark.parametrize("exc, kind, detail", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_classify(exc: BaseException, kind: type[NotifyError], detail: str | None) -> None:
    error = classify(exc)

    assert type(error) is kind
    if isinstance(error, ConfigurationError):
        assert error.setting == detail
        assert str(detail) in str(error)
    else:
        assert isinstance(error, TransientDeliveryError | PermanentDeliveryError)
        assert (error.channel, error.provider, error.code) == ("email", "smtp", detail)


def test_classify_keeps_our_own_errors() -> None:
    unknown = OutcomeUnknownError("no reply to the end of DATA", channel="email", provider="smtp")

    assert classify(unknown) is unknown


@pytest.mark.parametrize(
    "reply, seconds",
    [
        ("4.7.1 Greylisted, try again in 60 seconds", 60.0),
        ("4.7.1 Greylisted; retry in 5 minutes", 300.0),
        ("4.7.1 please try again after 30s.", 30.0),
        ("4.7.0 greylisted for 300 secs", 300.0),
        ("4.7.0 wait 2 min", 120.0),
        ("4.3.0 Try again in 1 hour", 3600.0),
        ("4.7.1 see https://example.com/help/500s", None),
        ("4.7.1 see https://example.com/retry?in=500s", None),
        ("4.7.1 error 500s, in code 45m2", None),
        ("4.7.1 try again later", None),
        ("4.2.2 mailbox 42s full", None),
    ],
)
def test_a_retry_hint_is_read_from_words_only(reply: str, seconds: float | None) -> None:
    error = classify(SMTPRecipientRefused(451, reply, ADA))

    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == seconds


# Against a real SMTP server


@pytest.fixture
def auth_server() -> Iterator[SmtpServer]:
    server = SmtpServer(auth_required=True).start()
    yield server
    server.stop()


def test_a_server_without_starttls_is_a_configuration_error(smtp_server: SmtpServer) -> None:
    provider = provider_for(smtp_server, tls="starttls")  # the default, against a server without TLS
    try:
        with pytest.raises(ConfigurationError) as caught:
            provider.deliver(email())
    finally:
        provider.close()

    assert caught.value.setting == "NOTIFY_SMTP_TLS"
    assert smtp_server.messages == []


def test_a_server_that_requires_authentication_is_a_configuration_error(auth_server: SmtpServer) -> None:
    provider = provider_for(auth_server)  # no NOTIFY_SMTP_USERNAME
    try:
        with pytest.raises(ConfigurationError) as caught:
            provider.deliver(email())
    finally:
        provider.close()

    assert caught.value.setting == "NOTIFY_SMTP_USERNAME"
    assert "530" in str(caught.value)


def test_a_url_in_a_temporary_refusal_is_no_retry_hint(smtp_server: SmtpServer) -> None:
    smtp_server.fail_next(1, "451 4.7.1 Greylisted, see https://example.com/help/500s")
    provider = provider_for(smtp_server)
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            provider.deliver(email())
    finally:
        provider.close()

    assert caught.value.code == "451"
    assert caught.value.retry_after is None


def test_a_dead_mailbox_fails_permanently_and_the_connection_serves_the_next(smtp_server: SmtpServer) -> None:
    smtp_server.reject("gone@example.com")
    provider = provider_for(smtp_server)
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            provider.deliver(email("d-1", to="gone@example.com"))
        receipt = provider.deliver(email("d-2"))
    finally:
        provider.close()

    assert (type(caught.value), caught.value.code) == (PermanentDeliveryError, "550")
    assert receipt.provider_id == "Q000001"
    assert smtp_server.delivery_ids() == {"d-2": 1}
