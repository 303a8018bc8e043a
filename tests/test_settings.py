"""Settings: read from the environment and .env, validated when built, secrets masked."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from notify.errors import ConfigurationError
from notify.settings import Settings, load_hook, mask_url, required
from notify.store.engines import create_engine
from tests.support import hooks


def test_a_dotenv_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "NOTIFY_TEMPLATES_DIR=dotenv-templates\nNOTIFY_MAX_DATA_BYTES=1024\nNOTIFY_SMTP_PORT=2525\n"
    )
    monkeypatch.setenv("NOTIFY_MAX_DATA_BYTES", "2048")
    monkeypatch.setenv("NOTIFY_SMTP_PORT", "587")

    settings = Settings.from_env()

    assert (settings.templates_dir, settings.max_data_bytes) == (Path("dotenv-templates"), 2048)
    assert settings.variable("NOTIFY_SMTP_PORT") == "587"  # what providers read their own from


def test_durations_accept_seconds_or_units() -> None:
    settings = Settings.from_env(
        {"NOTIFY_RETENTION": "7d", "NOTIFY_SWEEP_AFTER": "90", "NOTIFY_DELIVERY_TIMEOUT": "20s"}
    )

    assert (settings.retention, settings.sweep_after, settings.delivery_timeout) == (7 * 86400, 90, 20)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"NOTIFY_LEASE": "twenty-five"}, "NOTIFY_LEASE"),
        ({"NOTIFY_RETENTION": "a while"}, "NOTIFY_RETENTION"),
        ({"NOTIFY_MAX_DATA_BYTES": "0"}, "NOTIFY_MAX_DATA_BYTES"),
        ({"NOTIFY_METRICS_PORT": "0"}, "NOTIFY_METRICS_PORT"),
        ({"NOTIFY_METRICS_PORT": "65536"}, "NOTIFY_METRICS_PORT"),
        ({"NOTIFY_METRICS_PORT": "http"}, "NOTIFY_METRICS_PORT"),
        ({"NOTIFY_LOG_FORMAT": "xml"}, "NOTIFY_LOG_FORMAT"),
        # libpq stops at a NUL, even a percent-encoded one: the rest of the URL (its host) unread
        ({"NOTIFY_DATABASE_URL": "postgresql://u:pw%00@db.example:5433/notify"}, "NOTIFY_DATABASE_URL"),
        ({"NOTIFY_BROKER_URL": "redis://h\x00ost:6379/0"}, "NOTIFY_BROKER_URL"),
    ],
)
def test_a_bad_value_names_its_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(environ)

    assert raised.value.setting == variable
    assert variable in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value", "bound"),
    [
        ("NOTIFY_DELIVERY_TIMEOUT", "0", "at least 1s"),
        ("NOTIFY_DELIVERY_TIMEOUT", "2h", "at most 1h"),
        ("NOTIFY_LEASE", "500ms", "at least 1s"),
        ("NOTIFY_LEASE", "26", "at most 25s"),  # recovery within 30 s needs a lease under it
        ("NOTIFY_SWEEP_AFTER", "0", "at least 10s"),
        ("NOTIFY_SWEEP_AFTER", "2d", "at most 1d"),
        ("NOTIFY_RETENTION", "59s", "at least 1m"),
        ("NOTIFY_RETENTION", "3651d", "at most 3650d"),
        ("NOTIFY_VISIBILITY_TIMEOUT", "9", "at least 10s"),
        ("NOTIFY_VISIBILITY_TIMEOUT", "2d", "at most 1d"),
        ("NOTIFY_MAX_DATA_BYTES", "0", "at least 1"),
        ("NOTIFY_MAX_DATA_BYTES", str(16 * 1024 * 1024 + 1), f"at most {16 * 1024 * 1024}"),
    ],
)
def test_a_number_out_of_its_bounds_is_refused_naming_the_variable_and_the_bound(
    variable: str, value: str, bound: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({variable: value})

    assert raised.value.setting == variable
    assert str(raised.value).startswith(f"{variable} must be {bound}, not ")


def test_the_bounds_themselves_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "NOTIFY_DELIVERY_TIMEOUT": "1",
            "NOTIFY_LEASE": "25s",
            "NOTIFY_SWEEP_AFTER": "10",
            "NOTIFY_RETENTION": "60",
            "NOTIFY_MAX_DATA_BYTES": str(16 * 1024 * 1024),
        }
    )

    assert (settings.delivery_timeout, settings.lease, settings.sweep_after) == (1, 25, 10)
    assert (settings.retention, settings.max_data_bytes) == (60, 16 * 1024 * 1024)


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("NOTIFY_BROKER_URL", "kafka://user:hunter2@broker:9092"),
        ("NOTIFY_BROKER_URL", "localhost:6379"),
        ("NOTIFY_BROKER_URL", "redis://:hunter2/0"),  # no "@": the password parses as a port
        ("NOTIFY_DATABASE_URL", "mysql://notify:hunter2@db/notify"),
    ],
)
def test_a_url_notify_cannot_use_is_refused_without_showing_its_password(variable: str, url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({variable: url})

    assert raised.value.setting == variable
    assert str(raised.value).startswith(variable)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@redis.example:6380/0",
        "amqp://guest:guest@127.0.0.1:5672//",
        "amqps://u:p@mq.example//",
        "pyamqp://guest@localhost//",
        "sqla+postgresql://u:p@db/broker",
    ],
)
def test_the_brokers_notify_configures_are_accepted(url: str) -> None:
    assert Settings.from_env({"NOTIFY_BROKER_URL": url}).resolved_broker_url == url


def test_a_sqlite_broker_url_is_the_embedded_broker_at_that_path(tmp_path: Path) -> None:
    settings = Settings.from_env({"NOTIFY_BROKER_URL": f"sqlite:///{tmp_path}/broker.db"})

    assert settings.uses_embedded_broker
    assert settings.resolved_broker_url == f"sqlite:///{tmp_path}/broker.db"


def test_required_names_the_missing_variable() -> None:
    assert required("set", "NOTIFY_X") == "set"
    for unset in (None, ""):
        with pytest.raises(ConfigurationError, match=r"^NOTIFY_X is required but not set$") as raised:
            required(unset, "NOTIFY_X")
        assert raised.value.setting == "NOTIFY_X"


def test_settings_know_no_provider_or_channel() -> None:
    names = {f.name for f in fields(Settings)}

    assert not [n for n in names if n.startswith(("smtp_", "twilio_", "fcm_", "email_", "webhook_"))]


def test_with_environ_sets_and_unsets_variables_for_provider_settings() -> None:
    settings = Settings.from_env({"NOTIFY_SMTP_HOST": "mail.example", "NOTIFY_SMTP_PORT": "2525"})

    changed = settings.with_environ(NOTIFY_SMTP_PORT="587", NOTIFY_SMTP_HOST=None)

    assert {k: v.reveal() for k, v in changed.environ} == {"NOTIFY_SMTP_PORT": "587"}
    assert {k: v.reveal() for k, v in settings.environ} == {
        "NOTIFY_SMTP_HOST": "mail.example",
        "NOTIFY_SMTP_PORT": "2525",
    }


def test_the_environment_snapshot_stays_out_of_repr() -> None:
    settings = Settings.from_env({"NOTIFY_SMTP_PASSWORD": "hunter2", "NOTIFY_TWILIO_AUTH_TOKEN": "tok-123"})

    assert "hunter2" not in repr(settings) and "tok-123" not in str(settings)


def test_passwords_in_urls_are_masked_in_repr_and_str() -> None:
    settings = Settings.from_env(
        {
            "NOTIFY_BROKER_URL": "amqp://notify:broker-pw@mq.example:5672//",
            "NOTIFY_DATABASE_URL": "postgresql://notify:db-pw@db.example/notify?sslpassword=ssl-pw&connect_timeout=5",
        }
    )

    for shown in (repr(settings), str(settings)):
        assert "broker-pw" not in shown and "db-pw" not in shown and "ssl-pw" not in shown
        assert "amqp://notify:****@mq.example:5672//" in shown
        assert "postgresql://notify:****@db.example/notify?sslpassword=****&connect_timeout=5" in shown
    assert settings.resolved_broker_url == "amqp://notify:broker-pw@mq.example:5672//"  # intact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@redis.example:6379/0", "redis://:****@redis.example:6379/0"),
        ("redis://redis.example/0?password=pw", "redis://redis.example/0?password=****"),
        ("rediss://user:p@w@redis.example", "rediss://user:****@redis.example"),
        ("redis://:pw/0", "redis://****"),
        ("redis://redis.example:6379/0", "redis://redis.example:6379/0"),
        ("sqlite:////var/lib/notify/broker.db", "sqlite:////var/lib/notify/broker.db"),
    ],
)
def test_mask_url_hides_every_form_of_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_home_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    settings = Settings(home=tmp_path / "a-file" / "home")

    with pytest.raises(ConfigurationError) as raised:
        settings.validate()

    assert raised.value.setting == "NOTIFY_HOME"
    assert str(raised.value).startswith(f"NOTIFY_HOME '{tmp_path}/a-file/home' cannot be created")


def test_validate_creates_home(tmp_path: Path) -> None:
    Settings(home=tmp_path / "new" / "home").validate()

    assert (tmp_path / "new" / "home").is_dir()


def test_the_permanent_failure_hook_is_imported_by_load_hook() -> None:
    settings = Settings.from_env({"NOTIFY_ON_PERMANENT_FAILURE": "tests.support.hooks:record"})

    assert load_hook(settings) is hooks.record
    assert load_hook(Settings()) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("tests.support.no_such_module:record", "does not import (ModuleNotFoundError"),
        ("tests.support.hooks:no_such_function", "does not import (AttributeError"),
        ("tests.support.hooks:json", "is not callable"),
    ],
)
def test_a_hook_that_does_not_import_or_call_is_refused(name: str, reason: str) -> None:
    settings = Settings.from_env({"NOTIFY_ON_PERMANENT_FAILURE": name})

    with pytest.raises(ConfigurationError) as raised:
        load_hook(settings)

    assert raised.value.setting == "NOTIFY_ON_PERMANENT_FAILURE"
    assert str(raised.value).startswith(f"NOTIFY_ON_PERMANENT_FAILURE {name!r} {reason}")


def test_a_hook_name_without_module_and_function_is_refused_when_settings_are_read() -> None:
    with pytest.raises(ConfigurationError, match="NOTIFY_ON_PERMANENT_FAILURE must be 'module:function'"):
        Settings.from_env({"NOTIFY_ON_PERMANENT_FAILURE": "tests.support.hooks.record"})


def test_the_embedded_defaults_live_under_notify_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")

    assert settings.uses_embedded_broker
    assert settings.resolved_broker_url == f"sqlite:///{tmp_path}/home/broker.db"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path}/home/notify.db"


def test_a_plain_postgresql_url_uses_the_installed_driver() -> None:
    engine = create_engine("postgresql://postgres@127.0.0.1:5432/test")

    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_the_written_out_provider_variables_are_what_the_providers_read() -> None:
    """notify.providers.VARIABLES lets a worker name a misspelt setting without importing every
    provider's client library; it must be what their settings classes read."""
    from notify.channels.email import EmailSettings
    from notify.channels.webhook import WebhookSettings
    from notify.providers import VARIABLES
    from notify.providers.fcm import FcmSettings
    from notify.providers.smtp import SmtpSettings
    from notify.providers.twilio import TwilioSettings
    from notify.providers.webhook import WebhookProviderSettings
    from notify.settings import declared_variables

    classes = (
        EmailSettings,
        SmtpSettings,
        TwilioSettings,
        FcmSettings,
        WebhookSettings,
        WebhookProviderSettings,
    )
    assert declared_variables(*classes) == VARIABLES


def test_unknown_variables_are_named_with_a_guess_and_known_ones_are_not() -> None:
    from notify.settings import unknown_variables

    settings = Settings.from_env({"NOTIFY_HOME": "x", "NOTIFY_RETENTON": "1d", "NOTIFY_ZZZ": "1"})
    assert unknown_variables(settings) == ["NOTIFY_RETENTON (did you mean NOTIFY_RETENTION?)", "NOTIFY_ZZZ"]
    assert unknown_variables(settings, {"NOTIFY_ZZZ"}) == ["NOTIFY_RETENTON (did you mean NOTIFY_RETENTION?)"]


def test_the_log_format_is_read_in_any_case() -> None:
    assert Settings.from_env({"NOTIFY_LOG_FORMAT": " JSON "}).log_format == "json"
    assert Settings.from_env({}).log_format == "text"
