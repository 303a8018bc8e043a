"""`notify templates`: list, check and preview the repo's templates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from notify.cli.output import ChannelChoice, json_object, reports_errors, table
from notify.constants import UNSUBSCRIBE_URL
from notify.errors import TemplateError
from notify.rendering import Renderer, check_template, variables
from notify.settings import get_settings
from notify.text import printable


def _renderer() -> Renderer:
    return Renderer(get_settings().templates_dir)


@click.group()
def templates() -> None:
    """The notification templates under NOTIFY_TEMPLATES_DIR."""


@templates.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def list_(as_json: bool) -> None:
    """Each template, its channels, locales and the variables it needs."""
    renderer = _renderer()
    rows = []
    for name in renderer.names():
        channels = renderer.channels(name)
        locales = sorted(p.name for p in (renderer.root / name).iterdir() if p.is_dir())
        try:
            needs = sorted(set().union(*(variables(renderer, name, c) for c in channels)))
            problem = None
        except TemplateError as exc:  # listed still, with why: `templates check` says all of it
            needs, problem = [], str(exc).removeprefix("template: ")
        row = {"name": name, "channels": channels, "locales": locales, "variables": needs}
        rows.append({**row, "problem": problem} if problem else row)
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(
        table(
            ["template", "channels", "locales", "variables"],
            [
                (
                    r["name"],
                    ",".join(r["channels"]),
                    ",".join(r["locales"]) or "-",
                    f"broken: {r['problem']}" if "problem" in r else ",".join(r["variables"]),
                )
                for r in rows
            ],
        )
    )


@templates.command()
@reports_errors
def check() -> None:
    """Parse every template; exit 1 if any is broken or has half a channel."""
    renderer = _renderer()
    if not renderer.root.is_dir():
        click.echo(
            f"error: NOTIFY_TEMPLATES_DIR {printable(str(renderer.root))!r} is not a directory", err=True
        )
        sys.exit(1)
    names = renderer.names()
    if not names:
        click.echo(f"error: no templates under {printable(str(renderer.root))!r}", err=True)
        sys.exit(1)
    problems = [p for name in names for p in check_template(renderer, name)]
    for problem in problems:
        click.echo(printable(problem), err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{len(names)} templates OK")


@templates.command()
@click.argument("name")
@click.option("--channel", required=True, type=ChannelChoice())
@click.option("--data", default="{}", help="JSON object of template variables; @FILE reads it from FILE.")
@click.option("--locale")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the HTML part to this file, to open in a browser.",
)
@reports_errors
def preview(name: str, channel: str, data: str, locale: str | None, html_file: Path | None) -> None:
    """Render NAME for CHANNEL with --data, exactly as a worker would."""
    renderer = _renderer()
    renderer.check_name(name)
    if channel not in renderer.channels(name):
        raise click.UsageError(f"template {name!r} has no {channel} channel")
    values = json_object("--data", data)
    if renderer.config(name).unsubscribe:  # the worker adds the recipient's own link
        base = (get_settings().public_url or "https://notify.invalid").rstrip("/")
        values.setdefault(UNSUBSCRIBE_URL, f"{base}/u/preview")
    parts = renderer.render(name, channel, values, locale)
    if html_file is not None and "html" not in parts:
        raise click.UsageError(f"template {name!r} has no HTML part for {channel}")
    for part, text in parts.items():
        click.echo(f"--- {part}")
        click.echo(printable(text, lines=True))
    if html_file is not None:
        try:
            html_file.write_text(parts["html"], encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"--html {printable(str(html_file))!r}: {exc.strerror}") from None
        click.echo(f"--- html written to {printable(str(html_file))}")
