"""`notify demo`: the whole path on the embedded defaults, as README's first command runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_demo_delivers_every_sample_and_shows_the_duplicate_on_every_run(tmp_path: Path) -> None:
    home = tmp_path / ".notify"
    environ = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "NOTIFY_HOME": str(home),
        "NOTIFY_TEMPLATES_DIR": str(REPO / "templates"),
    }

    for _run in (1, 2):  # a second run, on the first's store and mail folder, shows the same
        demo = subprocess.run(
            [sys.executable, "-m", "notify.cli", "demo", "--timeout", "60"],
            env=environ,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert demo.returncode == 0, demo.stderr
        rows = [line for line in demo.stdout.splitlines() if re.match(r"[0-9a-f]{8}-", line)]
        statuses = [
            re.findall(r"  (sent|duplicate|failed|queued|scheduled|retrying|sending)  ", r)[0] for r in rows
        ]
        assert len(rows) == 14  # 6 notifications, 1 to 3 channels each
        assert sorted(set(statuses)) == ["duplicate", "sent"]
        assert statuses.count("duplicate") == 3 and "duplicate of" in demo.stdout
    hook, _ = [json.loads(p.read_text()) for p in (home / "outbox" / "webhook").glob("*.json")]
    assert hook["url"] == "https://hooks.example.com/orders"
    assert json.loads(hook["body"])["order_id"] == "A-1001"
    mails = sorted((home / "mail").glob("*.eml"))
    assert [m.name for m in mails] == [f"{n:05d}.eml" for n in range(1, 11)]  # run 2's after run 1's
    sms, _ = [
        json.loads(p.read_text())
        for p in (home / "outbox" / "sms").glob("*.json")
        if "493021" in p.read_text()
    ]
    assert sms["to"] == "+14155550101"  # the password reset code went to Grace's phone
