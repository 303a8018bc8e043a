"""The addresses a webhook may not reach: IANA's special-purpose registries, written out.

Python's `ipaddress` answers `is_global` and `is_private` from tables of the
interpreter's release: 3.11.7 passes most of 192.0.0.0/24 and all of
3fff::/20 and 5f00::/16 (registered in 2024) as public, and the answer moves
with the patch release the image happens to have. This table does not: it is
the IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and their
later entries, as published on 2025-07-08), plus multicast, with every block
that is not globally reachable. A few registered blocks that are (anycast
service addresses, AS112) are refused with their whole parent block: no
webhook receiver lives there. IPv6 outside 2000::/3, the only global unicast
space IANA has allocated, is refused whatever it becomes.

Embedded IPv4 (mapped, NAT64, 6to4, translated, compatible) is unwrapped by
the caller (`channels.webhook.not_public`) and checked against the IPv4 table.
"""

from __future__ import annotations

import ipaddress
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _table(rows: tuple[tuple[str, str], ...]) -> tuple[tuple[Network, str], ...]:
    return tuple((ipaddress.ip_network(block), kind) for block, kind in rows)


IPV4: Final = _table(
    (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "this-network"),  # RFC 791
        ("10.0.0.0/8", "private"),  # RFC 1918
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),  # RFC 6598
        ("127.0.0.0/8", "loopback"),  # RFC 1122
        ("169.254.0.0/16", "link-local"),  # RFC 3927
        ("172.16.0.0/12", "private"),  # RFC 1918
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),  # RFC 6890, and its sub-blocks
        ("192.0.2.0/24", "documentation"),  # RFC 5737
        ("192.31.196.0/24", "reserved (AS112)"),  # RFC 7535
        ("192.52.193.0/24", "reserved (AMT)"),  # RFC 7450
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),  # RFC 7526, deprecated
        ("192.168.0.0/16", "private"),  # RFC 1918
        ("192.175.48.0/24", "reserved (AS112)"),  # RFC 7534
        ("198.18.0.0/15", "benchmarking"),  # RFC 2544
        ("198.51.100.0/24", "documentation"),  # RFC 5737
        ("203.0.113.0/24", "documentation"),  # RFC 5737
        ("224.0.0.0/4", "multicast"),  # RFC 5771
        ("255.255.255.255/32", "broadcast"),  # RFC 919
        ("240.0.0.0/4", "reserved"),  # RFC 1112
    )
)

IPV6: Final = _table(
    (
        ("::/128", "unspecified"),  # RFC 4291
        ("::1/128", "loopback"),  # RFC 4291
        ("64:ff9b:1::/48", "local NAT64"),  # RFC 8215
        ("100::/64", "reserved (discard-only)"),  # RFC 6666
        ("100:0:0:1::/64", "reserved (dummy prefix)"),  # RFC 9780
        ("2001::/23", "reserved (IETF protocol assignments)"),  # RFC 2928: Teredo, benchmarking, ORCHID...
        ("2001:db8::/32", "documentation"),  # RFC 3849
        ("2620:4f:8000::/48", "reserved (AS112)"),  # RFC 7534
        ("3fff::/20", "documentation"),  # RFC 9637 (2024)
        ("5f00::/16", "reserved (SRv6 SIDs)"),  # RFC 9602 (2024)
        ("fc00::/7", "private"),  # RFC 4193, unique local
        ("fe80::/10", "link-local"),  # RFC 4291
        ("fec0::/10", "site-local"),  # RFC 3879, deprecated
        ("ff00::/8", "multicast"),  # RFC 4291
    )
)

GLOBAL_UNICAST_V6: Final = ipaddress.IPv6Network("2000::/3")  # RFC 4291: all IANA has allocated


def special_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The kind of special-purpose block `address` is in, or None for a public unicast one.

    Embedded IPv4 in an IPv6 address is not unwrapped here: the caller does that first.
    """
    table = IPV4 if isinstance(address, ipaddress.IPv4Address) else IPV6
    for network, kind in table:
        if address in network:
            return kind
    if isinstance(address, ipaddress.IPv6Address) and address not in GLOBAL_UNICAST_V6:
        return "reserved (not global unicast)"
    return None
