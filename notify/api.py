"""The front door: `send()` validates, records and enqueues; `status()` reads back."""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from notify.constants import MAX_SMS_CHARS
from notify.dlq import Replayed, reset_for_replay
from notify.errors import NotifyError, TemplateError, ValidationError
from notify.models import (
    Channel,
    Delivery,
    Priority,
    Recipient,
    SendResult,
    Status,
    check_text,
    data_from,
    recipient_from,
    shown,
    utc_send_at,
)
from notify.policy import ChannelPolicy, load_policies
from notify.rendering import Renderer, check_locale
from notify.routing import enqueue, producer_app
from notify.schema import MAX_DEDUP_KEY, MAX_ID
from notify.settings import Settings, get_settings
from notify.store import NewDelivery, Store, utcnow

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("notify")

MAX_PUSH_BYTES = 4096  # FCM's limit on a message's notification and data payload


class Notifier:
    """Everything `send()` needs, built once from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.renderer = Renderer(settings.templates_dir)
        self.policies: dict[str, ChannelPolicy] = load_policies(settings.resolved_config_path)

    @functools.cached_property
    def store(self) -> Store:
        return Store(self.settings.resolved_database_url)

    @functools.cached_property
    def producer(self) -> Celery:
        """The Celery app this notifier publishes with (connections pooled)."""
        return producer_app(self.settings)

    def send(
        self,
        template: str,
        /,
        to: Recipient | Mapping[str, str],
        *,
        data: Mapping[str, Any] | None = None,
        channels: Iterable[str] | None = None,
        priority: str = "normal",
        dedup_key: str | None = None,
        send_at: datetime | None = None,
        locale: str | None = None,
    ) -> SendResult:
        recipient = recipient_from(to)
        level = _priority(priority)
        payload, payload_json = data_from(data, self.settings.max_data_bytes)
        release_at = utc_send_at(send_at)
        if dedup_key is not None:
            check_text("dedup_key", dedup_key, MAX_DEDUP_KEY)
        check_locale(locale)
        chosen = self._channels(template, recipient, channels)
        for channel in chosen:
            self._validate_render(template, channel, payload, locale)

        notification_id = str(uuid.uuid4())
        held = release_at is not None and release_at > utcnow()
        new = [
            NewDelivery(
                id=str(uuid.uuid4()),
                channel=channel,
                address=str(recipient.address(channel)),
                priority=level,
                status=Status.SCHEDULED if held else Status.QUEUED,
                dedup_key=dedup_key,
                dedup_window=self.policies[channel].dedup_window,
                release_at=release_at if held else None,
            )
            for channel in chosen
        ]
        recorded = self.store.record(notification_id, template, locale, payload_json, new)
        for delivery in recorded:
            if delivery.status == Status.QUEUED:
                self._enqueue(delivery.id, delivery.channel, level)
        return SendResult(id=notification_id, deliveries=tuple(recorded))

    def status(self, notification_id: str) -> list[Delivery]:
        found = self.store.deliveries_of(check_text("notification_id", notification_id, MAX_ID))
        if not found:
            raise ValidationError("notification_id", f"no notification {notification_id!r}")
        return found

    def close(self) -> None:
        """Release the store's and the broker's connections."""
        if "store" in self.__dict__:
            self.store.close()
        if "producer" in self.__dict__:
            # Broker connections live in kombu's process-wide pools, shared by
            # every app with the same broker URL; they are not ours to close.
            self.producer.close()

    def replay(self, ids: list[str] | None) -> Replayed:
        """Re-queue failed deliveries (these, or all of them) for a fresh attempt cycle."""
        reset = reset_for_replay(self.store, ids)
        for delivery_id, channel, priority in reset:
            self._enqueue(delivery_id, channel, priority)
        done = [delivery_id for delivery_id, _, _ in reset]
        found = set(done)
        return Replayed(replayed=done, not_found=[i for i in ids or [] if i not in found])

    def _enqueue(self, delivery_id: str, channel: str, priority: str) -> None:
        try:
            enqueue(self.producer, delivery_id, channel, priority)
        except Exception as exc:  # the store has it; the sweeper enqueues it later
            log.warning(
                "broker unavailable, delivery %s stays queued in the store until the "
                "sweeper enqueues it: %s: %s",
                delivery_id,
                type(exc).__name__,
                exc,
            )

    def _channels(self, template: str, recipient: Recipient, channels: Iterable[str] | None) -> list[str]:
        available = self.renderer.channels(template)
        if channels is None:
            chosen = [c for c in available if recipient.address(c)]
            if not chosen:
                raise ValidationError(
                    "to",
                    f"template {template!r} has {', '.join(available) or 'no channels'}, "
                    "and the recipient has no address for any of them",
                )
            return chosen
        chosen = []
        for name in _names(channels):
            channel = _channel(name)
            if channel not in available:
                raise ValidationError("channels", f"template {template!r} has no {channel} channel")
            if not recipient.address(channel):
                raise ValidationError(f"to.{_ADDRESS_FIELD[channel]}", f"required for the {channel} channel")
            if channel not in chosen:
                chosen.append(channel)
        if not chosen:
            raise ValidationError("channels", "must name at least one channel")
        return chosen

    def _validate_render(self, template: str, channel: str, data: dict[str, Any], locale: str | None) -> None:
        rendered = self.renderer.render(template, channel, data, locale)
        check = _SIZE_CHECKS.get(channel)
        problem = check(rendered) if check else None
        if problem:
            raise TemplateError("template", f"{template}: the {channel} message {problem}")


def _sms_size(rendered: dict[str, str]) -> str | None:
    length = len(rendered["body"])
    if length <= MAX_SMS_CHARS:
        return None
    return f"renders {length} characters, over Twilio's limit of {MAX_SMS_CHARS}"


def _push_size(rendered: dict[str, str]) -> str | None:
    # Measured as FCM's JSON with the keys and punctuation around it: an overestimate.
    notification = {"title": rendered["title"], "body": rendered["body"]}
    payload = {"notification": notification, "data": {"notify_delivery_id": "0" * MAX_ID}}
    size = len(json.dumps(payload, ensure_ascii=False).encode())
    if size <= MAX_PUSH_BYTES:
        return None
    return f"renders {size} bytes of payload, over FCM's limit of {MAX_PUSH_BYTES}"


_SIZE_CHECKS: dict[str, Callable[[dict[str, str]], str | None]] = {"sms": _sms_size, "push": _push_size}
_ADDRESS_FIELD = {"email": "email", "sms": "phone", "push": "push_token"}


def _names(channels: object) -> Iterable[object]:
    """`channels`, if it is a list (or any iterable but a string) of channel names."""
    if isinstance(channels, str) or not isinstance(channels, Iterable):
        kind = "a string" if isinstance(channels, str) else type(channels).__name__
        raise ValidationError("channels", f"must be a list of channel names, not {kind}")
    return channels


def _channel(name: object) -> str:
    try:
        return Channel(str(name) if isinstance(name, Channel) else name).value  # type: ignore[arg-type]
    except ValueError:
        raise ValidationError(
            "channels", f"unknown channel {shown(name)} (known: email, sms, push)"
        ) from None


def _priority(priority: object) -> str:
    try:
        return Priority(priority).value  # type: ignore[arg-type]
    except ValueError:
        raise ValidationError(
            "priority", f"unknown priority {shown(priority)} (high, normal or low)"
        ) from None


_lock = threading.Lock()
_installed: list[Notifier] = []  # set by notify.testing.capture()


@functools.lru_cache(maxsize=1)
def _notifier(settings: Settings) -> Notifier:
    return Notifier(settings)


def default_notifier() -> Notifier:
    """The process-wide notifier: the one `notify.testing` installed, or one for the settings."""
    with _lock:
        return _installed[-1] if _installed else _notifier(get_settings())


def send(
    template: str,
    /,
    to: Recipient | Mapping[str, str],
    *,
    data: Mapping[str, Any] | None = None,
    channels: Iterable[str] | None = None,
    priority: str = "normal",
    dedup_key: str | None = None,
    send_at: datetime | None = None,
    locale: str | None = None,
) -> SendResult:
    """Validate, record and enqueue one notification; one delivery per channel.

    Raises a `NotifyError` subclass naming the offending field before anything
    is recorded or enqueued.
    """
    return default_notifier().send(
        template,
        to,
        data=data,
        channels=channels,
        priority=priority,
        dedup_key=dedup_key,
        send_at=send_at,
        locale=locale,
    )


def status(notification_id: str) -> list[Delivery]:
    """The deliveries of a notification as they are now."""
    return default_notifier().status(notification_id)


__all__ = ["Notifier", "NotifyError", "send", "status"]
