"""Shared fixtures: real services (skipped on a laptop without them, required in CI)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from notify.api import Notifier
from notify.settings import Settings
from tests.support.processes import Notify, Worker
from tests.support.smtp import SmtpServer

if os.environ.get("NOTIFY_MUTANT"):  # tests/test_system_model.py's mutants, each in a subprocess
    from tests.support import mutants

    mutants.apply(os.environ["NOTIFY_MUTANT"])

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("NOTIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
POSTGRES_URL = os.environ.get("NOTIFY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ_URL = os.environ.get("NOTIFY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def require_service(name: str, url: str) -> None:
    """Skip with a reason when the service is not there; in CI, fail instead."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=2).close()
    except OSError as exc:
        message = f"{name} is not reachable at {parsed.hostname}:{parsed.port} ({exc})"
        if IN_CI:
            pytest.fail(message + "; CI must start it (.ci/run)")
        pytest.skip(message)


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_service("Redis", REDIS_URL)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def rabbitmq_url() -> str:
    """RabbitMQ with notify's queues declared and empty."""
    require_service("RabbitMQ", RABBITMQ_URL)
    from kombu import Connection

    from notify.broker.routing import task_queues

    with Connection(RABBITMQ_URL) as connection:
        channel = connection.channel()
        for queue in task_queues(RABBITMQ_URL):
            bound = queue(channel)
            bound.declare()
            bound.purge()
        channel.close()  # type: ignore[attr-defined]  # kombu's StdChannel stub lacks close()
    return RABBITMQ_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    require_service("PostgreSQL", POSTGRES_URL)
    import psycopg

    admin = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"notify_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path: Path, smtp_server: SmtpServer) -> dict[str, str]:
    """The environment of a test's producer and workers: embedded broker, SQLite store."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "TWILIO_"))}
    base.update(
        {
            "NOTIFY_HOME": str(tmp_path / ".notify"),
            "NOTIFY_TEMPLATES_DIR": str(REPO / "templates"),
            "NOTIFY_EMAIL_FROM": "Notify Tests <notify@example.com>",
            "NOTIFY_SMTP_HOST": "127.0.0.1",
            "NOTIFY_SMTP_PORT": str(smtp_server.port),
            "NOTIFY_SMTP_TLS": "none",
            "NOTIFY_SMS_BACKEND": "outbox",
            "NOTIFY_PUSH_BACKEND": "outbox",
            "PYTHONPATH": str(REPO),
        }
    )
    return base


@pytest.fixture
def notifier(env: dict[str, str]) -> Iterator[Callable[[], Notifier]]:
    """Build a producer from the test's environment, as `notify.send()` would."""
    built: list[Notifier] = []

    def build() -> Notifier:
        built.append(Notifier(Settings.from_env(env)))
        return built[-1]

    yield build
    for producer in built:
        producer.close()


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(
        channel: str = "email", *args: str, environ: dict[str, str] | None = None, celery: bool = False
    ) -> Worker:
        """`notify worker CHANNEL ARGS`; with `celery`, `celery -A workers.CHANNEL worker ARGS`."""
        log = tmp_path / f"worker-{channel}-{len(started)}.log"
        worker = Worker(channel, environ or env, log, *args, celery=celery)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_beat(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], Notify]]:
    """`notify beat`, the scheduler as a process of its own."""
    started: list[Notify] = []

    def start() -> Notify:
        started.append(Notify(["beat", "-l", "info"], env, tmp_path / "beat.log"))
        return started[-1]

    yield start
    for beat in started:
        beat.stop()
