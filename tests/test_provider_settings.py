"""Each provider's own settings, and the email channel's: read from NOTIFY_* when its worker starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from notify.channels.email import EmailSettings, email_settings
from notify.errors import ConfigurationError
from notify.providers import load_provider
from notify.providers.base import Message, Receipt
from notify.providers.fcm import FcmProvider, FcmSettings
from notify.providers.smtp import SmtpProvider, SmtpSettings
from notify.providers.twilio import TwilioProvider, TwilioSettings
from notify.settings import Secret, Settings, check_bounds, required

SENDER = "Notify <notify@example.com>"


def refusal(environ: dict[str, str], settings_class: type[object]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(environ).provider_settings(settings_class)
    return raised.value


# --- SMTP -----------------------------------------------------------------------------


def test_smtp_defaults() -> None:
    own = Settings.from_env({}).provider_settings(SmtpSettings)

    assert (own.host, own.port, own.tls, own.timeout) == ("localhost", 25, "starttls", 30.0)
    assert (own.username, own.password) == (None, None)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"NOTIFY_SMTP_PORT": "twenty-five"}, "NOTIFY_SMTP_PORT"),
        ({"NOTIFY_SMTP_TLS": "ssl"}, "NOTIFY_SMTP_TLS"),
        ({"NOTIFY_SMTP_TIMEOUT": "soon"}, "NOTIFY_SMTP_TIMEOUT"),
    ],
)
def test_a_bad_smtp_value_names_its_variable(environ: dict[str, str], variable: str) -> None:
    error = refusal(environ, SmtpSettings)

    assert error.setting == variable
    assert variable in str(error)


def test_a_bad_tls_mode_says_which_are_known() -> None:
    error = refusal({"NOTIFY_SMTP_TLS": "ssl"}, SmtpSettings)

    assert str(error) == "NOTIFY_SMTP_TLS must be none, starttls or tls, not 'ssl'"


@pytest.mark.parametrize(
    ("variable", "value", "bound"),
    [
        ("NOTIFY_SMTP_TIMEOUT", "50ms", "at least 0.1s"),
        ("NOTIFY_SMTP_TIMEOUT", "11m", "at most 10m"),
        ("NOTIFY_SMTP_PORT", "0", "at least 1"),
        ("NOTIFY_SMTP_PORT", "99999", "at most 65535"),
    ],
)
def test_an_smtp_number_out_of_its_bounds_is_refused_naming_the_variable_and_the_bound(
    variable: str, value: str, bound: str
) -> None:
    error = refusal({variable: value}, SmtpSettings)

    assert error.setting == variable
    assert str(error).startswith(f"{variable} must be {bound}, not ")


def test_the_smtp_bounds_themselves_are_accepted() -> None:
    environ = {"NOTIFY_SMTP_TIMEOUT": "100ms", "NOTIFY_SMTP_PORT": "65535"}
    own = Settings.from_env(environ).provider_settings(SmtpSettings)

    assert (own.timeout, own.port) == (0.1, 65535)


def test_the_smtp_provider_is_built_from_its_settings_and_the_channels_sender() -> None:
    settings = Settings.from_env(
        {
            "NOTIFY_EMAIL_FROM": SENDER,
            "NOTIFY_SMTP_HOST": "mail.example",
            "NOTIFY_SMTP_PORT": "2525",
            "NOTIFY_SMTP_TLS": "tls",
            "NOTIFY_SMTP_USERNAME": "mailer",
            "NOTIFY_SMTP_PASSWORD": "hunter2",
            "NOTIFY_SMTP_TIMEOUT": "5s",
            "NOTIFY_DELIVERY_TIMEOUT": "20s",
        }
    )

    provider = SmtpProvider.from_settings(settings)
    provider.close()

    config = provider.config
    assert (config.host, config.port, config.tls, config.sender) == ("mail.example", 2525, "tls", SENDER)
    assert (config.username, config.password, config.timeout, config.deadline) == (
        "mailer",
        Secret("hunter2"),
        5.0,
        20.0,
    )


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"NOTIFY_SMTP_TLS": "ssl"}, "NOTIFY_SMTP_TLS"),
        ({"NOTIFY_SMTP_PORT": "99999"}, "NOTIFY_SMTP_PORT"),
        ({"NOTIFY_EMAIL_FROM": "not-an-address"}, "NOTIFY_EMAIL_FROM"),
    ],
)
def test_a_bad_email_setting_is_refused_by_the_provider_not_by_the_producers_settings(
    environ: dict[str, str], variable: str
) -> None:
    settings = Settings.from_env({"NOTIFY_EMAIL_FROM": SENDER, **environ})  # a producer's: accepted

    with pytest.raises(ConfigurationError) as raised:
        SmtpProvider.from_settings(settings)  # what a worker does at start

    assert raised.value.setting == variable
    assert str(raised.value).startswith(variable)


@pytest.mark.parametrize(
    "login",
    [
        {"NOTIFY_SMTP_USERNAME": "mailer", "NOTIFY_SMTP_PASSWORD": "hunter2"},
        {"NOTIFY_SMTP_PASSWORD": "hunter2"},
        {"NOTIFY_SMTP_USERNAME": "mailer"},  # AUTH with an empty password: still in clear
    ],
)
@pytest.mark.parametrize("host", ["mail.example", "10.0.0.25", "127.0.0.1.example", "::2"])
def test_a_login_without_tls_to_a_host_off_this_machine_is_refused_naming_the_setting(
    login: dict[str, str], host: str
) -> None:
    settings = Settings.from_env(
        {"NOTIFY_EMAIL_FROM": SENDER, "NOTIFY_SMTP_HOST": host, "NOTIFY_SMTP_TLS": "none", **login}
    )

    with pytest.raises(ConfigurationError) as raised:
        SmtpProvider.from_settings(settings)  # what a worker does at start

    assert raised.value.setting == "NOTIFY_SMTP_TLS"
    assert str(raised.value).startswith(f"NOTIFY_SMTP_TLS=none would send the SMTP login in clear to {host}")
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "127.42.0.9", "::1", "[::1]"])
def test_a_login_without_tls_to_a_loopback_host_is_allowed(host: str) -> None:
    settings = Settings.from_env(
        {
            "NOTIFY_EMAIL_FROM": SENDER,
            "NOTIFY_SMTP_HOST": host,
            "NOTIFY_SMTP_TLS": "none",
            "NOTIFY_SMTP_USERNAME": "mailer",
            "NOTIFY_SMTP_PASSWORD": "hunter2",
        }
    )

    provider = SmtpProvider.from_settings(settings)
    provider.close()

    assert (provider.config.tls, provider.config.password) == ("none", Secret("hunter2"))


@pytest.mark.parametrize("tls", ["starttls", "tls"])
def test_a_login_with_tls_to_any_host_is_allowed(tls: str) -> None:
    environ = {"NOTIFY_SMTP_HOST": "mail.example", "NOTIFY_SMTP_TLS": tls, "NOTIFY_SMTP_PASSWORD": "hunter2"}

    assert Settings.from_env(environ).provider_settings(SmtpSettings).tls == tls


def test_an_smtp_provider_without_a_sender_names_it() -> None:
    with pytest.raises(ConfigurationError, match=r"^NOTIFY_EMAIL_FROM is required but not set$"):
        SmtpProvider.from_settings(Settings.from_env({}))


# --- the email channel's sender ----------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "not-an-address",
        "a@b.example, c@d.example",
        "ada@-example.com",
        "ada@exämple.com",
        "Ada\r\nBcc: x@evil.example",
    ],
)
def test_a_from_address_that_is_not_one_valid_address_is_refused(sender: str) -> None:
    error = refusal({"NOTIFY_EMAIL_FROM": sender}, EmailSettings)

    assert error.setting == "NOTIFY_EMAIL_FROM"
    assert str(error).startswith("NOTIFY_EMAIL_FROM must be one address like 'Notify <notify@example.com>'")
    assert "\n" not in str(error)  # one line, even for a value that spans two


@pytest.mark.parametrize(
    "sender", ["notify@example.com", "Notify <notify@example.com>", '"Zoë, Notify" <z@xn--exmple-cua.com>']
)
def test_a_from_address_with_or_without_a_name_is_accepted(sender: str) -> None:
    assert Settings.from_env({"NOTIFY_EMAIL_FROM": sender}).provider_settings(EmailSettings).sender == sender


def test_the_sender_is_read_once_per_settings_object() -> None:
    settings = Settings.from_env({"NOTIFY_EMAIL_FROM": SENDER})

    assert email_settings(settings) is email_settings(settings)
    assert email_settings(settings.with_environ(NOTIFY_EMAIL_FROM="b@example.com")).sender == "b@example.com"


# --- Twilio and FCM ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "settings_class", "url"),
    [
        ("NOTIFY_TWILIO_BASE_URL", TwilioSettings, "ftp://ac:hunter2@twilio.example"),
        ("NOTIFY_TWILIO_BASE_URL", TwilioSettings, "https://ac:hunter2@twilio.example:port/"),
        ("NOTIFY_TWILIO_BASE_URL", TwilioSettings, "http://"),
        ("NOTIFY_FCM_BASE_URL", FcmSettings, "ftp://u:hunter2@fcm.example"),
        ("NOTIFY_FCM_BASE_URL", FcmSettings, "fcm.googleapis.com"),
    ],
)
def test_a_base_url_a_provider_cannot_use_is_refused_without_showing_its_password(
    variable: str, settings_class: type[object], url: str
) -> None:
    error = refusal({variable: url}, settings_class)

    assert error.setting == variable
    assert str(error).startswith(variable)
    assert "hunter2" not in str(error)


@pytest.mark.parametrize(
    ("provider", "variable"),
    [(TwilioProvider, "NOTIFY_TWILIO_BASE_URL"), (FcmProvider, "NOTIFY_FCM_BASE_URL")],
)
def test_a_bad_base_url_is_refused_when_the_provider_is_built(
    provider: type[TwilioProvider] | type[FcmProvider], variable: str
) -> None:
    settings = Settings.from_env({variable: "ftp://u:hunter2@example.com"})  # a producer's: accepted

    with pytest.raises(ConfigurationError) as raised:
        provider.from_settings(settings)

    assert raised.value.setting == variable


def test_twilio_and_fcm_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.provider_settings(TwilioSettings).base_url == "https://api.twilio.com"
    assert settings.provider_settings(FcmSettings).base_url == "https://fcm.googleapis.com"


# --- secrets ----------------------------------------------------------------------------------


def test_the_repr_of_each_settings_class_hides_secrets() -> None:
    settings = Settings.from_env(
        {
            "NOTIFY_EMAIL_FROM": SENDER,
            "NOTIFY_SMTP_USERNAME": "mailer",
            "NOTIFY_SMTP_PASSWORD": "smtp-s3cret",
            "NOTIFY_TWILIO_ACCOUNT_SID": "AC123",
            "NOTIFY_TWILIO_AUTH_TOKEN": "twilio-s3cret",
            "NOTIFY_TWILIO_BASE_URL": "https://proxy:url-s3cret@twilio.example",
            "NOTIFY_FCM_BASE_URL": "https://proxy:url-s3cret@fcm.example",
        }
    )
    owns = [settings.provider_settings(c) for c in (SmtpSettings, TwilioSettings, FcmSettings, EmailSettings)]

    shown = " ".join(f"{own!r} {own!s}" for own in owns)
    assert "s3cret" not in shown
    assert "mailer" in shown and "AC123" in shown and "https://proxy:****@twilio.example" in shown
    smtp = settings.provider_settings(SmtpSettings)
    assert smtp.password is not None and smtp.password.reveal() == "smtp-s3cret"


# --- a provider of one's own, named by dotted path ----------------------------------------------


@dataclass(frozen=True)
class CarrierSettings:
    """A third party's provider settings, declared as notify's own are."""

    api_key: Secret | None = field(default=None, metadata={"env": "NOTIFY_CARRIER_API_KEY"})
    retries: int = field(default=3, metadata={"env": "NOTIFY_CARRIER_RETRIES", "bounds": (0, 10)})

    def __post_init__(self) -> None:
        check_bounds(self)


class CarrierProvider:
    name = "carrier"

    def __init__(self, api_key: Secret, retries: int) -> None:
        self.api_key, self.retries = api_key, retries

    @classmethod
    def from_settings(cls, settings: Settings) -> CarrierProvider:
        own = settings.provider_settings(CarrierSettings)
        return cls(required(own.api_key, "NOTIFY_CARRIER_API_KEY"), own.retries)

    def deliver(self, message: Message) -> Receipt:
        return Receipt()

    def close(self) -> None:
        pass


CARRIER = f"{__name__}:CarrierProvider"


def test_a_provider_named_by_dotted_path_reads_its_own_variables() -> None:
    settings = Settings.from_env(
        {"NOTIFY_SMS_BACKEND": CARRIER, "NOTIFY_CARRIER_API_KEY": "k3y", "NOTIFY_CARRIER_RETRIES": "5"}
    )

    provider = load_provider("sms", settings)

    assert isinstance(provider, CarrierProvider)
    assert (provider.api_key.reveal(), provider.retries) == ("k3y", 5)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "NOTIFY_CARRIER_API_KEY is required but not set"),
        (
            {"NOTIFY_CARRIER_API_KEY": "k3y", "NOTIFY_CARRIER_RETRIES": "11"},
            "NOTIFY_CARRIER_RETRIES must be at most 10",
        ),
        (
            {"NOTIFY_CARRIER_API_KEY": "k3y", "NOTIFY_CARRIER_RETRIES": "many"},
            "NOTIFY_CARRIER_RETRIES must be a number",
        ),
    ],
)
def test_a_dotted_path_providers_bad_setting_is_named(environ: dict[str, str], message: str) -> None:
    settings = Settings.from_env({"NOTIFY_SMS_BACKEND": CARRIER, **environ})

    with pytest.raises(ConfigurationError) as raised:
        load_provider("sms", settings)

    assert str(raised.value).startswith(message)
    assert raised.value.setting == message.split()[0]
