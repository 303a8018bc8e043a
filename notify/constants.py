"""The names, sizes and timings that several modules must agree on, in one place.

Queue names follow the channel and the priority (`notify.models.Priority`
holds the priorities, their order and their numbers); sizes are what the
store keeps, which `send()` checks first; timings are the bounds README
promises and what keeps them. tests/test_constants.py asserts how the
timings must relate, so a change that breaks a promise fails there.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

from notify.models import Priority

# -- names ---------------------------------------------------------------------

DELIVER_TASK: Final = "notify.deliver"


def queue_name(channel: str, priority: str) -> str:
    """`notify.<channel>.<priority>`, the queue a delivery is enqueued on."""
    return f"notify.{channel}.{priority}"


def task_shown_as(channel: str, priority: str) -> str:
    """`notify.deliver.<channel>.<priority>`: the name Flower and Celery's logs show a deliver task
    by (Celery's `shadow`), so that they tell channels and priorities apart; `notify.deliver` runs."""
    return f"{DELIVER_TASK}.{channel}.{priority}"


def channel_queues(channel: str) -> list[str]:
    """A channel's queues, highest priority first (Redis and the embedded broker)."""
    return [queue_name(channel, p) for p in Priority]


def priority_queue_name(channel: str) -> str:
    """`notify.<channel>`: RabbitMQ's one queue per channel, ordered by message priority."""
    return f"notify.{channel}"


def queue_channel(queue: str) -> str | None:
    """The channel whose queue `queue` is (either form above), or None for another queue."""
    prefix, _, rest = queue.partition(".")
    channel, _, priority = rest.partition(".")
    if prefix != "notify" or not channel or (priority and priority not in _PRIORITY_NAMES):
        return None
    return channel


_PRIORITY_NAMES = frozenset(p.value for p in Priority)


# -- sizes of what the store keeps (send() refuses more before anything is written) ---

MAX_ID: Final = 36
MAX_TEMPLATE: Final = 200
MAX_LOCALE: Final = 35
MAX_ADDRESS: Final = 512
MAX_DEDUP_KEY: Final = 200
MAX_DEDUP_INDEX_BYTES: Final = 2560
"""A dedup key and its address together, in UTF-8: the store indexes them in one btree row, which
PostgreSQL caps at 2,704 bytes with its headers (tests/test_send_validation.py holds one at this)."""
MAX_PROVIDER_ID: Final = 300
MAX_CODE: Final = 64
MAX_REASON: Final = 2000  # a provider's reason, as the store keeps it (longer ones are cut)
MAX_LISTED: Final = 100_000  # dead letters one call lists, all held in memory at once

# -- timings, in seconds --------------------------------------------------------

RECOVERY_BOUND: Final = 30.0
"""DESIGN: a dead worker's deliveries are delivered within this of a worker being available."""
LEASE_MIN: Final = 1.0
LEASE_MAX: Final = 25.0
"""NOTIFY_LEASE's bounds: a dead worker's deliveries are handed on once its beats stood still for a
lease as an observer saw them, within LEASE_MAX + SWEEP_EVERY_MAX < RECOVERY_BOUND."""
HEARTBEAT_EVERY_MAX: Final = 2.0
"""A worker renews its claims every lease/3, and at least this often: its bursts' waiting
deliveries are stamped at the same beat, well inside QUEUED_GRACE."""
SWEEP_EVERY_MAX: Final = 2.0
"""The sweep looks for lapsed claims and lost messages every lease/2, and at least this often."""
QUEUED_GRACE: Final = 5.0
"""A "queued" delivery beside its channel's empty queues counts as lost after this."""
SWEEP_AFTER_MIN: Final = 10.0
"""NOTIFY_SWEEP_AFTER's lower bound: behind a backlog, a lost message waits longer than QUEUED_GRACE."""
RELEASE_EVERY: Final = 0.5
"""The release step's cadence: a due send_at or retry goes out within a second."""
SEND_AT_BOUND: Final = 1.0
"""DESIGN: send_at is honoured within this."""
PURGE_EVERY: Final = 3600.0
STORE_RETRY_PAUSE_MAX: Final = 0.5
"""A known outcome is written again at least this often while the store is away."""
VISIBILITY_TIMEOUT_MIN: Final = 10.0
"""NOTIFY_VISIBILITY_TIMEOUT's lower bound."""
STORE_RETRY_MAX: Final = 8.0
"""The longest pause before a message whose claim met a store outage is tried again: a broker
countdown, so shorter than any visibility timeout (a longer one would be handed out twice)."""
RFC5321_DATA_REPLY: Final = 600.0
"""RFC 5321 4.5.3.2.6: a client waits this long for the reply to the end of DATA."""
SMTP_LOOP_SLACK: Final = 60.0
"""How much longer than its own bounds a worker thread waits for the SMTP event loop."""
BURST_PATIENCE: Final = 5.0
"""A burst's waiting deliveries are handed to other threads once its attempt in progress has run this
long: one slow reply holds its burst-mates no longer (a heartbeat or two later)."""
GATE_HOLD: Final = 0.25
"""A high attempt holds lower ones back this long at most: longer than its CPU, shorter than any lease."""
BROKER_TIMEOUT: Final = 2.0
"""Connecting to the broker, and each of the producer's round trips: send() never hangs on it."""
EXIT_FLUSH_TIMEOUT: Final = 5.0
"""A producer's normal exit waits this long for messages still to publish (the sweep has the rest)."""
SQLITE_LOCK_WAIT: Final = 60.0
"""A SQLite write (the store's or the embedded broker's) waits this long for another process's lock."""

MAX_RETRY_AFTER: Final = 86400.0
"""A provider's retry-after hint is honoured in full up to this (or the channel's `backoff_max`, if
longer): retrying before it said it would accept is never right, and a year-2499 hint still cannot
park a delivery outside the dead letters."""

# The variable (and rendered entry) carrying an unsubscribe = true template's one-click link.
UNSUBSCRIBE_URL: Final = "unsubscribe_url"


def _installed_version() -> str:
    try:
        return version("notify-celery-delivery")  # `notify` itself is taken on PyPI
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "0+unknown"


# notify's version: pyproject.toml's, as installed (`notify.__version__`, `notify --version`).
VERSION: Final = _installed_version()
