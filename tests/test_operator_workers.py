"""workers/: `celery -A workers.<channel> worker` consumes exactly that channel's queues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from notify.broker.routing import consume_queues
from notify.channels import names

CHANNELS = names()

REPO = Path(__file__).resolve().parents[1]
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"  # named only: building a worker connects to nothing

# Builds the worker Celery's CLI would (queues are chosen then), without starting it.
SELECTED = (
    "import json, sys\n"
    "from celery.app.utils import find_app\n"
    "app = find_app(sys.argv[1])  # as `celery -A` finds it\n"
    "app.Worker(quiet=True, without_gossip=True, without_mingle=True)\n"
    "print(json.dumps(list(app.amqp.queues.consume_from)))\n"
    "from notify.worker import services\n"
    "services.stop()\n"
)


def selected_queues(module: str, tmp_path: Path, broker_url: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env["NOTIFY_HOME"] = str(tmp_path)
    env.update({f"NOTIFY_{channel.upper()}_BACKEND": "outbox" for channel in CHANNELS})
    if broker_url:
        env["NOTIFY_BROKER_URL"] = broker_url
    completed = subprocess.run(
        [sys.executable, "-c", SELECTED, module],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    queues: list[str] = json.loads(completed.stdout.strip().splitlines()[-1])
    return queues


@pytest.mark.parametrize("broker_url", [None, AMQP_URL], ids=["embedded", "rabbitmq"])
@pytest.mark.parametrize("channel", CHANNELS)
def test_a_channel_module_consumes_only_its_channels_queues(
    channel: str, broker_url: str | None, tmp_path: Path
) -> None:
    assert selected_queues(f"workers.{channel}", tmp_path, broker_url) == consume_queues(broker_url, channel)


def test_the_app_module_consumes_every_queue_unless_told(tmp_path: Path) -> None:
    every = [q for channel in CHANNELS for q in consume_queues(None, channel)]

    assert sorted(selected_queues("workers.app", tmp_path, None)) == sorted(every)
