"""Bad input fails fast in send(): a NotifyError naming the field, nothing recorded or enqueued."""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import notify
import notify.api
import notify.settings
from notify.api import Notifier
from notify.cli.mailcatcher import free_port
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
    opened: list[Notifier] = dataclasses.field(default_factory=list)

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
        return self.notifier().send(template, to, **options)

    def status(self, notification_id: Any) -> list[notify.Delivery]:
        if self.via == "notify.send":
            return notify.status(notification_id)
        return self.notifier().status(notification_id)

    def notifier(self) -> Notifier:
        self.opened.append(Notifier(Settings.from_env(self.env)))
        return self.opened[-1]

    @property
    def home(self) -> Path:
        return Path(self.env["NOTIFY_HOME"])

    def notifications(self) -> int:
        return count_rows(self.home / "notify.db", "notify_notifications")

    def deliveries(self) -> int:
        return count_rows(self.home / "notify.db", "notify_deliveries")

    def enqueued(self) -> int:
        """Messages on the broker, once every notifier used has published what it had pending."""
        notifiers = [*self.opened]
        if notify.api._notifier.cache_info().currsize:
            notifiers.append(notify.api.default_notifier())
        assert all(n.flush(timeout=10) for n in notifiers)
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
    to: Any = dataclasses.field(default_factory=lambda: {"email": "ada@example.com"})
    options: dict[str, Any] = dataclasses.field(default_factory=lambda: {"data": {"name": "Ada"}})
    error: type[notify.NotifyError] = notify.ValidationError


def with_data(**options: Any) -> dict[str, Any]:
    return {"data": {"name": "Ada"}, **options}


def bad_email(address: object) -> Bad:
    return Bad("to.email", "not a valid email address", to={"email": address})


def containing_itself() -> dict[str, Any]:
    data: dict[str, Any] = {"name": "Ada"}
    data["self"] = data
    return data


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
    "empty dedup_key": Bad("dedup_key", "must not be empty", options=with_data(dedup_key="")),
    "dedup_key too long": Bad("dedup_key", "over the limit of 200", options=with_data(dedup_key="k" * 201)),
    "locale with a path": Bad(
        "locale", "not a locale", options=with_data(locale="../etc"), error=notify.TemplateError
    ),
    "locale absolute path": Bad(
        "locale", "not a locale", options=with_data(locale="/etc"), error=notify.TemplateError
    ),
    "template not a string": Bad("template", "not a template name", template=42, error=notify.TemplateError),
    "template name over 200 characters": Bad(
        "template", "not a template name", template="w" * 201, error=notify.TemplateError
    ),
    "to with a key that is not a string": Bad("to", "unknown address kind", to={None: "ada@example.com"}),
    "push token not a string": Bad("to.push_token", "must be a string", to={"push_token": 42}),
    "data containing itself": Bad("data", "nested more than 32", options={"data": containing_itself()}),
    "dedup_key not a string": Bad("dedup_key", "must be a string", options=with_data(dedup_key=42)),
    "priority not hashable": Bad("priority", "unknown priority", options=with_data(priority=["high"])),
    "channels naming a list": Bad("channels", "unknown channel", options=with_data(channels=[["email"]])),
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


# -- hostile input: each of these got past send() before, or raised something else ----------

UTC_MINUS_5 = timezone(timedelta(hours=-5))
UTC_PLUS_5 = timezone(timedelta(hours=5))
LONG_EMAIL = "ada@" + ".".join(["d" * 60] * 9) + ".com"  # 600 characters


def nested(levels: int) -> dict[str, Any]:
    """Data whose containers nest `levels` deep, itself included."""
    deep: Any = []
    for _ in range(levels - 2):
        deep = [deep]
    return {"name": "Ada", "deep": deep}


def template_error(field: str, phrase: str, **options: Any) -> Bad:
    return Bad(field, phrase, options=with_data(**options), error=notify.TemplateError)


