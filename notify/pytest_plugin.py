"""notify's pytest plugin, registered through the `pytest11` entry point: the `notify_outbox` fixture.

    def test_signup_sends_a_welcome(notify_outbox):
        myapp.sign_up("ada@example.com")
        [email] = notify_outbox.emails
        assert email.subject == "Welcome, Ada!"

It is `notify.testing.capture()` for the whole test: `notify.send()` validates as in production
and delivers inline into the outbox. notify is imported when the fixture is first used, not
when pytest starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from notify.testing import Outbox


@pytest.fixture
def notify_outbox() -> Iterator[Outbox]:
    """An in-memory outbox that `notify.send()` delivers into, for this test."""
    from notify.testing import capture

    with capture() as outbox:
        yield outbox
