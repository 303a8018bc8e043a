"""The email fast path agrees with email-validator on every address it answers for."""

from __future__ import annotations

import email_validator
from hypothesis import given, settings
from hypothesis import strategies as st

from notify.channels.email import _plain_address

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
DOMAINS = [
    "example.com", "Example.COM", "mail.example.co.uk", "bücher.example", "xn--bcher-kva.example",
    "123.com", "example", "localhost", "example.com.", "-example.com", "ex_ample.com", "example.123",
    "[1.2.3.4]", "a" * 64 + ".com", ("a" * 63 + ".") * 4 + "com", "invalid", "example.invalid",
    "exa mple.com", "例え.テスト", "",
]  # fmt: skip
locals_ = st.one_of(
    st.lists(st.text(ATEXT, min_size=1, max_size=20), min_size=1, max_size=4).map(".".join),
    st.text(max_size=70),  # anything at all: the fast path must decline or agree
)


def verdict(address: str) -> str | None:
    try:
        return email_validator.validate_email(address, check_deliverability=False).ascii_email
    except email_validator.EmailNotValidError:
        return None


@settings(max_examples=600, deadline=None)
@given(local=locals_, domain=st.sampled_from(DOMAINS))
def test_the_fast_path_answers_as_email_validator_or_not_at_all(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    quick = _plain_address(address)
    if quick is not None:
        assert quick == verdict(address)


def test_the_common_addresses_take_the_fast_path() -> None:
    assert _plain_address("Ada.Lovelace+news@Example.COM") == "Ada.Lovelace+news@example.com"
    assert _plain_address("x@bücher.example") == "x@xn--bcher-kva.example"
    assert _plain_address("a..b@example.com") is None  # left to email-validator, which refuses it
    assert _plain_address("a" * 65 + "@example.com") is None
    assert _plain_address("Info@example.com") is None  # a role name email-validator lowercases
    assert _plain_address("aaaaaaa@" + ".".join(["例" * 20] * 4) + ".com") is None  # 255 bytes in UTF-8


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["info", "Info", "POSTMASTER", "Abuse", "support", "webmaster", "noc", "Sales"]),
    domain=st.sampled_from(DOMAINS),
)
def test_role_names_are_left_to_email_validator(name: str, domain: str) -> None:
    quick = _plain_address(f"{name}@{domain}")
    assert quick is None or quick == verdict(f"{name}@{domain}")
