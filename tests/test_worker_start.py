"""`notify worker` and `notify beat` as operators start them: loud on a bad setting, on the pool asked for."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from notify.api import Notifier
from notify.models import Status
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer

# Each a setting that once let a worker or the scheduler come up on Celery's
# defaults, start and fail later, or print a traceback. {tmp} is the test's folder.
# The provider's (PROVIDERS') are checked by the worker that builds it; beat builds none.
PROVIDERS = ("NOTIFY_SMTP_PORT", "NOTIFY_EMAIL_FROM", "NOTIFY_SMTP_TLS")
BROKEN = {
    "NOTIFY_HOME": "{tmp}/a-file/home",  # cannot be created, as under the image's USER nobody
    "NOTIFY_ON_PERMANENT_FAILURE": "tests.support.no_such_module:record",
    "NOTIFY_SMTP_PORT": "99999",
    "NOTIFY_EMAIL_FROM": "not-an-address",
    "NOTIFY_BROKER_URL": "kafka://notify:hunter2@broker.example:9092",
    "NOTIFY_DATABASE_URL": "mysql://notify:hunter2@db.example/notify",
    "NOTIFY_DELIVERY_TIMEOUT": "0",
    "NOTIFY_SWEEP_AFTER": "0",
    "NOTIFY_LEASE": "26",
    "NOTIFY_SMTP_TLS": "ssl",
    "NOTIFY_CONFIG": "{tmp}/missing.toml",
    "NOTIFY_TEMPLATES_DIR": "{tmp}/no-templates",
}
STARTED = (" ready.", "beat: Starting")


def start_and_wait(argv: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int | None, str, str]:
    """Run `notify ARGV` until it exits or says it is up; (exit status or None, stdout, stderr)."""
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "notify.cli", *argv],
            env=env,
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )

        def exited_or_up() -> bool:
            both = out.read_text(errors="replace") + err.read_text(errors="replace")
            return process.poll() is not None or any(s in both for s in STARTED)

        try:
            wait_for(exited_or_up, timeout=60, what=f"notify {' '.join(argv)} to exit or start")
        finally:
            running = process.poll() is None
            if running:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    return (
        None if running else process.returncode,
        out.read_text(errors="replace"),
        err.read_text(errors="replace"),
    )


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        *[pytest.param(["worker", "email"], v, id=f"worker-{v}") for v in BROKEN],
        *[pytest.param(["beat"], v, id=f"beat-{v}") for v in BROKEN if v not in PROVIDERS],
    ],
)
def test_a_broken_setting_stops_the_start_with_one_line_naming_it(
    command: list[str], variable: str, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    env[variable] = BROKEN[variable].format(tmp=tmp_path)

    returncode, stdout, stderr = start_and_wait([*command, "-l", "info"], env, tmp_path)

    assert returncode == 2, f"it started instead:\n{stdout}{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {variable}"), stderr
    assert "ready" not in stdout + stderr
    assert "hunter2" not in stdout + stderr


def test_the_email_channels_own_setting_stops_the_start_on_any_backend(
    env: dict[str, str], tmp_path: Path
) -> None:
    """NOTIFY_EMAIL_FROM belongs to the channel (Message-ID, the outbox's .eml), not to SMTP."""
    env.update({"NOTIFY_EMAIL_BACKEND": "outbox", "NOTIFY_EMAIL_FROM": "not-an-address"})

    returncode, stdout, stderr = start_and_wait(["worker", "email", "-l", "info"], env, tmp_path)

    assert returncode == 2, f"it started instead:\n{stdout}{stderr}"
    assert stderr.strip().startswith("error: NOTIFY_EMAIL_FROM"), stderr


@pytest.mark.parametrize(
    ("pool", "banner", "runs_in"),
    [
        ("threads", "thread", "MainProcess"),
        ("prefork", "prefork", "ForkPoolWorker-"),
        ("solo", "solo", "MainProcess"),
    ],
)
def test_the_pool_asked_for_is_the_pool_that_delivers(
    pool: str,
    banner: str,
    runs_in: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    worker = start_worker("email", "--pool", pool, "-c", "2").wait_ready()
    assert re.search(rf"concurrency: \d+ \({banner}\)", worker.output()), worker.output()
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    [delivery] = result.deliveries
    wait_for(lambda: producer.status(result.id)[0].status == Status.SENT, what="the email to be sent")
    assert smtp_server.delivery_ids() == {delivery.id: 1}

    def process_of_the_task() -> str:
        match = re.search(r"/([\w-]+)\] delivery \S+ sent", worker.output())
        return match[1] if match else ""

    runs = wait_for(process_of_the_task, what="the worker to log the task's success")
    assert runs.startswith(runs_in), worker.output()