def bad_data(phrase: str, **data: Any) -> Bad:
    return Bad("data", phrase, options={"data": {"name": "Ada", **data}})


class _TextOffsetZone(tzinfo):
    """A hostile tzinfo: its offset is a string, and datetime.utcoffset() raises TypeError for it."""

    def utcoffset(self, dt: datetime | None) -> Any:
        return "+05:00"

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "text"


class _FlippingZone(_TextOffsetZone):
    """A hostile tzinfo whose offset is a timedelta when first asked, then a string (and so on)."""

    def __init__(self) -> None:
        self.asked = 0

    def utcoffset(self, dt: datetime | None) -> Any:
        self.asked += 1
        return timedelta(hours=1) if self.asked % 2 else "+01:00"


HOSTILE = {
    # Values longer than the store's columns, NUL and other control characters, and
    # send_at past year 9999 in UTC: PostgreSQL refused them with a DataError.
    "email over 512 characters": Bad("to.email", "over the limit of 512", to={"email": LONG_EMAIL}),
    "push token over 512 characters": Bad(
        "to.push_token", "over the limit of 512", to={"push_token": "t" * 513}
    ),
    "push token with a NUL": Bad("to.push_token", "control characters", to={"push_token": "tok\x00en"}),
    "push token with a newline": Bad("to.push_token", "control characters", to={"push_token": "tok\nen"}),
    "push token with a lone surrogate": Bad(
        "to.push_token", "lone surrogates", to={"push_token": "tok\udc80"}
    ),
    "dedup_key with a NUL": Bad("dedup_key", "control characters", options=with_data(dedup_key="sign\x00up")),
    "dedup_key with a lone surrogate": Bad(
        "dedup_key", "lone surrogates", options=with_data(dedup_key="sign\ud800up")
    ),
    "locale over 35 characters": template_error(
        "locale", "over the limit of 35", locale="de" + "-abcdefgh" * 4
    ),
    "send_at after 9999 in UTC": Bad(
        "send_at",
        "outside the years 1 to 9999",
        options=with_data(send_at=datetime(9999, 12, 31, 23, tzinfo=UTC_MINUS_5)),
    ),
    "send_at before year 1 in UTC": Bad(
        "send_at",
        "outside the years 1 to 9999",
        options=with_data(send_at=datetime(1, 1, 1, 1, tzinfo=UTC_PLUS_5)),
    ),
    "send_at whose tzinfo gives a string offset": Bad(
        "send_at",
        "no usable UTC offset",
        options=with_data(send_at=datetime(2030, 1, 1, tzinfo=_TextOffsetZone())),
    ),
    "send_at whose tzinfo changes its offset to a string": Bad(
        "send_at",
        "no usable UTC offset",
        options=with_data(send_at=datetime(2030, 1, 1, tzinfo=_FlippingZone())),
    ),
    # Wrong types and shapes raised RecursionError, TypeError or OSError.
    "data nested 100000 deep": Bad("data", "nested more than 32", options={"data": nested(100_000)}),
    "data nested 33 deep": Bad("data", "nested more than 32", options={"data": nested(33)}),
    "channels not iterable": Bad("channels", "not int", options=with_data(channels=42)),
    "locale not a string": template_error("locale", "must be a string", locale=42),
    "locale as bytes": template_error("locale", "must be a string", locale=b"de"),
    "template name of 300 characters": Bad(
        "template", "not a template name", template="w" * 300, error=notify.TemplateError
    ),
    "to with keys of mixed types": Bad(
        "to", "unknown address kind", to={"email": "ada@example.com", 1: "x", "fax": "y"}
    ),
    # Data that is not strict JSON.
    "data with NaN": bad_data("not JSON compliant", score=float("nan")),
    "data with Infinity": bad_data("not JSON compliant", score=float("inf")),
    "data with -Infinity": bad_data("not JSON compliant", score=float("-inf")),
    "data with colliding keys": Bad(
        "data", "keys must be strings, not int", options={"data": {"name": "Ada", 1: "a", "1": "b"}}
    ),
    "data with a bool key": Bad(
        "data", "keys must be strings, not bool", options={"data": {"name": "Ada", True: 1}}
    ),
    "data with a non-string key deep inside": bad_data(
        "keys must be strings, not NoneType", m={"x": [{None: 1}]}
    ),
    "data with a lone surrogate": Bad(
        "data", "surrogates not allowed", options={"data": {"name": "Ada\udc80"}}
    ),
    "data with a lone surrogate in a key": bad_data("surrogates not allowed", **{"\ud800": 1}),
    # "$" matched before a trailing newline.
    "locale with a trailing newline": template_error("locale", "not a locale tag", locale="de\n"),
    "template name with a trailing newline": Bad(
        "template", "not a template name", template="welcome\n", error=notify.TemplateError
    ),
    # Addresses that looked right to a regex.
    "phone too short for its country": bad_phone("+1415"),
    "phone with no such country code": bad_phone("+99912345678"),
    "email domain starting with a hyphen": bad_email("ada@-example.com"),
    "email user part outside ASCII": Bad("to.email", "SMTPUTF8", to={"email": "ädä@example.com"}),
}


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_a_notify_error_naming_the_field_with_nothing_recorded(
    producer: Producer, case: Bad
) -> None:
    with pytest.raises(notify.NotifyError) as caught:
        producer.send(case.template, case.to, **case.options)
    assert isinstance(caught.value, case.error)
    assert caught.value.field == case.field  # type: ignore[attr-defined]
    assert case.phrase in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


