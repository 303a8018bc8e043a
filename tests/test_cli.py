"""The `notify` command, run as a user runs it: a subprocess with the test's environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
ADA = ["--to-email", "ada@example.com", "--to-phone", "+14155550100"]
ADA_DATA = ["--data", '{"name": "Ada"}']

Run = Callable[..., subprocess.CompletedProcess[str]]


def notify_cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notify.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def count_rows(database: Path, table: str) -> int:
    if not database.exists():
        return 0
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name=?", (table,)).fetchone():
            return 0
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def assert_one_line_error(completed: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert completed.returncode != 0, completed.stdout
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("error: "), completed.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    return lines[0]


@pytest.fixture
def run(env: dict[str, str], tmp_path: Path) -> Run:
    """Run `notify ARGS...` in the test's environment, from a scratch directory."""
    return lambda *args, **kw: notify_cli(env, tmp_path, *args, **kw)


@pytest.fixture
def home(env: dict[str, str]) -> Path:
    return Path(env["NOTIFY_HOME"])


# -- send and status -----------------------------------------------------------------


def test_send_prints_the_full_notification_and_delivery_ids(run: Run, home: Path) -> None:
    completed = run("send", "welcome", *ADA, *ADA_DATA)
    assert completed.returncode == 0, completed.stderr
    first = completed.stdout.splitlines()[0]
    match = re.fullmatch(r"notification (\S+)", first)
    assert match, completed.stdout
    notification_id = match[1]
    assert UUID.fullmatch(notification_id)
    status = json.loads(run("status", notification_id, "--json").stdout)
    assert len(status) == 2
    for delivery in status:
        assert delivery["id"] in completed.stdout
    assert "…" not in completed.stdout
    assert "..." not in completed.stdout
    assert count_rows(home / "notify.db", "notify_deliveries") == 2
    assert count_rows(home / "broker.db", "kombu_message") == 2


def test_send_json_gives_the_same_ids_as_status(run: Run) -> None:
    completed = run(
        "send",
        "welcome",
        *ADA,
        "--to-push-token",
        "tok-ada",
        *ADA_DATA,
        "--channel",
        "email",
        "--channel",
        "push",
        "--priority",
        "high",
        "--json",
    )
    assert completed.returncode == 0, completed.stderr
    sent = json.loads(completed.stdout)
    assert UUID.fullmatch(sent["id"])
    assert sorted(d["channel"] for d in sent["deliveries"]) == ["email", "push"]
    assert all(UUID.fullmatch(d["id"]) for d in sent["deliveries"])
    assert all(d["status"] == "queued" and d["notification_id"] == sent["id"] for d in sent["deliveries"])

    status = run("status", sent["id"], "--json")
    assert status.returncode == 0, status.stderr
    assert {d["id"] for d in json.loads(status.stdout)} == {d["id"] for d in sent["deliveries"]}


def test_status_shows_every_delivery_with_its_full_id(run: Run) -> None:
    sent = json.loads(run("send", "welcome", *ADA, *ADA_DATA, "--json").stdout)
    completed = run("status", sent["id"])
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].split()[:3] == ["DELIVERY", "CHANNEL", "STATUS"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows == {d["id"]: [d["channel"], "queued"] for d in sent["deliveries"]}


def test_status_of_an_unknown_notification_fails(run: Run) -> None:
    completed = run("status", "00000000-0000-0000-0000-000000000000")
    assert_one_line_error(completed, "00000000-0000-0000-0000-000000000000")
    assert completed.stdout == ""


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (
            ["send", "no_such_template", "--to-email", "ada@example.com", *ADA_DATA],
            ["template", "no_such_template"],
        ),
        (["send", "welcome", "--to-email", "ada@example", *ADA_DATA], ["to.email"]),
        (["send", "welcome", "--to-email", "ada@example.com", "--data", "{name: Ada}"], ["--data", "JSON"]),
        (["send", "welcome", "--to-email", "ada@example.com", "--data", '["Ada"]'], ["--data"]),
        (
            ["send", "welcome", "--to-email", "ada@example.com", *ADA_DATA, "--priority", "urgent"],
            ["priority", "urgent"],
        ),
        (["send", "welcome", "--to-phone", "4155550100", *ADA_DATA], ["to.phone"]),
        (["send", "welcome", "--to-email", "ada@example.com", "--data", "{}"], ["data.name"]),
        (
            ["send", "welcome", "--to-email", "ada@example.com", *ADA_DATA, "--channel", "fax"],
            ["--channel", "'fax' is not one of 'email', 'sms', 'push', 'webhook'", "(notify send -h)"],
        ),
        (["send", "welcome", "--to-email", "ada@example.com", "--urgent"], ["No such option '--urgent'"]),
    ],
    ids=[
        "unknown template",
        "bad email",
        "data not JSON",
        "data not an object",
        "unknown priority",
        "phone not E.164",
        "missing variable",
        "unknown channel",
        "unknown option",
    ],
)
def test_bad_input_exits_non_zero_with_a_one_line_reason_and_records_nothing(
    run: Run, home: Path, args: list[str], phrases: list[str]
) -> None:
    completed = run(*args)
    assert_one_line_error(completed, *phrases)
    assert "Traceback" not in completed.stderr
    assert count_rows(home / "notify.db", "notify_notifications") == 0
    assert count_rows(home / "notify.db", "notify_deliveries") == 0
    assert count_rows(home / "broker.db", "kombu_message") == 0


