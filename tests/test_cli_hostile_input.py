"""Hostile files and input on the command line: one line `error: ...`, status 2, nothing recorded."""

from __future__ import annotations

import codecs
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import notify
from notify.api import Notifier
from notify.settings import Settings
from tests.test_cli import Run, assert_one_line_error, count_rows, notify_cli

REPO = Path(__file__).resolve().parents[1]
DEEP = "[" * 20_000 + "]" * 20_000
HUGE = "9" * 5000
ADA = {"to": {"email": "ada@example.com"}, "data": {"name": "Ada"}}


@pytest.fixture
def run(env: dict[str, str], tmp_path: Path) -> Run:
    """Run `notify ARGS...` in the test's environment, from a scratch directory."""
    return lambda *args, **kw: notify_cli(env, tmp_path, *args, **kw)


@pytest.fixture
def home(env: dict[str, str]) -> Path:
    return Path(env["NOTIFY_HOME"])


def assert_refused(completed: subprocess.CompletedProcess[str], home: Path, *phrases: str) -> None:
    """One line naming `phrases`, status 2, no traceback, and nothing in the store or on the broker."""
    assert completed.returncode == 2, (completed.stdout, completed.stderr)
    assert_one_line_error(completed, *phrases)
    assert "Traceback" not in completed.stderr + completed.stdout
    assert count_rows(home / "notify.db", "notify_notifications") == 0
    assert count_rows(home / "notify.db", "notify_deliveries") == 0
    assert count_rows(home / "broker.db", "kombu_message") == 0


# -- send-many files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "phrases"),
    [
        ("latin1.csv", "email,data.name\nrene@example.com,René\n".encode("latin-1"), ["line 2: not UTF-8"]),
        (
            "excel.csv",
            codecs.BOM_UTF16_LE + "email,data.name\nrene@example.com,René\n".encode("utf-16-le"),
            ["line 1:", "UTF-16", "save it as UTF-8"],
        ),
        (
            "bad.jsonl",
            (json.dumps(ADA) + "\n").encode()
            + b'{"to": {"email": "a@example.com"}, "data": {"name": "\xff"}}\n',
            ["line 2: not UTF-8 (byte 0xff)"],
        ),
        (
            "deep.jsonl",
            ('{"to": {"email": "a@example.com"}, "data": {"name": ' + DEEP + "}}\n").encode(),
            ["line 1: JSON nested too deeply"],
        ),
        (
            "huge.jsonl",
            ('{"to": {"email": "a@example.com"}, "data": {"name": ' + HUGE + "}}\n").encode(),
            ["line 1: JSON with an integer of more than 4300 digits"],
        ),
        (
            "deep.csv",
            ('email,data\na@example.com,"{""name"": ' + DEEP + '}"\n').encode(),
            ["line 2: data: JSON nested too deeply"],
        ),
    ],
    ids=[
        "latin-1 csv",
        "utf-16 csv",
        "bad utf-8 json lines",
        "deep json lines",
        "huge integer",
        "deep csv data",
    ],
)
def test_send_many_refuses_a_file_it_cannot_read_in_one_line(
    run: Run, home: Path, tmp_path: Path, name: str, content: bytes, phrases: list[str]
) -> None:
    rows = tmp_path / name
    rows.write_bytes(content)
    assert_refused(run("send-many", str(rows), "--template", "welcome"), home, *phrases)


def test_send_many_reads_a_csv_with_the_byte_order_mark_excel_writes(
    run: Run, home: Path, tmp_path: Path
) -> None:
    rows = tmp_path / "excel.csv"
    rows.write_bytes(codecs.BOM_UTF8 + "email,data.name\nrene@example.com,René\n".encode())

    completed = run("send-many", str(rows), "--template", "welcome", "--json")

    assert completed.returncode == 0, completed.stderr
    [result] = json.loads(completed.stdout)
    assert result["line"] == 2
    assert count_rows(home / "notify.db", "notify_notifications") == 1


# -- --data -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ('{"name": ' + DEEP + "}", "--data: JSON nested too deeply"),
        ('{"name": ' + HUGE + "}", "--data: JSON with an integer of more than 4300 digits"),
    ],
    ids=["nested 20000 deep", "5000 digits"],
)
@pytest.mark.parametrize(
    "command",
    [
        ["send", "welcome", "--to-email", "ada@example.com"],
        ["templates", "preview", "welcome", "--channel", "email"],
    ],
    ids=["send", "preview"],
)
def test_data_the_json_parser_cannot_take_is_one_line(
    run: Run, home: Path, command: list[str], data: str, reason: str
) -> None:
    assert_refused(run(*command, "--data", data), home, reason)


# -- templates --------------------------------------------------------------------------------


