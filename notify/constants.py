"""Names shared by producers and workers: queues and tasks (the channels are `notify.channels`)."""

from __future__ import annotations

PRIORITIES = ("high", "normal", "low")  # the order a worker drains them in

DELIVER_TASK = "notify.deliver"


def queue_name(channel: str, priority: str) -> str:
    """`notify.<channel>.<priority>`, the queue a delivery is enqueued on."""
    return f"notify.{channel}.{priority}"


def channel_queues(channel: str) -> list[str]:
    """A channel's queues, highest priority first (Redis and the embedded broker)."""
    return [queue_name(channel, p) for p in PRIORITIES]


def priority_queue_name(channel: str) -> str:
    """`notify.<channel>`: RabbitMQ's one queue per channel, ordered by message priority."""
    return f"notify.{channel}"


# RabbitMQ message priorities (higher first) in the channel's x-max-priority queue.
AMQP_PRIORITY = {"high": 2, "normal": 1, "low": 0}
