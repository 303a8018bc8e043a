"""Settings: read from the environment and .env, validated when built, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from notify.errors import ConfigurationError
from notify.schema import create_engine
from notify.settings import Secret, Settings


def test_a_dotenv_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("NOTIFY_EMAIL_FROM=dotenv@example.com\nNOTIFY_SMTP_PORT=2525\n")
    monkeypatch.setenv("NOTIFY_SMTP_PORT", "587")

    settings = Settings.from_env()

    assert (settings.email_from, settings.smtp_port) == ("dotenv@example.com", 587)


def test_durations_accept_seconds_or_units() -> None:
    settings = Settings.from_env(
        {"NOTIFY_RETENTION": "7d", "NOTIFY_SWEEP_AFTER": "90", "NOTIFY_DELIVERY_TIMEOUT": "20s"}
    )

    assert (settings.retention, settings.sweep_after, settings.delivery_timeout) == (7 * 86400, 90, 20)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"NOTIFY_SMTP_PORT": "twenty-five"}, "NOTIFY_SMTP_PORT"),
        ({"NOTIFY_RETENTION": "a while"}, "NOTIFY_RETENTION"),
        ({"NOTIFY_SMTP_TLS": "ssl"}, "NOTIFY_SMTP_TLS"),
        ({"NOTIFY_MAX_DATA_BYTES": "0"}, "NOTIFY_MAX_DATA_BYTES"),
    ],
)
def test_a_bad_value_names_its_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(environ)

    assert raised.value.setting == variable
    assert variable in str(raised.value)


def test_the_claim_must_end_before_the_broker_hands_the_task_to_another_worker() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"NOTIFY_DELIVERY_TIMEOUT": "60", "NOTIFY_VISIBILITY_TIMEOUT": "60"})

    assert raised.value.setting == "NOTIFY_VISIBILITY_TIMEOUT"
    assert "1.5 x NOTIFY_DELIVERY_TIMEOUT" in str(raised.value)


def test_require_names_the_missing_variable() -> None:
    with pytest.raises(ConfigurationError, match="NOTIFY_EMAIL_FROM is required"):
        Settings().require("email_from")


def test_secrets_are_masked_everywhere_but_reveal() -> None:
    settings = Settings.from_env({"NOTIFY_SMTP_PASSWORD": "hunter2", "NOTIFY_TWILIO_AUTH_TOKEN": "tok-123"})

    assert "hunter2" not in repr(settings) and "tok-123" not in str(settings)
    assert settings.smtp_password == Secret("hunter2")
    assert settings.smtp_password is not None and settings.smtp_password.reveal() == "hunter2"


def test_the_embedded_defaults_live_under_notify_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")

    assert settings.uses_embedded_broker
    assert settings.resolved_broker_url == f"sqlite:///{tmp_path}/home/broker.db"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path}/home/notify.db"


def test_a_plain_postgresql_url_uses_the_installed_driver() -> None:
    engine = create_engine("postgresql://postgres@127.0.0.1:5432/test")

    assert engine.dialect.driver == "psycopg"
    engine.dispose()