@pytest.fixture
def hostile_templates(env: dict[str, str], tmp_path: Path) -> Path:
    """A templates root with the samples and `latin`, whose text part is Latin-1, and `broken`,
    whose text part does not parse."""
    root = tmp_path / "templates"
    shutil.copytree(REPO / "templates", root)
    for name, text in (
        ("latin", "Hallo Jürgen {{ name }}\n".encode("latin-1")),
        ("broken", b"Hi {{ name }\n"),
    ):
        (root / name).mkdir()
        for part in ("email.subject.j2", "email.html.j2"):
            shutil.copy(REPO / "templates" / "welcome" / part, root / name / part)
        (root / name / "email.txt.j2").write_bytes(text)
    env["NOTIFY_TEMPLATES_DIR"] = str(root)
    return root


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("latin", "template: latin/email.txt.j2 is not UTF-8 (byte 0xfc at offset 7)"),
        ("broken", "template: broken/email.txt.j2:1: unexpected '}'"),
    ],
)
@pytest.mark.parametrize("command", ["send", "list"])
def test_a_template_that_does_not_read_or_parse_is_one_line(
    run: Run, home: Path, hostile_templates: Path, command: str, template: str, reason: str
) -> None:
    (hostile_templates / ("broken" if template == "latin" else "latin")).rename(hostile_templates / "_aside")
    if command == "send":
        args = ["send", template, "--to-email", "ada@example.com", "--data", '{"name": "Ada"}']
        assert_refused(run(*args), home, reason)
        return
    listed = run("templates", "list")  # every template listed, the broken one with why: no traceback
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(template + " ")]
    assert row.endswith("broken: " + reason.removeprefix("template: "))


def test_templates_check_names_a_template_that_is_not_utf8(run: Run, hostile_templates: Path) -> None:
    completed = run("templates", "check")
    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stderr.splitlines() == [
        "broken/email.txt.j2:1: unexpected '}'",
        "latin/email.txt.j2 is not UTF-8 (byte 0xfc at offset 7)",
    ]


def test_send_raises_a_template_error_naming_a_template_that_is_not_utf8(
    env: dict[str, str], hostile_templates: Path, notifier: Callable[[], Notifier]
) -> None:
    with pytest.raises(notify.TemplateError, match=r"latin/email\.txt\.j2 is not UTF-8") as raised:
        notifier().send("latin", {"email": "ada@example.com"}, data={"name": "Ada"})
    assert raised.value.field == "template"


# -- settings ---------------------------------------------------------------------------------


def unusable_homes(tmp_path: Path) -> list[Path]:
    """NOTIFY_HOMEs no process can create: under a file, in /proc (ENOENT), in /sys (EPERM, also as root)."""
    (tmp_path / "a-file").write_text("")
    return [tmp_path / "a-file" / "home", Path("/proc/notify-home"), Path("/sys/notify-home")]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["under a file", "in /proc", "in /sys"])
def test_an_unusable_notify_home_is_one_line_naming_it(
    env: dict[str, str], tmp_path: Path, notifier: Callable[[], Notifier], which: int
) -> None:
    env["NOTIFY_HOME"] = str(unusable_homes(tmp_path)[which])
    args = ["send", "welcome", "--to-email", "ada@example.com", "--data", '{"name": "Ada"}']
    assert_refused(notify_cli(env, tmp_path, *args), tmp_path, "NOTIFY_HOME", env["NOTIFY_HOME"])
    with pytest.raises(notify.ConfigurationError, match="NOTIFY_HOME") as raised:
        notifier().send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    assert raised.value.setting == "NOTIFY_HOME"


@pytest.mark.parametrize("command", [["status", "x"], ["templates", "list"], ["dlq", "list"]])
def test_a_dotenv_that_is_not_utf8_is_one_line(
    env: dict[str, str], home: Path, tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / ".env").write_bytes(b"\xffNOTIFY_HOME=elsewhere\n")
    assert_refused(notify_cli(env, tmp_path, *command), home, ".env is not UTF-8 (byte 0xff at offset 0)")


def test_settings_from_a_dotenv_that_is_not_utf8_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"NOTIFY_HOME=caf\xe9\n")
    with pytest.raises(notify.ConfigurationError, match=r"\.env is not UTF-8") as raised:
        Settings.from_env()
    assert raised.value.setting == ".env"


def test_a_store_that_is_down_is_one_line_naming_its_host_and_why_but_not_its_password(
    env: dict[str, str], tmp_path: Path
) -> None:
    from tests.support.web import free_port

    port = free_port()  # nothing listens there
    env["NOTIFY_DATABASE_URL"] = (
        f"postgresql://notify:s3cr3t-pw@127.0.0.1:{port}/notify?sslpassword=also-secret"
    )
    for args in (
        ["status", "x"],
        ["dlq", "list"],
        ["dlq", "replay", "--all"],
        ["send", "welcome", "--to-email", "ada@example.com", "--data", '{"name": "A"}'],
        ["db", "upgrade"],
    ):
        completed = notify_cli(env, tmp_path, *args)
        line = completed.stderr.strip()
        assert completed.returncode == 2 and "\n" not in line and "Traceback" not in line, completed.stderr
        assert re.search(
            rf"the store is unavailable \(postgresql(\+psycopg)?://notify:\*\*\*\*@127.0.0.1:{port}/notify",
            line,
        )
        assert "Connection refused" in line
        assert "s3cr3t-pw" not in line and "also-secret" not in line


def test_an_sqlite_store_whose_folder_cannot_be_made_is_one_line_naming_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    env["NOTIFY_DATABASE_URL"] = "sqlite:////proc/no-such-folder/notify.db"
    for args in (["status", "x"], ["dlq", "list"], ["db", "upgrade"]):
        completed = notify_cli(env, tmp_path, *args)
        assert completed.returncode == 2, completed.stderr
        assert (
            completed.stderr
            == "error: the store's folder '/proc/no-such-folder' cannot be made: No such file or directory\n"
        )
