"""notify.testing: what applications use to test their own sends."""

from __future__ import annotations

from pathlib import Path

import pytest

import notify
import notify.testing
from notify.errors import PermanentDeliveryError
from notify.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, templates_dir=REPO / "templates")


def test_capture_renders_and_delivers_every_channel_into_the_outbox(settings: Settings) -> None:
    with notify.testing.capture(settings) as outbox:
        result = notify.send(
            "welcome",
            {"email": "ada@example.com", "phone": "+14155550100", "push_token": "tok"},
            data={"name": "Ada"},
        )
        statuses = {str(d.channel): d.status for d in notify.status(result.id)}

    [email], [sms], [push] = outbox.emails, outbox.sms, outbox.pushes
    assert email.subject == "Welcome, Ada!" and email.to == "ada@example.com"
    assert sms.body == "Welcome, Ada! Your account is ready."
    assert push.data == {"notify_delivery_id": push.delivery_id}
    assert statuses == {"email": "sent", "sms": "sent", "push": "sent"}


def test_capture_still_rejects_bad_input(settings: Settings) -> None:
    with notify.testing.capture(settings) as outbox, pytest.raises(notify.ValidationError) as raised:
        notify.send("welcome", {"email": "not-an-address"}, data={"name": "Ada"})

    assert raised.value.field == "to.email"
    assert outbox.messages == []


def test_a_scripted_failure_shows_in_status(settings: Settings) -> None:
    with notify.testing.capture(settings) as outbox:
        outbox.fail_next(
            PermanentDeliveryError("No such user", channel="email", provider="memory", code="550")
        )
        result = notify.send("welcome", {"email": "gone@example.com"}, data={"name": "Gone"})
        [delivery] = notify.status(result.id)

    assert (delivery.status, delivery.error_code, delivery.last_error) == ("failed", "550", "No such user")
    assert outbox.messages == []


def test_duplicates_are_suppressed_inside_capture_too(settings: Settings) -> None:
    with notify.testing.capture(settings) as outbox:
        for _ in range(3):
            notify.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, dedup_key="k")

    assert len(outbox.emails) == 1


def test_fail_next_by_kind_makes_the_error_for_the_message_it_meets(settings: Settings) -> None:
    with notify.testing.capture(settings) as outbox:
        outbox.fail_next(permanent=True, reason="550 5.1.1 no such user", code="550")
        outbox.fail_next()  # transient: retried by the channel's policy
        gone = notify.send("welcome", {"email": "gone@example.com"}, data={"name": "Gone"})
        later = notify.send("welcome", {"phone": "+14155550100"}, data={"name": "Ada"})
        [failed], [retrying] = notify.status(gone.id), notify.status(later.id)

    assert (failed.status, failed.error_code, failed.last_error) == (
        "failed",
        "550",
        "550 5.1.1 no such user",
    )
    assert (retrying.status, retrying.channel, retrying.last_error) == (
        "retrying",
        "sms",
        "failed by notify.testing",
    )
    assert outbox.messages == []


def test_the_pytest_plugin_gives_every_test_an_outbox(notify_outbox: notify.testing.Outbox) -> None:
    """notify installs the `notify_outbox` fixture for pytest (entry point pytest11)."""
    result = notify.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})

    [email] = notify_outbox.emails
    assert email.subject == "Welcome, Ada!" and email.delivery_id == result.deliveries[0].id
