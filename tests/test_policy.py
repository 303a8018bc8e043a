"""Channel policies: durations, backoff maths and the notify.toml loader."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from notify.api import Notifier
from notify.channels import default_policies
from notify.constants import MAX_RETRY_AFTER
from notify.errors import ConfigurationError
from notify.policy import ChannelPolicy, load_policies, parse_duration
from notify.settings import Settings

DEFAULT_POLICIES = default_policies()

# -- parse_duration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("2d", 172800.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        ("30", 30.0),
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_reads_seconds_and_unit_strings(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["ten", "10x", "", "s", "1.5.0s", "10 s s", "-5s", None, [10], {"s": 1}])
def test_parse_duration_rejects_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ConfigurationError, match="expected") as caught:
        parse_duration(value, key="channels.email.backoff_max")
    assert "channels.email.backoff_max" in str(caught.value)
    assert caught.value.setting == "channels.email.backoff_max"


@pytest.mark.parametrize("value", [-1, -0.5])
def test_parse_duration_rejects_negative_numbers(value: float) -> None:
    with pytest.raises(ConfigurationError, match="must not be negative"):
        parse_duration(value, key="channels.sms.dedup_window")


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_booleans_although_they_are_ints(value: bool) -> None:
    with pytest.raises(ConfigurationError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_parse_duration_rejects_non_finite_numbers(value: float) -> None:
    # TOML has `nan` and `inf` literals; neither is a usable delay or window.
    with pytest.raises(ConfigurationError):
        parse_duration(value, key="channels.email.dedup_window")


# -- ChannelPolicy.delay ----------------------------------------------------------


def test_delay_grows_exponentially_from_backoff_initial() -> None:
    policy = ChannelPolicy(backoff_initial=10, backoff_multiplier=2, backoff_max=10_000, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 80, 160]


def test_delay_is_capped_at_backoff_max() -> None:
    policy = ChannelPolicy(backoff_initial=10, backoff_multiplier=3, backoff_max=60, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [10, 30, 60, 60]


def test_delay_stays_at_the_cap_for_very_late_attempts() -> None:
    # max_attempts has no upper bound, so a long retry budget reaches big attempt numbers.
    policy = ChannelPolicy(backoff_initial=10.0, backoff_multiplier=2.0, backoff_max=1800.0, jitter=False)
    assert policy.delay(2000) == 1800


def test_full_jitter_stays_between_zero_and_the_capped_delay() -> None:
    policy = ChannelPolicy(backoff_initial=10, backoff_multiplier=2, backoff_max=60, jitter=True)
    for attempt, cap in ((1, 10), (2, 20), (3, 40), (6, 60)):
        delays = [policy.delay(attempt) for _ in range(300)]
        assert all(0 <= d <= cap for d in delays)
        assert len(set(delays)) > 1, "full jitter should vary the delay"


def test_retry_after_wins_when_longer_than_the_policy_delay() -> None:
    policy = ChannelPolicy(backoff_initial=10, backoff_multiplier=2, backoff_max=600, jitter=False)
    assert policy.delay(1, retry_after=120) == 120
    assert policy.delay(1, retry_after=3) == 10


def test_retry_after_beyond_backoff_max_is_honoured_in_full() -> None:
    """Retrying before the provider said it would accept only earns another refusal (a Twilio 429
    with Retry-After: 2 under backoff_max 1 s was retried after 1.2 s)."""
    policy = ChannelPolicy(backoff_initial=0.2, backoff_max=1, jitter=False)
    assert policy.delay(1, retry_after=2) == 2
    assert policy.delay(1, retry_after=3600) == 3600


def test_retry_after_is_honoured_even_with_jitter() -> None:
    policy = ChannelPolicy(backoff_initial=10, backoff_max=60, jitter=True)
    assert all(policy.delay(1, retry_after=45) == 45 for _ in range(50))
    assert all(policy.delay(4, retry_after=300) == 300 for _ in range(50))


@pytest.mark.parametrize("hint", [99999999999999.0, 1e308, math.inf, 86400.0 * 365 * 475])
def test_a_huge_retry_after_waits_a_day_and_no_longer(hint: float) -> None:
    # A delay the store can add to a datetime: no OverflowError, no parking until 2499.
    policy = DEFAULT_POLICIES["sms"]
    delay = policy.delay(1, retry_after=hint)
    assert delay == MAX_RETRY_AFTER == 86400.0
    assert datetime.now(UTC) + timedelta(seconds=delay)


def test_a_backoff_max_longer_than_a_day_lets_a_hint_wait_as_long() -> None:
    policy = ChannelPolicy(backoff_initial=10, backoff_max=3 * 86400, jitter=False)
    assert policy.delay(1, retry_after=2 * 86400) == 2 * 86400
    assert policy.delay(1, retry_after=math.inf) == 3 * 86400


@pytest.mark.parametrize("hint", [-5.0, -math.inf, math.nan])
def test_a_meaningless_retry_after_leaves_the_policy_delay(hint: float) -> None:
    policy = ChannelPolicy(backoff_initial=10, backoff_max=60, jitter=False)
    assert policy.delay(2, retry_after=hint) == 20


# -- load_policies ------------------------------------------------------------------


def test_without_a_file_every_channel_gets_its_defaults() -> None:
    policies = load_policies(None, DEFAULT_POLICIES)
    assert set(policies) == {"email", "sms", "push", "webhook"}
    assert policies == DEFAULT_POLICIES
    assert policies["email"].max_attempts == 6
    assert policies["email"].dedup_window == 86400
    assert policies["push"].dedup_window == 3600


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "notify.toml"
    path.write_text(text)
    return path


def test_a_toml_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[channels.email]
max_attempts = 3
backoff_initial = "500ms"
backoff_multiplier = 3
backoff_max = "5m"
jitter = false
dedup_window = "1h"
rate_limit = "100/s"

[channels.push]
dedup_window = 60
""",
    )
    policies = load_policies(path, DEFAULT_POLICIES)
    assert policies["email"] == ChannelPolicy(
        max_attempts=3,
        backoff_initial=0.5,
        backoff_multiplier=3.0,
        backoff_max=300.0,
        jitter=False,
        dedup_window=3600.0,
        rate_limit="100/s",
    )
    assert policies["push"] == ChannelPolicy(
        max_attempts=DEFAULT_POLICIES["push"].max_attempts,
        backoff_initial=DEFAULT_POLICIES["push"].backoff_initial,
        backoff_max=DEFAULT_POLICIES["push"].backoff_max,
        dedup_window=60.0,
    )
    assert policies["sms"] == DEFAULT_POLICIES["sms"]


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    assert load_policies(write(tmp_path, ""), DEFAULT_POLICIES) == DEFAULT_POLICIES