# -- templates --------------------------------------------------------------------------

SAMPLES = {"welcome", "password_reset", "order_shipped"}


def test_templates_list_shows_the_samples_with_their_channels(run: Run) -> None:
    completed = run("templates", "list")
    assert completed.returncode == 0, completed.stderr
    rows = {line.split()[0]: line.split()[1] for line in completed.stdout.splitlines()[1:]}
    assert set(rows) >= SAMPLES
    assert all(rows[name] == "email,sms,push,webhook" for name in SAMPLES)


def test_templates_list_json(run: Run) -> None:
    completed = run("templates", "list", "--json")
    assert completed.returncode == 0, completed.stderr
    listed = {t["name"]: t for t in json.loads(completed.stdout)}
    assert set(listed) >= SAMPLES
    for name in SAMPLES:
        assert listed[name]["channels"] == ["email", "sms", "push", "webhook"]
    assert listed["welcome"]["locales"] == ["de"]
    assert listed["welcome"]["variables"] == ["name"]
    assert {"code", "expires_minutes", "reset_url"} <= set(listed["password_reset"]["variables"])


def test_templates_check_passes_on_the_repo_templates(run: Run) -> None:
    completed = run("templates", "check")
    assert completed.returncode == 0, completed.stderr
    assert "OK" in completed.stdout


def test_templates_check_fails_on_a_broken_template_naming_file_and_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "tpl"
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "email.subject.j2").write_text("Hi")
    (root / "broken" / "email.txt.j2").write_text("line one\n{{ name }\n")
    (root / "half").mkdir()
    (root / "half" / "push.title.j2").write_text("Title")
    completed = notify_cli({**env, "NOTIFY_TEMPLATES_DIR": str(root)}, tmp_path, "templates", "check")
    assert completed.returncode == 1
    assert "broken/email.txt.j2:2" in completed.stderr
    assert "push.body.j2" in completed.stderr
    assert "OK" not in completed.stdout


def test_templates_preview_prints_every_part(run: Run) -> None:
    completed = run("templates", "preview", "welcome", "--channel", "email", "--data", '{"name": "Ada <3"}')
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "--- subject\nWelcome, Ada <3!" in out
    assert "--- text\nHello Ada <3," in out
    assert "--- html" in out
    assert "Hello Ada &lt;3," in out


def test_templates_preview_in_a_locale(run: Run) -> None:
    completed = run("templates", "preview", "welcome", "--channel", "sms", *ADA_DATA, "--locale", "de")
    assert completed.returncode == 0, completed.stderr
    assert "Willkommen, Ada!" in completed.stdout


def test_templates_preview_writes_the_html_part_to_a_file_for_a_browser(run: Run, tmp_path: Path) -> None:
    page = tmp_path / "welcome.html"
    completed = run("templates", "preview", "welcome", "--channel", "email", *ADA_DATA, "--html", str(page))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.rstrip().endswith(f"--- html written to {page}")
    assert "Hello Ada," in page.read_text(encoding="utf-8") and "<" in page.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("channel", "where", "phrase"),
    [
        ("sms", "page.html", "has no HTML part for sms"),
        ("email", "no-such-folder/page.html", "No such file or directory"),
    ],
)
def test_templates_preview_html_without_an_html_part_or_a_place_to_write_is_one_line(
    run: Run, tmp_path: Path, channel: str, where: str, phrase: str
) -> None:
    completed = run(
        "templates", "preview", "welcome", "--channel", channel, *ADA_DATA, "--html", str(tmp_path / where)
    )
    assert_one_line_error(completed, phrase)
    assert not (tmp_path / where).exists()


