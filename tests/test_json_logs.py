"""NOTIFY_LOG_FORMAT=json: workers, beat and notify web write one JSON object a line on stderr.

Real processes on Redis (its URL with a password), an SMTP server that takes
a login: each line parses, an outcome line names its delivery, and no
secret, rendered body or data value shows anywhere in what they print.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from notify.api import Notifier
from notify.broker.routing import consume_queues
from notify.models import Status
from notify.observability import logs
from notify.settings import Settings
from notify.store import Claim, Store
from notify.text import escape_logs
from tests.support.processes import CELERY, NOTIFY, _die_with_the_tests, wait_for
from tests.support.smtp import SmtpServer
from tests.support.web import free_port

SMTP_USER = "mailer"
SMTP_PASSWORD = "smtp-pw-Quokka-5120"
SECRETS = {
    "NOTIFY_SMTP_USERNAME": SMTP_USER,
    "NOTIFY_SMTP_PASSWORD": SMTP_PASSWORD,
    "NOTIFY_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "NOTIFY_TWILIO_AUTH_TOKEN": "twilio-token-Wombat-8841",
    "NOTIFY_TWILIO_FROM": "+15005550006",
    "NOTIFY_WEBHOOK_SECRET": "webhook-secret-Numbat-3307",
    "NOTIFY_SECRET_KEY": "secret-key-Quoll-" + "q" * 32,
    "NOTIFY_WEB_PASSWORD": "web-pw-Bilby-6402",
}
BROKER_PASSWORD = "broker-pw-Dingo-9953"
NAME = "Zanzibar-Kea-4471"  # the data the emails are rendered with
BODY = "your account is ready"  # a line of welcome's rendered text
NEVER_SHOWN = (SMTP_PASSWORD, BROKER_PASSWORD, NAME, BODY, "q" * 32, "Wombat", "Numbat", "Bilby")
TOML = '[channels.email]\nbackoff_initial = "200ms"\njitter = false\nmax_attempts = 3\n'

WORKERS = {
    "notify worker": [*NOTIFY, "worker", "email", "-l", "info"],
    "notify worker prefork": [*NOTIFY, "worker", "email", "-l", "info", "-P", "prefork", "-c", "2"],
    "celery workers.email": [*CELERY, "-A", "workers.email", "worker", "-l", "info"],
    "celery notify.worker.app": [
        *CELERY,
        "-A",
        "notify.worker.app",
        "worker",
        "-l",
        "info",
        "-Q",
        "{queues}",
    ],
}


class Process:
    """A command whose stderr (its log) and stdout go to files of their own."""

    def __init__(self, argv: list[str], env: dict[str, str], folder: Path, name: str) -> None:
        self.err, self.out = folder / f"{name}.err", folder / f"{name}.out"
        with self.err.open("wb") as err, self.out.open("wb") as out:
            self.process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=err, start_new_session=True, preexec_fn=_die_with_the_tests
            )

    def lines(self) -> list[str]:
        """The complete lines of its stderr so far."""
        text = self.err.read_text(errors="replace")
        return text[: text.rfind("\n") + 1].splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def wait_for_message(self, ending: str) -> None:
        def logged() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.err.read_text()}")
            return any(r["message"].endswith(ending) for r in self.records())

        wait_for(logged, what=f"a line ending {ending!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def _accept_the_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok)


class LoginSmtpServer(SmtpServer):
    """The tests' SMTP server, offering AUTH in clear (loopback only) and taking one login."""

    def start(self) -> LoginSmtpServer:
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            auth_require_tls=False,
            authenticator=_accept_the_login,
        )
        self.controller.start()
        return self


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = LoginSmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def json_env(env: dict[str, str], redis_url: str, smtp: SmtpServer, tmp_path: Path) -> dict[str, str]:
    """JSON logs, Redis with a password in its URL, an SMTP login, fast retries, every secret set."""
    (tmp_path / "notify.toml").write_text(TOML)
    env.update(SECRETS)
    env.update(
        {
            "NOTIFY_LOG_FORMAT": "json",
            "NOTIFY_BROKER_URL": redis_url.replace("redis://", f"redis://default:{BROKER_PASSWORD}@"),
            "NOTIFY_SMTP_PORT": str(smtp.port),
            "NOTIFY_CONFIG": str(tmp_path / "notify.toml"),
        }
    )
    return env


