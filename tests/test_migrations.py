"""The store's schema under Alembic: a new store is made at this release's revision, an older
one is brought there by `notify db upgrade` (or its `--sql`, applied by hand) with its live
deliveries kept, and a worker on an older schema refuses to start, naming the command.

"The previous release" is notify 0.1.0: its tables (tests/support/schema_0_1_0.py, the
release's notify/store/schema.py as it was) made by its own `create_all`, with no
revision recorded.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from notify.api import Notifier
from notify.errors import SchemaOutdated
from notify.models import Status, utcnow
from notify.store import Store, migrate
from notify.store.engines import create_engine
from notify.store.schema import REVISION, VERSION_TABLE
from tests.conftest import REPO
from tests.support import schema_0_1_0 as previous
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer
from tests.test_cli import notify_cli


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("postgres_url"))


def schema_of(url: str) -> dict[str, Any]:
    """Every table's columns (name, type, nullable) and indexes, and the revision recorded."""
    engine = create_engine(url)
    try:
        inspector = sa.inspect(engine)
        found: dict[str, Any] = {}
        for table in sorted(inspector.get_table_names()):
            columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
            indexes = sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table))
            found[table] = (sorted(columns), indexes)
        with engine.connect() as conn:
            found["revision"] = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        return found
    finally:
        engine.dispose()


def test_the_revision_the_code_makes_is_the_newest_migration() -> None:
    assert migrate.head() == REVISION


def test_a_new_store_is_made_as_the_migrations_make_it(store_url: str, tmp_path: Path) -> None:
    """A store made on first use (any process) and one made by `notify db upgrade` from
    nothing are the same schema, at the same revision."""
    made = Store(store_url)
    assert made.schema_revision() == REVISION
    made.close()
    other = (
        f"sqlite:///{tmp_path}/migrated.db"
        if store_url.startswith("sqlite")
        else _another_database(store_url)
    )
    assert migrate.upgrade(other) == ("no schema", REVISION)

    assert schema_of(store_url) == schema_of(other)


def _another_database(url: str) -> str:
    """A second fresh PostgreSQL database beside the test's (dropped with the server's others)."""
    name = f"notify_test_{uuid.uuid4().hex[:12]}"
    admin = url.rsplit("/", 1)[0] + "/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def a_store_of_the_previous_release(url: str) -> dict[Status, str]:
    """Release 0.1.0's tables, made by its create_all, holding a delivery in every status."""
    engine = create_engine(url)
    previous.metadata.create_all(engine)
    now = utcnow()
    notification = str(uuid.uuid4())
    dead_worker = str(uuid.uuid4())
    ids: dict[Status, str] = {status: str(uuid.uuid4()) for status in Status}  # one in every status
    d = previous.deliveries
    with engine.begin() as conn:
        conn.execute(
            previous.notifications.insert(),
            {"id": notification, "template": "welcome", "locale": None, "data": '{"name": "Ada"}',
             "created_at": now},
        )  # fmt: skip
        conn.execute(
            previous.workers.insert(),
            {"id": dead_worker, "beats": 7, "dead": False, "host": "old", "pid": 1, "started_at": now,
             "beat_at": now},
        )  # fmt: skip
        for status, delivery_id in ids.items():
            row: dict[str, Any] = {
                "id": delivery_id, "notification_id": notification, "channel": "email",
                "address": f"{status.value}@example.com", "priority": "normal", "status": status.value,
                "attempts": 0, "created_at": now, "updated_at": now,
            }  # fmt: skip
            if status in (Status.SCHEDULED, Status.RETRYING):
                row.update(release_at=now - timedelta(seconds=1), next_attempt_at=now)
            if status is Status.SENDING:  # its worker, of the old release, will never beat again
                row.update(attempts=1, claim_token=str(uuid.uuid4()), worker_id=dead_worker)
            if status is Status.FAILED:
                row.update(attempts=4, last_error="550 gone", error_code="550", failed_at=now)
            if status is Status.SENT:
                row.update(attempts=1, sent_at=now, provider_id="old")
            if status is Status.DUPLICATE:
                row.update(duplicate_of=ids[Status.SENT])
            conn.execute(d.insert(), row)
    engine.dispose()
    return ids


@pytest.fixture
def old_store_env(env: dict[str, str], store_url: str) -> dict[str, str]:
    env["NOTIFY_DATABASE_URL"] = store_url
    env["NOTIFY_LEASE"] = "2"
    return env


