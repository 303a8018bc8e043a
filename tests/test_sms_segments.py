"""How many SMS parts a body is billed as: GSM-7 (160, then 153 a part) or UCS-2 (70, then 67)."""

from __future__ import annotations

import pytest

from notify.channels.sms import segments


@pytest.mark.parametrize(
    ("body", "encoding", "count", "units"),
    [
        ("", "GSM-7", 1, 0),
        ("a" * 160, "GSM-7", 1, 160),
        ("a" * 161, "GSM-7", 2, 161),
        ("a" * 306, "GSM-7", 2, 306),
        ("a" * 307, "GSM-7", 3, 307),
        ("é à ñ Ä Ç £ ¥ @ Δ", "GSM-7", 1, 17),  # all in the default alphabet
        ("€" * 80, "GSM-7", 1, 160),  # extension characters count two septets
        ("€" * 81, "GSM-7", 2, 162),
        ("a" * 152 + "€", "GSM-7", 1, 154),
        ("a" * 160 + "€", "GSM-7", 2, 162),
        ("ç" * 70, "UCS-2", 1, 70),  # lowercase c-cedilla is not GSM-7: the whole body is UCS-2
        ("ç" * 71, "UCS-2", 2, 71),
        ("a" * 134 + "ç", "UCS-2", 3, 135),
        ("😀" * 35, "UCS-2", 1, 70),  # outside the BMP: two UTF-16 units each
        ("😀" * 36, "UCS-2", 2, 72),
    ],
)
def test_segments(body: str, encoding: str, count: int, units: int) -> None:
    found = segments(body)

    assert (found.encoding, found.count, found.units) == (encoding, count, units)


def test_an_escape_pair_or_a_surrogate_pair_is_never_split_across_parts() -> None:
    assert segments("a" * 152 + "€" + "a" * 10).count == 2  # 153 + 1 would split the euro sign: it moves on
    assert segments("a" * 152 + "€" + "a" * 152).count == 3
    assert segments("a" * 66 + "😀" + "a" * 3).count == 2
    assert segments("a" * 66 + "😀" + "a" * 66).count == 3
