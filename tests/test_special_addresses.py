"""The webhook address check: IANA's special-purpose registries written out, not the interpreter's tables."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notify.channels.special_addresses import IPV4, IPV6
from notify.channels.webhook import check_url, not_public
from notify.errors import ValidationError
from notify.settings import Settings

# Passed as public by Python 3.11.7's ipaddress (its tables predate their registration).
REGISTERED_LATELY = [
    ("192.0.0.1", "reserved (IETF protocol assignments)"),
    ("192.0.0.170", "reserved (IETF protocol assignments)"),
    ("192.0.0.171", "reserved (IETF protocol assignments)"),
    ("3fff::1", "documentation"),
    ("3fff:fff:ffff::1", "documentation"),
    ("5f00::1", "reserved (SRv6 SIDs)"),
    ("100:0:0:1::1", "reserved (dummy prefix)"),
]


@pytest.mark.parametrize(("address", "kind"), REGISTERED_LATELY)
def test_blocks_registered_after_the_interpreters_tables_are_refused(address: str, kind: str) -> None:
    assert not_public(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "wrapped",
    [
        "::ffff:192.0.0.1",  # IPv4-mapped
        "64:ff9b::192.0.0.1",  # NAT64
        "2002:c000:0001::1",  # 6to4
        "::ffff:0:192.0.0.1",  # IPv4-translated
    ],
)
def test_a_special_ipv4_wrapped_in_ipv6_is_refused_as_itself(wrapped: str) -> None:
    assert not_public(ipaddress.ip_address(wrapped)) == "reserved (IETF protocol assignments)"


@pytest.mark.parametrize("url", ["http://192.0.0.1/hook", "http://[3fff::1]/hook", "http://[5f00::1]/hook"])
def test_send_refuses_them_naming_the_field(url: str) -> None:
    with pytest.raises(ValidationError, match=r"^to\.webhook: host .* not a public one"):
        check_url(url, Settings())


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450::1"])
def test_public_unicast_addresses_pass(address: str) -> None:
    assert not_public(ipaddress.ip_address(address)) is None


def test_ipv6_outside_global_unicast_is_refused_whatever_it_becomes() -> None:
    assert not_public(ipaddress.ip_address("4000::1")) == "reserved (not global unicast)"
    assert not_public(ipaddress.ip_address("::2:1")) is not None


@given(st.integers(0, 2**32 - 1))
def test_no_ipv4_address_the_interpreter_calls_non_global_passes(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    if not address.is_global:
        assert not_public(address) is not None, address


@given(st.integers(0, 2**128 - 1) | st.integers(0x2000 << 112, (0x4000 << 112) - 1))
def test_no_ipv6_address_the_interpreter_calls_non_global_passes(value: int) -> None:
    address = ipaddress.IPv6Address(value)
    if not address.is_global:
        assert not_public(address) is not None, address


def test_the_tables_are_networks_in_their_family() -> None:
    assert all(n.version == 4 for n, _ in IPV4) and all(n.version == 6 for n, _ in IPV6)
