"""Nothing sent twice under the faults operations bring: store outages longer than a lease, clock steps.

Real workers on Redis, the store on PostgreSQL (the outages) or SQLite (the
clock steps), a real SMTP server counting every message it is handed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from notify.api import Intent, Notifier
from notify.errors import StoreUnavailable
from notify.models import Status, utcnow
from notify.store import Claim
from tests.conftest import IN_CI
from tests.support.outages import store_outage
from tests.support.processes import Notify, Worker, wait_for
from tests.support.records import a_worker
from tests.support.smtp import SmtpServer

LEASE = 3.0  # seconds: the outages below last several leases


@pytest.fixture
def redis_postgres(env: dict[str, str], redis_url: str, postgres_url: str) -> dict[str, str]:
    env.update(NOTIFY_BROKER_URL=redis_url, NOTIFY_DATABASE_URL=postgres_url, NOTIFY_LEASE=str(LEASE))
    return env


def worker_beats(producer: Notifier) -> int:
    with producer.store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT coalesce(sum(beats), 0) FROM notify_workers")).scalar_one())


def all_sent(producer: Notifier, ids: list[str]) -> bool:
    """Whether every delivery is sent; False while the test's own connection finds the store away."""
    try:
        return all(producer.store.get(i).status == Status.SENT for i in ids)  # type: ignore[union-attr]
    except StoreUnavailable:  # a connection the outage killed, found on the way back
        return False


def send(producer: Notifier, count: int) -> list[str]:
    return [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}).deliveries[0].id
        for i in range(count)
    ]


