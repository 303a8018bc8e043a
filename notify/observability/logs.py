"""NOTIFY_LOG_FORMAT: a process's log as text, or as one JSON object a line for a log collector.

A JSON line holds `timestamp` (ISO 8601, UTC), `level`, `logger`, `message`,
a traceback as `exc_info` (`stack_info`) if there is one, and where they
apply the delivery's `FIELDS`. The Deliverer names the delivery it attempts
(`attempt_fields`) and a filter on each handler copies it onto every line
logged meanwhile in that thread, Celery's and the providers' too; an
outcome line adds its status, provider and duration (`outcome`).

Nothing else is written. A library's `extra=` (Celery's task lines carry a
task's arguments) never reaches the log, and no field holds a message's
data, its rendered body or a setting. The text format is what it always
was, and shows none of these fields.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

from notify.text import escape_logs, printable

if TYPE_CHECKING:
    from notify.store import Claim

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(name)s] %(message)s"
FIELDS = (
    "delivery_id",
    "notification_id",
    "channel",
    "provider",
    "template",
    "status",
    "attempt",
    "duration_ms",
)
# Every key a JSON line may have, in the order it has them.
KEYS = ("timestamp", "level", "logger", "message", *FIELDS, "exc_info", "stack_info")


@dataclass(frozen=True)
class _Attempt:
    fields: dict[str, object]
    started: float  # monotonic


_attempt: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("notify_attempt", default=None)


@contextlib.contextmanager
def attempt_fields(claim: Claim) -> Iterator[None]:
    """Name `claim`'s delivery on every line this thread logs until the block ends."""
    fields: dict[str, object] = {
        "delivery_id": claim.delivery_id,
        "notification_id": claim.notification_id,
        "channel": claim.channel,
        "template": claim.template,
        "attempt": claim.attempts,
    }
    token = _attempt.set(_Attempt(fields, time.monotonic()))
    try:
        yield
    finally:
        _attempt.reset(token)


def outcome(status: str, provider: str | None = None) -> dict[str, object]:
    """The `extra=` of an attempt's outcome line: its status, provider, and time since the claim."""
    fields: dict[str, object] = {"status": str(status)}
    if provider is not None:
        fields["provider"] = str(provider)
    current = _attempt.get()
    if current is not None:
        fields["duration_ms"] = round((time.monotonic() - current.started) * 1000, 1)
    return fields


class AttemptFilter(logging.Filter):
    """Copies the fields of the delivery this thread attempts onto each record (`attempt_fields`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _attempt.get()
        if current is not None:
            for key, value in current.fields.items():
                record.__dict__.setdefault(key, value)  # a line's own extra= wins
        return True


class JsonLines(JsonFormatter):
    """One JSON object a line with `KEYS` only: whatever else a record carries is left out."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: log_data[key] for key in KEYS if log_data.get(key) is not None}

    def formatException(self, ei: Any) -> str:
        # A provider's text in an exception's message is escaped here as in the text format.
        return printable(logging.Formatter.formatException(self, ei), lines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(stack_info, lines=True)


def use_format(logger: logging.Logger, log_format: str) -> None:
    """Have each of `logger`'s handlers write `log_format`: text leaves them as they are."""
    if log_format != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(JsonLines())
        if not any(isinstance(f, AttemptFilter) for f in handler.filters):
            handler.addFilter(AttemptFilter())


def configure(log_format: str, level: str | int) -> None:
    """Log to stderr from `level` up in `log_format`, control characters escaped: for the
    processes Celery does not set up (`notify beat`, `notify web`), and for a worker until it does.

    In JSON, Python's warnings are logged too: printed, each would be lines of text among the objects.
    """
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=TEXT_FORMAT)
    root = logging.getLogger()
    use_format(root, log_format)
    escape_logs(root)
    if log_format == "json":
        logging.captureWarnings(True)
