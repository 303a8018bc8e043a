"""`notify send` and `notify status`."""

from __future__ import annotations

import json
from datetime import datetime

import click

from notify.errors import ValidationError
from workers.cli.output import deliveries_table, delivery_json, json_object, notifier, reports_errors


@click.command()
@click.argument("template")
@click.option("--to-email")
@click.option("--to-phone")
@click.option("--to-push-token")
@click.option("--data", default="{}", help="JSON object of template variables.")
@click.option("--channel", "channels", multiple=True, help="Repeat for several; default: all that apply.")
@click.option("--priority", default="normal", show_default=True)
@click.option("--dedup-key")
@click.option("--send-at", help="ISO 8601 time with a zone, e.g. 2026-12-01T09:00:00+01:00.")
@click.option("--locale")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def send(
    template: str,
    to_email: str | None,
    to_phone: str | None,
    to_push_token: str | None,
    data: str,
    channels: tuple[str, ...],
    priority: str,
    dedup_key: str | None,
    send_at: str | None,
    locale: str | None,
    as_json: bool,
) -> None:
    """Send TEMPLATE to a recipient; prints the notification and delivery ids."""
    to = {
        k: v
        for k, v in {"email": to_email, "phone": to_phone, "push_token": to_push_token}.items()
        if v is not None
    }
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
@click.argument("notification_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def status(notification_id: str, as_json: bool) -> None:
    """Show the deliveries of a notification."""
    found = notifier().status(notification_id)
    if as_json:
        click.echo(json.dumps([delivery_json(d) for d in found]))
    else:
        click.echo(deliveries_table(found))


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("--send-at", f"not an ISO 8601 time: {text!r}") from None
