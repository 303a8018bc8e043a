"""Dead letters: deliveries that failed for good, to list, replay and purge.

from notify import dlq
for letter in dlq.letters():
    print(letter.id, letter.channel, letter.reason)
dlq.replay([letter.id])      # a fresh attempt cycle, same delivery id
dlq.replay_all()
dlq.purge()

Each function works on the process-wide notifier, as `notify.send()` does.
"""

from __future__ import annotations

from notify import channels
from notify.api import default_notifier
from notify.constants import MAX_LISTED
from notify.errors import ValidationError
from notify.models import DeadLetter, Replayed, check_count, mask, shown

__all__ = ["DeadLetter", "Replayed", "letters", "mask", "purge", "replay", "replay_all"]


def letters(*, channel: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """Failed deliveries, newest first.

    Args:
        channel: only this channel's (a name of `notify.channels.names()`); every channel's if None.
        limit: at most this many, from 1 to `notify.constants.MAX_LISTED`.

    Raises:
        ValidationError: `channel` or `limit` is not one of these.
    """
    if channel is not None and channel not in channels.names():
        raise ValidationError("channel", f"{shown(channel)} is not a registered channel")
    limit = check_count("limit", limit, 1, MAX_LISTED)
    return default_notifier().store.dead_letters(channel=channel, limit=limit)


def replay(ids: list[str]) -> Replayed:
    """Start a fresh attempt cycle for these failed deliveries: "queued" again, no attempts, same ids.

    Args:
        ids: delivery ids; those unknown or not failed come back in `Replayed.not_found`.

    Raises:
        ValidationError: `ids` is not a list of ids (one string is not); `field` names the one at fault.
    """
    return default_notifier().replay(ids)


def replay_all() -> Replayed:
    """Start a fresh attempt cycle for every failed delivery (same ids)."""
    return default_notifier().replay(None)


def purge() -> int:
    """Delete every dead letter (and the dedup keys they held); return how many."""
    return default_notifier().store.purge_dead_letters()