@pytest.fixture
def run(json_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(argv: list[str], name: str, **environ: str) -> Process:
        started.append(Process(argv, {**json_env, **environ}, tmp_path, name))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def assert_json_lines(process: Process) -> list[dict[str, Any]]:
    """Each line of its stderr one JSON object with timestamp (UTC), level, logger and message,
    and no key but logs.KEYS; nothing on stdout (no banner) while it runs."""
    records = process.records()
    assert records
    for record in records:
        assert set(record) <= set(logs.KEYS)
        assert {"timestamp", "level", "logger", "message"} <= set(record)
        assert datetime.fromisoformat(record["timestamp"]).utcoffset() == timedelta(0)
    assert process.out.read_text() == ""
    return records


def assert_nothing_secret(process: Process) -> None:
    shown = process.err.read_text() + process.out.read_text()
    for value in NEVER_SHOWN:
        assert value not in shown


def outcome(records: list[dict[str, Any]], delivery_id: str, status: str) -> dict[str, Any]:
    [line] = [r for r in records if r.get("delivery_id") == delivery_id and r.get("status") == status]
    return line


@pytest.mark.parametrize("command", list(WORKERS))
def test_a_worker_logs_each_outcome_as_one_json_object_naming_its_delivery_and_no_secret(
    command: str,
    run: Callable[..., Process],
    notifier: Callable[[], Notifier],
    smtp: SmtpServer,
    redis_url: str,
) -> None:
    queues = ",".join(consume_queues(redis_url, "email"))
    argv = [a.replace("{queues}", queues) for a in WORKERS[command]]
    worker = run(argv, "worker")
    worker.wait_for_message(" ready.")
    producer = notifier()
    smtp.fail_next(1)  # the first DATA: 451, retried
    smtp.reject("gone@example.com")  # 550 5.1.1: failed for good

    retried = producer.send("welcome", {"email": "ada@example.com"}, data={"name": NAME})
    refused = producer.send("welcome", {"email": "gone@example.com"}, data={"name": NAME})

    [ada] = producer.status(retried.id)
    [gone] = producer.status(refused.id)
    wait_for(lambda: producer.status(retried.id)[0].status == Status.SENT, what="the retried email sent")
    wait_for(lambda: producer.status(refused.id)[0].status == Status.FAILED, what="the refused one failed")
    wait_for(lambda: len([r for r in worker.records() if r.get("status") == "failed"]) == 1, what="its line")
    records = assert_json_lines(worker)
    sent = outcome(records, ada.id, "sent")
    assert {k: sent[k] for k in logs.FIELDS if k != "duration_ms"} == {
        "delivery_id": ada.id,
        "notification_id": retried.id,
        "channel": "email",
        "provider": "smtp",
        "template": "welcome",
        "status": "sent",
        "attempt": 2,
    }
    assert sent["duration_ms"] >= 0
    assert sent["level"] == "INFO" and sent["logger"] == "notify.delivery"
    retry = outcome(records, ada.id, "retrying")
    assert (retry["attempt"], retry["provider"], retry["level"]) == (1, "smtp", "INFO")
    assert "Try again later" in retry["message"]
    failed = outcome(records, gone.id, "failed")
    assert (failed["notification_id"], failed["provider"], failed["level"]) == (refused.id, "smtp", "WARNING")
    assert "No such user" in failed["message"]
    assert_nothing_secret(worker)


def test_beat_and_web_log_json_and_idle_processes_log_nothing_after_ready(
    run: Callable[..., Process], json_env: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    port = free_port()
    fast = {"NOTIFY_LEASE": "1"}  # a beat every 1/3 s, maintenance every 1/2 s
    worker = run([*NOTIFY, "worker", "email", "-l", "info"], "worker", **fast)
    beat = run([*NOTIFY, "beat", "-l", "info"], "beat", **fast)
    web = run([*NOTIFY, "web", "--port", str(port), "-l", "info"], "web", **fast)
    worker.wait_for_message(" ready.")
    beat.wait_for_message("maintenance for email, sms, push, webhook")
    web.wait_for_message("(Press CTRL+C to quit)")
    producer = notifier()  # one delivery first: a worker's heartbeat counts from its first claim
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": NAME})
    wait_for(lambda: producer.status(result.id)[0].status == Status.SENT, what="the email sent")
    wait_for(lambda: any(r.get("status") == "sent" for r in worker.records()), what="its line")
    before = {p: len(p.lines()) for p in (worker, beat, web)}
    store = Store(Settings.from_env(json_env).resolved_database_url)
    try:
        beats = sum(store.worker_beats().values())
        for _ in range(3):  # probes, as compose's healthcheck makes them: no access log
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        # Two seconds' worth of heartbeats: maintenance passes ran in the worker and in beat meanwhile.
        wait_for(lambda: sum(store.worker_beats().values()) >= beats + 6, what="six heartbeats")
    finally:
        store.close()

    assert {p: len(p.lines()) for p in (worker, beat, web)} == before
    for process in (worker, beat, web):
        assert_json_lines(process)
        assert_nothing_secret(process)
    assert {"uvicorn.error", "notify.web"} <= {r["logger"] for r in web.records()}


# -- the formatter, alone ----------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines into a buffer, as a worker's handlers do."""
    stream = io.StringIO()
    logger = logging.getLogger("tests.json_logs")
    logger.handlers = [logging.StreamHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logs.use_format(logger, "json")
    escape_logs(logger)
    yield logger, stream
    logger.handlers = []


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def claim() -> Claim:
    return Claim(
        delivery_id="d-1",
        channel="email",
        address="ada@example.com",
        priority="normal",
        attempts=2,
        template="welcome",
        locale=None,
        data={"name": NAME},
        token="t",
        notification_id="n-1",
    )


def test_a_line_carries_only_the_designed_keys_whatever_extra_a_library_passes(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    logger.info("Task %s received", "deliver", extra={"data": {"name": NAME}, "body": BODY, "color": 1})

    [line] = lines(stream)
    assert list(line) == ["timestamp", "level", "logger", "message"]
    assert (line["level"], line["logger"], line["message"]) == (
        "INFO",
        "tests.json_logs",
        "Task deliver received",
    )


def test_lines_logged_during_an_attempt_name_its_delivery_and_the_outcome_its_duration(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    with logs.attempt_fields(claim()):
        logger.info("connecting")
        logger.info("sent", extra=logs.outcome("sent", "smtp"))
    logger.info("idle")

    connecting, sent, idle = lines(stream)
    fields = {"delivery_id": "d-1", "notification_id": "n-1", "channel": "email", "template": "welcome"}
    assert connecting.items() >= {**fields, "attempt": 2}.items()
    assert "status" not in connecting and "duration_ms" not in connecting
    assert sent.items() >= {**fields, "status": "sent", "provider": "smtp"}.items()
    assert sent["duration_ms"] >= 0
    assert set(idle) == {"timestamp", "level", "logger", "message"}
    assert NAME not in stream.getvalue() and "ada@example.com" not in stream.getvalue()


def test_a_traceback_is_one_string_field_and_control_characters_stay_escaped(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    try:
        raise ValueError("bad\x1b[2J reply\nforged line")
    except ValueError:
        logger.exception("provider said %s", "\x1b]0;title\x07")

    [line] = stream.getvalue().splitlines()  # one line: the newlines inside are escaped
    assert "\x1b" not in line
    record = json.loads(line)
    assert record["message"] == "provider said \\x1b]0;title\\x07"
    assert "ValueError: bad\\x1b[2J reply" in record["exc_info"]


def test_the_text_format_keeps_a_handlers_formatter() -> None:
    handler = logging.StreamHandler(io.StringIO())
    formatter = logging.Formatter(logs.TEXT_FORMAT)
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.text_logs")
    logger.handlers = [handler]
    try:
        logs.use_format(logger, "text")
        assert handler.formatter is formatter and handler.filters == []
    finally:
        logger.handlers = []
