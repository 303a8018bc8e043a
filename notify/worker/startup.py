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
from notify.providers import VARIABLES, load_provider
from notify.rendering import Renderer
from notify.settings import Settings, backend_variable, load_hook, unknown_variables
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
    _check_celery_settings(settings)
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
    warn_unknown_variables(settings)  # after the providers: each has read its own settings
    _warn_about_unsubscribe_links(settings)  # last: a refused start says one line, its reason
    _passed.add(key)


# Read by Celery over the broker notify configures (celery.app.utils.Settings; `celery -b URL`
# sets the first): a worker would consume from one while notify's producers publish elsewhere.
CELERY_BROKER_VARIABLES = ("CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL")
# Read by Celery over notify's configuration, and of no use to notify, which keeps no task results:
# a worker would connect to it (and stop on an unknown scheme).
CELERY_RESULT_VARIABLE = "CELERY_RESULT_BACKEND"
# Not read by notify, which configures Celery itself.
CELERY_IGNORED_VARIABLES = ("CELERY_CONFIG_MODULE", "CELERY_LOADER", "CELERY_CUSTOM_WORKER_POOL")


def _check_celery_settings(settings: Settings) -> None:
    """Refuse a CELERY_* broker URL that is not NOTIFY_BROKER_URL (nothing would arrive); warn about
    the CELERY_* variables notify does not use."""
    for variable in CELERY_BROKER_VARIABLES:
        theirs = os.environ.get(variable)
        if theirs and theirs != settings.resolved_broker_url:
            raise ConfigurationError(
                f"{variable} is set and is not NOTIFY_BROKER_URL: Celery would consume from it "
                f"while notify's producers publish to NOTIFY_BROKER_URL; unset it (notify configures "
                "Celery from NOTIFY_BROKER_URL)",
                setting=variable,
            )
    if os.environ.get(CELERY_RESULT_VARIABLE):
        raise ConfigurationError(
            f"{CELERY_RESULT_VARIABLE} is set: Celery would connect to it, and notify keeps no task "
            "results (the store has every outcome); unset it",
            setting=CELERY_RESULT_VARIABLE,
        )
    for variable in CELERY_IGNORED_VARIABLES:
        if os.environ.get(variable):
            log.warning("%s is set; notify configures Celery itself and does not use it", variable)


def warn_unknown_variables(settings: Settings) -> None:
    """One warning naming every NOTIFY_* variable that nothing in this process reads: a misspelt
    setting would otherwise be its default, silently."""
    known = {*VARIABLES, *(backend_variable(name) for name in registry.names())}
    unknown = unknown_variables(settings, known)
    if unknown:
        log.warning(
            "NOTIFY_* variables notify does not read (a custom provider or hook may): %s", ", ".join(unknown)
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
