"""A bounded fuzz of `send()` and `send_many()` on both stores (issue 17, "Tests that must exist").

Every argument hostile: each call either succeeds, and the store reads it back, or raises a
`NotifyError` that is not `StoreUnavailable` (the store is up) with nothing new recorded.
Derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import notify
from notify.api import Notifier
from notify.errors import StoreUnavailable
from notify.settings import Settings

EXAMPLES = 500  # per store: about 12 s each on two shared cores


class Text(str):
    """A str subclass, as some libraries hand out: it must be taken as the text it holds."""


class Moment(datetime):
    """A datetime subclass, as pendulum's and arrow's are."""


# -- text ------------------------------------------------------------------------------------

# Every code point: astral characters, NULs, controls and lone surrogates included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=[]), max_size=24)
ODD_CHARS = st.sampled_from(
    ["a", "é", "ß", "😀", "\x00", "\ud800", "\u2028", " ", "%", "/", "?", "'", "\\", "."]
)
# Long runs, cheaply: a character repeated up to past every limit the store has.
HUGE_TEXT = st.builds(lambda c, n: c * n, ODD_CHARS | ANY_TEXT.filter(bool), st.integers(0, 3000))
HOSTILE_TEXT = ANY_TEXT | HUGE_TEXT | st.builds(Text, ANY_TEXT)


NOT_TEXT = (
    st.none() | st.integers() | st.floats() | st.binary(max_size=4) | st.builds(object) | st.just(["x"])
)

# -- addresses of each kind ------------------------------------------------------------------

IDN = st.sampled_from(
    ["bücher.example", "straße.de", "例え.テスト", "xn--bcher-kva.example", "ü" * 60 + ".de"]
)
HOSTS = IDN | st.sampled_from(
    [
        "hooks.example.com",
        "1.1",
        "0x7f.1",
        "8.8.8.8",
        "[2606:4700::1]",
        "[::1",
        "exa mple.com",
        "",
        "a..b",
        "h:0",
    ]
)
URL_PARTS = st.sampled_from(
    ["", "/", "/café", "?q", "/a?name=Jürgen", "#frag", "/%C3%A9", "/%zz", "\\x", "/'\"<>`{}^"]
)


def _url(scheme: str, host: str, rest: str, pad: str, to: int) -> str:
    url = f"{scheme}{host}{rest}"
    return (url + pad * to)[:to] if to else url


URLS = st.builds(
    _url,
    st.sampled_from(["https://", "http://", "HTTPS://", "ftp://", "", "https:", "https://user:pw@"]),
    HOSTS,
    URL_PARTS,
    ODD_CHARS,
    st.sampled_from([0, 0, 511, 512, 513]),  # around the store's limit, where normalising may grow it
)
EMAILS = st.builds(
    lambda user, domain, pad: (user + pad) + "@" + domain,
    st.sampled_from(["ada", "Ada.Lovelace", "ädä", "a" * 64, '"quoted"', ""]),
    IDN | st.sampled_from(["example.com", "EXAMPLE.com", "[1.2.3.4]", "x" * 250 + ".com"]),
    st.sampled_from(["", "+tag", "a" * 200]),
)
PHONES = st.sampled_from(
    [
        "+14155550100",
        "+4930123456",
        "+1 415 555 0100",
        "\uff0b\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff10\uff10",
        "+\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0660\u0660",
    ]
)
TOKENS = st.sampled_from(["tok-ada", "t" * 512, "😀" * 512])

# Addresses of the right kind, many odd, some just under the limits, where normalising grows them.
GOOD_URLS = st.builds(
    _url,
    st.sampled_from(["https://", "http://", "HTTPS://"]),
    st.sampled_from(
        ["hooks.example.com", "bücher.example", "1.1", "8.8.8.8", "[2606:4700::1]", "h.example:8443"]
    ),
    URL_PARTS,
    st.sampled_from(["a", "é", "😀", "'", "%", "/"]),
    st.sampled_from([0, 0, 0, 500, 511, 512]),
)
GOOD = {
    "email": st.sampled_from(
        ["ada@example.com", "ada@bücher.example", "Ada@Example.COM", "a" * 64 + "@example.com"]
    )
    | st.builds(lambda n: "ada@" + "ü" * n + ".de", st.integers(1, 63)),
    "phone": st.sampled_from(["+14155550100", "+4930123456", "+1 415 555 0100"]),
    "push_token": TOKENS,
    "webhook": GOOD_URLS,
}


def _addresses(plausible: dict[str, Any], hostile: dict[Any, Any]) -> dict[Any, Any]:
    return {**plausible, **hostile}


GOOD_ADDRESSES = st.builds(  # at least one
    _addresses,
    st.sampled_from(sorted(GOOD)).flatmap(lambda kind: GOOD[kind].map(lambda address: {kind: address})),
    st.fixed_dictionaries({}, optional=GOOD),
)
ADDRESS = {"email": EMAILS | PHONES, "phone": PHONES, "push_token": TOKENS, "webhook": URLS}
HOSTILE_ADDRESS = HOSTILE_TEXT | NOT_TEXT | EMAILS | URLS
KINDS = st.sampled_from(["mail", "Email", ""]) | ANY_TEXT | st.integers() | st.none()


ADDRESSES = st.builds(
    _addresses,
    st.fixed_dictionaries({}, optional=ADDRESS),
    st.dictionaries(st.sampled_from(sorted(ADDRESS)) | KINDS, HOSTILE_ADDRESS, max_size=1),
)
TO = GOOD_ADDRESSES | GOOD_ADDRESSES.map(lambda a: notify.Recipient(**a))
HOSTILE_TO = (
    ADDRESSES
    | ADDRESSES.filter(lambda a: all(isinstance(k, str) for k in a)).map(lambda a: notify.Recipient(**a))
    | NOT_TEXT
    | HOSTILE_TEXT
    | st.just([("email", "ada@example.com")])
    | GOOD_ADDRESSES.map(MappingProxyType)
)

# -- data ------------------------------------------------------------------------------------


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"k": value}
    return value


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities among them
    | HOSTILE_TEXT
    | st.builds(lambda digits: -(10**digits), st.integers(4290, 4310))  # past str()'s digit limit
    | st.sampled_from([math.nan, Decimal("1.5"), 1 + 2j, b"x", {1}, date(2030, 1, 1)])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)


# Values a template may well be given: markup, template syntax, separators, long runs, odd links.
ODD_VALUES = st.sampled_from(
    [
        "<b>x</b>",
        "{{ 7 * 7 }}",
        "{% raw %}",
        "\u2028\u2029",
        "\u202eevil",
        "\x00",
        "😀" * 1000,
        "é" * 5000,
        "x" * 20000,
        "javascript:alert(1)",
        "https://example.com/\u0000",
        "https://bücher.example/ü",
        "//x",
        10**300,
        -0.0,
        1e308,
    ]
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
SAMPLE = {
    "name": "Ada",
    "order_id": "A-1",
    "carrier": "DHL",
    "tracking_number": "T1",
    "items": [],
    "reset_url": "https://example.com/r",
    "expires_minutes": 30,
    "code": "123456",
}
DATA = (
    st.dictionaries(HOSTILE_TEXT, VALUES, max_size=3).map(lambda d: {**SAMPLE, **d})
    | st.builds(lambda n: {**SAMPLE, "deep": _nested(n)}, st.integers(28, 40))
    | st.builds(lambda n: {**SAMPLE, "name": "x" * n}, st.integers(60_000, 70_000))
    | st.none()
    | NOT_TEXT
    | st.builds(
        lambda d: MappingProxyType({**SAMPLE, "nested": MappingProxyType(d)}),
        st.dictionaries(ANY_TEXT, SCALARS),
    )
)

# -- send_at ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OddZone(tzinfo):
    """A tzinfo whose offset is whatever it was given: a day, an int, a string, nothing."""

    offset: Any

    def utcoffset(self, dt: datetime | None) -> Any:
        return self.offset

    def dst(self, dt: datetime | None) -> Any:
        return None

    def tzname(self, dt: datetime | None) -> str:
        return "odd"


class FlippingZone(tzinfo):
    """A tzinfo whose offset changes every time it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    def utcoffset(self, dt: datetime | None) -> timedelta:
        self.calls += 1
        return timedelta(hours=23 if self.calls % 2 else -23)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "flipping"