def test_data_nested_32_deep_is_accepted(producer: Producer) -> None:
    result = producer.send("welcome", {"email": "ada@example.com"}, data=nested(32))
    assert [d.status for d in result.deliveries] == [notify.Status.QUEUED]


def test_data_sharing_one_list_many_times_over_is_refused_without_expanding_it(producer: Producer) -> None:
    shared: list[Any] = ["x"]
    for _ in range(30):  # 2**30 strings as JSON: too many to encode to find out
        shared = [shared, shared]
    with pytest.raises(notify.ValidationError) as caught:
        producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada", "tree": shared})
    assert caught.value.field == "data"
    assert "NOTIFY_MAX_DATA_BYTES" in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


def test_the_latest_send_at_in_utc_is_held_and_reads_back(producer: Producer) -> None:
    latest = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, send_at=latest)
    assert [d.status for d in producer.status(result.id)] == [notify.Status.SCHEDULED]


def test_send_at_is_held_as_the_same_instant_in_utc(producer: Producer) -> None:
    later = datetime.now(UTC_MINUS_5).replace(microsecond=0) + timedelta(hours=2)
    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, send_at=later)
    [held] = producer.status(result.id)
    assert held.next_attempt_at == later
    assert held.next_attempt_at is not None and held.next_attempt_at.utcoffset() == timedelta(0)


def test_an_email_domain_outside_ascii_is_recorded_in_its_idna_form(producer: Producer) -> None:
    producer.send("welcome", {"email": "ada@exämple.com"}, data={"name": "Ada"})
    with closing(sqlite3.connect(producer.home / "notify.db")) as conn:
        assert conn.execute("SELECT address FROM notify_deliveries").fetchall() == [
            ("ada@xn--exmple-cua.com",)
        ]


def push_only_templates(root: Path) -> Path:
    (root / "pushed").mkdir(parents=True)
    (root / "pushed" / "push.title.j2").write_text("Hi")
    (root / "pushed" / "push.body.j2").write_text("{{ text }}")
    return root


@pytest.mark.parametrize("text", ["x" * 4100, "€" * 1400], ids=["4100 ASCII", "1400 euro signs, 4200 bytes"])
def test_a_push_message_over_fcms_4096_bytes_is_rejected(
    producer: Producer, tmp_path: Path, text: str
) -> None:
    producer.configure(NOTIFY_TEMPLATES_DIR=str(push_only_templates(tmp_path / "tpl")))
    with pytest.raises(notify.TemplateError) as caught:
        producer.send("pushed", {"push_token": "tok"}, data={"text": text})
    assert caught.value.field == "template"
    assert "over FCM's limit of 4096" in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


