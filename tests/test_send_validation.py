"""Bad input fails fast in send(): a NotifyError naming the field, nothing recorded or enqueued."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import notify
import notify.api
import notify.settings
from notify.api import Notifier
from notify.settings import Settings

ADA = {"email": "ada@example.com", "phone": "+14155550100", "push_token": "tok-ada"}
VIAS = ["notify.send", "Notifier.send"]


def count_rows(database: Path, table: str) -> int:
    """Rows in `table` of the SQLite file, 0 when the file or the table does not exist."""
    if not database.exists():
        return 0
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        query = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
        if not conn.execute(query, (table,)).fetchone():
            return 0
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def queued_on(database: Path) -> list[str]:
    """The queue name of each message the embedded broker holds."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT q.name FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id")
        return sorted(name for (name,) in rows)


@dataclass
class Producer:
    """Sends through `notify.send()` or a `Notifier`, configured by the test's environment."""

    via: str
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch
    opened: list[Notifier] = field(default_factory=list)

    def configure(self, **variables: str) -> None:
        self.env.update(variables)
        for key in [k for k in os.environ if k.startswith(("NOTIFY_", "TWILIO_"))]:
            self.monkeypatch.delenv(key)
        for key, value in self.env.items():
            self.monkeypatch.setenv(key, value)
        reset_process_wide_notifier()

    def send(self, template: Any, /, to: Any, **options: Any) -> notify.SendResult:
        if self.via == "notify.send":
            return notify.send(template, to, **options)
        notifier = Notifier(Settings.from_env(self.env))
        self.opened.append(notifier)
        return notifier.send(template, to, **options)

    @property
    def home(self) -> Path:
        return Path(self.env["NOTIFY_HOME"])

    def notifications(self) -> int:
        return count_rows(self.home / "notify.db", "notify_notifications")

    def deliveries(self) -> int:
        return count_rows(self.home / "notify.db", "notify_deliveries")

    def enqueued(self) -> int:
        return count_rows(self.home / "broker.db", "kombu_message")

    def assert_nothing_recorded_or_enqueued(self) -> None:
        assert self.notifications() == 0
        assert self.deliveries() == 0
        assert self.enqueued() == 0


def reset_process_wide_notifier() -> None:
    if notify.api._notifier.cache_info().currsize:
        notify.api.default_notifier().close()
    notify.settings.get_settings.cache_clear()
    notify.api._notifier.cache_clear()


@pytest.fixture(params=VIAS)
def producer(
    request: pytest.FixtureRequest, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Producer]:
    monkeypatch.chdir(tmp_path)  # no stray .env or notify.toml
    made = Producer(request.param, dict(env), monkeypatch)
    made.configure()
    yield made
    for notifier in made.opened:
        notifier.close()
    reset_process_wide_notifier()


def sms_only_templates(root: Path, body: str = "Hi {{ name }}") -> Path:
    (root / "texted").mkdir(parents=True)
    (root / "texted" / "sms.txt.j2").write_text(body)
    return root


@dataclass(frozen=True)
class Bad:
    """One bad call: what to pass, the field it must name, a phrase of its message."""

    field: str
    phrase: str
    template: Any = "welcome"
    to: Any = field(default_factory=lambda: {"email": "ada@example.com"})
    options: dict[str, Any] = field(default_factory=lambda: {"data": {"name": "Ada"}})
    error: type[notify.NotifyError] = notify.ValidationError


def with_data(**options: Any) -> dict[str, Any]:
    return {"data": {"name": "Ada"}, **options}


def bad_email(address: object) -> Bad:
    return Bad("to.email", "not a valid email address", to={"email": address})


def bad_phone(number: str) -> Bad:
    return Bad("to.phone", "E.164", to={"phone": number})