def test_templates_preview_with_missing_data_fails_naming_the_variable(run: Run) -> None:
    completed = run("templates", "preview", "welcome", "--channel", "email", "--data", "{}")
    assert_one_line_error(completed, "data.name")


# -- dead letters ---------------------------------------------------------------------------


def test_dlq_list_on_an_empty_store_prints_just_a_header(run: Run) -> None:
    completed = run("dlq", "list")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].split()[:2] == ["DELIVERY", "CHANNEL"]


def test_dlq_list_json_on_an_empty_store_is_an_empty_list(run: Run) -> None:
    completed = run("dlq", "list", "--json")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == []


def test_dlq_replay_needs_ids_or_all(run: Run) -> None:
    completed = run("dlq", "replay")
    assert completed.returncode != 0
    assert "--all" in completed.stderr


def test_dlq_replay_of_an_unknown_id_fails_naming_it(run: Run) -> None:
    completed = run("dlq", "replay", "00000000-0000-0000-0000-00000000dead")
    assert completed.returncode != 0
    assert "00000000-0000-0000-0000-00000000dead" in completed.stderr


def test_dlq_replay_of_an_id_that_is_not_text_is_one_line_naming_it(run: Run, home: Path) -> None:
    undecodable = os.fsdecode(b"dead\xff")  # as Python reads a byte that is not UTF-8 from argv

    completed = run("dlq", "replay", "00000000-0000-0000-0000-00000000dead", undecodable)

    assert completed.returncode == 2
    assert_one_line_error(completed, "ids[1]: ", "lone surrogates")


# -- workers refuse to start without their settings ---------------------------------------------


def test_an_email_worker_without_a_from_address_refuses_to_start(env: dict[str, str], tmp_path: Path) -> None:
    environ = {k: v for k, v in env.items() if k != "NOTIFY_EMAIL_FROM"}
    completed = notify_cli(environ, tmp_path, "worker", "email", timeout=60)
    line = assert_one_line_error(completed, "NOTIFY_EMAIL_FROM")
    assert "ready" not in completed.stdout + line


def test_an_sms_worker_on_twilio_without_credentials_refuses_to_start(
    env: dict[str, str], tmp_path: Path
) -> None:
    environ = {**env, "NOTIFY_SMS_BACKEND": "twilio"}
    completed = notify_cli(environ, tmp_path, "worker", "sms", timeout=60)
    line = assert_one_line_error(completed)
    assert re.search(r"NOTIFY_TWILIO_[A-Z_]+", line)


def test_a_worker_with_an_unknown_backend_refuses_to_start(env: dict[str, str], tmp_path: Path) -> None:
    completed = notify_cli({**env, "NOTIFY_PUSH_BACKEND": "carrier-pigeon"}, tmp_path, "worker", "push")
    assert_one_line_error(completed, "NOTIFY_PUSH_BACKEND", "carrier-pigeon")


def test_version_and_short_help(env: dict[str, str], tmp_path: Path) -> None:
    import notify

    for flag in ("--version", "-V"):
        shown = notify_cli(env, tmp_path, flag)
        assert (shown.returncode, shown.stdout) == (0, f"notify {notify.__version__}\n")
    for argv in (["-h"], ["templates", "-h"], ["suppressions", "add", "-h"]):
        helped = notify_cli(env, tmp_path, *argv)
        assert helped.returncode == 0 and helped.stdout.startswith("Usage: notify"), helped.stderr


