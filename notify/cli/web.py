"""`notify web`: receipts, one-click unsubscribe and /healthz over HTTP (notify.web)."""

from __future__ import annotations

import click

from notify.cli.output import reports_errors
from notify.errors import ConfigurationError
from notify.settings import get_settings, load_status_hook


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--loglevel", "-l", default="info", show_default=True)
@reports_errors
def web(host: str, port: int, loglevel: str) -> None:
    """Serve notify web: provider receipts, unsubscribe links and /healthz."""
    import logging

    import uvicorn

    from notify.text import escape_logs
    from notify.web import create_app
    from notify.worker.startup import check_schema

    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    escape_logs(logging.getLogger())
    settings = get_settings()
    if settings.secret_key is None:
        raise ConfigurationError(
            "notify web needs NOTIFY_SECRET_KEY (it checks the unsubscribe links it signed)",
            setting="NOTIFY_SECRET_KEY",
        )
    if settings.public_url is None:
        logging.getLogger("notify.web").warning(
            "NOTIFY_PUBLIC_URL is not set: no SMS asks for receipts and no email carries an unsubscribe link"
        )
    load_status_hook(settings)
    check_schema(settings)
    # No access log: its lines would carry unsubscribe tokens; notify.web logs what happened instead.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=loglevel.lower(),
        access_log=False,
        server_header=False,
        lifespan="on",
    )
