"""The `notify` command: workers, sends, status, dead letters, templates, demo."""

from __future__ import annotations

import click

from notify.cli.db import db
from notify.cli.demo import demo
from notify.cli.dlq import dlq
from notify.cli.output import NotifyGroup
from notify.cli.running import beat, worker
from notify.cli.sending import send, send_many, status
from notify.cli.suppressions import suppressions
from notify.cli.templates import templates
from notify.cli.web import web
from notify.constants import VERSION


@click.group(cls=NotifyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "--version", "-V", prog_name="notify", message="%(prog)s %(version)s")
def main() -> None:
    """notify: deliver notifications over email, SMS, push, webhooks and the channels you add."""


for command in (worker, beat, web, send, send_many, status, dlq, suppressions, templates, db, demo):
    main.add_command(command)
