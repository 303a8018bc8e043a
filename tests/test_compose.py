"""docker-compose.yml: valid for Compose, pinned, every service with a healthcheck, and only
settings notify reads. (No Docker engine here: `docker-compose config` validates without one.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from notify import channels as registry
from notify.providers import VARIABLES
from notify.settings import Settings, backend_variable, declared_variables
from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[1]
ONE_SHOT = {"migrate"}  # runs `notify db upgrade` and exits: nothing to probe


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())  # resolves the << merges
    return dict(compose["services"])


def test_compose_validates_the_file() -> None:
    program = shutil.which("docker-compose") or shutil.which("docker")
    if program is None:
        if IN_CI:
            pytest.fail(
                "docker-compose is not installed; .ci/run installs it (apt-get install docker-compose)"
            )
        pytest.skip("docker-compose is not installed")
    argv = (
        [program, "config", "-q"]
        if program.endswith("docker-compose")
        else [program, "compose", "config", "-q"]
    )
    secrets = {"NOTIFY_SECRET_KEY": "k" * 32, "NOTIFY_WEB_PASSWORD": "p" * 16}
    unset = {k: v for k, v in os.environ.items() if k not in secrets}
    completed = subprocess.run(
        argv, cwd=REPO, env={**unset, **secrets}, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    # No default secret: without them the stack does not start, rather than run on a known key.
    refused = subprocess.run(argv, cwd=REPO, env=unset, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set NOTIFY_SECRET_KEY" in refused.stderr, refused.stderr


def test_every_image_is_pinned_to_a_release(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "image" in service:
            image, _, tag = service["image"].rpartition(":")
            assert image and tag not in ("", "latest") and any(c.isdigit() for c in tag), (
                name,
                service["image"],
            )


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), name


def test_workers_and_beat_are_probed_by_their_maintenance_and_keep_notify_home(
    services: dict[str, Any],
) -> None:
    notify = {name: s for name, s in services.items() if s.get("build") and name not in ONE_SHOT}
    assert {f"worker-{channel}" for channel in ("email", "sms", "push", "webhook")} | {"beat", "web"} <= set(
        notify
    )
    for name, service in notify.items():
        if name != "web":
            assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "notify.worker.health"], name
        assert any(v.endswith(":/var/lib/notify") for v in service["volumes"]), name


def test_flower_watches_the_broker_the_workers_use_and_they_send_it_events(services: dict[str, Any]) -> None:
    broker = services["worker-email"]["environment"]["NOTIFY_BROKER_URL"]
    assert f"--broker={broker}" in services["flower"]["command"]
    assert all("-E" in s["command"] for n, s in services.items() if n.startswith("worker-"))


def test_the_stack_sets_only_settings_notify_reads(services: dict[str, Any]) -> None:
    known = declared_variables(Settings) | VARIABLES | {backend_variable(c) for c in registry.names()}
    for name, service in services.items():
        environment = service.get("environment") or {}
        names = environment if isinstance(environment, dict) else [e.split("=")[0] for e in environment]
        unknown = {n for n in names if n.startswith("NOTIFY_")} - known
        assert not unknown, (name, unknown)


def test_only_web_knows_the_console_password(services: dict[str, Any]) -> None:
    holders = {name for name, s in services.items() if "NOTIFY_WEB_PASSWORD" in (s.get("environment") or {})}
    assert holders == {"web"}
