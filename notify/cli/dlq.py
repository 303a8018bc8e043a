"""`notify dlq`: list, replay and purge deliveries that failed for good."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from notify.api import REPLAY_FLUSH_TIMEOUT
from notify.cli.output import ChannelChoice, fail, notifier, reports_errors, table
from notify.constants import MAX_LISTED
from notify.errors import NotifyError, ValidationError
from notify.text import printable

REPLAY_BATCH = 500  # dead letters per transaction of `dlq replay --all`
SUPPRESSED_SHOWN = 20  # ids of dead letters left failed named one by one, at most


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
    """Start a fresh attempt cycle for IDS (same delivery ids), or for every dead letter (--all)."""
    if bool(ids) == everything:
        raise ValidationError("ids", "give delivery IDs or --all, not both or neither")
    if everything:
        _replay_all()
        return
    result = notifier().replay(list(ids))
    for delivery_id in result.replayed:
        click.echo(f"replayed {printable(delivery_id)}")
    _say_suppressed(result.suppressed)
    for delivery_id in result.not_found:
        click.echo(f"not a dead letter: {printable(delivery_id)}", err=True)
    if result.not_found:
        raise SystemExit(1)


def _replay_all() -> None:
    """Every dead letter there is now, REPLAY_BATCH at a time behind a progress bar (on a terminal),
    then one summary: a replay of 100,000 neither prints 100,000 lines nor holds one transaction.
    The broker is waited for once, at the end, not per batch."""
    replayed, suppressed, gone, total = 0, [], 0, 0
    with contextlib.closing(notifier()) as producer:
        try:
            ids = producer.store.dead_letter_ids()
            total = len(ids)
            with click.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
                for start in range(0, total, REPLAY_BATCH):
                    chunk = ids[start : start + REPLAY_BATCH]
                    result = producer.replay(chunk, flush_timeout=0)
                    replayed += len(result.replayed)
                    suppressed += result.suppressed
                    gone += len(result.not_found)  # replayed or purged by someone else since the count
                    bar.update(len(chunk))
            if replayed and not producer.flush(REPLAY_FLUSH_TIMEOUT):
                click.echo(
                    f"the broker did not take every message in {REPLAY_FLUSH_TIMEOUT:.0f}s; "
                    "the sweep publishes the rest",
                    err=True,
                )
        except NotifyError as exc:  # what was replayed so far stays replayed: say how far it got
            if total:
                click.echo(f"replayed {replayed} of {total} dead letters before it stopped", err=True)
            fail(exc)
    _say_suppressed(suppressed)
    summary = f"replayed {replayed} of {total} dead letters"
    if suppressed:
        summary += f"; {len(suppressed)} left failed, their address suppressed"
    if gone:
        summary += f"; {gone} no longer dead letters (replayed or purged meanwhile)"
    click.echo(summary)


def _say_suppressed(ids: list[str]) -> None:
    """Each left failed for its suppressed address, up to SUPPRESSED_SHOWN of them."""
    for delivery_id in ids[:SUPPRESSED_SHOWN]:
        click.echo(
            f"left failed: {printable(delivery_id)}'s address is suppressed "
            "(notify suppressions list; remove it to replay)",
            err=True,
        )
    if len(ids) > SUPPRESSED_SHOWN:
        click.echo(
            f"... and {len(ids) - SUPPRESSED_SHOWN} more left failed for a suppressed address", err=True
        )


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
