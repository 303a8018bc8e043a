"""The public surface of `notify`: what it exports, its errors, what importing it costs."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

import notify
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    NotifyError,
    OutcomeUnknownError,
    PartiallyRecorded,
    PermanentDeliveryError,
    StoreUnavailable,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from notify.settings import Settings

INIT = Path(notify.__file__)
PROVIDER_PACKAGES = {"twilio", "pyfcm", "aiosmtplib", "workers"}


def names_bound_in_init() -> set[str]:
    """The public names `notify/__init__.py` itself binds (imports and assignments)."""
    tree = ast.parse(INIT.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def test_all_lists_exactly_the_public_names_of_the_package_init() -> None:
    assert len(notify.__all__) == len(set(notify.__all__)), "duplicates in __all__"
    assert set(notify.__all__) == names_bound_in_init()


def test_all_lists_every_public_non_module_attribute() -> None:
    public = {
        name
        for name, value in vars(notify).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(notify.__all__)


def test_all_is_sorted() -> None:
    assert notify.__all__ == sorted(notify.__all__)


def test_the_front_door_names_are_exported() -> None:
    expected = {
        "send",
        "send_many",
        "Intent",
        "status",
        "Recipient",
        "SendResult",
        "Delivery",
        "Priority",
        "NotifyError",
        "ConfigurationError",
        "ValidationError",
        "TemplateError",
        "DeliveryError",
        "TransientDeliveryError",
        "PermanentDeliveryError",
        "OutcomeUnknownError",
        "StoreUnavailable",
        "PartiallyRecorded",
    }
    assert expected <= set(notify.__all__)


@pytest.mark.parametrize("name", notify.__all__)
def test_every_exported_name_is_importable(name: str) -> None:
    module = importlib.import_module("notify")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from notify import {name}", namespace)
    assert namespace[name] is getattr(notify, name)


def test_exported_members_report_notify_as_their_home_or_a_submodule() -> None:
    for name in notify.__all__:
        member = getattr(notify, name)
        assert member.__module__.startswith("notify"), name  # classes and functions: each has one


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "parent"),
    [
        (ConfigurationError, NotifyError),
        (ValidationError, NotifyError),
        (TemplateError, ValidationError),
        (DeliveryError, NotifyError),
        (TransientDeliveryError, DeliveryError),
        (PermanentDeliveryError, DeliveryError),
        (OutcomeUnknownError, PermanentDeliveryError),
        (StoreUnavailable, NotifyError),
        (PartiallyRecorded, StoreUnavailable),
    ],
)
def test_the_error_tree(error: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(error, parent)
    assert issubclass(error, NotifyError)
    assert getattr(notify, error.__name__) is error


def test_transient_and_permanent_are_distinct_branches() -> None:
    assert not issubclass(TransientDeliveryError, PermanentDeliveryError)
    assert not issubclass(PermanentDeliveryError, TransientDeliveryError)
    assert not issubclass(DeliveryError, ValidationError)


def test_an_unreachable_store_is_neither_bad_input_nor_a_delivery_failure() -> None:
    assert not issubclass(StoreUnavailable, ValidationError | DeliveryError)


def test_transient_delivery_error_carries_the_providers_retry_after() -> None:
    exc = TransientDeliveryError("slow down", channel="sms", provider="twilio", code="429", retry_after=30.0)
    assert exc.retry_after == 30.0
    assert (exc.channel, exc.provider, exc.code, exc.reason) == ("sms", "twilio", "429", "slow down")
    assert "twilio" in str(exc)
    assert TransientDeliveryError("x", channel="email", provider="smtp").retry_after is None


def test_validation_and_template_errors_name_their_field() -> None:
    assert ValidationError("to.email", "bad").field == "to.email"
    assert TemplateError("data.name", "missing").field == "data.name"
    assert "to.email" in str(ValidationError("to.email", "bad"))


def test_configuration_error_names_its_setting() -> None:
    assert ConfigurationError("NOTIFY_EMAIL_FROM is required", setting="NOTIFY_EMAIL_FROM").setting == (
        "NOTIFY_EMAIL_FROM"
    )


# -- what `import notify` costs ---------------------------------------------------------


def run_python(code: str, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_import_notify_does_not_import_providers_or_worker_code(tmp_path: Path) -> None:
    code = (
        "import notify, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(PROVIDER_PACKAGES)!r}))"
    )
    assert run_python(code, tmp_path) == "[]"


def test_import_notify_does_not_import_celery_worker_machinery(tmp_path: Path) -> None:
    code = (
        "import notify, sys; print(sorted(m for m in sys.modules if m.startswith("
        "('celery.worker', 'celery.apps.worker', 'notify.channels.', 'notify.worker', 'notify.cli',"
        " 'workers'))))"
    )
    assert run_python(code, tmp_path) == "[]"


def test_import_notify_reads_no_settings(tmp_path: Path) -> None:
    code = "import notify.settings as s, notify; print(s.get_settings.cache_info().currsize)"
    assert run_python(code, tmp_path) == "0"


def test_sending_does_not_import_provider_libraries(tmp_path: Path, env: dict[str, str]) -> None:
    code = (
        "import notify, sys\n"
        "r = notify.send('welcome', to={'email': 'ada@example.com', 'phone': '+14155550100',"
        " 'push_token': 'tok'}, data={'name': 'Ada'})\n"
        "assert len(r.deliveries) == 3, r\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(PROVIDER_PACKAGES)!r}))\n"
    )
    assert run_python(code, tmp_path, env) == "[]"


# -- secrets -------------------------------------------------------------------------------


def test_settings_repr_never_shows_secrets() -> None:
    from notify.providers.smtp import SmtpSettings
    from notify.providers.twilio import TwilioSettings

    settings = Settings.from_env(
        {
            "NOTIFY_SMTP_USERNAME": "mailer",
            "NOTIFY_SMTP_PASSWORD": "hunter2-smtp",
            "NOTIFY_TWILIO_ACCOUNT_SID": "AC123",
            "NOTIFY_TWILIO_AUTH_TOKEN": "tw-auth-s3cret",
        }
    )
    smtp, twilio = settings.provider_settings(SmtpSettings), settings.provider_settings(TwilioSettings)
    shown = (
        repr(settings),
        str(settings),
        repr(smtp),
        str(twilio),
        repr(smtp.password),
        f"{twilio.auth_token}",
    )
    for text in shown:
        assert "hunter2-smtp" not in text
        assert "tw-auth-s3cret" not in text
    assert "mailer" in repr(smtp)
    assert smtp.password is not None
    assert smtp.password.reveal() == "hunter2-smtp"
    assert twilio.auth_token is not None
    assert twilio.auth_token.reveal() == "tw-auth-s3cret"


TOKEN = "t0ken-s3cret"
HOOK = f"https://hooks.example.com/in/{TOKEN}?sig={TOKEN}"


@pytest.mark.parametrize(
    "to",
    [{"webhook": HOOK, "email": "ada@example.com"}, notify.Recipient(webhook=HOOK)],
    ids=["dict", "Recipient"],
)
def test_an_intent_shows_its_webhook_url_masked(to: object) -> None:
    intent = notify.Intent("welcome", to, data={"name": "Ada"})  # type: ignore[arg-type]

    for text in (repr(intent), str(intent), f"{[intent]}"):
        assert TOKEN not in text
        assert "https://hooks.example.com/…" in text and "'welcome'" in text


def test_a_dead_letter_shows_its_address_masked() -> None:
    from notify.dlq import DeadLetter
    from notify.models import utcnow

    letter = DeadLetter("dlv-1", "ntf-1", "webhook", HOOK, "welcome", "410 Gone", "http_410", 1, utcnow())

    for text in (repr(letter), str(letter)):
        assert TOKEN not in text
        assert "address='https://hooks.example.com/…'" in text
    assert letter.address == HOOK  # the value itself is intact


def test_settings_hold_secrets_masked_through_asdict_and_environ() -> None:
    secrets = {
        "NOTIFY_SMTP_PASSWORD": "hunter2-smtp",
        "NOTIFY_TWILIO_AUTH_TOKEN": "tw-auth-s3cret",
        "NOTIFY_WEBHOOK_SECRET": "whsec-s3cret",
        "NOTIFY_DATABASE_URL": "postgresql://notify:db-s3cret@db.example/notify",
        "NOTIFY_BROKER_URL": "redis://:broker-s3cret@redis.example:6379/0",
    }
    settings = Settings.from_env(secrets)

    shown = (repr(dataclasses.asdict(settings)), str(dataclasses.astuple(settings)), repr(settings.environ))
    for text in shown:
        for secret in ("hunter2-smtp", "tw-auth-s3cret", "whsec-s3cret", "db-s3cret", "broker-s3cret"):
            assert secret not in text
    assert settings.resolved_database_url == secrets["NOTIFY_DATABASE_URL"]
    assert settings.resolved_broker_url == secrets["NOTIFY_BROKER_URL"]