def test_a_push_message_within_fcms_limit_is_accepted(producer: Producer, tmp_path: Path) -> None:
    producer.configure(NOTIFY_TEMPLATES_DIR=str(push_only_templates(tmp_path / "tpl")))
    result = producer.send("pushed", {"push_token": "tok"}, data={"text": "x" * 3900})
    assert [d.channel for d in result.deliveries] == ["push"]


def test_a_store_that_cannot_be_reached_is_store_unavailable(producer: Producer) -> None:
    producer.configure(NOTIFY_DATABASE_URL=f"postgresql://notify@127.0.0.1:{free_port()}/notify")
    with pytest.raises(notify.StoreUnavailable):
        producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    assert producer.enqueued() == 0


# -- the same on PostgreSQL, where the store itself refused them ---------------------------

REFUSED_BY_POSTGRESQL = [
    "email over 512 characters",
    "push token over 512 characters",
    "push token with a NUL",
    "dedup_key with a NUL",
    "dedup_key with a lone surrogate",
    "locale over 35 characters",
    "send_at after 9999 in UTC",
    "data with a lone surrogate",
]


def postgres_rows(url: str) -> tuple[int, int]:
    """Notifications and deliveries in the PostgreSQL store (0 for a table not made yet)."""
    import psycopg

    with psycopg.connect(url) as conn:
        tables = {name for (name,) in conn.execute("SELECT tablename FROM pg_tables")}

        def count(table: str) -> int:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone() if table in tables else None
            return int(row[0]) if row else 0

        return count("notify_notifications"), count("notify_deliveries")


@pytest.mark.postgres
@pytest.mark.parametrize("name", REFUSED_BY_POSTGRESQL)
def test_hostile_input_is_refused_before_postgresql_sees_it(
    producer: Producer, postgres_url: str, name: str
) -> None:
    producer.configure(NOTIFY_DATABASE_URL=postgres_url)
    case = HOSTILE[name]
    with pytest.raises(notify.NotifyError) as caught:
        producer.send(case.template, case.to, **case.options)
    assert isinstance(caught.value, case.error)
    assert caught.value.field == case.field  # type: ignore[attr-defined]
    assert postgres_rows(postgres_url) == (0, 0)
    assert producer.enqueued() == 0


@pytest.mark.postgres
def test_values_at_the_limits_are_recorded_on_postgresql_and_read_back(
    producer: Producer, postgres_url: str
) -> None:
    producer.configure(NOTIFY_DATABASE_URL=postgres_url)
    result = producer.send(
        "welcome",
        {"push_token": "t" * 512},
        data={"name": "Ada \u0000 Lovelace"},  # a NUL is fine in data: JSON escapes it
        dedup_key="k" * 200,
        locale="de-abcdefgh-abcdefgh-abcdefgh-abcde",
        send_at=datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
    )
    assert [d.status for d in producer.status(result.id)] == [notify.Status.SCHEDULED]
    assert postgres_rows(postgres_url) == (1, 1)


@pytest.mark.postgres
@pytest.mark.parametrize("notification_id", ["id\x00", "i" * 37, 42])
def test_status_of_a_malformed_id_is_a_validation_error_on_postgresql(
    producer: Producer, postgres_url: str, notification_id: object
) -> None:
    producer.configure(NOTIFY_DATABASE_URL=postgres_url)
    producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"})
    with pytest.raises(notify.ValidationError) as caught:
        producer.status(notification_id)
    assert caught.value.field == "notification_id"


# -- whatever it is given, send() raises a NotifyError or succeeds ---------------------------

