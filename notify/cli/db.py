"""`notify db`: the store's schema, brought to this release's revision (Alembic)."""

from __future__ import annotations

import click

from notify.cli.output import reports_errors
from notify.settings import get_settings


@click.group()
def db() -> None:
    """The store's schema."""


@db.command()
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (for a DBA to apply).")
@reports_errors
def upgrade(sql: bool) -> None:
    """Bring the store's schema to this release's revision; workers refuse to start until then.

    Run it once per release, before starting the new workers (stop the older ones
    first). A store with live deliveries keeps them: each revision only adds.
    """
    from notify.store import migrate

    url = get_settings().resolved_database_url
    if sql:
        click.echo(migrate.upgrade_sql(url), nl=False)
        return
    before, after = migrate.upgrade(url)
    if before == f"revision {after}":
        click.echo(f"the store's schema is at revision {after} already")
    else:
        click.echo(f"the store's schema: {before} -> revision {after}")
