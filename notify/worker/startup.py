"""The checks every worker makes before it takes a message, however it was started.

`notify worker CHANNEL`, `celery -A notify.worker.app worker` and `celery -A
workers.<channel> worker` all start through Celery's `worker_init`, where
`preflight` runs (notify.worker.app); `notify beat` runs it with no channel.
A failed check ends the process with status 2 and one line naming the
setting, before Celery prints its banner or takes a message: Celery itself
would only log an error raised while it configures itself, and run on its
defaults.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from notify import channels as registry
from notify import unsubscribe
from notify.errors import ConfigurationError, NotifyError, StoreUnavailable, one_line
from notify.policy import load_policies
from notify.providers import load_provider
from notify.rendering import Renderer
from notify.settings import Settings, load_hook
from notify.store import Store

log = logging.getLogger("notify.worker")

EXIT_CONFIGURATION = 2


def preflight(settings: Settings, channels: Sequence[str]) -> None:
    """Check what a process serving `channels` needs; `ConfigurationError` naming the first gap.

    NOTIFY_HOME is writable, the permanent-failure hook imports, the templates
    folder exists, the policies load, and each channel's provider builds from
    its settings (then closes again: the worker builds its own). Checks that
    passed once in this process (`notify worker` runs them before Celery
    prints anything) are not run again.
    """
    key = (settings, tuple(channels))
    if key in _passed:
        return
    settings.validate()
    _check_celery_broker(settings)
    load_hook(settings)
    if not settings.templates_dir.is_dir():
        raise ConfigurationError(
            f"NOTIFY_TEMPLATES_DIR {str(settings.templates_dir)!r} is not a directory",
            setting="NOTIFY_TEMPLATES_DIR",
        )
    load_policies(settings.resolved_config_path, registry.default_policies())
    for channel in channels:
        load_provider(channel, settings).close()
    check_schema(settings)
    _warn_about_unsubscribe_links(settings)  # last: a refused start says one line, its reason
    _passed.add(key)


def _check_celery_broker(settings: Settings) -> None:
    """Celery reads CELERY_BROKER_URL over every configured broker URL: a worker would consume
    from it while notify's producers publish to NOTIFY_BROKER_URL, and nothing would arrive."""
    theirs = os.environ.get("CELERY_BROKER_URL")
    if theirs and theirs != settings.resolved_broker_url:
        raise ConfigurationError(
            "CELERY_BROKER_URL is set and is not NOTIFY_BROKER_URL: Celery would consume from it "
            "while notify's producers publish to NOTIFY_BROKER_URL; unset it (notify configures "
            "Celery from NOTIFY_BROKER_URL)",
            setting="CELERY_BROKER_URL",
        )


def _warn_about_unsubscribe_links(settings: Settings) -> None:
    """Say which unsubscribe = true templates cannot be sent for want of their settings (send()
    refuses them; a worker still serves every other template)."""
    renderer = Renderer(settings.templates_dir)
    for name in renderer.names():
        try:
            if renderer.config(name).unsubscribe:
                unsubscribe.check_settings(settings, name)
        except NotifyError as exc:  # a broken template.toml: `notify templates check` says more
            log.warning("%s", exc)


def check_schema(settings: Settings) -> None:
    """SchemaOutdated if the store's schema is not this release's (a new store is made at it).

    A store that does not answer passes: the worker starts and waits for it,
    not ready until its maintenance has run, which makes the same check.
    """
    store = Store(settings.resolved_database_url, require_current=True)
    try:
        store.schema_revision()
    except StoreUnavailable as exc:
        log.warning("%s; its schema is checked once it answers", exc)
    finally:
        store.close()


_passed: set[tuple[Settings, tuple[str, ...]]] = set()


def refuse_to_start(exc: NotifyError) -> NoReturn:
    """Say why in one line on stderr, and exit with status 2."""
    print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIGURATION)
