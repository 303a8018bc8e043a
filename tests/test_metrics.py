"""Prometheus metrics: real workers (threads and prefork) on Redis, real deliveries, /metrics over HTTP.

Also `notify web`'s store and broker gauges, with the broker up and down, and
the shipped dashboard and alert rules, checked against the names notify exports.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from notify.api import Notifier
from notify.errors import ConfigurationError, TransientDeliveryError
from notify.models import FINAL_STATUSES
from notify.observability.metrics import MAX_CODES, WORKER_METRICS, Prometheus, bounded
from notify.store import Claim
from notify.web.gauges import WEB_METRICS
from tests.conftest import IN_CI
from tests.support.processes import Notify, wait_for
from tests.support.smtp import SmtpServer
from tests.support.web import Web, free_port, web_env
from tests.test_reliability import policy_file

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def exported_names() -> set[str]:
    """Every series name a worker or notify web may serve."""
    names = {name + suffix for name, (kind, _, _) in WORKER_METRICS.items() for suffix in SUFFIXES[kind]}
    return names | set(WEB_METRICS)


def scrape(url: str) -> Samples:
    text = requests.get(url, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (n, found), value in samples.items() if n == name and wanted <= found)


@pytest.fixture
def redis_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    env["NOTIFY_BROKER_URL"] = redis_url
    policy_file(env)  # retries after 200 ms
    return env


def finished(producer: Notifier, ids: list[str]) -> bool:
    return all(getattr(producer.store.get(i), "status", None) in FINAL_STATUSES for i in ids)


# -- labels ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("550", "550"),
        ("UNREGISTERED", "UNREGISTERED"),
        ("http_429", "http_429"),
        (None, "none"),
        ("", "none"),
        ("ada@example.com", "other"),
        ("a b", "other"),
        ("x" * 33, "other"),
        ("550\n", "other"),
        ('"}evil{', "other"),
        ("é", "other"),
    ],
)
def test_a_label_is_a_short_token_or_other(value: str | None, label: str) -> None:
    assert bounded(value) == label


def test_a_providers_codes_are_labels_up_to_a_bound_then_other() -> None:
    registry = CollectorRegistry()
    metrics = Prometheus(registry)
    for n in range(MAX_CODES + 10):
        metrics.called(
            "sms",
            "twilio",
            0.1,
            TransientDeliveryError("busy", channel="sms", provider="twilio", code=str(n)),
        )
    metrics.called("sms", "twilio", 0.1, ConfigurationError("bad token"))
    metrics.called("sms", "twilio", 0.1, RuntimeError("ada@example.com"))

    def errors(code: str) -> float | None:
        labels = {"channel": "sms", "provider": "twilio", "code": code}
        return registry.get_sample_value("notify_provider_errors_total", labels)

    assert errors("0") == errors(str(MAX_CODES - 1)) == 1
    assert errors(str(MAX_CODES)) is None
    assert errors("other") == 11  # ten codes past the bound, then an error without a code
    assert errors("configuration") == 1
    assert (
        registry.get_sample_value("notify_attempt_seconds_count", {"channel": "sms", "provider": "twilio"})
        == MAX_CODES + 12
    )


# -- workers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool", [["-P", "threads", "-c", "4"], ["-P", "prefork", "-c", "2"]], ids=["threads", "prefork"]
)
def test_a_workers_metrics_add_up_to_the_deliveries_it_made(
    redis_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Any],
    smtp_server: SmtpServer,
    pool: list[str],
) -> None:
    port = free_port()
    smtp_server.fail_next(1, "451 4.3.0 Temporary local problem")
    smtp_server.reject("gone@example.com", "550 5.1.1 No such user")
    producer = notifier()
    worker = start_worker("email", *pool, "--metrics-port", str(port)).wait_ready()
    addresses = [f"u{i}@example.com" for i in range(12)]

    ids = [producer.send("welcome", {"email": a}, data={"name": "U"}).deliveries[0].id for a in addresses]
    ids.append(producer.send("welcome", {"email": "gone@example.com"}, data={"name": "G"}).deliveries[0].id)
    wait_for(lambda: finished(producer, ids), what="every delivery to end")

    url = f"http://127.0.0.1:{port}/metrics"
    samples = wait_for(lambda: _counted(url, 13), what="the metrics to count every delivery")
    assert total(samples, "notify_deliveries_total", channel="email", status="sent") == 12
    assert total(samples, "notify_deliveries_total", channel="email", status="failed") == 1
    assert total(samples, "notify_attempts_total", outcome="sent", provider="smtp") == 12
    assert total(samples, "notify_attempts_total", outcome="retry", provider="smtp") == 1
    assert total(samples, "notify_attempts_total", outcome="failed", provider="smtp") == 1
    assert total(samples, "notify_provider_errors_total", code="451") == 1
    assert total(samples, "notify_provider_errors_total", code="550") == 1
    assert total(samples, "notify_attempt_seconds_count", provider="smtp") == 14  # every provider call
    assert total(samples, "notify_delivery_seconds_count", channel="email", priority="normal") == 12
    assert total(samples, "notify_circuit_open", channel="email", provider="smtp") == 0
    assert {name for name, _ in samples} <= exported_names()
    shown = " ".join(f"{k}={v}" for _, labels in samples for k, v in labels)
    for secret in [*addresses, "gone@example.com", *ids]:
        assert secret not in shown
    assert "@" not in shown
    if "prefork" in pool:  # the sum is over both pool processes: each sent some
        assert "ForkPoolWorker-1] delivery" in worker.output()
        assert "ForkPoolWorker-2] delivery" in worker.output()
    worker.stop()
    assert worker.process.returncode == 0


def _counted(url: str, deliveries: int) -> Samples:
    """The scrape, once its final statuses count `deliveries` (the last one is recorded just after
    the store says so)."""
    samples = scrape(url)
    return samples if total(samples, "notify_deliveries_total") >= deliveries else {}


def test_the_sweep_counts_what_it_took_over_from_a_dead_worker(
    redis_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Any],
) -> None:
    redis_env["NOTIFY_LEASE"] = "1"
    producer = notifier()
    delivery = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}).deliveries[0]
    # A worker that claimed it and died before the handover: registered, never beating.
    producer.store.register_worker("ghost", host="elsewhere", pid=1)
    assert isinstance(producer.store.claim(delivery.id, "ghost"), Claim)
    port = free_port()
    start_worker("email", "--metrics-port", str(port)).wait_ready()

    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: finished(producer, [delivery.id]), what="the recovered delivery")
    samples = wait_for(lambda: _counted(url, 1), what="the metrics to count it")
    assert total(samples, "notify_recovered_total", channel="email") == 1


def test_a_metrics_port_in_use_refuses_the_start_in_one_line(
    redis_env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        redis_env["NOTIFY_METRICS_PORT"] = str(port)
        done = subprocess.run(
            [sys.executable, "-m", "notify.cli", "worker", "email"],
            env=redis_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: NOTIFY_METRICS_PORT {port} cannot be served: Address already in use"
    )


def test_beat_serves_metrics_when_a_port_is_set(redis_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    redis_env["NOTIFY_METRICS_PORT"] = str(port)
    beat = Notify(["beat", "-l", "info"], redis_env, tmp_path / "beat.log")
    try:
        wait_for(lambda: "notify beat ready" in beat.output(), what="beat to be ready")
        assert _answers(f"http://127.0.0.1:{port}/metrics")
    finally:
        beat.stop()
    assert beat.process.returncode == 0


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except requests.ConnectionError:
        return False


# -- notify web ------------------------------------------------------------------------


@pytest.fixture
def web(redis_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Web]]:
    started: list[Web] = []

    def start(environ: dict[str, str]) -> Web:
        port = web_env(environ)
        started.append(Web(environ, tmp_path / f"web-{len(started)}.log", port))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def test_notify_web_serves_queue_depths_and_the_stores_gauges(
    redis_env: dict[str, str], notifier: Callable[[], Notifier], web: Callable[[dict[str, str]], Web]
) -> None:
    producer = notifier()
    for i in range(3):
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"})
    producer.send("welcome", {"email": "vip@example.com"}, data={"name": "V"}, priority="high")
    served = web(redis_env).wait_ready()

    samples = scrape(served.url + "/metrics")
    assert total(samples, "notify_broker_up") == total(samples, "notify_store_up") == 1
    assert total(samples, "notify_queue_depth", queue="notify.email.normal") == 3
    assert total(samples, "notify_queue_depth", queue="notify.email.high") == 1
    assert total(samples, "notify_deliveries", channel="email", status="queued") == 4
    assert total(samples, "notify_dead_letters", channel="email") == 0
    assert total(samples, "notify_oldest_queued_seconds", channel="email") > 0
    assert {name for name, _ in samples} <= exported_names()


def test_notify_web_metrics_answer_with_the_broker_down(
    redis_env: dict[str, str], notifier: Callable[[], Notifier], web: Callable[[dict[str, str]], Web]
) -> None:
    notifier().send("welcome", {"email": "ada@example.com"}, data={"name": "A"})
    redis_env["NOTIFY_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    served = web(redis_env)
    wait_for(lambda: _answers(served.url + "/metrics"), what="notify web to answer")

    answer = requests.get(served.url + "/metrics", timeout=30)
    samples = scrape(served.url + "/metrics")
    assert answer.status_code == 200
    assert total(samples, "notify_broker_up") == 0
    assert total(samples, "notify_store_up") == 1
    assert total(samples, "notify_deliveries", channel="email", status="queued") == 1
    assert not any(name == "notify_queue_depth" for name, _ in samples)


# -- the dashboard and the alerts ------------------------------------------------------

METRIC_NAME = re.compile(r"\bnotify_[a-z0-9_]+\b")


def expressions() -> list[str]:
    dashboard = json.loads((REPO / "deploy/grafana/notify.json").read_text())
    found = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    found += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    return found


def test_the_dashboard_and_the_alerts_name_only_metrics_notify_exports() -> None:
    found = expressions()
    named = [set(METRIC_NAME.findall(expr)) for expr in found]
    assert len(found) >= 15 and all(named)
    assert set().union(*named) - exported_names() == set()
    alerts = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    assert {"NotifyDeadLettersGrowing", "NotifyProviderPaused", "NotifyRecoveries"} <= names
    assert {"NotifySlowHighPriority", "NotifySlowNormalPriority", "NotifyOldestQueuedTooOld"} <= names


def test_the_alert_rules_pass_promtool() -> None:
    if shutil.which("promtool") is None:
        if IN_CI:
            pytest.fail("promtool is not installed; .ci/run installs it (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt: prometheus)")
    checked = subprocess.run(
        ["promtool", "check", "rules", str(REPO / "deploy/prometheus/alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
