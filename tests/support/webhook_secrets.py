"""A NOTIFY_WEBHOOK_SECRETS hook for tests: each URL's secrets, read at every call.

From the JSON file $NOTIFY_TEST_WEBHOOK_SECRETS names, {url: secret or [secrets]};
a URL not in it gets None (the default secret).
`write` replaces it whole, so a worker never reads half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def secrets_for(url: str) -> str | list[str] | None:
    with open(os.environ["NOTIFY_TEST_WEBHOOK_SECRETS"], encoding="utf-8") as f:
        answer: str | list[str] | None = json.load(f).get(url)
    return answer


def write(path: Path, secrets: dict[str, str | list[str]]) -> None:
    """Set the hook's answers, atomically."""
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(secrets), encoding="utf-8")
    os.replace(staged, path)
