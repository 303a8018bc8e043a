"""`notify worker` and `notify beat` as operators start them: loud on a bad setting, on the pool asked for."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from notify.api import Notifier
from notify.models import Status
from tests.support.processes import CELERY, NOTIFY, Worker, wait_for
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
    # Celery reads it over the configured URL: the worker would consume from another broker
    "CELERY_BROKER_URL": "redis://notify:hunter2@elsewhere.example:6379/0",
}
STARTED = (" ready.", "beat: Starting", "notify beat ready")


EMAIL_QUEUES = "notify.email.high,notify.email.normal,notify.email.low"
# The ways to start an email worker: each must refuse a broken setting the same way.
START_PATHS = {
    "notify-worker": [*NOTIFY, "worker", "email"],
    "celery-workers-module": [*CELERY, "-A", "workers.email", "worker"],
    "celery-app": [*CELERY, "-A", "notify.worker.app", "worker", "-Q", EMAIL_QUEUES],
}


def start_and_wait(
    argv: list[str], env: dict[str, str], tmp_path: Path, *, program: list[str] = NOTIFY
) -> tuple[int | None, str, str]:
    """Run `program ARGV` until it exits or says it is up; (exit status or None, stdout, stderr)."""
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*program, *argv],
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


@pytest.mark.parametrize("path", ["celery-workers-module", "celery-app"])
@pytest.mark.parametrize("variable", BROKEN)
def test_celerys_own_command_refuses_a_broken_setting_as_notify_worker_does(
    path: str, variable: str, env: dict[str, str], tmp_path: Path
) -> None:
    """One start path: the same checks whoever starts the worker; before it takes a message."""
    (tmp_path / "a-file").write_text("")
    env[variable] = BROKEN[variable].format(tmp=tmp_path)

    returncode, stdout, stderr = start_and_wait(["-l", "info"], env, tmp_path, program=START_PATHS[path])

    assert returncode == 2, f"it started instead:\n{stdout}{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: {variable}"), stderr
    assert stderr.count("error: ") == 1 and "Traceback" not in stderr, stderr  # as root, Celery warns first
    assert "ready" not in stdout + stderr
    assert "hunter2" not in stdout + stderr


@pytest.mark.parametrize(
    "variable", ["CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL", "CELERY_RESULT_BACKEND"]
)
def test_celerys_other_broker_urls_and_its_result_backend_stop_the_start_as_its_broker_url_does(
    variable: str, env: dict[str, str], tmp_path: Path
) -> None:
    env[variable] = "redis://notify:hunter2@elsewhere.example:6379/0"

    returncode, stdout, stderr = start_and_wait(["worker", "email", "-l", "info"], env, tmp_path)

    assert returncode == 2, f"it started instead:\n{stdout}{stderr}"
    assert stderr.strip().startswith(f"error: {variable} is set"), stderr
    assert "hunter2" not in stdout + stderr


@pytest.mark.parametrize("command", [["worker", "email"], ["beat"]])
def test_a_misspelt_notify_setting_and_an_unused_celery_one_are_warned_about_at_start(
    command: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    """A NOTIFY_* name nothing reads would otherwise leave its setting at the default, silently."""
    env.update(
        NOTIFY_SMTP_HOSTNAME="mail.example.com",
        NOTIFY_METRIC_PORT="9100",
        NOTIFY_NO_SUCH_THING="hunter2",
        CELERY_CONFIG_MODULE="myproject.celeryconfig",
        **{"NOTIFY_ESC\x1b[31m": "x"},
    )

    returncode, stdout, stderr = start_and_wait([*command, "-l", "info"], env, tmp_path)

    assert returncode is None, f"it exited instead:\n{stdout}{stderr}"
    warning = next(line for line in stderr.splitlines() if "variables notify does not read" in line)
    assert "NOTIFY_SMTP_HOSTNAME (did you mean NOTIFY_SMTP_HOST?)" in warning
    assert "NOTIFY_METRIC_PORT (did you mean NOTIFY_METRICS_PORT?)" in warning
    assert "NOTIFY_NO_SUCH_THING" in warning and "hunter2" not in stdout + stderr  # names, never values
    assert "CELERY_CONFIG_MODULE is set; notify configures Celery itself" in stderr
    assert "NOTIFY_ESC\\x1b[31m" in warning and "\x1b" not in stderr  # a name is escaped, never replayed
    known = [v for v in env if v.startswith("NOTIFY_") and v not in warning]
    assert "NOTIFY_BROKER_URL" in known or "NOTIFY_HOME" in known


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


@pytest.mark.parametrize("celery", [False, True], ids=["notify-worker", "celery-workers-module"])
def test_the_channels_rate_limit_spaces_every_delivery_the_express_lanes_too(
    celery: bool,
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """2/s: each delivery (not each message) waits its turn, whichever way the worker started and
    whatever took its message (the pool, or an express lane for the high ones)."""
    (tmp_path / "notify.toml").write_text('[channels.email]\nrate_limit = "2/s"\n')
    env.update(NOTIFY_BROKER_URL=redis_url, NOTIFY_CONFIG=str(tmp_path / "notify.toml"))
    start_worker("email", celery=celery).wait_ready()
    producer = notifier()

    sent = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "A"}, priority=priority)
        for i, priority in enumerate(["high", "normal", "high", "low", "high", "normal"])
    ]

    ids = [r.deliveries[0].id for r in sent]
    wait_for(lambda: len(smtp_server.delivery_ids()) == len(ids), what="every email", timeout=60)
    arrivals = sorted(t for i in ids for t in smtp_server.attempts_of(i))
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.4, gaps  # 0.5 s apart, less the network's jitter


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_two_workers_of_one_channel_run_side_by_side_and_pass_celerys_options(
    broker: str,
    request: pytest.FixtureRequest,
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Each node is named <channel>-<pid>@<host> (RabbitMQ locks a pidbox queue to one node name);
    options notify does not know go to Celery as they are."""
    env["NOTIFY_BROKER_URL"] = request.getfixturevalue(f"{broker}_url")
    first = start_worker("email", "-c", "2").wait_ready()
    second = start_worker("email", "-c", "2", "-n", "second@%h", "-E").wait_ready()
    producer = notifier()

    results = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "A"}) for i in range(20)
    ]

    ids = {r.deliveries[0].id for r in results}
    wait_for(lambda: set(smtp_server.delivery_ids()) == ids, what="every email, once", timeout=60)
    assert set(smtp_server.delivery_ids().values()) == {1}
    assert first.process.poll() is None and second.process.poll() is None
    assert re.search(rf"email-{first.process.pid}@\S+ ready", first.output()), first.output()
    assert re.search(r"second@\S+ ready", second.output()), second.output()
    assert "task events: OFF" in first.output() and "task events: ON" in second.output()


def test_deliveries_waiting_their_turn_under_the_rate_limit_are_not_taken_for_lost(
    env: dict[str, str],
    tmp_path: Path,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """16 threads hold 16 messages at 2/s: the last waits 8 s, longer than the sweep's 5 s grace
    beside empty queues, unclaimed; it is kept, so nothing is published again."""
    (tmp_path / "notify.toml").write_text('[channels.email]\nrate_limit = "2/s"\n')
    env["NOTIFY_CONFIG"] = str(tmp_path / "notify.toml")
    worker = start_worker("email").wait_ready()
    producer = notifier()

    sent = [producer.send("welcome", {"email": f"u{i}@ex.com"}, data={"name": "A"}) for i in range(16)]

    ids = {r.deliveries[0].id for r in sent}
    wait_for(lambda: set(smtp_server.delivery_ids()) == ids, what="every email", timeout=60)
    assert set(smtp_server.delivery_ids().values()) == {1}
    assert "published again" not in worker.output(), worker.output()