# Every code point, lone surrogates and control characters included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=[]), max_size=24)
KEYS = ANY_TEXT | st.integers() | st.none() | st.booleans() | st.floats()
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
ANYTHING = (
    JSONISH | st.sets(st.integers(), max_size=2) | st.binary(max_size=4) | st.datetimes() | st.builds(object)
)
ZONES = st.timezones() | st.builds(timezone, st.timedeltas(-timedelta(hours=23), timedelta(hours=23)))
PRINTABLE = st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=200)
SAMPLE = {"name": "Ada", "order_id": "42", "carrier": "DHL", "tracking_number": "T1", "items": []}

ADDRESSES = st.fixed_dictionaries(
    {"email": st.sampled_from(["ada@example.com", "ada@exämple.com", "Ada@Example.COM"])},
    optional={"phone": st.sampled_from(["+14155550100", "+4930123456"]), "push_token": PRINTABLE},
)
# A call send() accepts, mostly; some of the data it draws is not strict JSON.
ARGUMENTS = {
    "template": st.sampled_from(["welcome", "order_shipped", "password_reset"]),
    "to": ADDRESSES | ADDRESSES.map(lambda a: notify.Recipient(**a)),
    "data": st.dictionaries(ANY_TEXT, JSONISH, max_size=2).map(lambda d: {**SAMPLE, **d}),
    "channels": st.none() | st.just(["email"]) | st.just(("email", "email")),
    "priority": st.sampled_from(["high", "normal", "low"]),
    "dedup_key": st.none() | PRINTABLE,
    "send_at": st.none() | st.datetimes(timezones=ZONES),
    "locale": st.none() | st.sampled_from(["de", "de-AT", "pt_BR"]),
}
# Then up to two of its arguments replaced by anything at all.
HOSTILE_ARGUMENTS = st.dictionaries(st.sampled_from(sorted(ARGUMENTS)), ANY_TEXT | ANYTHING, max_size=2)


@pytest.fixture
def sqlite_producer(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Producer]:
    """One producer for all of a hypothesis test's examples: they share its SQLite store."""
    monkeypatch.chdir(tmp_path)
    made = Producer("Notifier.send", dict(env), monkeypatch)
    made.configure()
    made.opened.append(Notifier(Settings.from_env(made.env)))
    yield made
    for notifier in made.opened:
        notifier.close()


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(valid=st.fixed_dictionaries(ARGUMENTS), hostile=HOSTILE_ARGUMENTS)
def test_whatever_send_is_given_it_succeeds_or_raises_a_notify_error(
    sqlite_producer: Producer, valid: dict[str, Any], hostile: dict[str, Any]
) -> None:
    notifier = sqlite_producer.opened[0]
    before = (sqlite_producer.notifications(), sqlite_producer.deliveries(), sqlite_producer.enqueued())
    call = {**valid, **hostile}
    template, to = call.pop("template"), call.pop("to")
    try:
        result = notifier.send(template, to, **call)
    except notify.NotifyError as exc:
        assert isinstance(exc, notify.ValidationError)
        assert exc.field.split(".")[0] in {*call, "template", "to"}
        after = (sqlite_producer.notifications(), sqlite_producer.deliveries(), sqlite_producer.enqueued())
        assert after == before
        return
    event("sent")
    assert {d.id for d in notifier.status(result.id)} == {d.id for d in result.deliveries}


class _BrokenZone(tzinfo):
    """A tzinfo whose offset is a day: datetime.utcoffset() raises ValueError for it."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=25)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "broken"


def test_a_send_at_with_an_impossible_offset_is_a_validation_error(notifier: Callable[[], Notifier]) -> None:
    producer = notifier()
    with pytest.raises(notify.ValidationError, match="send_at"):
        producer.send(
            "welcome",
            {"email": "ada@example.com"},
            data={"name": "Ada"},
            send_at=datetime(2030, 1, 1, tzinfo=_BrokenZone()),
        )


def test_whether_send_at_is_held_is_the_stores_clock_not_the_producers(
    notifier: Callable[[], Notifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer clock 80 s fast must not publish at once what the store holds for 30 s more."""
    producer = notifier()
    store_now = datetime.now(UTC)
    send_at = store_now + timedelta(seconds=30)
    monkeypatch.setattr(producer.store, "now", lambda: store_now)
    monkeypatch.setattr(notify.api, "utcnow", lambda: store_now + timedelta(seconds=80), raising=False)

    result = producer.send("welcome", {"email": "ada@example.com"}, data={"name": "Ada"}, send_at=send_at)

    assert [d.status for d in result.deliveries] == ["scheduled"]