def test_templates_check_fails_on_a_missing_or_empty_folder(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    missing = notify_cli(
        {**env, "NOTIFY_TEMPLATES_DIR": str(tmp_path / "nope")}, tmp_path, "templates", "check"
    )
    empty = notify_cli(
        {**env, "NOTIFY_TEMPLATES_DIR": str(tmp_path / "empty")}, tmp_path, "templates", "check"
    )

    assert (missing.returncode, missing.stdout) == (1, "")
    assert (
        missing.stderr.strip() == f"error: NOTIFY_TEMPLATES_DIR {str(tmp_path / 'nope')!r} is not a directory"
    )
    assert (empty.returncode, empty.stdout) == (1, "")
    assert empty.stderr.strip() == f"error: no templates under {str(tmp_path / 'empty')!r}"


def test_templates_list_shows_a_broken_template_with_why_and_the_others(
    env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "tpl"
    shutil.copytree(REPO / "templates", root)
    (root / "welcome" / "email.txt.j2").write_text("{{ name }\n")
    listed = notify_cli({**env, "NOTIFY_TEMPLATES_DIR": str(root)}, tmp_path, "templates", "list")
    as_json = notify_cli({**env, "NOTIFY_TEMPLATES_DIR": str(root)}, tmp_path, "templates", "list", "--json")

    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "broken: welcome/email.txt.j2:1: unexpected '}'" in rows["welcome"]
    assert "order_id" in rows["order_shipped"]
    assert {r["name"]: r.get("problem") for r in json.loads(as_json.stdout)}["welcome"] == (
        "welcome/email.txt.j2:1: unexpected '}'"
    )


def test_status_takes_a_delivery_id_and_says_when_the_next_try_is_and_why(
    run: Run, env: dict[str, str]
) -> None:
    from notify.settings import Settings
    from notify.store import Claim, Store
    from tests.support.records import a_worker

    sent = json.loads(run("send", "welcome", *ADA, *ADA_DATA, "--json").stdout)
    email = next(d["id"] for d in sent["deliveries"] if d["channel"] == "email")
    store = Store(Settings.from_env(env).resolved_database_url)
    claim = store.claim(email, a_worker(store))
    assert isinstance(claim, Claim), claim
    at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert store.mark_retrying(claim, "421 4.7.0 try again later", "421", at, provider="smtp")
    store.close()

    one = run("status", email)
    whole = run("status", sent["id"])

    assert one.returncode == 0, one.stderr
    header, row, blank, tries_header, try_row = one.stdout.splitlines()
    assert header.split()[:6] == ["DELIVERY", "CHANNEL", "STATUS", "ATTEMPTS", "NEXT", "ATTEMPT"]
    assert row.split()[:5] == [email, "email", "retrying", "1", "2031-01-02T03:04:05+00:00"]
    assert row.endswith("421 421 4.7.0 try again later")
    assert (blank, tries_header.split()[:4]) == ("", ["#", "PROVIDER", "OUTCOME", "CODE"])
    assert try_row.split()[:9] == ["1", "smtp", "retry", "421", "421", "4.7.0", "try", "again", "later"]
    [shown] = json.loads(run("status", email, "--json").stdout)
    assert [(a["number"], a["outcome"], a["code"]) for a in shown["attempt_history"]] == [(1, "retry", "421")]
    assert len(whole.stdout.splitlines()) == 1 + len(sent["deliveries"])
    missing = run("status", "not-an-id")
    assert_one_line_error(missing, "no notification or delivery 'not-an-id'")


def test_data_comes_from_a_file_with_at(run: Run, tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text('{"name": "Ada"}')
    (tmp_path / "latin.json").write_bytes(b'{"name": "J\xfcrgen"}')

    sent = run("send", "welcome", *ADA, "--data", f"@{tmp_path / 'data.json'}", "--json")
    preview = run(
        "templates", "preview", "welcome", "--channel", "sms", "--data", f"@{tmp_path / 'data.json'}"
    )
    missing = run("send", "welcome", *ADA, "--data", f"@{tmp_path / 'nope.json'}")
    latin = run("send", "welcome", *ADA, "--data", f"@{tmp_path / 'latin.json'}")

    assert sent.returncode == 0, sent.stderr
    assert preview.returncode == 0 and "Ada" in preview.stdout
    assert_one_line_error(missing, "--data: cannot read")
    assert "No such file or directory" in missing.stderr
    assert_one_line_error(latin, "is not UTF-8")


@pytest.mark.parametrize("command", ["send", "send-many"])
def test_the_help_lists_the_channels_and_priorities_to_choose_from(run: Run, command: str) -> None:
    completed = run(command, "-h")
    assert completed.returncode == 0, completed.stderr
    assert "--channel [email|sms|push|webhook]" in completed.stdout
    assert "--priority [high|normal|low]" in completed.stdout


def test_a_group_without_its_command_shows_its_help_and_a_bad_top_level_option_is_one_line(run: Run) -> None:
    group = run("dlq")
    shown = group.stdout + group.stderr  # Click 8.2+ prints it on stderr, with status 2
    assert shown.startswith("Usage: notify dlq") and "replay" in shown and "error:" not in shown
    bogus = run("--bogus")
    assert_one_line_error(bogus, "No such option '--bogus'", "(notify -h)")
    assert run("--version").returncode == 0 and run("dlq", "-h").returncode == 0
