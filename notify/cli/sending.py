"""`notify send`, `notify send-many` and `notify status`."""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from notify import channels as registry
from notify.api import BATCH_SIZE, Notifier
from notify.cli.output import (
    ChannelChoice,
    attempt_json,
    attempts_table,
    deliveries_table,
    delivery_json,
    json_object,
    notifier,
    parse_json,
    reports_errors,
    status_table,
)
from notify.errors import ConfigurationError, PartiallyRecorded, StoreUnavailable, ValidationError
from notify.models import Delivery, Intent, Priority, SendResult
from notify.text import printable

PRIORITY = click.Choice([p.value for p in Priority])
CHANNELS = click.option(
    "--channel",
    "channels",
    type=ChannelChoice(),
    multiple=True,
    help="Repeat for several; default: all that apply.",
)


def address_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--to-<kind>` for each registered channel's address kind (`--to-email`, `--to-push-token`, ...).

    With a broken channel plugin there are none: `send` then reports the registry's error.
    """
    try:
        specs = list(registry.channels().values())
    except ConfigurationError:
        return command
    for spec in reversed(specs):
        flag = f"--to-{spec.address.replace('_', '-')}"
        command = click.option(flag, f"to_{spec.address}", help=f"Address for the {spec.name} channel.")(
            command
        )
    return command


@click.command()
@click.argument("template")
@address_options
@click.option("--data", default="{}", help="JSON object of template variables; @FILE reads it from FILE.")
@CHANNELS
@click.option("--priority", type=PRIORITY, default="normal", show_default=True)
@click.option("--dedup-key")
@click.option("--send-at", help="ISO 8601 time with a zone, e.g. 2026-12-01T09:00:00+01:00.")
@click.option("--locale")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def send(
    template: str,
    data: str,
    channels: tuple[str, ...],
    priority: str,
    dedup_key: str | None,
    send_at: str | None,
    locale: str | None,
    as_json: bool,
    **addresses: str | None,
) -> None:
    """Send TEMPLATE to a recipient; prints the notification and delivery ids."""
    to = {option.removeprefix("to_"): v for option, v in addresses.items() if v is not None}
    result = notifier().send(
        template,
        to,
        data=json_object("--data", data),
        channels=list(channels) or None,
        priority=priority,
        dedup_key=dedup_key,
        send_at=_when(send_at),
        locale=locale,
    )
    if as_json:
        click.echo(json.dumps({"id": result.id, "deliveries": [delivery_json(d) for d in result.deliveries]}))
        return
    click.echo(f"notification {result.id}")
    click.echo(deliveries_table(result.deliveries))


@click.command()
@click.argument("notification_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def status(notification_id: str, as_json: bool) -> None:
    """Show the deliveries of a notification (or one delivery, by its id: with each of its tries,
    its provider, outcome, code and error): each status, when its next try is due and why."""
    producer = notifier()
    try:
        found = producer.status(notification_id)
    except ValidationError:
        one = producer.store.get(notification_id) if isinstance(notification_id, str) else None
        if one is None:
            raise ValidationError(
                "ID", f"no notification or delivery {printable(notification_id)!r}"
            ) from None
        _one_delivery(producer, one, as_json)
        return
    if as_json:
        click.echo(json.dumps([delivery_json(d) for d in found]))
    else:
        click.echo(status_table(found))


def _one_delivery(producer: Notifier, one: Delivery, as_json: bool) -> None:
    """One delivery, and its tries under it (`attempt_history`: `attempts` is their count)."""
    tries = producer.store.attempts_of(one.id)
    if as_json:
        click.echo(json.dumps([{**delivery_json(one), "attempt_history": [attempt_json(a) for a in tries]}]))
        return
    click.echo(status_table([one]))
    click.echo()
    click.echo(attempts_table(tries) if tries else "no attempt recorded yet")


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("--send-at", f"not an ISO 8601 time: {text!r}") from None


@click.command("send-many")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--template", required=True, help="The template every row is sent with.")
@click.option(
    "--priority",
    type=PRIORITY,
    default="normal",
    show_default=True,
    help="For rows that do not set their own.",
)
@CHANNELS
@click.option("--dedup-key-column", help="The column (or JSON field) holding each row's dedup key.")
@click.option("--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one result per row.")
@reports_errors
def send_many(
    file: Path,
    template: str,
    priority: str,
    channels: tuple[str, ...],
    dedup_key_column: str | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Send TEMPLATE once per row of FILE: CSV with a header row, or JSON lines.

    CSV columns: an address kind (email, phone, push_token, webhook, ...), data.<key> or
    a data column of JSON. JSON lines: one object per line with send()'s
    keyword arguments (to, data, channels, priority, dedup_key, send_at,
    locale). Every row is checked before any is sent.
    """
    defaults = Defaults(template, priority, list(channels) or None, dedup_key_column)
    rows = read_rows(file)
    intents = [intent_of(line, row, defaults) for line, row in rows]
    lines = [line for line, _ in rows]
    results = _send_with_progress(intents, lines, batch_size)
    if as_json:
        click.echo(json.dumps([_result_json(line, r) for line, r in zip(lines, results, strict=True)]))
    click.echo(summary(results), err=as_json)


def _send_with_progress(intents: list[Intent], lines: list[int], batch_size: int) -> list[SendResult]:
    """Every intent checked first (an error names its line), then sent a batch at a time."""
    try:
        batches = notifier().send_in_batches(intents, batch_size=batch_size)
    except ValidationError as exc:
        raise at_line(exc, lines) from exc
    results: list[SendResult] = []
    try:
        if not sys.stderr.isatty():
            for batch in batches:
                results += batch
            return results
        with click.progressbar(length=len(intents), label="sending", file=sys.stderr) as bar:
            for batch in batches:
                results += batch
                bar.update(len(batch))
    except PartiallyRecorded as exc:
        kept = len(exc.results)
        click.echo(summary(exc.results), err=True)
        raise StoreUnavailable(
            f"the rows before line {lines[kept]} were recorded; that row and those after it were not: "
            f"send them again ({exc.__cause__})"
        ) from exc
    return results


def _result_json(line: int, result: SendResult) -> dict[str, object]:
    return {"line": line, "id": result.id, "deliveries": [delivery_json(d) for d in result.deliveries]}


def summary(results: Sequence[SendResult]) -> str:
    """One line: how many notifications, and their deliveries by status."""
    statuses = Counter(str(d.status) for r in results for d in r.deliveries)
    counted = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "no deliveries"
    return f"{len(results)} notifications sent: {counted}"


# -- rows of a send-many file -----------------------------------------------------------

JSON_FIELDS = ("to", "data", "channels", "priority", "dedup_key", "send_at", "locale")


@dataclass(frozen=True)
class Defaults:
    """What every row gets unless it says otherwise."""

    template: str
    priority: str
    channels: list[str] | None
    dedup_key_column: str | None


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Each row of the file with the line it starts on: send()'s keyword arguments, unchecked."""
    file = io.StringIO(_text_of(path), newline="")
    if path.suffix.lower() == ".csv":
        return list(_csv_rows(file))
    return list(_json_rows(file))


def _text_of(path: Path) -> str:
    """The file as UTF-8 text, without the byte order mark Excel writes; an error naming the line
    of the first byte that is not UTF-8."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValidationError("line 1", "the file is UTF-16: save it as UTF-8 (Excel: CSV UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValidationError(
            f"line {line}", f"not UTF-8 (byte 0x{data[exc.start]:02x}): save the file as UTF-8"
        ) from None


def _csv_rows(file: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(file, restkey="", strict=True)
    start = 2
    try:
        for row in reader:
            yield start, _csv_row(row)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ValidationError(f"line {reader.line_num}", f"not CSV: {exc}") from None
    except ValidationError as exc:
        raise ValidationError(f"line {start}", str(exc)) from None


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row as send()'s arguments: address columns into `to`, data columns into `data`."""
    if "" in row:
        raise ValidationError("row", "has more fields than the header")
    data = json_object("data", row.pop("data")) if row.get("data") else {}
    row.pop("data", None)
    to = {k: row.pop(k) for k in registry.by_address() if k in row}
    data.update({k.removeprefix("data."): row.pop(k) for k in list(row) if k.startswith("data.")})
    return {"to": {k: v for k, v in to.items() if v}, "data": data, **row}


def _json_rows(file: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, text in enumerate(file, start=1):
        if not text.strip():
            continue
        row = parse_json(f"line {number}", text)
        if not isinstance(row, dict):
            raise ValidationError(f"line {number}", "must be a JSON object of send()'s keyword arguments")
        yield number, row


def intent_of(line: int, row: dict[str, Any], defaults: Defaults) -> Intent:
    """The intent a row asks for; an unknown column or field is an error naming its line."""
    row = dict(row)
    dedup_key = row.pop(defaults.dedup_key_column, None) if defaults.dedup_key_column else None
    unknown = sorted(set(row) - set(JSON_FIELDS))
    if unknown:
        raise ValidationError(
            f"line {line}", f"{unknown[0]}: unknown column (known: {', '.join(JSON_FIELDS)})"
        )
    send_at = row.get("send_at")
    return Intent(
        defaults.template,
        row.get("to", {}),
        data=row.get("data"),
        channels=row.get("channels") or defaults.channels,
        priority=row.get("priority") or defaults.priority,
        dedup_key=dedup_key or row.get("dedup_key") or None,
        send_at=_when(send_at) if isinstance(send_at, str) else send_at,
        locale=row.get("locale") or None,
    )


def at_line(exc: ValidationError, lines: Sequence[int]) -> ValidationError:
    """An error naming `intents[i].<field>`, naming the file's line instead: `line 7: to.email: ...`."""
    head, _, field = exc.field.partition("].")
    index = int(head.removeprefix("intents[")) if head.startswith("intents[") else None
    if index is None or not field:
        return exc
    message = str(exc).removeprefix(f"{exc.field}: ")
    return type(exc)(f"line {lines[index]}", f"{field}: {message}")
