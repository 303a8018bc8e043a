"""Faults, tested: retries, dead letters, dedup across processes, crashes, outages, scheduling."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notify.api import Notifier
from notify.models import FINAL_STATUSES, Status
from notify.settings import Settings
from tests.support.processes import Notify, Worker, wait_for
from tests.support.smtp import SmtpServer


def policy_file(env: dict[str, str], **email: object) -> None:
    """Point NOTIFY_CONFIG at a notify.toml with fast email retries (and `email` overrides)."""
    values = {"backoff_initial": '"200ms"', "backoff_max": '"1s"', "jitter": "false", **email}
    path = Path(env["NOTIFY_HOME"]).parent / "notify.toml"
    path.write_text("[channels.email]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    env["NOTIFY_CONFIG"] = str(path)


def finished(notifier: Notifier, notification_id: str) -> bool:
    return all(d.status in FINAL_STATUSES for d in notifier.status(notification_id))


def only_delivery(notifier: Notifier, notification_id: str):  # type: ignore[no-untyped-def]
    [delivery] = notifier.status(notification_id)
    return delivery


@pytest.fixture
def redis_postgres(env: dict[str, str], redis_url: str, postgres_url: str) -> dict[str, str]:
    env["NOTIFY_BROKER_URL"] = redis_url
    env["NOTIFY_DATABASE_URL"] = postgres_url
    return env


def test_transient_smtp_failures_are_retried_until_sent(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    policy_file(env)
    smtp_server.fail_next(2, "451 4.3.0 Temporary local problem")
    start_worker("email", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    wait_for(lambda: finished(producer, result.id), what="the delivery to finish")
    delivery = only_delivery(producer, result.id)
    assert (delivery.status, delivery.attempts) == (Status.SENT, 3)
    assert delivery.last_error == "4.3.0 Temporary local problem"  # the last failure stays on record
    assert smtp_server.delivery_ids() == {delivery.id: 1}


def test_a_providers_retry_hint_is_honoured_in_full_even_past_backoff_max(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    policy_file(env, backoff_max='"1s"')  # the policy alone would wait 200 ms, and never past 1 s
    smtp_server.fail_next(1, "451 4.7.1 Greylisted, try again in 2 seconds")
    start_worker("email", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    wait_for(lambda: finished(producer, result.id), what="the delivery to finish")
    delivery = only_delivery(producer, result.id)
    first, second = smtp_server.attempts_of(delivery.id)
    assert delivery.status == Status.SENT
    assert second - first >= 2.0


def test_a_permanent_failure_is_a_dead_letter_until_replayed(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    policy_file(env)
    smtp_server.reject("gone@example.com", "550 5.1.1 No such user")
    start_worker("email", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", {"email": "gone@example.com"}, data={"name": "Gone"})

    wait_for(lambda: finished(producer, result.id), what="the delivery to fail")
    delivery = only_delivery(producer, result.id)
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.FAILED, 1, "550")
    assert delivery.last_error == "5.1.1 No such user"
    [letter] = producer.store.dead_letters()
    assert (letter.id, letter.template, letter.masked_address) == (delivery.id, "welcome", "g***@example.com")
    listed = subprocess.run(
        [sys.executable, "-m", "notify.cli", "dlq", "list", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [x["id"] for x in json.loads(listed.stdout)] == [delivery.id]

    smtp_server.handler.rejected.clear()  # the operator fixed the address on the server's side

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "notify.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    held = cli("dlq", "replay", delivery.id)  # the hard bounce put the address on the suppression list
    assert held.stdout == "" and "address is suppressed" in held.stderr
    cli("suppressions", "remove", "email", "gone@example.com")
    replay = cli("dlq", "replay", delivery.id)

    assert replay.stdout.strip() == f"replayed {delivery.id}"
    wait_for(lambda: only_delivery(producer, result.id).status == Status.SENT, what="the replay")
    assert only_delivery(producer, result.id).attempts == 1  # a fresh cycle, same delivery id
    assert smtp_server.delivery_ids() == {delivery.id: 1}
    assert producer.store.dead_letters() == []


def test_a_delivery_that_keeps_failing_gives_up_after_max_attempts(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    policy_file(env, max_attempts=3)
    smtp_server.fail_next(10, "421 4.3.2 Service shutting down")
    start_worker("email", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    wait_for(lambda: finished(producer, result.id), what="the delivery to give up")
    delivery = only_delivery(producer, result.id)
    assert (delivery.status, delivery.attempts, delivery.error_code) == (Status.FAILED, 3, "421")
    assert delivery.last_error == "4.3.2 Service shutting down (gave up after 3 tries)"
    assert len(smtp_server.attempts_of(delivery.id)) == 3


def _send_with_one_key(environ: dict[str, str], start: multiprocessing.synchronize.Event) -> list[str]:
    producer = Notifier(Settings.from_env(environ))
    start.wait(30)
    statuses = [
        str(
            producer.send(
                "welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, dedup_key="signup-42"
            )
            .deliveries[0]
            .status
        )
        for _ in range(20)
    ]
    producer.close()
    return statuses


def test_one_dedup_key_from_four_processes_at_once_is_delivered_once(
    redis_postgres: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    start_worker("email", "-c", "4")
    context = multiprocessing.get_context("spawn")
    start = context.Manager().Event()

    with context.Pool(4) as pool:
        pending = [pool.apply_async(_send_with_one_key, (redis_postgres, start)) for _ in range(4)]
        start.set()
        statuses = [s for p in pending for s in p.get(timeout=120)]

    assert sorted(statuses) == ["duplicate"] * 79 + ["queued"]
    wait_for(lambda: len(smtp_server.messages) == 1, what="the one email")
    producer = notifier()
    sent = [d for d in _all_deliveries(producer) if d.status == Status.SENT]
    assert len(sent) == 1 and smtp_server.delivery_ids() == {sent[0].id: 1}


def test_deliveries_wait_out_an_smtp_outage(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    policy_file(env, max_attempts=100)
    smtp_server.stop()
    start_worker("email", "-c", "4")
    producer = notifier()
    results = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}) for i in range(20)
    ]

    wait_for(
        lambda: all(only_delivery(producer, r.id).attempts >= 2 for r in results),
        what="every delivery to have failed twice against the dead server",
    )
    smtp_server.start()

    wait_for(lambda: all(finished(producer, r.id) for r in results), timeout=60, what="the backlog")
    counts = smtp_server.delivery_ids()
    assert len(counts) == 20 and set(counts.values()) == {1}
    assert all(only_delivery(producer, r.id).status == Status.SENT for r in results)


@pytest.mark.parametrize("scheduler", ["the worker", "notify beat"])
def test_send_at_is_held_in_the_store_and_arrives_after_not_before(
    scheduler: str,
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    start_beat: Callable[[], Notify],
    smtp_server: SmtpServer,
) -> None:
    start_worker("email", "-c", "2")
    if scheduler == "notify beat":
        start_beat()
    producer = notifier()
    when = datetime.now(UTC) + timedelta(seconds=3)

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, send_at=when)

    assert only_delivery(producer, result.id).status == Status.SCHEDULED
    wait_for(lambda: finished(producer, result.id), what="the scheduled email")
    [arrived] = smtp_server.attempts_of(only_delivery(producer, result.id).id)
    assert arrived >= when.timestamp()


def test_the_sweeper_delivers_what_never_reached_the_broker(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    lost = Notifier(Settings.from_env({**env, "NOTIFY_BROKER_URL": "redis://127.0.0.1:9/0"}))
    result = lost.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})  # broker down
    lost.close()
    assert only_delivery(notifier(), result.id).status == Status.QUEUED

    start_worker("email", "-c", "1")  # its sweep finds it queued beside empty queues

    producer = notifier()
    wait_for(lambda: finished(producer, result.id), what="the sweep to publish it")
    assert smtp_server.delivery_ids() == {only_delivery(producer, result.id).id: 1}


@pytest.mark.rabbitmq
def test_a_rabbitmq_restart_between_send_and_delivery_loses_nothing(
    env: dict[str, str],
    rabbitmq_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    env["NOTIFY_BROKER_URL"] = rabbitmq_url
    producer = notifier()
    results = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}) for i in range(10)
    ]

    for step in ("stop_app", "start_app"):
        subprocess.run(["rabbitmqctl", step], check=True, capture_output=True, timeout=120)
    start_worker("email", "-c", "2")

    wait_for(lambda: all(finished(producer, r.id) for r in results), timeout=60, what="the 10 emails")
    counts = smtp_server.delivery_ids()
    assert len(counts) == 10 and set(counts.values()) == {1}


def test_a_worker_refuses_to_start_with_an_invalid_policy_file(
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "notify.toml"
    path.write_text('[channels.email]\nmax_attempts = "six"\n')
    env["NOTIFY_CONFIG"] = str(path)

    started = subprocess.run(
        [sys.executable, "-m", "notify.cli", "worker", "email"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode != 0
    assert "channels.email.max_attempts" in started.stderr
    assert "wrong type" in started.stderr


def _all_deliveries(producer: Notifier) -> list:  # type: ignore[type-arg]
    import sqlalchemy as sa

    from notify.store.schema import deliveries
    from notify.store.store import _delivery

    with producer.store.engine.connect() as conn:
        return [_delivery(row) for row in conn.execute(sa.select(deliveries))]


def test_a_retry_goes_back_to_the_queue_it_came_from(
    env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    start_beat: Callable[[], Notify],
    smtp_server: SmtpServer,
) -> None:
    import redis

    env["NOTIFY_BROKER_URL"] = redis_url
    smtp_server.fail_next(1, "451 4.7.1 Greylisted, try again in 2 seconds")
    worker = start_worker("email", "-c", "1")
    producer = notifier()

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, priority="high")

    wait_for(lambda: only_delivery(producer, result.id).status == Status.RETRYING, what="the first failure")
    worker.stop()
    start_beat()  # releases the retry when due, with no worker to take it
    client = redis.Redis.from_url(redis_url)
    released = wait_for(lambda: client.lrange("notify.email.high", 0, -1), what="the released retry")
    delivery_id = only_delivery(producer, result.id).id
    assert [json.loads(raw)["headers"]["argsrepr"] for raw in released] == [repr([delivery_id])]
    assert client.llen("notify.email.normal") == client.llen("notify.email.low") == 0
    client.close()


def test_deliveries_wait_out_a_store_outage(
    redis_postgres: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    import psycopg

    from tests.conftest import POSTGRES_URL

    producer = notifier()
    results = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}) for i in range(10)
    ]
    database = redis_postgres["NOTIFY_DATABASE_URL"].rsplit("/", 1)[1]
    producer.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
        )
        worker = start_worker("email", "-c", "4")
        wait_for(
            lambda: worker.output().count("store is unavailable") >= 10, what="claims failing on the store"
        )
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

    wait_for(lambda: len(smtp_server.messages) == 10, timeout=60, what="the 10 emails")
    producer = notifier()
    assert all(finished(producer, r.id) for r in results)
    counts = smtp_server.delivery_ids()
    assert len(counts) == 10 and set(counts.values()) == {1}
