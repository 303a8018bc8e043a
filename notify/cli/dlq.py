"""`notify dlq`: list, replay and purge deliveries that failed for good."""

from __future__ import annotations

import json
import sys

import click

from notify.cli.output import ChannelChoice, notifier, reports_errors, table
from notify.constants import MAX_LISTED
from notify.errors import ValidationError
from notify.text import printable


@click.group()
def dlq() -> None:
    """Dead letters: deliveries that failed for good."""


@dlq.command("list")
@click.option("--channel", type=ChannelChoice())
@click.option("--limit", type=click.IntRange(1, MAX_LISTED), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (addresses unmasked).")
@reports_errors
def list_(channel: str | None, limit: int, as_json: bool) -> None:
    """Failed deliveries, newest first."""
    letters = notifier().store.dead_letters(channel=channel, limit=limit)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": x.id,
                        "notification_id": x.notification_id,
                        "channel": x.channel,
                        "address": x.address,
                        "template": x.template,
                        "reason": x.reason,
                        "code": x.code,
                        "attempts": x.attempts,
                        "failed_at": x.failed_at.isoformat(),
                    }
                    for x in letters
                ]
            )
        )
        return
    click.echo(
        table(
            ["delivery", "channel", "recipient", "template", "code", "reason", "attempts", "age"],
            [
                (
                    x.id,
                    x.channel,
                    x.masked_address,
                    x.template,
                    x.code,
                    x.reason,
                    x.attempts,
                    _age(x.age_seconds),
                )
                for x in letters
            ],
        )
    )


@dlq.command()
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@reports_errors
def replay(ids: tuple[str, ...], everything: bool) -> None:
    """Start a fresh attempt cycle for IDS (same delivery ids)."""
    if bool(ids) == everything:
        raise ValidationError("ids", "give delivery IDs or --all, not both or neither")
    result = notifier().replay(None if everything else list(ids))
    for delivery_id in result.replayed:
        click.echo(f"replayed {printable(delivery_id)}")
    for delivery_id in result.suppressed:
        click.echo(
            f"left failed: {printable(delivery_id)}'s address is suppressed "
            "(notify suppressions list; remove it to replay)",
            err=True,
        )
    for delivery_id in result.not_found:
        click.echo(f"not a dead letter: {printable(delivery_id)}", err=True)
    if result.not_found:
        raise SystemExit(1)


@dlq.command()
@click.option("--yes", is_flag=True, help="Do not ask (it asks only on a terminal).")
@reports_errors
def purge(yes: bool) -> None:
    """Delete every dead letter."""
    if not yes and sys.stdin.isatty():
        click.confirm("Delete every dead letter?", abort=True)
    click.echo(f"purged {notifier().store.purge_dead_letters()} dead letters")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
