"""The push channel: a device token, a title and a body, sent through FCM (`notify.providers.fcm`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from notify.channels import ChannelSpec, Message
from notify.constants import MAX_ADDRESS, MAX_ID
from notify.models import check_text
from notify.policy import ChannelPolicy
from notify.settings import Settings

MAX_PUSH_BYTES = 4096  # FCM's limit on a message's notification and data payload


@dataclass(frozen=True)
class PushMessage(Message):
    token: str
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)  # carries notify_delivery_id
    channel: ClassVar[str] = "push"


def check_address(value: object, settings: Settings) -> str:
    return check_text("to.push_token", value, MAX_ADDRESS)


def check_rendered(rendered: Mapping[str, str]) -> str | None:
    # Measured as FCM's JSON with the keys and punctuation around it: an overestimate.
    notification = {"title": rendered["title"], "body": rendered["body"]}
    payload = {"notification": notification, "data": {"notify_delivery_id": "0" * MAX_ID}}
    size = len(json.dumps(payload, ensure_ascii=False).encode())
    if size <= MAX_PUSH_BYTES:
        return None
    return f"renders {size} bytes of payload, over FCM's limit of {MAX_PUSH_BYTES}"


def build(delivery_id: str, address: str, rendered: Mapping[str, str], settings: Settings) -> PushMessage:
    return PushMessage(
        delivery_id=delivery_id,
        token=address,
        title=rendered["title"],
        body=rendered["body"],
        data={"notify_delivery_id": delivery_id},
    )


CHANNEL = ChannelSpec(
    name="push",
    address="push_token",
    check_address=check_address,
    parts={"title": "push.title.j2", "body": "push.body.j2"},
    single_line_parts=frozenset({"title"}),
    check_rendered=check_rendered,
    build=build,
    policy=ChannelPolicy(max_attempts=5, backoff_initial=5.0, backoff_max=600.0, dedup_window=3600.0),
    backends={"fcm": "notify.providers.fcm:FcmProvider", "outbox": "notify.providers.outbox:OutboxProvider"},
    default_backend="fcm",
    plural="pushes",
    rank=30,
)