ODD_OFFSETS = st.sampled_from(
    [timedelta(days=1), timedelta(hours=-25), timedelta(microseconds=1), 3600, "+01:00"]
)
ZONES = (
    st.timezones()
    | st.builds(timezone, st.timedeltas(-timedelta(hours=23, minutes=59), timedelta(hours=23, minutes=59)))
    | st.builds(OddZone, ODD_OFFSETS | st.none())
    | st.builds(FlippingZone)
)
SEND_AT = (
    st.none()
    | st.datetimes(timezones=ZONES)  # far past and future included
    | st.datetimes()  # naive
    | st.builds(lambda at: Moment.fromtimestamp(at.timestamp(), UTC), st.datetimes(timezones=st.just(UTC)))
    | st.sampled_from([datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)])
    | st.sampled_from([date(2030, 1, 1), "2030-01-01T00:00:00Z", 1_900_000_000, timedelta(1)])
)

# -- the rest --------------------------------------------------------------------------------

TEMPLATES = (
    st.sampled_from(["welcome", "order_shipped", "password_reset"])
    | st.sampled_from(
        ["", ".", "..", "../welcome", "welcome/", "/etc", "_layouts", "welcome\x00", "Welcome", "w" * 300]
    )
    | HOSTILE_TEXT
    | NOT_TEXT
)
CHANNEL_NAMES = st.sampled_from(["email", "sms", "push", "webhook", "fax", "EMAIL", ""]) | ANY_TEXT | NOT_TEXT
CHANNELS = (
    st.none()
    | st.lists(CHANNEL_NAMES, max_size=4)
    | st.lists(CHANNEL_NAMES, max_size=3).map(tuple)
    | st.lists(CHANNEL_NAMES, max_size=3).map(lambda names: iter(names))
    | st.sampled_from(["email", {"email": 1}, frozenset({"sms"})])
    | NOT_TEXT
)
PRIORITY = (
    st.sampled_from(["high", "normal", "low", notify.Priority.HIGH, "HIGH", "urgent", ""])
    | HOSTILE_TEXT
    | NOT_TEXT
)
DEDUP_KEY = st.none() | st.sampled_from(["order-1", "k" * 200]) | HOSTILE_TEXT | NOT_TEXT
LOCALE = (
    st.none() | st.sampled_from(["de", "de-AT", "pt_BR", "x" * 35, "de-", "../de"]) | HOSTILE_TEXT | NOT_TEXT
)