BAD_INPUT = {
    "unknown template": Bad(
        "template", "unknown template", template="no_such_template", error=notify.TemplateError
    ),
    "template name with a path": Bad(
        "template", "not a template name", template="../templates", error=notify.TemplateError
    ),
    "unknown channel": Bad("channels", "unknown channel", options=with_data(channels=["fax"])),
    "channels as a plain string": Bad("channels", "not a string", options=with_data(channels="email")),
    "no channels at all": Bad("channels", "at least one", options=with_data(channels=[])),
    "variable missing from data": Bad("data.name", "name", options={"data": {}}, error=notify.TemplateError),
    "data omitted entirely": Bad("data.name", "name", options={}, error=notify.TemplateError),
    "email without @": bad_email("ada.example.com"),
    "email without a dot in the domain": bad_email("ada@localhost"),
    "email with a space": bad_email("ada lovelace@example.com"),
    "email with a space in the domain": bad_email("ada@exam ple.com"),
    "email with a trailing space": bad_email("ada@example.com "),
    "email with CR/LF header injection": bad_email("a@b.com\r\nBcc: x@y.com"),
    "email with LF only": bad_email("a@b.com\nBcc: x@y.com"),
    "email with no user": bad_email("@example.com"),
    "email with two @": bad_email("ada@@example.com"),
    "email with an empty domain label": bad_email("ada@example..com"),
    "email in angle brackets": bad_email("<ada@example.com>"),
    "two emails": bad_email("a@b.com,c@d.com"),
    "empty email": bad_email(""),
    "email not a string": bad_email(42),
    "phone without +": Bad(
        "to.phone", "E.164", to={"phone": "4155550100"}, options=with_data(channels=["sms"])
    ),
    "phone with a leading zero": bad_phone("+0123"),
    "phone with spaces": bad_phone("+1 415 555 0100"),
    "phone with dashes": bad_phone("+1-415-555-0100"),
    "phone too long": bad_phone("+1234567890123456"),
    "phone with a trailing newline": bad_phone("+14155550100\n"),
    "empty push token": Bad("to.push_token", "must not be empty", to={"push_token": ""}),
    "blank push token": Bad("to.push_token", "must not be empty", to={"push_token": "   "}),
    "unknown priority": Bad("priority", "unknown priority", options=with_data(priority="urgent")),
    "empty priority": Bad("priority", "unknown priority", options=with_data(priority="")),
    "naive send_at": Bad("send_at", "timezone-aware", options=with_data(send_at=datetime(2030, 1, 1, 9, 0))),
    "send_at as a string": Bad(
        "send_at", "must be a datetime", options=with_data(send_at="2030-01-01T09:00:00+00:00")
    ),
    "send_at as a timestamp": Bad("send_at", "must be a datetime", options=with_data(send_at=1_900_000_000)),
    "data with a set": Bad(
        "data", "JSON-serializable", options={"data": {"name": "Ada", "tags": {"a", "b"}}}
    ),
    "data with a datetime": Bad(
        "data", "JSON-serializable", options={"data": {"name": "Ada", "when": datetime.now(UTC)}}
    ),
    "data not a mapping": Bad("data", "mapping", options={"data": [("name", "Ada")]}),
    "recipient with no address at all": Bad("to", "no address", to={}),
    "to with an unknown key": Bad("to", "unknown address kind", to={"email": "ada@example.com", "fax": "1"}),
    "to as a bare string": Bad("to", "must be a Recipient or a mapping", to="ada@example.com"),
    "channel without the recipient's address": Bad(
        "to.phone", "required for the sms channel", options=with_data(channels=["sms"])
    ),
    "empty dedup_key": Bad("dedup_key", "non-empty", options=with_data(dedup_key="")),
    "dedup_key too long": Bad("dedup_key", "non-empty", options=with_data(dedup_key="k" * 201)),
    "locale with a path": Bad(
        "locale", "not a locale", options=with_data(locale="../etc"), error=notify.TemplateError
    ),
    "locale absolute path": Bad(
        "locale", "not a locale", options=with_data(locale="/etc"), error=notify.TemplateError
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_rejected_naming_the_field_with_nothing_recorded(producer: Producer, case: Bad) -> None:
    with pytest.raises(notify.NotifyError) as caught:
        producer.send(case.template, case.to, **case.options)
    assert isinstance(caught.value, case.error)
    assert caught.value.field == case.field  # type: ignore[attr-defined]
    assert case.phrase in str(caught.value)
    assert str(caught.value).startswith(f"{case.field}: ")
    producer.assert_nothing_recorded_or_enqueued()


def test_a_recipient_object_with_a_bad_address_is_rejected_too(producer: Producer) -> None:
    with pytest.raises(notify.ValidationError) as caught:
        producer.send(
            "welcome", notify.Recipient(email="ada@example.com", phone="555-0100"), data={"name": "Ada"}
        )
    assert caught.value.field == "to.phone"
    producer.assert_nothing_recorded_or_enqueued()


def test_a_channel_the_template_lacks_is_rejected(producer: Producer, tmp_path: Path) -> None:
    producer.configure(NOTIFY_TEMPLATES_DIR=str(sms_only_templates(tmp_path / "tpl")))
    with pytest.raises(notify.ValidationError) as caught:
        producer.send(
            "texted",
            {"email": "ada@example.com", "phone": "+14155550100"},
            data={"name": "Ada"},
            channels=["email"],
        )
    assert caught.value.field == "channels"
    assert "has no email channel" in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


def test_a_recipient_with_no_address_for_the_templates_channels_is_rejected(
    producer: Producer, tmp_path: Path
) -> None:
    producer.configure(NOTIFY_TEMPLATES_DIR=str(sms_only_templates(tmp_path / "tpl")))
    with pytest.raises(notify.ValidationError) as caught:
        producer.send("texted", {"email": "ada@example.com", "push_token": "tok"}, data={"name": "Ada"})
    assert caught.value.field == "to"
    assert "no address" in str(caught.value)
    assert "sms" in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


def test_data_larger_than_the_configured_limit_is_rejected(producer: Producer) -> None:
    producer.configure(NOTIFY_MAX_DATA_BYTES="64")
    with pytest.raises(notify.ValidationError) as caught:
        producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada", "bio": "x" * 100})
    assert caught.value.field == "data"
    assert "over the limit of 64" in str(caught.value)
    assert "NOTIFY_MAX_DATA_BYTES" in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


def test_data_just_under_the_limit_is_accepted(producer: Producer) -> None:
    producer.configure(NOTIFY_MAX_DATA_BYTES="64")
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada", "bio": "x" * 30})
    assert [d.channel for d in result.deliveries] == ["email"]
    assert producer.notifications() == 1


def test_an_sms_body_over_1600_characters_is_rejected(producer: Producer, tmp_path: Path) -> None:
    producer.configure(NOTIFY_TEMPLATES_DIR=str(sms_only_templates(tmp_path / "tpl", "{{ text }}")))
    with pytest.raises(notify.TemplateError) as caught:
        producer.send("texted", {"phone": "+14155550100"}, data={"text": "x" * 1601})
    assert caught.value.field == "template"
    assert "1601" in str(caught.value)
    assert "1600" in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


def test_an_sms_body_of_exactly_1600_characters_is_accepted(producer: Producer, tmp_path: Path) -> None:
    producer.configure(NOTIFY_TEMPLATES_DIR=str(sms_only_templates(tmp_path / "tpl", "{{ text }}")))
    result = producer.send("texted", {"phone": "+14155550100"}, data={"text": "x" * 1600})
    assert [d.channel for d in result.deliveries] == ["sms"]
    assert producer.enqueued() == 1


def test_a_bad_channel_is_rejected_even_when_another_channel_is_fine(producer: Producer) -> None:
    with pytest.raises(notify.ValidationError) as caught:
        producer.send("welcome", ADA, data={"name": "Ada"}, channels=["email", "pager"])
    assert caught.value.field == "channels"
    producer.assert_nothing_recorded_or_enqueued()


# -- positive controls: the checks above can see what send() records and enqueues ----------


def test_a_valid_send_records_one_notification_and_a_delivery_per_channel(producer: Producer) -> None:
    result = producer.send("welcome", ADA, data={"name": "Ada"}, priority="high")
    assert sorted(str(d.channel) for d in result.deliveries) == ["email", "push", "sms"]
    assert all(d.status == notify.Status.QUEUED for d in result.deliveries)
    assert producer.notifications() == 1
    assert producer.deliveries() == 3
    assert producer.enqueued() == 3
    assert queued_on(producer.home / "broker.db") == [
        "notify.email.high",
        "notify.push.high",
        "notify.sms.high",
    ]


def test_a_valid_send_with_chosen_channels_records_only_those(producer: Producer) -> None:
    result = producer.send(
        "welcome",
        notify.Recipient(**ADA),
        data={"name": "Ada"},
        channels=["sms", "email"],
        locale="de",
        dedup_key="signup-42",
    )
    assert sorted(str(d.channel) for d in result.deliveries) == ["email", "sms"]
    assert (producer.notifications(), producer.deliveries(), producer.enqueued()) == (1, 2, 2)
    assert queued_on(producer.home / "broker.db") == ["notify.email.normal", "notify.sms.normal"]


def test_a_valid_send_at_in_the_future_is_recorded_but_held_from_the_broker(producer: Producer) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, send_at=later)
    assert [d.status for d in result.deliveries] == [notify.Status.SCHEDULED]
    assert (producer.notifications(), producer.deliveries(), producer.enqueued()) == (1, 1, 0)


def test_status_of_an_unknown_notification_is_a_validation_error(producer: Producer) -> None:
    producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    notifier = Notifier(Settings.from_env(producer.env))
    producer.opened.append(notifier)
    with pytest.raises(notify.ValidationError) as caught:
        notifier.status("00000000-0000-0000-0000-000000000000")
    assert caught.value.field == "notification_id"
