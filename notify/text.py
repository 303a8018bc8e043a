"""Text from outside shown to a person: its control characters escaped, on a terminal and in a log.

A provider's reason, a receiver's reason phrase, an id or a template name may
hold ESC sequences (clear the screen, set the title, move the cursor), a bare
CR (draw over a line), a newline (forge a log line), or a bidi override that
shows the characters after it reversed. The store keeps such text as it came;
whatever shows it to a person escapes them (`\\x1b`, `\\u202e`). Output for
scripts (`--json`) keeps it exact.
"""

from __future__ import annotations

import logging
import re

# C0 and C1 controls, DEL, lone surrogates (no terminal encoding writes them),
# the line and paragraph separators, and the bidi embeddings, overrides and isolates.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_IN_LINES = re.compile(_UNPRINTABLE.pattern.replace(r"\x00-\x1f", r"\x00-\x08\x0b-\x1f"))


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with its control characters escaped; with `lines`, its newlines and tabs kept."""
    return (_UNPRINTABLE_IN_LINES if lines else _UNPRINTABLE).sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class EscapingFilter(logging.Filter):
    """Escapes control characters in each record a handler writes: its message on one line,
    its traceback keeping its line breaks.

    On a handler rather than at each call site: it covers every record that
    reaches the log, a provider's reason in notify's own lines, the message of
    an exception in a traceback, and what Celery and the client libraries log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = printable(message)
        if escaped != message:
            record.msg, record.args = escaped, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = printable(record.exc_text, lines=True)
        if record.stack_info:
            record.stack_info = printable(record.stack_info, lines=True)
        return True


def escape_logs(logger: logging.Logger) -> None:
    """Escape control characters in what each of `logger`'s handlers writes."""
    for handler in logger.handlers:
        if not any(isinstance(f, EscapingFilter) for f in handler.filters):
            handler.addFilter(EscapingFilter())
