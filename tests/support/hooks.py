"""A permanent-failure hook for tests: appends each call to $NOTIFY_TEST_HOOK_FILE."""

from __future__ import annotations

import json
import os

from notify.errors import PermanentDeliveryError


def record(channel: str, address: str, error: PermanentDeliveryError) -> None:
    line = json.dumps({"channel": channel, "address": address, "code": error.code})
    with open(os.environ["NOTIFY_TEST_HOOK_FILE"], "a") as f:
        f.write(line + "\n")


class BuggyProvider:
    """A third-party provider whose from_settings fails with something other than a NotifyError."""

    name = "buggy"

    @classmethod
    def from_settings(cls, settings: object) -> BuggyProvider:
        raise KeyError("ACME_REGION")


def status(delivery_id: str, channel: str, status: str, code: str | None) -> None:
    """A NOTIFY_ON_STATUS hook: appends each call to $NOTIFY_TEST_STATUS_FILE."""
    line = json.dumps({"delivery_id": delivery_id, "channel": channel, "status": status, "code": code})
    with open(os.environ["NOTIFY_TEST_STATUS_FILE"], "a") as f:
        f.write(line + "\n")