# -- links built from data: only absolute http(s) URLs ----------------------------------------

HOSTILE_LINKS = [
    "javascript:alert(document.cookie)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "\x01javascript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "//evil.example/reset",
    "/reset?t=abc",
    "https:evil.example",
    "https://",
]


@pytest.mark.parametrize("link", HOSTILE_LINKS)
def test_a_link_that_is_not_an_http_url_is_refused_with_nothing_recorded(
    producer: Producer, link: str
) -> None:
    """The sample `password_reset` email puts `reset_url` in an `href`: autoescape alone let
    `javascript:` and `data:` links through."""
    data = {"name": "Ada", "reset_url": link, "expires_minutes": 30, "code": "123456"}
    with pytest.raises(notify.TemplateError) as caught:
        producer.send("password_reset", {"email": "ada@example.com"}, data=data)
    assert caught.value.field == "data"
    assert "not an absolute http(s) URL" in str(caught.value)
    producer.assert_nothing_recorded_or_enqueued()


@pytest.mark.parametrize(
    "link", ["https://example.com/reset?t=abc&u=ada", "HTTP://example.com/r", "http://[2001:db8::1]/r"]
)
def test_an_http_link_is_kept_and_escaped_in_the_html(producer: Producer, link: str) -> None:
    data = {"name": "Ada", "reset_url": link, "expires_minutes": 30, "code": "123456"}
    result = producer.send("password_reset", {"email": "ada@example.com"}, data=data)
    assert result.deliveries[0].status == notify.Status.QUEUED


# -- what the store indexes fits its index ------------------------------------------------------


def astral(count: int, seed: int) -> str:
    """`count` characters of 4 bytes each in UTF-8, varied so that no compression shrinks them."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x10000, 0x1FFFF)) for _ in range(count))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, env: dict[str, str]) -> Notifier:
    if request.param == "postgresql":
        env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return Notifier(Settings.from_env(env))


def test_a_dedup_key_too_long_to_index_with_its_address_is_refused_naming_it(any_store: Notifier) -> None:
    """Before: a 512-character astral push token with a 200-character astral key overflowed the
    dedup index on PostgreSQL: `StoreUnavailable: ProgramLimitExceeded`, no field named."""
    token, key = astral(512, 1), astral(200, 2)
    data = {"name": "Ada"}
    with pytest.raises(notify.ValidationError, match=r"^dedup_key: with its address, 2848 bytes in UTF-8"):
        any_store.send("welcome", {"push_token": token}, data=data, dedup_key=key)
    with pytest.raises(notify.ValidationError, match=r"^intents\[0\].dedup_key: "):
        any_store.send_many([notify.Intent("welcome", {"push_token": token}, data=data, dedup_key=key)])
    assert stored_deliveries(any_store) == 0

    # 2,048 + 512 bytes: the limit, which PostgreSQL's index holds.
    at_limit = any_store.send("welcome", {"push_token": token}, data=data, dedup_key=astral(128, 3))
    again = any_store.send("welcome", {"push_token": token}, data=data, dedup_key=astral(128, 3))
    assert at_limit.deliveries[0].status == notify.Status.QUEUED
    assert again.deliveries[0].duplicate_of == at_limit.deliveries[0].id
    assert stored_deliveries(any_store) == 2
    any_store.close()


def stored_deliveries(notifier: Notifier) -> int:
    notifier.store.get("none")  # the store makes its schema on first use
    with notifier.store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM notify_deliveries")).scalar_one())
