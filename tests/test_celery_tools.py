"""Celery's own tools on notify's workers, as README shows them: `celery -A notify.worker.app
inspect` and the task events Flower reads, which name each task by channel and priority."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from notify.api import Notifier
from notify.models import Status
from notify.worker.app import app as worker_app
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer


def test_flower_sees_each_task_by_its_channel_and_priority(
    env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Flower's task list is Celery's task events: `-E` makes a worker send them, and each names
    its task notify.deliver.<channel>.<priority> (Celery's shadow name) on every publish path."""
    env["NOTIFY_BROKER_URL"] = redis_url
    received: list[str] = []
    from celery import Celery

    watcher = Celery(broker=redis_url)
    listening = threading.Event()

    def listen() -> None:
        with watcher.connection_for_read() as connection:

            def on_received(event: dict[str, Any]) -> None:
                received.append(event["name"])
                receiver.should_stop = len(received) >= 3

            receiver = watcher.events.Receiver(connection, handlers={"task-received": on_received})
            listening.set()
            receiver.capture(limit=None, timeout=60, wakeup=False)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert listening.wait(10)
    start_worker("email", "-E").wait_ready()
    producer = notifier()

    sent = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}, priority=priority)
        for i, priority in enumerate(["high", "normal", "low"])
    ]

    wait_for(lambda: len(received) == 3, what="three task-received events", timeout=60)
    assert sorted(received) == [
        "notify.deliver.email.high",
        "notify.deliver.email.low",
        "notify.deliver.email.normal",
    ]
    wait_for(
        lambda: all(producer.status(r.id)[0].status == Status.SENT for r in sent), what="every email sent"
    )
    watcher.close()


def test_celery_inspect_reaches_notify_workers(
    env: dict[str, str], redis_url: str, start_worker: Callable[..., Worker]
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    start_worker("email").wait_ready()

    def inspect(*args: str) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "notify.worker.app", "inspect", *args, "--timeout", "10"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ping = inspect("ping")
    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    queues = inspect("active_queues")
    assert queues.returncode == 0, queues.stderr
    assert all(q in queues.stdout for q in ("notify.email.high", "notify.email.normal", "notify.email.low"))
    assert worker_app.main == "notify"
