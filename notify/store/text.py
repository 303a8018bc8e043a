"""Text from outside made storable: whatever a provider answered, the outcome's write must succeed.

A provider's id, code and reason come from a peer notify does not control: a
NUL (PostgreSQL refuses it in text), a byte that is not UTF-8 (aiosmtplib keeps
it as a lone surrogate, which no encoder writes), a reason of megabytes. An
outcome write refused for its content would leave a delivery that the
provider already took to be sent again; so the store writes such text
escaped, and cut to its column.
"""

from __future__ import annotations

import re

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str | None, limit: int) -> str | None:
    """`text` with NULs and lone surrogates escaped (`\\x00`, `\\xe4` for a byte decoded with
    surrogateescape), cut to `limit` characters with an ellipsis."""
    if text is None:
        return None
    if _UNSTORABLE.search(text):
        text = _UNSTORABLE.sub(_escaped, text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
