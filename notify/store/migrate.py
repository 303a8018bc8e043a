"""`notify db upgrade`: Alembic, run on notify's own revisions (notify/store/migrations).

Only this module imports Alembic, and only the `notify db` command imports
this module: producers and workers never migrate (a worker on an older schema
refuses to start, naming the command).
"""

from __future__ import annotations

import io
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from notify.store.engines import create_engine, unavailable
from notify.store.schema import REVISION, SCHEMA_LOCK, deliveries, revision_of

MIGRATIONS = Path(__file__).with_name("migrations")


def _config(url: str, output: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head() -> str:
    """The newest revision the migrations know (the schema's REVISION names the same)."""
    found = ScriptDirectory.from_config(_config("sqlite://")).get_current_head()
    assert found is not None
    return found


def current(url: str) -> tuple[bool, str | None]:
    """(whether the store has notify's tables, its revision: None if made before revisions)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return _current(conn)
    finally:
        engine.dispose()


def _current(conn: sa.Connection) -> tuple[bool, str | None]:
    return sa.inspect(conn).has_table(deliveries.name), revision_of(conn)


def upgrade(url: str) -> tuple[str, str]:
    """Bring the store to the newest revision; (what it was, the revision it is at now).

    StoreUnavailable if the database does not answer.
    """
    try:
        return _upgrade(url)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise unavailable(sa.engine.make_url(url), exc) from exc


def _upgrade(url: str) -> tuple[str, str]:
    engine = create_engine(url, writer=True)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # one upgrade (or first use) at a time; the next sees it
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK)))
            exists, before = _current(conn)
            config = _config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    if not exists:
        was = "no schema"
    else:
        was = "made before revisions were kept" if before is None else f"revision {before}"
    return was, REVISION


def upgrade_sql(url: str) -> str:
    """The SQL that would bring the store to the newest revision, for a DBA to apply by hand.

    From the store's revision if it answers; a store made before revisions
    were kept is recorded at 0001 (what that release's tables are) first; a
    store that does not answer, or has no tables, gets the whole schema.
    """
    try:
        exists, revision = current(url)
    except sa.exc.DBAPIError:
        exists, revision = False, None
    output = io.StringIO()
    config = _config(url, output)
    if exists and revision is None:
        command.stamp(config, "0001", sql=True)
        revision = "0001"
    if exists and revision == REVISION:
        output.write(f"-- the store's schema is at revision {REVISION} already\n")
    elif exists and revision is not None:
        command.upgrade(config, f"{revision}:head", sql=True)
    else:
        command.upgrade(config, "head", sql=True)
    return output.getvalue()
