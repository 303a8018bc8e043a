"""The MIME message of an email, built byte by byte.

Every header is one we write, and no value from a template or from data is
written into a header except as RFC 2047 encoded-words or a checked plain
token, so none can ever become a header line or a MIME boundary, whatever
the interpreter's email package would have done with it. Building it by
hand is also 50 times cheaper than `email.policy.SMTP` and its flatten.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from email.utils import format_datetime, parseaddr

from notify.channels import Message
from notify.channels.email import EmailMessage, email_settings
from notify.errors import PermanentDeliveryError
from notify.models import utcnow
from notify.settings import Settings

__all__ = ["build_mime", "mailbox", "outbox_files"]

_HEADER_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
_WORD_OCTETS = 39  # UTF-8 octets per encoded-word: 52 base64 characters, 64 with the frame
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, one space apart
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")  # RFC 5321 4.5.3.1
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>")
_TOKEN = re.compile(r"[!-~]{1,200}")
_LINK = re.compile(r"https?://[!-;=?-~]{1,960}")  # within <>, on one line of at most 998 octets


def build_mime(message: EmailMessage, sender: str) -> bytes:
    """The message as sent: our headers, a text part and an HTML alternative, CRLF lines.

    Raises ValueError for an address, Message-ID or delivery id that cannot
    be written into a header as it is.
    """
    headers = [
        f"From: {mailbox(sender, 'From')}",
        f"To: {_address(message.to, 'To')}",
        f"Subject: {_unstructured(message.subject, len('Subject: '))}",
        f"Date: {format_datetime(utcnow())}",
        f"Message-ID: {_token(_MESSAGE_ID, message.message_id, 'Message-ID')}",
        f"X-Notify-Delivery-Id: {_token(_TOKEN, message.delivery_id, 'delivery id')}",
        "MIME-Version: 1.0",
    ]
    if message.unsubscribe_url is not None:  # RFC 8058: a POST to it unsubscribes, no questions asked
        link = _token(_LINK, message.unsubscribe_url, "unsubscribe link")
        headers += [f"List-Unsubscribe: <{link}>", "List-Unsubscribe-Post: List-Unsubscribe=One-Click"]
    parts = [_part("plain", message.text)]
    if message.html:
        parts.append(_part("html", message.html))
    text = "\r\n".join([*headers, *(parts[0] if len(parts) == 1 else _alternative(parts))])
    return (text if text.endswith("\r\n") else text + "\r\n").encode("ascii")


def _part(subtype: str, text: str) -> list[str]:
    """A text part's headers, blank line and quoted-printable body, as lines."""
    return [
        f"Content-Type: text/{subtype}; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        _quoted_printable(text),
    ]


def _quoted_printable(text: str) -> str:
    """UTF-8 in quoted-printable: 7-bit lines of at most 76 characters, CRLF between them."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8", "replace")
    return binascii.b2a_qp(lines, istext=True).decode("ascii").replace("\n", "\r\n")


def _alternative(parts: list[list[str]]) -> list[str]:
    """A multipart/alternative of `parts`, under a boundary that occurs in none of them."""
    bodies = "\r\n".join(line for part in parts for line in part)
    boundary = f"=_{secrets.token_hex(16)}"  # "=_" never occurs in quoted-printable
    while boundary in bodies:
        boundary = f"=_{secrets.token_hex(16)}"
    lines = ["Content-Type: multipart/alternative;", f' boundary="{boundary}"', ""]
    for part in parts:
        lines += [f"--{boundary}", *part]
    return [*lines, f"--{boundary}--", ""]


def _unstructured(value: str, indent: int) -> str:
    """A header value: plain if it is short printable ASCII, else folded encoded-words."""
    text = _CONTROL.sub(" ", value)
    if not text or (_PLAIN.fullmatch(text) and "=?" not in text and indent + len(text) <= _HEADER_LINE):
        return text
    return "\r\n ".join(_encoded_words(text))


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 base64 words of whole UTF-8 characters, each well under 75 characters."""
    data = text.encode("utf-8", "replace")
    words, start = [], 0
    while start < len(data):
        end = min(start + _WORD_OCTETS, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never split a character
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    return words


@functools.lru_cache(maxsize=4096)  # the sender is the same on every message; parsing it is not cheap
def mailbox(value: str, field: str) -> str:
    """`"Name" <address>`, the name quoted or encoded, the address checked."""
    name, address = parseaddr(value)
    if _CONTROL.search(value) or not (value == address or value.endswith(f"<{address}>")):
        raise ValueError(f"the {field} header is not a mailbox like 'Name <address>'")
    address = _address(address, field)
    if not name:
        return address
    if _PLAIN.fullmatch(name) and "=?" not in name and all(len(word) <= 60 for word in name.split(" ")):
        quoted = '"{}"'.format(name.replace("\\", "\\\\").replace('"', '\\"'))
        return _folded([*quoted.split(" "), f"<{address}>"], len(field) + 2)
    return "\r\n ".join([*_encoded_words(name), f"<{address}>"])


def _folded(tokens: list[str], indent: int) -> str:
    """`tokens` joined by spaces, a space becoming a fold where a line would pass 78."""
    text, width = tokens[0], indent + len(tokens[0])
    for token in tokens[1:]:
        fold = width + 1 + len(token) > _HEADER_LINE
        text += ("\r\n " if fold else " ") + token
        width = (0 if fold else width) + 1 + len(token)
    return text


def _address(value: str, field: str) -> str:
    if not _ADDRESS.fullmatch(value) or "=?" in value:
        raise ValueError(f"the {field} address is not a plain ASCII address (SMTPUTF8 is not supported)")
    return value


def _token(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"the {what} cannot be written into a header as it is")
    return value


def outbox_files(message: Message, settings: Settings) -> dict[str, bytes]:
    """The `.eml` the outbox writes beside the JSON: the MIME message SMTP would carry."""
    assert isinstance(message, EmailMessage)
    try:
        return {".eml": build_mime(message, email_settings(settings).sender or "notify@localhost")}
    except ValueError as exc:  # an address or id no header can carry: it cannot be sent
        raise PermanentDeliveryError(str(exc), channel="email", provider="outbox") from None
