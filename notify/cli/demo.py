"""`notify demo`: the whole path on the embedded defaults, nothing to install."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from notify import channels as registry
from notify.api import Notifier
from notify.cli.output import outcome, table
from notify.models import FINAL_STATUSES, SendResult
from notify.settings import Settings, get_settings

# The repository's templates/, which the package carries (notify/sample_templates links to it).
SAMPLE_TEMPLATES = Path(__file__).resolve().parents[1] / "sample_templates"
SAMPLES = [
    (
        "welcome",
        {"email": "ada@example.com", "phone": "+14155550100", "push_token": "demo-token-ada"},
        {"name": "Ada"},
        {"priority": "normal"},
    ),
    ("welcome", {"email": "jonas@example.de", "phone": "+4930123456"}, {"name": "Jonas"}, {"locale": "de"}),
    (
        "password_reset",
        {"email": "grace@example.com", "phone": "+14155550101"},
        {
            "name": "Grace",
            "code": "493021",
            "expires_minutes": 15,
            "reset_url": "https://example.com/reset?t=abc&u=grace",
        },
        {"priority": "high"},
    ),
    (
        "order_shipped",
        {
            "email": "ada@example.com",
            "push_token": "demo-token-ada",
            "webhook": "https://hooks.example.com/orders",
        },
        {
            "name": "Ada",
            "order_id": "A-1001",
            "carrier": "DHL",
            "tracking_number": "JD0140",
            "items": [{"quantity": 2, "title": "Notebook"}],
        },
        {"priority": "low", "dedup_key": "ship-A-1001"},
    ),
    # The same dedup key again: suppressed, status "duplicate".
    (
        "order_shipped",
        {
            "email": "ada@example.com",
            "push_token": "demo-token-ada",
            "webhook": "https://hooks.example.com/orders",
        },
        {"name": "Ada", "order_id": "A-1001", "carrier": "DHL", "tracking_number": "JD0140"},
        {"priority": "low", "dedup_key": "ship-A-1001"},
    ),
]


@click.command()
@click.option(
    "--timeout",
    type=float,
    default=90.0,
    show_default=True,
    help="Seconds to wait for every delivery to finish.",
)
def demo(timeout: float) -> None:
    """Start a mail catcher and a worker per channel, send the samples, show their statuses."""
    from notify.cli.mailcatcher import MailCatcher

    base = get_settings()
    home = base.home.resolve()
    if base.database_url is None:  # the embedded store is the demo's own: an older one is upgraded
        from notify.store import migrate

        before, after = migrate.upgrade(base.resolved_database_url)
        if before not in ("no schema", f"revision {after}"):
            click.echo(f"the embedded store's schema: {before} -> revision {after}")
    templates = _templates_dir(base.templates_dir)
    with MailCatcher(home / "mail") as catcher:
        env = {**_demo_env(catcher.port), "NOTIFY_TEMPLATES_DIR": str(templates)}
        notifier = Notifier(Settings.from_env(env))
        channels = _sampled_channels()
        click.echo(f"SMTP catcher on 127.0.0.1:{catcher.port}; starting {', '.join(channels)} workers")
        workers = [_start_worker(channel, env, home) for channel in channels]
        try:
            results = _send_samples(notifier)
            click.echo(f"sent {len(results)} notifications; waiting for every delivery to finish\n")
            _wait(notifier, results, timeout)
        finally:
            for process in workers:
                process.terminate()
            for process in workers:
                _reap(process)
        _report(notifier, results, home, len(catcher.messages))
        notifier.close()


def _templates_dir(configured: Path) -> Path:
    """NOTIFY_TEMPLATES_DIR if it holds the samples' templates (a checkout of notify), else the copy
    of them that comes with the package (after a plain pip install, in any folder)."""
    if all((configured / name).is_dir() for name in {template for template, *_ in SAMPLES}):
        return configured.resolve()
    click.echo(f"templates: the package's samples, {SAMPLE_TEMPLATES} (none in {str(configured)!r})")
    return SAMPLE_TEMPLATES


def _demo_env(smtp_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "NOTIFY_SMTP_HOST": "127.0.0.1",
            "NOTIFY_SMTP_PORT": str(smtp_port),
            "NOTIFY_SMTP_TLS": "none",
            "NOTIFY_EMAIL_FROM": env.get("NOTIFY_EMAIL_FROM", "notify-demo@example.com"),
            "NOTIFY_EMAIL_BACKEND": "smtp",
            **{
                spec.backend_variable: "outbox"
                for spec in registry.channels().values()
                if spec.name != "email"
            },
        }
    )
    return env


def _sampled_channels() -> list[str]:
    """The channels the samples address, in the registry's order: one worker each."""
    kinds = {kind for _, to, _, _ in SAMPLES for kind in to}
    return [name for name, spec in registry.channels().items() if spec.address in kinds]


def _start_worker(channel: str, env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    log = (home / f"demo-worker-{channel}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "notify.cli", "worker", channel, "-c", "4", "-l", "info"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _send_samples(notifier: Notifier) -> list[SendResult]:
    """The samples; their dedup keys are this run's own, so that an earlier run (whose deliveries
    the store keeps) makes no duplicates here: each run shows the same one, within itself."""
    results = []
    run = uuid.uuid4().hex[:8]
    for template, to, data, options in SAMPLES:
        if "dedup_key" in options:
            options = {**options, "dedup_key": f"{options['dedup_key']}-{run}"}
        results.append(notifier.send(template, to, data=data, **options))  # type: ignore[arg-type]
    later = datetime.now(UTC) + timedelta(seconds=3)
    results.append(
        notifier.send("welcome", {"email": "linus@example.org"}, data={"name": "Linus"}, send_at=later)
    )
    return results


def _wait(notifier: Notifier, results: list[SendResult], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [d.status for r in results for d in notifier.status(r.id)]
        if all(s in FINAL_STATUSES for s in statuses):
            return
        time.sleep(0.2)
    click.echo(f"warning: not every delivery finished within {timeout:.0f}s", err=True)


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _report(notifier: Notifier, results: list[SendResult], home: Path, mails: int) -> None:
    rows = []
    for result, (template, *_rest) in zip(results, [*SAMPLES, ("welcome (send_at +3s)",)], strict=True):
        for d in notifier.status(result.id):
            rows.append((result.id, template, d.channel, d.status, d.attempts, outcome(d) or d.last_error))
    click.echo(table(["notification", "template", "channel", "status", "attempts", "provider id"], rows))
    click.echo(f"\n{mails} emails caught by the local SMTP server: {home / 'mail'}")
    click.echo(f"the other channels (outbox backend): {home / 'outbox'}")
    click.echo(f"worker logs: {home}/demo-worker-*.log")
