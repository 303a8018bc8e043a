"""The MIME message we build: hostile subjects and bodies stay data, never headers or boundaries."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage as Parsed

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notify.providers.mime import build_mime
from notify.providers.smtp import SmtpProvider
from tests.support.smtp import SENDER, SmtpServer, email, provider_for

HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "X-Notify-Delivery-Id",
    "MIME-Version",
    "Content-Type",
]

INJECTED = (
    "\r\nReply-To: attacker@evil.example\r\nContent-Type: text/html\r\n\r\n<a href=http://evil>Reset</a>"
)
Q_WORD = (
    "=?utf-8?q?=0D=0AReply-To:_attacker@evil.example=0D=0AContent-Type:_text/html=0D=0A=0D=0A"
    "<a_href=3Dhttp://evil>Reset</a>?="
)
B_WORD = f"=?utf-8?b?{base64.b64encode(INJECTED.encode()).decode()}?="

HOSTILE_SUBJECTS = {
    "q encoded-word": f"Welcome, {Q_WORD}!",
    "b encoded-word": f"Welcome, {B_WORD}!",
    "lone encoded-word": Q_WORD,
    "raw CRLF": f"Welcome, Ada!{INJECTED}",
    "bare LF and CR": "Welcome\nBcc: x@evil.example\rX: y",
    "other controls": "a\x00b\x07c\x1bd\x7fe\x85f\u2028g\u2029h\tend",
    "empty": "",
    "spaces at the ends": "  Welcome  ",
    "non-ASCII": "Grüße, Ådä! Привет, 你好",
    "emoji": "Welcome 🎉👩‍👩‍👧‍👦🏳️‍🌈!",
    "very long": "Welcome, " + "Ada Lovelace " * 384,  # ~5,000 characters
    "5,000 multi-byte": "é🎉" * 2500,
    "just short of a line": "x" * 69,
    "just over a line": "x" * 70,
}


def sanitized(subject: str) -> str:
    """What the subject must decode to: every control character a space."""
    return re.sub("[\x00-\x1f\x7f-\x9f\u2028\u2029]", " ", subject)


def lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse(raw: bytes) -> Parsed:
    return message_from_bytes(raw, policy=policy.default)


def header_block(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def assert_well_formed(raw: bytes) -> None:
    """7-bit, CRLF only, every line within 998 characters, every encoded-word within 75."""
    raw.decode("ascii")
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert all(len(word) <= 75 for word in re.findall(rb"=\?[^?]*\?[bBqQ]\?[^?]*\?=", raw))
    assert all(len(line) <= 78 for line in header_block(raw) if not line.startswith(b"To:"))


# The builder, no I/O


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS.values(), ids=HOSTILE_SUBJECTS.keys())
def test_a_hostile_subject_stays_one_header(subject: str) -> None:
    raw = build_mime(email(subject=subject), SENDER)

    assert_well_formed(raw)
    parsed = parse(raw)
    assert list(parsed.keys()) == HEADERS
    assert parsed["Subject"] == sanitized(subject)
    assert not any(line.startswith((b"Reply-To", b"Bcc", b"X:")) for line in header_block(raw))
    html = parsed.get_body(("html",))
    assert html is not None and html.get_content() == "<p>Hello</p>"


def test_the_headers_are_exactly_ours_in_order() -> None:
    raw = build_mime(email("d-42", subject="Welcome, Ada!"), SENDER)

    block = header_block(raw)
    assert [line.split(b":", 1)[0].decode() for line in block if not line.startswith(b" ")] == HEADERS
    assert block[:3] == [
        b'From: "Notify Tests" <notify@example.com>',
        b"To: ada@example.com",
        b"Subject: Welcome, Ada!",
    ]
    assert b"Message-ID: <d-42@example.com>" in block
    assert b"X-Notify-Delivery-Id: d-42" in block
    assert b"MIME-Version: 1.0" in block


def test_a_text_only_email_is_one_text_part() -> None:
    parsed = parse(build_mime(email(html=None, text="Hello Ada,\n\nbye"), SENDER))

    assert list(parsed.keys()) == [*HEADERS, "Content-Transfer-Encoding"]
    assert parsed.get_content_type() == "text/plain"
    assert lines(parsed.get_content()).rstrip("\n") == "Hello Ada,\n\nbye"


@pytest.mark.parametrize(
    "sender, name",
    [
        ("notify@example.com", ""),
        ('"Notify \\"HQ\\" \\\\ x" <n@example.com>', 'Notify "HQ" \\ x'),
        ("Notify (HQ) <n@example.com>", "Notify (HQ)"),
        ("Grüße vom Team <n@example.com>", "Grüße vom Team"),
        ("The notification service of a company with a very long name indeed <n@example.com>", None),
    ],
)
def test_the_from_display_name_is_quoted_or_encoded(sender: str, name: str | None) -> None:
    raw = build_mime(email(), sender)

    assert_well_formed(raw)
    parsed = parse(raw)
    assert list(parsed.keys()) == HEADERS
    [address] = parsed["From"].addresses
    assert address.addr_spec in sender
    assert address.display_name == (name if name is not None else sender.split(" <")[0])


@pytest.mark.parametrize("name", ["Benachrichtigungen der Größten Übersetzungsfirma", Q_WORD])
def test_a_long_display_name_is_several_encoded_words(name: str) -> None:
    raw = build_mime(email(), f'"{name}" <n@example.com>')

    assert_well_formed(raw)
    parsed = parse(raw)
    assert list(parsed.keys()) == HEADERS
    [address] = parsed["From"].addresses
    # RFC 2047 §6.2 drops the folding between encoded-words; Python's address
    # parser keeps it as a space, so compare what both readings agree on.
    assert "".join(address.display_name.split()) == "".join(name.split())


@pytest.mark.parametrize(
    "field, value",
    [
        ("to", "ada@example.com\r\nBcc: x@evil.example"),
        ("to", "ada@exämple.com"),
        ("to", "=?utf-8?q?x?=@example.com"),
        ("to", "Ada <ada@example.com>"),
        ("message_id", "<d@example.com>\r\nX: y"),
        ("delivery_id", "d 1"),
    ],
)
def test_a_value_that_cannot_be_a_header_is_refused(field: str, value: str) -> None:
    message = email(**{field: value}) if field != "delivery_id" else email(value)

    with pytest.raises(ValueError, match=r"header|address"):
        build_mime(message, SENDER)


def test_a_sender_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValueError, match="From"):
        build_mime(email(), "Notify\r\nBcc: x@evil.example")


HOSTILE_BODY = "\n".join(
    [
        "x" * 5000,  # far over SMTP's 998
        "--=_boundary-looking line",
        "--=_0123456789abcdef0123456789abcdef--",
        "=_=?utf-8?q?=0D=0A?= =3D =",
        ".",
        ".starts with a dot",
        "trailing spaces   ",
        "tab\tand trailing tab\t",
        "Grüße 🎉 \u2028 line separator",
        "crlf\r\nand lone\rcr",
        "",
    ]
)


def test_hostile_bodies_round_trip_in_short_lines() -> None:
    raw = build_mime(email(text=HOSTILE_BODY, html=f"<pre>{HOSTILE_BODY}</pre>"), SENDER)

    assert_well_formed(raw)
    parsed = parse(raw)
    assert parsed.get_content_type() == "multipart/alternative"
    assert len(list(parsed.iter_parts())) == 2
    text, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert text is not None and lines(text.get_content()) == lines(HOSTILE_BODY)
    assert html is not None and lines(html.get_content()) == lines(f"<pre>{HOSTILE_BODY}</pre>")


@settings(max_examples=300, deadline=None)
@given(subject=st.text(), text=st.text(), html=st.text(min_size=1))
def test_any_subject_and_bodies_round_trip(subject: str, text: str, html: str) -> None:
    raw = build_mime(email(subject=subject, text=text, html=html), SENDER)

    assert_well_formed(raw)
    parsed = parse(raw)
    assert list(parsed.keys()) == HEADERS
    assert parsed["Subject"] == sanitized(subject)
    plain, rich = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain is not None and lines(plain.get_content()) == lines(text)
    assert rich is not None and lines(rich.get_content()) == lines(html)


# Through a real SMTP server


@pytest.fixture
def provider(smtp_server: SmtpServer) -> Iterator[SmtpProvider]:
    provider = provider_for(smtp_server)
    yield provider
    provider.close()


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS.values(), ids=HOSTILE_SUBJECTS.keys())
def test_a_hostile_subject_arrives_as_one_subject(
    subject: str, provider: SmtpProvider, smtp_server: SmtpServer
) -> None:
    provider.deliver(email(subject=subject, text=HOSTILE_BODY, html=f"<b>{HOSTILE_BODY}</b>"))

    [message] = smtp_server.messages
    assert list(message.keys()) == HEADERS
    assert "Reply-To" not in message
    assert message["Subject"] == sanitized(subject)
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and lines(text.get_content()) == lines(HOSTILE_BODY)
    assert html is not None and lines(html.get_content()) == lines(f"<b>{HOSTILE_BODY}</b>")


def test_a_line_of_just_a_dot_does_not_end_the_data_early(
    provider: SmtpProvider, smtp_server: SmtpServer
) -> None:
    body = "before\n.\nafter\n..\n.end"

    provider.deliver(email(text=body, html=None))

    [message] = smtp_server.messages
    assert lines(message.get_content()).rstrip("\n") == body
