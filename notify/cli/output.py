"""What every command shares: error reporting and output for people and for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from notify.api import Notifier
from notify.errors import NotifyError, ValidationError, one_line
from notify.models import Delivery
from notify.settings import get_settings
from notify.store import AttemptRecord
from notify.text import printable

F = TypeVar("F", bound=Callable[..., Any])


class ChannelChoice(click.Choice[str]):
    """The registered channels, read when a command line is parsed, not when the CLI is imported:
    a broken channel plugin is then reported as one line by the command, like any setting."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from notify import channels

        return channels.names()

    @choices.setter
    def choices(self, value: object) -> None:
        pass


class NotifyGroup(click.Group):
    """The `notify` group: a NotifyError raised while a command line is parsed (a broken channel
    plugin) is one line too, as from a command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # `notify --bogus`
            usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        from notify import channels

        try:
            channels.names()  # a broken channel plugin: one line, before any command parses
            return super().invoke(ctx)
        except NotifyError as exc:
            fail(exc)
        except click.UsageError as exc:
            usage_error(exc)


# Click 8.2+ raises it for a group run without a command: its help is shown, as it should be.
_HELP_SHOWN: tuple[type[Exception], ...] = tuple(
    filter(None, [getattr(click.exceptions, "NoArgsIsHelpError", None)])
)


def usage_error(exc: click.UsageError) -> NoReturn:
    """A bad option or value: one line in the style of every other error, naming the command's help."""
    if isinstance(exc, _HELP_SHOWN):
        raise exc
    where = exc.ctx.command_path if exc.ctx else "notify"
    reason = " ".join(exc.format_message().split())
    click.echo(f"error: {printable(reason)} ({where} -h)", err=True)
    sys.exit(exc.exit_code)


def reports_errors(command: F) -> F:
    """Turn a NotifyError into a one-line reason and exit status 2."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except NotifyError as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]


def fail(exc: NotifyError) -> NoReturn:
    """Print `exc` as one line, its control characters escaped (it may quote a file or a peer), and exit 2."""
    click.echo(f"error: {printable(one_line(exc))}", err=True)
    sys.exit(2)


def notifier() -> Notifier:
    return Notifier(get_settings())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table; nothing is shortened (operators paste IDs), control characters are escaped
    (a provider's reason may hold ESC sequences and a bare CR)."""
    cells = [[("" if v is None else printable(str(v))) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "notification_id": d.notification_id,
        "channel": str(d.channel),
        "status": str(d.status),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "error_code": d.error_code,
        "provider_id": d.provider_id,
        "duplicate_of": d.duplicate_of,
        "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
        "sent_at": d.sent_at.isoformat() if d.sent_at else None,
    }


def deliveries_table(deliveries: Sequence[Delivery]) -> str:
    return table(
        ["delivery", "channel", "status", "attempts", "provider id", "last error"],
        [(d.id, d.channel, d.status, d.attempts, outcome(d), d.last_error) for d in deliveries],
    )


def outcome(d: Delivery) -> str | None:
    """The provider's id for a sent delivery, or which delivery a duplicate repeats."""
    return f"duplicate of {d.duplicate_of}" if d.duplicate_of else d.provider_id


def json_object(option: str, text: str) -> dict[str, Any]:
    """`text` as a JSON object; `@path` reads it from that file (UTF-8), `@-` from stdin."""
    if text.startswith("@"):
        text = _read_data_file(option, text[1:])
    value = parse_json(option, text)
    if not isinstance(value, dict):
        raise ValidationError(option, "must be a JSON object")
    return value


def _read_data_file(option: str, path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ValidationError(
            option, f"{printable(path)} is not UTF-8 (byte at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ValidationError(option, f"cannot read {printable(path)}: {exc.strerror or exc}") from None


def status_table(deliveries: Sequence[Delivery]) -> str:
    """`notify status`: each delivery, when its next try is due, and why (its last error)."""
    return table(
        ["delivery", "channel", "status", "attempts", "next attempt", "provider id", "last error"],
        [
            (
                d.id,
                d.channel,
                d.status,
                d.attempts,
                d.next_attempt_at.isoformat(timespec="seconds") if d.next_attempt_at else None,
                outcome(d),
                " ".join(x for x in (d.error_code, d.last_error) if x) or None,
            )
            for d in deliveries
        ],
    )


def attempts_table(tries: Sequence[AttemptRecord]) -> str:
    """`notify status <delivery id>`, under the delivery: each try, what it came to and how long
    it took from its claim."""
    return table(
        ["#", "provider", "outcome", "code", "error", "started", "ended", "took"],
        [
            (
                a.number,
                a.provider,
                a.outcome,
                a.code,
                a.reason,
                a.started_at.isoformat(timespec="seconds") if a.started_at else None,
                a.ended_at.isoformat(timespec="seconds"),
                f"{a.took:.3f}s" if a.took is not None else None,
            )
            for a in tries
        ],
    )


def attempt_json(a: AttemptRecord) -> dict[str, Any]:
    return {
        "number": a.number,
        "provider": a.provider,
        "outcome": a.outcome,
        "code": a.code,
        "reason": a.reason,
        "started_at": a.started_at.isoformat() if a.started_at else None,
        "ended_at": a.ended_at.isoformat(),
        "took": a.took,
    }


def parse_json(field: str, text: str) -> Any:
    """`text` as JSON, or a `ValidationError` naming `field`: for text not JSON, nested too deep
    for the parser, or holding an integer over Python's digit limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(field, f"not JSON: {exc}") from None
    except RecursionError:
        raise ValidationError(field, "JSON nested too deeply") from None
    except ValueError:  # the only other: an integer over Python's limit of digits
        limit = sys.get_int_max_str_digits()
        raise ValidationError(field, f"JSON with an integer of more than {limit} digits") from None
