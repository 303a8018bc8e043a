"""Text from outside shown to people: control characters escaped on a terminal and in a log."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notify.api import Notifier
from notify.cli.output import table
from notify.models import Status
from notify.store import Claim, NewDelivery
from notify.text import EscapingFilter, printable
from tests.support.processes import Worker, wait_for
from tests.support.records import a_worker, record_one

# What a receiver's reason phrase may hold: set the title, clear the screen, home
# the cursor, a bare CR to draw over the row, a forged row, bidi and line separators.
HOSTILE = "Gone\x1b]0;owned\x07\x1b[2J\x1b[H\rDELIVERY forged  sent\u202eevil\u2028x\x9b31m\x7f"
RAW = ("\x1b", "\r", "\x07", "\u202e", "\u2028", "\x9b", "\x7f")


# -- the escaping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("a\rb\nc\td", "a\\x0db\\x0ac\\x09d"),
        ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\udce4", "\\udce4"),
    ],
)
def test_control_characters_are_escaped(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_text_is_left_as_it_is() -> None:
    text = '550 5.1.1 Zustellung an Jürgen fehlgeschlagen: 用户不存在 📭 C:\\mail "quoted" é'
    assert printable(text) == text


def test_escaped_text_escapes_to_itself() -> None:
    assert printable(printable(HOSTILE)) == printable(HOSTILE)


def test_lines_keep_their_newlines_and_tabs_but_not_a_bare_cr() -> None:
    assert printable("one\n\ttwo\rthree\x1b", lines=True) == "one\n\ttwo\\x0dthree\\x1b"


def test_a_table_escapes_its_cells_and_stays_aligned() -> None:
    shown = table(["delivery", "last error"], [("d-1", HOSTILE), ("d-2", "ok")])
    assert not any(c in shown for c in RAW)
    assert len(shown.splitlines()) == 3
    assert printable(HOSTILE) in shown


# -- logs ----------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing to a string through a handler with the escaping filter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(EscapingFilter())
    logger = logging.getLogger(f"test.shown.{uuid.uuid4()}")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def test_a_log_line_carries_the_reason_escaped_on_one_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logger.warning("delivery %s failed for good: %s", "d-1", HOSTILE + "\nforged line")
    written = out.getvalue()
    assert written == f"delivery d-1 failed for good: {printable(HOSTILE)}\\x0aforged line\n"


def test_a_traceback_keeps_its_lines_and_escapes_the_message(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        logger.exception("unexpected error from the provider")
    written = out.getvalue()
    assert written.startswith("unexpected error from the provider\nTraceback (most recent call last):\n")
    assert f"ValueError: {printable(HOSTILE)}\n" in written
    assert not any(c in written for c in RAW)


# -- the CLI on a terminal -------------------------------------------------------------------


def on_a_terminal(env: dict[str, str], cwd: Path, *args: str, timeout: float = 60) -> tuple[int, bytes]:
    """Run `notify ARGS` with a pseudo-terminal as its stdout and stderr: its exit status and
    every byte it wrote."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "notify.cli", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    written = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            written += chunk
        return process.wait(timeout=max(deadline - time.monotonic(), 1)), written
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)


def failed_with(producer: Notifier, reason: str, code: str) -> tuple[str, str]:
    """A notification whose one delivery failed for good with `reason`, recorded through the
    store as a worker records it: (notification id, delivery id)."""
    store = producer.store
    delivery = NewDelivery(
        id=str(uuid.uuid4()),
        channel="webhook",
        address="https://hooks.example.com/in",
        priority="normal",
        status=Status.QUEUED,
        dedup_key=None,
        dedup_window=0.0,
    )
    notification_id = str(uuid.uuid4())
    record_one(store, notification_id, "order_shipped", None, "{}", [delivery])
    claim = store.claim(delivery.id, a_worker(store))
    assert isinstance(claim, Claim), claim
    assert store.mark_failed(claim, reason, code)
    return notification_id, delivery.id


def test_a_hostile_reason_reads_back_escaped_on_a_terminal_and_exact_as_json(
    env: dict[str, str], notifier: Callable[[], Notifier], tmp_path: Path
) -> None:
    notification_id, delivery_id = failed_with(notifier(), HOSTILE, "http_410\x1b[2J")
    assert notifier().store.get(delivery_id).last_error == HOSTILE  # type: ignore[union-attr]

    for args in (["status", notification_id], ["dlq", "list"]):
        code, written = on_a_terminal(env, tmp_path, *args)
        assert code == 0, written
        shown = written.decode()
        assert delivery_id in shown
        assert printable(HOSTILE) in shown
        if args[0] == "dlq":  # the code is a column of the dead letters only
            assert "http_410\\x1b[2J" in shown
        # The terminal's own line ends are CR LF: no CR but those, no ESC at all.
        assert not any(c in shown.replace("\r\n", "\n") for c in RAW), shown

    status = subprocess.run(
        [sys.executable, "-m", "notify.cli", "status", notification_id, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [delivery] = json.loads(status.stdout)
    assert (delivery["last_error"], delivery["error_code"]) == (HOSTILE, "http_410\x1b[2J")
    letters = subprocess.run(
        [sys.executable, "-m", "notify.cli", "dlq", "list", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [letter] = json.loads(letters.stdout)
    assert (letter["reason"], letter["code"]) == (HOSTILE, "http_410\x1b[2J")


# -- a worker's log ------------------------------------------------------------------------------


class HostileReceiver:
    """A webhook receiver on 127.0.0.1 answering every POST 410 with a reason phrase of ESC
    sequences and a bare CR, as raw bytes on the status line."""

    REASON = b"Gone\x1b]0;owned\x07\x1b[2J\x1b[H\rDELIVERY forged sent \x9b31m"

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/hook"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.socket.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(65536)
            if not chunk:
                return
            request += chunk
        head, _, body = request.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        length = int({k.strip().lower(): v for k, v in fields.items()}.get(b"content-length", b"0"))
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 410 " + self.REASON + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.socket.close()


@pytest.fixture
def receiver() -> Iterator[HostileReceiver]:
    server = HostileReceiver()
    yield server
    server.close()


def test_a_worker_logs_a_hostile_reason_phrase_escaped(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    receiver: HostileReceiver,
) -> None:
    env.update({"NOTIFY_WEBHOOK_SECRET": "whsec-shown", "NOTIFY_WEBHOOK_ALLOW_PRIVATE": "1"})
    worker = start_worker("webhook", "-c", "1")
    producer = notifier()
    result = producer.send(
        "order_shipped",
        to={"webhook": receiver.url},
        data={"name": "Ada", "order_id": "A-1", "carrier": "DHL", "tracking_number": "T", "items": []},
        channels=["webhook"],
    )
    [delivery] = result.deliveries

    def failed() -> bool:
        found = producer.store.get(delivery.id)
        return found is not None and found.status == Status.FAILED

    wait_for(failed, timeout=60, what="the webhook delivery to fail")
    stored = producer.store.get(delivery.id)
    assert stored is not None and "\x1b[2J" in (stored.last_error or "")  # kept as it came
    logged = wait_for(
        lambda: [
            line
            for line in worker.log.read_bytes().splitlines()
            if delivery.id.encode() in line and b"failed for good" in line
        ],
        timeout=10,
        what="the worker's line for the failure",
    )
    log = worker.log.read_bytes()
    assert b"\\x1b[2J" in logged[0], logged
    assert b"\x1b" not in log and b"\x07" not in log and b"\xc2\x9b" not in log, log
    assert b"\r" not in log, log
