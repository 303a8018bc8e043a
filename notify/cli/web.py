"""`notify web`: receipts, one-click unsubscribe and /healthz over HTTP (notify.web)."""

from __future__ import annotations

import ipaddress

import click

from notify.cli.output import reports_errors
from notify.errors import ConfigurationError
from notify.settings import get_settings, load_status_hook


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on; one not loopback needs NOTIFY_WEB_PASSWORD",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--loglevel", "-l", default="info", show_default=True)
@reports_errors
def web(host: str, port: int, loglevel: str) -> None:
    """Serve notify web: provider receipts, unsubscribe links, /healthz and the operator console."""
    import logging

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from notify.observability import logs
    from notify.web import create_app
    from notify.worker.startup import check_schema, warn_unknown_variables

    settings = get_settings()
    logs.configure(settings.log_format, loglevel)
    if settings.secret_key is None:
        raise ConfigurationError(
            "notify web needs NOTIFY_SECRET_KEY (it checks the unsubscribe links it signed)",
            setting="NOTIFY_SECRET_KEY",
        )
    if settings.web_password is None and not is_loopback(host):
        raise ConfigurationError(
            f"notify web refuses to listen on {host} without NOTIFY_WEB_PASSWORD "
            "(the console's password; without it, listen on 127.0.0.1 only)",
            setting="NOTIFY_WEB_PASSWORD",
        )
    if settings.public_url is None:
        logging.getLogger("notify.web").warning(
            "NOTIFY_PUBLIC_URL is not set: no SMS asks for receipts and no email carries an unsubscribe link"
        )
    load_status_hook(settings)
    check_schema(settings)
    warn_unknown_variables(settings)
    # No access log: its lines would carry unsubscribe tokens; notify.web logs what happened instead.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=loglevel.lower(),
        # JSON: uvicorn's lines go to the root logger's handler, as notify's do.
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        access_log=False,
        server_header=False,
        lifespan="on",
    )


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