@pytest.mark.parametrize(
    ("text", "names", "reason"),
    [
        ("[channels.email\nmax_attempts = 3\n", "notify.toml", "not valid TOML"),
        ("[channels.fax]\nmax_attempts = 3\n", "fax", "unknown"),
        ("[channels.email]\nmax_retries = 3\n", "channels.email.max_retries", "unknown key"),
        ('[channels.email]\nmax_attempts = "six"\n', "channels.email.max_attempts", "wrong type"),
        ("[channels.sms]\nmax_attempts = 2.5\n", "channels.sms.max_attempts", "wrong type"),
        ("[channels.sms]\nmax_attempts = true\n", "channels.sms.max_attempts", "wrong type"),
        ('[channels.push]\njitter = "yes"\n', "channels.push.jitter", "wrong type"),
        ("[channels.email]\nmax_attempts = 0\n", "channels.email.max_attempts", "at least 1"),
        ("[channels.email]\nmax_attempts = -3\n", "channels.email.max_attempts", "at least 1"),
        ("[channels.email]\nbackoff_initial = 0\n", "channels.email.backoff_initial", "more than 0"),
        ('[channels.sms]\nbackoff_initial = "0ms"\n', "channels.sms.backoff_initial", "more than 0"),
        ('[channels.sms]\nbackoff_max = "10s"\n', "channels.sms.backoff_max", "at least backoff_initial"),
        (
            '[channels.push]\nbackoff_initial = "2m"\nbackoff_max = "1m"\n',
            "channels.push.backoff_max",
            "at least backoff_initial",
        ),
        ("[channels.email]\nbackoff_multiplier = 0.5\n", "channels.email.backoff_multiplier", "at least 1"),
        ('[channels.email]\nbackoff_max = "soon"\n', "channels.email.backoff_max", "expected"),
        ("[channels.email]\ndedup_window = -1\n", "channels.email.dedup_window", "negative"),
        ('[channels.email]\nrate_limit = "fast"\n', "channels.email.rate_limit", "rate"),
        ("[channels.email]\nrate_limit = 100\n", "channels.email.rate_limit", "wrong type"),
    ],
)
def test_an_invalid_file_raises_configuration_error_naming_the_key(
    tmp_path: Path, text: str, names: str, reason: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_policies(write(tmp_path, text), DEFAULT_POLICIES)
    message = str(caught.value)
    assert names in message
    assert reason in message


@pytest.mark.parametrize(
    "text",
    [
        '[channels.email]\nbackoff_max = "soon"\n',
        "[channels.email]\ndedup_window = -1\n",
        "[channels.email]\nmax_attempts = 0\n",
        '[channels.email]\nrate_limit = "fast"\n',
    ],
)
def test_every_policy_file_error_names_notify_config_as_the_setting(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_policies(write(tmp_path, text), DEFAULT_POLICIES)
    assert caught.value.setting == "NOTIFY_CONFIG"


def test_a_channel_given_as_a_value_instead_of_a_table_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"channels\.email"):
        load_policies(write(tmp_path, "[channels]\nemail = 3\n"), DEFAULT_POLICIES)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_policies(tmp_path / "nowhere.toml", DEFAULT_POLICIES)


def test_notifier_refuses_an_invalid_notify_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[channels.email]\nmax_attempts = 0\n")
    settings = Settings(home=tmp_path / ".notify", config_path=path)
    with pytest.raises(ConfigurationError, match=r"channels\.email\.max_attempts"):
        Notifier(settings)


def test_notifier_reads_notify_config_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[channels.sms]\nmax_attempts = 2\n")
    settings = Settings.from_env({"NOTIFY_HOME": str(tmp_path / ".notify"), "NOTIFY_CONFIG": str(path)})
    assert Notifier(settings).policies["sms"].max_attempts == 2
