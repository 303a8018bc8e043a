"""`notify suppressions`: the addresses notify sends nothing more to, per channel."""

from __future__ import annotations

import json

import click

from notify.cli.output import ChannelChoice, notifier, reports_errors, table
from notify.constants import MAX_LISTED
from notify.models import SuppressionReason
from notify.text import printable


@click.group()
def suppressions() -> None:
    """The suppression list: bounced, opted-out, unregistered and unsubscribed addresses."""


@suppressions.command("list")
@click.option("--channel", type=ChannelChoice())
@click.option("--limit", type=click.IntRange(1, MAX_LISTED), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (addresses unmasked).")
@reports_errors
def list_(channel: str | None, limit: int, as_json: bool) -> None:
    """Suppressed addresses, newest first."""
    found = notifier().suppressions(channel=channel, limit=limit)
    if as_json:
        rows = [
            {
                "channel": x.channel,
                "address": x.address,
                "category": x.category,
                "reason": x.reason.value,
                "detail": x.detail,
                "since": x.created_at.isoformat(),
            }
            for x in found
        ]
        click.echo(json.dumps(rows))
        return
    click.echo(
        table(
            ["channel", "address", "reason", "category", "since", "detail"],
            [
                (
                    x.channel,
                    x.masked_address,
                    x.reason.value,
                    x.category or "(all)",
                    x.created_at.isoformat(),
                    x.detail,
                )
                for x in found
            ],
        )
    )


@suppressions.command()
@click.argument("channel", type=ChannelChoice())
@click.argument("address")
@click.option(
    "--reason",
    type=click.Choice([r.value for r in SuppressionReason]),
    default=SuppressionReason.MANUAL.value,
    show_default=True,
)
@click.option("--category", help="Only templates of this category (template.toml); default: all of them.")
@reports_errors
def add(channel: str, address: str, reason: str, category: str | None) -> None:
    """Send nothing more to ADDRESS on CHANNEL: later sends are recorded `suppressed`."""
    added = notifier().suppress(channel, address, reason, category=category)
    click.echo(f"{'suppressed' if added else 'already suppressed'}: {channel} {printable(address)}")


@suppressions.command()
@click.argument("channel", type=ChannelChoice())
@click.argument("address")
@reports_errors
def remove(channel: str, address: str) -> None:
    """Take ADDRESS off CHANNEL's suppression list: sends to it go out again."""
    removed = notifier().unsuppress(channel, address)
    if not removed:
        click.echo(f"not suppressed: {channel} {printable(address)}", err=True)
        raise SystemExit(1)
    click.echo(f"no longer suppressed: {channel} {printable(address)}")