# A plausible call (odd addresses, data and times, but of the right types), then up to three of its
# arguments replaced by hostile ones: most calls get past the first check, some as far as the store.
PLAUSIBLE = {
    "template": st.sampled_from(["welcome", "order_shipped", "password_reset"]),
    "to": TO,
    "data": st.dictionaries(
        st.sampled_from(sorted(SAMPLE)) | ANY_TEXT, JSON_VALUES | ODD_VALUES, max_size=3
    ).map(lambda d: {**SAMPLE, **d}),
    "channels": st.none() | st.lists(st.sampled_from(["email", "sms", "push", "webhook"]), max_size=3),
    "priority": st.sampled_from(["high", "normal", "low"]),
    "dedup_key": st.none() | st.sampled_from(["order-1", "k" * 200, "é" * 200, "😀" * 200]),
    "send_at": st.none() | st.datetimes(timezones=st.timezones() | st.just(UTC)),
    "locale": st.none() | st.sampled_from(["de", "de-AT", "pt_BR", "fr"]),
}
HOSTILE = {
    "template": TEMPLATES,
    "to": HOSTILE_TO,
    "data": DATA,
    "channels": CHANNELS,
    "priority": PRIORITY,
    "dedup_key": DEDUP_KEY,
    "send_at": SEND_AT,
    "locale": LOCALE,
}
ARGUMENTS = st.builds(
    _addresses,
    st.fixed_dictionaries(PLAUSIBLE),
    st.sets(st.sampled_from(sorted(HOSTILE)), max_size=3).flatmap(
        lambda names: st.fixed_dictionaries({name: HOSTILE[name] for name in names})
    ),
)


@dataclass(frozen=True)
class Call:
    """One send() (one intent) or one send_many() (several, or things that are not intents)."""

    many: bool
    intents: tuple[Any, ...]
    batch_size: Any = None


def _intent(arguments: dict[str, Any]) -> notify.Intent:
    arguments = dict(arguments)
    return notify.Intent(arguments.pop("template"), arguments.pop("to"), **arguments)


INTENTS = ARGUMENTS.map(_intent)
CALLS = st.builds(Call, st.just(False), st.tuples(INTENTS)) | st.builds(
    Call,
    st.just(True),
    st.lists(INTENTS, max_size=3).map(tuple) | st.lists(INTENTS | NOT_TEXT, max_size=3).map(tuple),
    st.none() | st.sampled_from([1, 2, 0, -1, True, 1.5, "2", 10**30]),
)

# -- the property ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_notifier(
    request: pytest.FixtureRequest, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Notifier]:
    """One producer for every example of a run: they share its store, SQLite or PostgreSQL."""
    monkeypatch.chdir(tmp_path)  # no stray .env or notify.toml
    if request.param == "postgresql":
        env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    made = Notifier(Settings.from_env(env))
    yield made
    made.close()


def recorded(notifier: Notifier) -> tuple[int, int]:
    """Notifications and deliveries in the store."""
    notifier.store.get("none")  # the store makes its schema on first use
    with notifier.store.engine.connect() as conn:
        count = "SELECT (SELECT count(*) FROM notify_notifications), (SELECT count(*) FROM notify_deliveries)"
        notifications, deliveries = conn.execute(sa.text(count)).one()
    return int(notifications), int(deliveries)


def call(notifier: Notifier, made: Call) -> list[notify.SendResult]:
    if not made.many:
        [intent] = made.intents
        options = {
            k: getattr(intent, k) for k in ("data", "channels", "priority", "dedup_key", "send_at", "locale")
        }
        return [notifier.send(intent.template, intent.to, **options)]
    if made.batch_size is None:
        return notifier.send_many(list(made.intents))
    return notifier.send_many(list(made.intents), batch_size=made.batch_size)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(made=CALLS)
def test_send_and_send_many_succeed_or_raise_a_notify_error_with_nothing_recorded(
    store_notifier: Notifier, made: Call
) -> None:
    before = recorded(store_notifier)
    try:
        results = call(store_notifier, made)
    except notify.NotifyError as exc:
        assert not isinstance(exc, StoreUnavailable), f"the store is up, yet: {exc!r}"
        assert recorded(store_notifier) == before
        event(f"refused: {type(exc).__name__} on {getattr(exc, 'field', '?').split('.')[-1]}")
        return
    event("sent many" if made.many else "sent")
    for result in results:
        assert {d.id for d in store_notifier.status(result.id)} == {d.id for d in result.deliveries}
