"""The front door: `send()` validates, records and enqueues; `status()` reads back."""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import TYPE_CHECKING, Any

from notify.constants import MAX_SMS_CHARS
from notify.dlq import Replayed, reset_for_replay
from notify.errors import NotifyError, TemplateError, ValidationError
from notify.models import Channel, Delivery, Priority, Recipient, SendResult, Status
from notify.policy import ChannelPolicy, load_policies
from notify.rendering import Renderer
from notify.routing import enqueue, producer_app
from notify.settings import Settings, get_settings
from notify.store import NewDelivery, Store, utcnow

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("notify")

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_MAX_KEY = 200


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
        recipient = _recipient(to)
        level = _priority(priority)
        payload, payload_json = self._data(data)
        _check_send_at(send_at)
        _check_dedup_key(dedup_key)
        chosen = self._channels(template, recipient, channels)
        for channel in chosen:
            self._validate_render(template, channel, payload, locale)

        notification_id = str(uuid.uuid4())
        held = send_at is not None and send_at > utcnow()
        new = [
            NewDelivery(
                id=str(uuid.uuid4()),
                channel=channel,
                address=str(recipient.address(channel)),
                priority=level,
                status=Status.SCHEDULED if held else Status.QUEUED,
                dedup_key=dedup_key,
                dedup_window=self.policies[channel].dedup_window,
                release_at=send_at if held else None,
            )
            for channel in chosen
        ]
        recorded = self.store.record(notification_id, template, locale, payload_json, new)
        for delivery in recorded:
            if delivery.status == Status.QUEUED:
                self._enqueue(delivery.id, delivery.channel, level)
        return SendResult(id=notification_id, deliveries=tuple(recorded))

    def status(self, notification_id: str) -> list[Delivery]:
        found = self.store.deliveries_of(notification_id)
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

    def _data(self, data: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
        """The data as the worker will see it, and as JSON for the store."""
        if data is None:
            return {}, "{}"
        if not isinstance(data, Mapping):
            raise ValidationError("data", f"must be a mapping, not {type(data).__name__}")
        try:
            encoded = json.dumps(data)
        except (TypeError, ValueError) as exc:
            raise ValidationError("data", f"must be JSON-serializable: {exc}") from None
        size = len(encoded.encode())
        if size > self.settings.max_data_bytes:
            raise ValidationError(
                "data",
                f"is {size} bytes as JSON, over the limit of "
                f"{self.settings.max_data_bytes} (NOTIFY_MAX_DATA_BYTES)",
            )
        loaded: dict[str, Any] = json.loads(encoded)  # render what the worker will see
        return loaded, encoded

    def _channels(self, template: str, recipient: Recipient, channels: Iterable[str] | None) -> list[str]:
        self.renderer.check_name(template)
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
        if isinstance(channels, str):
            raise ValidationError("channels", "must be a list of channel names, not a string")
        chosen = []
        for name in channels:
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
        if channel == Channel.SMS and len(rendered["body"]) > MAX_SMS_CHARS:
            raise TemplateError(
                "template",
                f"{template}/sms.txt.j2 renders {len(rendered['body'])} "
                f"characters, over Twilio's limit of {MAX_SMS_CHARS}",
            )


_ADDRESS_FIELD = {"email": "email", "sms": "phone", "push": "push_token"}


def _channel(name: object) -> str:
    try:
        return Channel(str(name) if isinstance(name, Channel) else name).value  # type: ignore[arg-type]
    except ValueError:
        raise ValidationError("channels", f"unknown channel {name!r} (known: email, sms, push)") from None


def _priority(priority: object) -> str:
    try:
        return Priority(priority).value  # type: ignore[arg-type]
    except ValueError:
        raise ValidationError("priority", f"unknown priority {priority!r} (high, normal or low)") from None


def _recipient(to: object) -> Recipient:
    if isinstance(to, Mapping):
        unknown = set(to) - {"email", "phone", "push_token"}
        if unknown:
            raise ValidationError(
                "to", f"unknown address kind {sorted(unknown)[0]!r} (email, phone, push_token)"
            )
        to = Recipient(**to)
    if not isinstance(to, Recipient):
        raise ValidationError("to", f"must be a Recipient or a mapping, not {type(to).__name__}")
    if to.email is not None:
        _check_email(to.email)
    if to.phone is not None and not (isinstance(to.phone, str) and _E164.fullmatch(to.phone)):
        raise ValidationError("to.phone", f"not an E.164 number (like +14155550100): {to.phone!r}")
    if to.push_token is not None and (not isinstance(to.push_token, str) or not to.push_token.strip()):
        raise ValidationError("to.push_token", "must not be empty")
    return to


def _check_email(value: object) -> None:
    problem = None
    if not isinstance(value, str):
        problem = "must be a string"
    else:
        try:
            address = Address(addr_spec=value)
            if not address.username or "." not in address.domain or any(c.isspace() for c in value):
                problem = "needs a user and a domain"
        except (ValueError, IndexError, HeaderParseError) as exc:
            problem = str(exc)
    if problem:
        raise ValidationError("to.email", f"not a valid email address {value!r}: {problem}")


def _check_send_at(send_at: object) -> None:
    if send_at is None:
        return
    if not isinstance(send_at, datetime):
        raise ValidationError("send_at", f"must be a datetime, not {type(send_at).__name__}")
    if send_at.tzinfo is None or send_at.utcoffset() is None:
        raise ValidationError(
            "send_at", "must be timezone-aware (e.g. datetime.now(UTC)); a naive datetime is ambiguous"
        )


def _check_dedup_key(key: object) -> None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > _MAX_KEY):
        raise ValidationError("dedup_key", f"must be a non-empty string of at most {_MAX_KEY} characters")


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
    channels: Sequence[str] | None = None,
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