def test_a_store_outage_longer_than_a_lease_sends_nothing_twice(
    redis_postgres: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Every email is in flight at the server through an outage of three leases, and after it.

    Before: the worker's own sweep took back every lapsed claim as the store
    returned, and the new attempts sent each email again (8 of 8).
    """
    worker = start_worker("email", "-c", "16").wait_ready()
    producer = notifier()
    smtp_server.delay_data_reply(20.0)  # the replies come after the outage
    ids = send(producer, 8)
    wait_for(lambda: all(smtp_server.attempts_of(i) for i in ids), what="every email at the server")

    with store_outage(redis_postgres["NOTIFY_DATABASE_URL"]):
        failures = worker.output().count("store is unavailable")
        wait_for(
            lambda: worker.output().count("this worker hands nothing over") >= 3 * LEASE,
            what="three leases of heartbeats failing on the store",
            timeout=60,
        )
        assert worker.output().count("store is unavailable") > failures

    wait_for(lambda: all_sent(producer, ids), what="every outcome")
    beats = worker_beats(producer)
    more = 3 * LEASE
    wait_for(lambda: worker_beats(producer) >= beats + more, what="three leases more, the store answering")
    assert smtp_server.delivery_ids() == dict.fromkeys(ids, 1)


@pytest.fixture
def faketime() -> str:
    found = shutil.which("faketime")
    if found is None:
        message = "faketime (Debian's package faketime) is not installed"
        if IN_CI:
            pytest.fail(message + "; .ci/run must install it")
        pytest.skip(message)
    return found


@pytest.mark.parametrize("step", ["+60s", "-60s", "+1d"])
def test_a_worker_whose_clock_is_off_takes_over_nothing_from_a_live_one(
    step: str,
    faketime: str,
    env: dict[str, str],
    redis_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Two workers on one SQLite store, one of them a minute (or a day) off: every email goes once.

    Before: a worker whose clock ran 60 s ahead saw every other worker's
    leases as lapsed and sent each of their deliveries again.
    """
    env.update(NOTIFY_BROKER_URL=redis_url, NOTIFY_LEASE=str(LEASE))
    start_worker("email", "-c", "4").wait_ready()
    producer = notifier()
    smtp_server.delay_data_reply(5 * LEASE)  # each delivery in flight for five leases
    ids = send(producer, 4)
    wait_for(lambda: all(smtp_server.attempts_of(i) for i in ids), what="every email in flight")

    skewed = start_worker("email", "-c", "4", environ={**env, "FAKETIME": step, "LD_PRELOAD": _libfaketime()})
    skewed.wait_ready()

    wait_for(lambda: all_sent(producer, ids), what="every outcome")
    beats = worker_beats(producer)
    wait_for(lambda: worker_beats(producer) >= beats + 6 * LEASE, what="three leases more of both beating")
    assert smtp_server.delivery_ids() == dict.fromkeys(ids, 1)


def _libfaketime() -> str:
    for candidate in (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ):
        if os.path.exists(candidate):
            return candidate
    pytest.skip("libfaketime.so.1 not found")


# -- on time behind a backlog: what maintenance publishes goes ahead of its priority's backlog --

BACKLOG = 3000
BROKERS = ["embedded", "redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]


@pytest.fixture(params=BROKERS)
def broker_env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    if request.param != "embedded":
        env["NOTIFY_BROKER_URL"] = request.getfixturevalue(f"{request.param}_url")
    env["NOTIFY_LEASE"] = str(LEASE)
    return env


def a_backlog(producer: Notifier, priority: str, count: int = BACKLOG) -> list[str]:
    intents = [
        Intent("welcome", {"email": f"bulk{i}@example.com"}, data={"name": "B"}, priority=priority)
        for i in range(count)
    ]
    return [r.deliveries[0].id for r in producer.send_many(intents)]


def arrived_after(smtp_server: SmtpServer, ids: list[str], moment: float) -> int:
    return sum(1 for i in ids for t in smtp_server.attempts_of(i) if t > moment)


def test_a_due_send_at_goes_ahead_of_the_backlog_of_its_priority(
    broker_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Before: released on time, it arrived after the whole backlog of its priority (69 s late)."""
    producer = notifier()
    backlog = a_backlog(producer, "normal")
    start_worker("email", "-c", "2").wait_ready()
    due = (
        producer.send(
            "welcome",
            {"email": "ada@example.com"},
            data={"name": "A"},
            send_at=utcnow() + timedelta(seconds=2),
        )
        .deliveries[0]
        .id
    )

    wait_for(lambda: smtp_server.attempts_of(due), what="the send_at email", timeout=120)
    [arrival] = smtp_server.attempts_of(due)
    wait_for(lambda: len(smtp_server.delivery_ids()) == BACKLOG + 1, what="the backlog", timeout=300)
    assert arrived_after(smtp_server, backlog, arrival) >= BACKLOG // 4  # it overtook the backlog


def test_a_dead_workers_delivery_goes_ahead_of_the_backlog_of_its_priority(
    broker_env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Before: the sweep published what a dead worker held at the tail, behind the whole backlog.

    The worker claimed two low emails and died before handing them over (while
    rendering, or waiting for its priority's turn): a registration that never
    beats, holding the claims. What a killed worker was handing over is not
    published again at all (test_recovery.py: an unknown outcome).
    """
    producer = notifier()
    held = [
        producer.send("welcome", {"email": f"held{i}@example.com"}, data={"name": "H"}, priority="low")
        .deliveries[0]
        .id
        for i in range(2)
    ]
    dead = a_worker(producer.store)
    for delivery_id in held:
        assert isinstance(producer.store.claim(delivery_id, dead), Claim)
    backlog = a_backlog(producer, "low")

    start_worker("email", "-c", "2").wait_ready()

    wait_for(lambda: all(smtp_server.attempts_of(i) for i in held), what="both, taken over", timeout=120)
    recovered = max(smtp_server.attempts_of(i)[0] for i in held)
    wait_for(lambda: len(smtp_server.delivery_ids()) >= BACKLOG, what="the backlog", timeout=300)
    assert arrived_after(smtp_server, backlog, recovered) >= BACKLOG // 4  # it overtook the backlog
    assert all(smtp_server.delivery_ids()[i] == 1 for i in held)


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_a_lost_high_delivery_is_not_held_by_the_low_backlog(
    broker: str,
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    request: pytest.FixtureRequest,
) -> None:
    """Before: the sweep waited `NOTIFY_SWEEP_AFTER` (300 s) for any message of the channel
    to be left; a lost high email arrived after the whole low backlog.

    (RabbitMQ keeps one priority queue per channel: its count cannot tell a low
    backlog from a high one, so there a lost delivery behind any backlog waits
    `NOTIFY_SWEEP_AFTER`, as README's recovery table says.)
    """
    if broker != "embedded":
        env["NOTIFY_BROKER_URL"] = request.getfixturevalue(f"{broker}_url")
    env["NOTIFY_LEASE"] = str(LEASE)
    producer = notifier()
    backlog = a_backlog(producer, "low", count=600)
    lost = notifier()
    lost._publish = lambda *_, **__: None  # type: ignore[method-assign]  # the producer died before publishing
    high = lost.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}, priority="high")
    smtp_server.delay_data_reply(0.05)  # the backlog takes 15 s or more
    start_worker("email", "-c", "2").wait_ready()

    wait_for(lambda: smtp_server.attempts_of(high.deliveries[0].id), what="the lost high email", timeout=120)
    [arrival] = smtp_server.attempts_of(high.deliveries[0].id)
    wait_for(lambda: len(smtp_server.delivery_ids()) == len(backlog) + 1, what="the backlog", timeout=300)
    assert arrived_after(smtp_server, backlog, arrival) >= len(backlog) // 4  # long before the backlog ended
    assert smtp_server.delivery_ids()[high.deliveries[0].id] == 1


# -- a worker is not ready until its maintenance runs -------------------------------------


def test_a_worker_started_while_the_store_is_away_is_ready_only_once_its_maintenance_runs(
    redis_postgres: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Before: 5 tracebacks, then "ready"; a `send_at` due 3 s later was still `scheduled`
    35 s after it, the store long back. Now the worker says it waits, and is ready, and
    releases the email, once the store answers."""
    producer = notifier()
    due = producer.send(
        "welcome", {"email": "ada@example.com"}, data={"name": "A"}, send_at=utcnow() + timedelta(seconds=3)
    )
    with store_outage(redis_postgres["NOTIFY_DATABASE_URL"]):
        worker = start_worker("email", "-c", "2")
        wait_for(
            lambda: "maintenance has not run yet" in worker.output(),
            what="the worker to say it waits",
            timeout=60,
        )
        assert " ready." not in worker.output()
        assert worker.process.poll() is None

    worker.wait_ready(timeout=60)
    wait_for(lambda: smtp_server.delivery_ids(), what="the send_at email", timeout=30)
    assert smtp_server.delivery_ids() == {due.deliveries[0].id: 1}


def test_workers_starting_together_on_a_fresh_sqlite_store_all_run_their_maintenance(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    """Before: `database is locked` in one start of 12 (the schema made by all at once), and that
    worker served without maintenance. Now each retries until its first pass goes through."""
    workers = [start_worker("email", "-c", "1") for _ in range(4)]
    for worker in workers:
        worker.wait_ready(timeout=90)
    due = notifier().send(
        "welcome", {"email": "ada@example.com"}, data={"name": "A"}, send_at=utcnow() + timedelta(seconds=2)
    )
    wait_for(lambda: smtp_server.delivery_ids(), what="the send_at email", timeout=30)
    assert smtp_server.delivery_ids() == {due.deliveries[0].id: 1}
    assert all(worker.process.poll() is None for worker in workers)


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The compose healthcheck's probe of this host's workers and beat."""
    return subprocess.run(
        [sys.executable, "-m", "notify.worker.health", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_the_health_probe_fails_while_the_store_is_away_and_passes_once_it_is_back(
    command: str,
    redis_postgres: dict[str, str],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    """compose's healthcheck of a worker and of beat: their maintenance must go through, which
    needs the store (and the broker); a process whose passes stopped is unhealthy."""
    assert probe(redis_postgres).stdout.startswith("unhealthy: no notify worker or beat of this host")
    if command == "worker":
        start_worker("email", "-c", "2").wait_ready()
    else:
        beat = Notify(["beat", "-l", "info"], redis_postgres, tmp_path / "beat.log")
        wait_for(lambda: "notify beat ready" in beat.output(), what="beat to be ready", timeout=60)
    wait_for(lambda: probe(redis_postgres, "--stale-after", "3").returncode == 0, what="a healthy probe")

    with store_outage(redis_postgres["NOTIFY_DATABASE_URL"]):
        wait_for(
            lambda: probe(redis_postgres, "--stale-after", "3").returncode == 1,
            what="the probe to fail",
            timeout=30,
        )
        failed = probe(redis_postgres, "--stale-after", "3")
        assert re.fullmatch(
            r"unhealthy: process \d+: its maintenance last went through \d+s ago \(the store "
            r"away, or the maintenance stuck: its log says which\)\n",
            failed.stdout,
        )

    wait_for(
        lambda: probe(redis_postgres, "--stale-after", "3").returncode == 0, what="healthy again", timeout=60
    )
    from tests.support.web import free_port

    away = {**redis_postgres, "NOTIFY_BROKER_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}
    broker = probe(away)
    assert broker.returncode == 1 and broker.stdout.startswith(
        "unhealthy: the broker does not answer (redis://"
    )
    assert "hunter2" not in broker.stdout
    if command == "beat":
        beat.stop()
        gone = probe(redis_postgres)  # beat removed its mark
        assert gone.stdout.startswith("unhealthy: no notify worker or beat")


def test_the_health_probe_reads_no_file_of_a_dead_process_as_a_live_ones(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A worker killed with SIGKILL leaves its file; the process that gets its id later is not it."""
    import socket

    health = Path(env["NOTIFY_HOME"]) / "health"
    health.mkdir(parents=True)
    # This test's own id with another start time: the file of a killed process whose id was reused.
    (health / f"{socket.gethostname()}-{os.getpid()}").write_text("1 0.0\n")
    (health / f"{socket.gethostname()}-garbage").write_text("not a mark")

    completed = probe(env)

    assert completed.returncode == 1
    assert completed.stdout.startswith("unhealthy: no notify worker or beat of this host"), completed.stdout


@pytest.mark.parametrize(
    ("args", "setting", "said"),
    [
        (["--stale-after", "nan"], {}, "--stale-after must be a number of seconds above 0"),
        ([], {"NOTIFY_LOG_FORMAT": "xml"}, "unhealthy: NOTIFY_LOG_FORMAT must be one of text, json"),
    ],
)
def test_the_health_probe_says_what_is_wrong_with_its_own_input_in_one_line(
    env: dict[str, str], args: list[str], setting: dict[str, str], said: str
) -> None:
    completed = probe({**env, **setting}, *args)
    assert completed.returncode != 0
    assert said in completed.stdout + completed.stderr and "Traceback" not in completed.stderr
