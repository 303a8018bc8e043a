"""The suppression list: filled by hand and from the providers' final answers, consulted by every
send, and by `dlq replay`.

The list's own behaviour runs on SQLite and on PostgreSQL (where a `send()` is one statement,
the suppression check inside it); the providers' answers come through real workers and the
real clients against local fakes (tests/fakes/), as in tests/test_channels_end_to_end.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

import notify
from notify.api import Intent, Notifier
from notify.errors import ValidationError
from notify.models import Status, SuppressionReason
from notify.store import Claim, Refusal
from notify.store.schema import suppressions
from tests.conftest import REPO
from tests.support.processes import Worker, wait_for
from tests.support.records import a_worker
from tests.support.smtp import SmtpServer
from tests.test_cli import notify_cli
from tests.test_send_validation import count_rows

ADA = {"email": "ada@example.com", "phone": "+14155550100", "push_token": "token-ada"}


@pytest.fixture(params=["sqlite", "postgresql"])
def on_store(request: pytest.FixtureRequest, env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    if request.param == "postgresql":
        env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return env


def enqueued(env: dict[str, str], producer: Notifier) -> int:
    """Messages on the embedded broker, once the producer published what it had pending."""
    assert producer.flush(timeout=10)
    broker = Path(env["NOTIFY_HOME"]) / "broker.db"
    return count_rows(broker, "kombu_message") if broker.exists() else 0


def test_a_send_to_a_suppressed_address_records_suppressed_and_the_rest_goes_on(
    on_store: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    producer = notifier()
    assert producer.suppress("email", "ada@example.com", "bounced")

    result = producer.send("welcome", ADA, data={"name": "Ada"}, channels=["email", "sms"])

    statuses = {d.channel: d.status for d in result.deliveries}
    assert statuses == {"email": Status.SUPPRESSED, "sms": Status.QUEUED}
    assert {d.channel: d.status for d in producer.status(result.id)} == statuses
    assert enqueued(on_store, producer) == 1  # the SMS only


def test_send_many_consults_the_list_once_per_batch_not_once_per_intent(
    on_store: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    producer = notifier()
    for i in range(0, 600, 3):
        producer.suppress("email", f"u{i}@example.com", "manual")
    reads: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM notify_suppressions" in statement:
            reads.append(statement)

    sa.event.listen(producer.store._writer, "before_cursor_execute", count)
    intents = [Intent("welcome", {"email": f"u{i}@example.com"}, data={"name": "U"}) for i in range(600)]
    results = producer.send_many(intents)

    suppressed = {i for i, r in enumerate(results) if r.deliveries[0].status == Status.SUPPRESSED}
    assert suppressed == set(range(0, 600, 3))
    assert len(reads) <= 2  # 600 intents: batches of 500 at most, one query each
    assert {r.deliveries[0].status for i, r in enumerate(results) if i not in suppressed} == {Status.QUEUED}


def test_a_suppressed_send_at_and_dedup_key_hold_nothing(
    on_store: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    """A suppressed delivery is not held for its send_at, and claims no dedup key: once the
    address is taken off the list, the same key sends."""
    from datetime import UTC, datetime, timedelta

    producer = notifier()
    producer.suppress("email", "ada@example.com")
    later = datetime.now(UTC) + timedelta(hours=1)

    held = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}, send_at=later)
    keyed = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}, dedup_key="k-1")
    assert producer.unsuppress("email", "ada@example.com")
    again = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}, dedup_key="k-1")

    assert [r.deliveries[0].status for r in (held, keyed, again)] == [
        Status.SUPPRESSED,
        Status.SUPPRESSED,
        Status.QUEUED,
    ]
    assert producer.store.release_due() == []


def test_addresses_are_listed_in_the_form_sends_use(notifier: Callable[[], Notifier]) -> None:
    producer = notifier()
    assert producer.suppress("email", "ada@EXAMPLE.com")
    assert not producer.suppress("email", "ada@example.com", "bounced")  # the same address: kept as it was
    assert producer.suppress("sms", "+14155550100", "opted_out")

    listed = {(s.channel, s.address, s.reason) for s in producer.suppressions()}

    assert listed == {
        ("email", "ada@example.com", SuppressionReason.MANUAL),
        ("sms", "+14155550100", SuppressionReason.OPTED_OUT),
    }
    result = producer.send("welcome", ADA, data={"name": "Ada"}, channels=["email", "sms"])
    assert {d.status for d in result.deliveries} == {Status.SUPPRESSED}
    assert "ada@example.com" not in repr(producer.suppressions()[0])


@pytest.mark.parametrize(
    ("args", "field", "says"),
    [
        (("fax", "123"), "channel", "not a registered channel"),
        ((None, "ada@example.com"), "channel", "not a registered channel"),
        (("email", "not an address"), "address", "not a valid email address"),
        (("email", 42), "address", ""),
        (("sms", "4155550100"), "address", "E.164"),
        (("email", "ada@example.com", "spam"), "reason", "is not a suppression reason"),
        (("email", "ada@example.com", None), "reason", "is not a suppression reason"),
    ],
)
def test_a_bad_suppression_is_refused_and_nothing_is_listed(
    notifier: Callable[[], Notifier], args: tuple[object, ...], field: str, says: str
) -> None:
    producer = notifier()
    with pytest.raises(ValidationError) as refused:
        producer.suppress(*args)  # type: ignore[arg-type]
    assert refused.value.field == field and says in str(refused.value)
    if field != "reason":
        with pytest.raises(ValidationError):
            producer.unsuppress(*args[:2])  # type: ignore[arg-type]
    assert producer.suppressions() == []


def test_replay_leaves_a_dead_letter_to_a_suppressed_address_failed_and_says_why(
    on_store: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    producer = notifier()
    gone, other = (
        producer.send("welcome", {"email": a}, data={"name": "A"}).deliveries[0].id
        for a in ("gone@example.com", "ok@example.com")
    )
    worker = a_worker(producer.store)
    for delivery_id in (gone, other):
        claim = producer.store.claim(delivery_id, worker)
        assert isinstance(claim, Claim) and producer.store.mark_failed(claim, "550 no such user", "550")
    producer.suppress("email", "gone@example.com", "bounced")

    replayed = producer.replay(None)

    assert (replayed.replayed, replayed.suppressed, replayed.not_found) == ([other], [gone], [])
    assert producer.store.get(gone).status == Status.FAILED  # type: ignore[union-attr]
    cli = notify_cli(on_store, REPO, "dlq", "replay", gone)
    assert cli.returncode == 0, cli.stderr
    assert "left failed" in cli.stderr and "suppressed" in cli.stderr


def test_the_cli_adds_lists_and_removes(env: dict[str, str]) -> None:
    added = notify_cli(env, REPO, "suppressions", "add", "sms", "+14155550100", "--reason", "opted_out")
    assert (added.returncode, added.stdout) == (0, "suppressed: sms +14155550100\n"), added.stderr
    listed = notify_cli(env, REPO, "suppressions", "list", "--json")
    [entry] = json.loads(listed.stdout)
    assert (entry["channel"], entry["address"], entry["reason"]) == ("sms", "+14155550100", "opted_out")
    table = notify_cli(env, REPO, "suppressions", "list").stdout
    assert "+141******00" in table and "+14155550100" not in table  # masked unless --json
    refused = notify_cli(env, REPO, "suppressions", "add", "email", "nobody")
    assert refused.returncode == 2 and refused.stderr.startswith("error: address: ")
    removed = notify_cli(env, REPO, "suppressions", "remove", "sms", "+14155550100")
    assert (removed.returncode, removed.stdout) == (0, "no longer suppressed: sms +14155550100\n")
    again = notify_cli(env, REPO, "suppressions", "remove", "sms", "+14155550100")
    assert again.returncode == 1 and "not suppressed" in again.stderr


def test_the_module_level_functions_use_the_process_wide_notifier(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_send_validation import reset_process_wide_notifier

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_process_wide_notifier()
    try:
        assert notify.suppress("email", "ada@example.com")
        assert [s.address for s in notify.suppressions(channel="email")] == ["ada@example.com"]
        assert notify.unsuppress("email", "ada@example.com")
        assert notify.suppressions() == []
    finally:
        reset_process_wide_notifier()


# -- from the providers' answers, through real workers ------------------------------------


def listed(producer: Notifier) -> dict[tuple[str, str], str]:
    return {(s.channel, s.address): s.reason.value for s in producer.suppressions()}


def test_a_hard_bounce_suppresses_the_address_and_calls_the_hook(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    env["NOTIFY_ON_PERMANENT_FAILURE"] = "tests.support.hooks:record"
    env["NOTIFY_TEST_HOOK_FILE"] = str(tmp_path / "hook.jsonl")
    smtp_server.reject("gone@example.com", "550 5.1.1 <gone@example.com>: Recipient address rejected")
    smtp_server.reject("full@example.com", "552 5.2.2 Mailbox full")
    start_worker("email", "-c", "2").wait_ready()
    producer = notifier()

    first = [
        producer.send("welcome", {"email": a}, data={"name": "A"}).deliveries[0].id
        for a in ("gone@example.com", "full@example.com")
    ]
    wait_for(
        lambda: all(producer.store.get(i).status == Status.FAILED for i in first),  # type: ignore[union-attr]
        what="both to fail",
    )

    assert listed(producer) == {("email", "gone@example.com"): "bounced"}  # a full mailbox is not gone
    [entry] = producer.suppressions()
    assert entry.detail is not None and "5.1.1" in entry.detail
    later = producer.send("welcome", {"email": "gone@example.com"}, data={"name": "A"})
    assert later.deliveries[0].status == Status.SUPPRESSED
    hook = tmp_path / "hook.jsonl"
    wait_for(lambda: hook.exists() and len(hook.read_text().splitlines()) == 2, what="the hook, twice")


def test_the_list_is_a_table_of_its_own_in_the_store(notifier: Callable[[], Notifier]) -> None:
    producer = notifier()
    producer.suppress("push", "token-" + uuid.uuid4().hex)
    with producer.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar() == 1


@pytest.mark.parametrize(
    ("code", "text", "bounced"),
    [
        (
            550,
            "5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
            True,
        ),
        (550, "User unknown", True),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", True),
        (554, "delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0]", True),
        (550, "sorry, no mailbox here by that name. (#5.1.1)", True),
        (511, "sorry, no mailbox here by that name (#5.1.1 - chkuser)", True),
        (550, "Mailbox not found", True),
        (553, "5.1.3 bad address syntax", True),
        (550, "5.1.2 no such domain", True),
        (550, "5.1.0 <x@example.com>: Recipient address rejected: User unknown", True),
        (550, "5.1.0 Address rejected", False),  # "other address status": the words must say it
        (550, "5.1.0 <noreply@ours>: Sender address rejected: User unknown in local recipient table", False),
        (550, "<noreply@ours>: Sender address rejected: Domain does not exist", False),
        (550, "Recipient address rejected: Access denied", False),  # a policy, not a missing mailbox
        (550, "Requested action not taken: mailbox unavailable", False),
        (552, "5.2.2 Mailbox full", False),
        (550, "5.7.1 Message rejected as spam", False),
        (550, "5.1.6 Mailbox has moved", False),
        (550, "Empf\udce4nger unbekannt", False),  # Latin-1 we cannot read: no guess
    ],
)
def test_a_hard_bounce_is_told_from_every_other_refusal(code: int, text: str, bounced: bool) -> None:
    import aiosmtplib

    from notify.providers.smtp import classify

    error = classify(aiosmtplib.SMTPRecipientRefused(code, text, "x@example.com"))

    assert getattr(error, "suppress", None) == ("bounced" if bounced else None), error


def test_a_producer_started_before_the_upgrade_consults_the_list_once_it_exists(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from notify.store import migrate
    from notify.store import store as store_module
    from tests.test_migrations import a_store_of_the_previous_release

    url = f"sqlite:///{tmp_path}/old.db"
    a_store_of_the_previous_release(url)
    env["NOTIFY_DATABASE_URL"] = url
    from notify.settings import Settings

    producer = Notifier(Settings.from_env(env))
    try:
        first = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"})
        assert first.deliveries[0].status == Status.QUEUED
        migrate.upgrade(url)
        Notifier(Settings.from_env(env)).suppress("email", "ada@example.com")
        monkeypatch.setattr(store_module, "REVISION_RECHECK", 0.0)  # its next look: at once

        later = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"})

        assert later.deliveries[0].status == Status.SUPPRESSED
    finally:
        producer.close()


def test_what_was_queued_or_scheduled_before_the_suppression_is_not_sent(
    on_store: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    from datetime import UTC, datetime, timedelta

    producer = notifier()
    queued = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}).deliveries[0].id
    soon = datetime.now(UTC) + timedelta(seconds=1)
    scheduled = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "A"}, send_at=soon)
    scheduled_id = scheduled.deliveries[0].id
    producer.suppress("email", "ada@example.com", "bounced")
    worker = a_worker(producer.store)

    # ended: this claim found the address suppressed and recorded it (metrics count it once)
    assert producer.store.claim(queued, worker) == Refusal(status=Status.SUPPRESSED, ended=True)
    assert producer.store.claim(queued, worker) == Refusal(status=Status.SUPPRESSED, ended=False)
    wait_for(lambda: producer.store.release_due(), timeout=10, what="the send_at")
    assert producer.store.claim(scheduled_id, worker) == Refusal(status=Status.SUPPRESSED, ended=True)
    found = {producer.store.get(i).status for i in (queued, scheduled_id)}  # type: ignore[union-attr]
    assert found == {Status.SUPPRESSED}


def test_suppress_says_whether_the_address_was_listed_already(
    on_store: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    producer = notifier()  # on PostgreSQL the driver's rowcount of that INSERT is -1: not an answer
    assert producer.suppress("email", "ada@example.com") is True
    assert producer.suppress("email", "ada@example.com", reason="bounced") is False
    assert [s.reason for s in producer.suppressions()] == [SuppressionReason.MANUAL]