def test_a_store_of_the_previous_release_is_upgraded_and_delivers_what_it_held(
    old_store_env: dict[str, str],
    store_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    ids = a_store_of_the_previous_release(store_url)
    producer = notifier()
    sent_before_upgrade = producer.send("welcome", {"email": "new@example.com"}, data={"name": "N"})
    assert migrate.current(store_url) == (True, None)  # a producer never migrates

    refused = start_worker("email")
    assert refused.process.wait(timeout=60) == 2
    [line] = [x for x in refused.output().splitlines() if x.startswith("error:")]
    assert line == (
        "error: NOTIFY_DATABASE_URL: the store's schema was made before revisions were kept; "
        f"this release needs revision {REVISION}: run `notify db upgrade`"
    )

    upgraded = notify_cli(old_store_env, REPO, "db", "upgrade")
    assert (upgraded.returncode, upgraded.stdout) == (
        0,
        f"the store's schema: made before revisions were kept -> revision {REVISION}\n",
    ), upgraded.stderr
    again = notify_cli(old_store_env, REPO, "db", "upgrade")
    assert again.stdout == f"the store's schema is at revision {REVISION} already\n"
    start_worker("email", "-c", "2").wait_ready()

    waiting = [ids[s] for s in (Status.QUEUED, Status.SCHEDULED, Status.RETRYING, Status.SENDING)]
    waiting.append(sent_before_upgrade.deliveries[0].id)
    wait_for(
        lambda: all(producer.store.get(i).status == Status.SENT for i in waiting),  # type: ignore[union-attr]
        timeout=60,
        what="what the old store held, and what was sent meanwhile",
    )
    assert producer.store.get(ids[Status.SENT]).provider_id == "old"  # type: ignore[union-attr]
    assert producer.store.get(ids[Status.DUPLICATE]).status == Status.DUPLICATE  # type: ignore[union-attr]
    assert [x.id for x in producer.store.dead_letters()] == [ids[Status.FAILED]]
    assert [q.id for q in producer.store.replay([ids[Status.FAILED]])] == [ids[Status.FAILED]]
    wait_for(
        lambda: producer.store.get(ids[Status.FAILED]).status == Status.SENT,  # type: ignore[union-attr]
        timeout=30,
        what="the replayed dead letter",
    )
    counts = smtp_server.delivery_ids()
    assert set(counts) == {*waiting, ids[Status.FAILED]} and set(counts.values()) == {1}


def test_the_sql_for_a_dba_brings_an_old_store_to_this_revision(
    old_store_env: dict[str, str], store_url: str
) -> None:
    ids = a_store_of_the_previous_release(store_url)

    printed = notify_cli(old_store_env, REPO, "db", "upgrade", "--sql")

    assert printed.returncode == 0, printed.stderr
    assert migrate.current(store_url) == (True, None)  # printed, not run
    assert "ALTER TABLE notify_deliveries ADD COLUMN handed_over_at" in printed.stdout
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            conn.executescript(printed.stdout)
    else:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(printed.stdout.encode())
    store = Store(store_url, require_current=True)
    try:
        assert store.schema_revision() == REVISION
        assert store.get(ids[Status.QUEUED]).status == Status.QUEUED  # type: ignore[union-attr]
    finally:
        store.close()
    at_head = notify_cli(old_store_env, REPO, "db", "upgrade", "--sql")
    assert at_head.stdout == f"-- the store's schema is at revision {REVISION} already\n"


def test_a_worker_refuses_a_store_at_an_older_or_a_newer_revision(store_url: str) -> None:
    made = Store(store_url)
    made.schema_revision()
    made.close()
    for revision, says in (("0001", "is at revision 0001"), ("9999", "newer than this release's")):
        engine = create_engine(store_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = :v"), {"v": revision})
        engine.dispose()
        worker_store = Store(store_url, require_current=True)
        with pytest.raises(SchemaOutdated, match=says):
            worker_store.get(str(uuid.uuid4()))
        worker_store.close()
        producer_store = Store(store_url)  # a producer goes on, and changes nothing
        assert producer_store.get(str(uuid.uuid4())) is None
        assert producer_store.schema_revision() == revision
        producer_store.close()


def test_upgrades_and_first_uses_at_once_end_with_one_schema_and_no_error(
    store_url: str, tmp_path: Path
) -> None:
    """Several `notify db upgrade` (an init container per pod) and several processes touching a
    fresh store at once: one makes it, the others wait and see it (no crash, no deadlock)."""
    go = tmp_path / "go"  # each process says it is ready, then waits for this file: they start together
    ready = (
        "import pathlib, time, uuid; from notify.store import Store, migrate; "
        f"pathlib.Path({str(tmp_path)!r}, 'ready-' + uuid.uuid4().hex).touch(); "
        f"[time.sleep(0.005) for _ in iter(lambda: pathlib.Path({str(go)!r}).exists(), True)]; "
    )
    upgrade = ready + f"print(migrate.upgrade({store_url!r}))"
    first_use = ready + f"print(Store({store_url!r}, require_current=True).schema_revision())"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for code in [upgrade, first_use, upgrade, first_use, upgrade, first_use]
    ]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 6, timeout=60, what="every process, ready")
        go.touch()
        results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    finally:
        for process in processes:
            process.kill()

    assert [code for code, _, _ in results] == [0] * 6, [err[-2000:] for _, _, err in results]
    engine = create_engine(store_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [REVISION]
    engine.dispose()


def a_store_at(url: str, revision: str) -> None:
    """The schema as `notify db upgrade` of an older release left it, at `revision`."""
    from alembic import command

    engine = create_engine(url, writer=True)
    try:
        with engine.begin() as conn:
            config = migrate._config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def test_a_store_at_0004_is_upgraded_and_its_live_deliveries_are_sent_with_attempt_rows(
    old_store_env: dict[str, str],
    store_url: str,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    a_store_at(store_url, "0004")
    producer = notifier()
    waiting = [
        producer.send("welcome", {"email": f"u{i}@example.com"}, data={"name": "N"}).deliveries[0].id
        for i in range(3)
    ]
    assert migrate.current(store_url) == (True, "0004")
    assert producer.store.attempts_of(waiting[0]) == []  # a producer on 0004 reads no attempt rows

    upgraded = notify_cli(old_store_env, REPO, "db", "upgrade")
    assert (upgraded.returncode, upgraded.stdout) == (
        0,
        f"the store's schema: revision 0004 -> revision {REVISION}\n",
    ), upgraded.stderr
    start_worker("email").wait_ready()

    wait_for(
        lambda: all(producer.store.get(i).status == Status.SENT for i in waiting),  # type: ignore[union-attr]
        timeout=60,
        what="what the 0004 store held",
    )
    for delivery_id in waiting:
        [row] = producer.store.attempts_of(delivery_id)
        assert (row.number, row.provider, row.outcome) == (1, "smtp", "sent")
    assert set(smtp_server.delivery_ids()) == set(waiting)
