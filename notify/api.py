"""The front door: `send()` validates, records and enqueues; `status()` reads back."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from notify import channels as registry
from notify import unsubscribe
from notify.broker.relay import Relay
from notify.constants import MAX_DEDUP_INDEX_BYTES, MAX_DEDUP_KEY, MAX_ID, MAX_LISTED, UNSUBSCRIBE_URL
from notify.errors import NotifyError, PartiallyRecorded, StoreUnavailable, TemplateError, ValidationError
from notify.models import (
    Delivery,
    Intent,
    Priority,
    Recipient,
    Replayed,
    SendResult,
    Status,
    Suppression,
    SuppressionReason,
    check_count,
    check_ids,
    check_text,
    data_from,
    shown,
    utc_send_at,
)
from notify.observability import tracing
from notify.policy import ChannelPolicy, load_policies
from notify.rendering import TRANSACTIONAL, Renderer, check_locale, is_category
from notify.settings import Settings, get_settings
from notify.store import NewDelivery, NewNotification, Queued, Store

if TYPE_CHECKING:
    from celery import Celery

    from notify.broker.publisher import Publisher

log = logging.getLogger("notify")

P = ParamSpec("P")
R = TypeVar("R")

BATCH_SIZE = 500  # intents per transaction of send_many()
PUBLISH_BATCH = 1000  # broker commands per pipelined flush
REPLAY_FLUSH_TIMEOUT = 30.0  # seconds


class Notifier:
    """Everything `send()` needs, built once from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.renderer = Renderer(settings.templates_dir)
        self.policies: dict[str, ChannelPolicy] = load_policies(
            settings.resolved_config_path, registry.default_policies()
        )

    @functools.cached_property
    def store(self) -> Store:
        if self.settings.database_url is None or self.settings.uses_embedded_broker:
            self.settings.validate()  # a NOTIFY_HOME it cannot write: one error naming it, before any record
        return Store(self.settings.resolved_database_url)

    @functools.cached_property
    def producer(self) -> Celery:
        """The Celery app this notifier publishes with (connections pooled)."""
        from notify.broker.routing import producer_app  # Celery, imported with the first publish

        return producer_app(self.settings)

    @functools.cached_property
    def publisher(self) -> Publisher:
        from notify.broker.publisher import Publisher

        return Publisher(self.producer)

    @functools.cached_property
    def relay(self) -> Relay:
        """Publishes what send() recorded, from a thread of its own (notify.broker.relay).

        The publisher (and Celery with it) is built here, in the caller's thread: a
        relay's first publish may come during the interpreter's exit, too late to import.
        """
        self.publisher  # noqa: B018
        return Relay(self._publish_now)

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
        """Validate, record and enqueue one notification: one delivery per channel.

        Args:
            template: a folder under the templates root (`templates/<template>/`).
            to: the recipient, as a `Recipient` or a mapping of address kinds
                (`{"email": ..., "phone": ..., "push_token": ..., "webhook": ...}`;
                each channel of `notify.channels` names its kind).
            data: the template's variables; strict JSON, at most NOTIFY_MAX_DATA_BYTES.
            channels: the channels to deliver on; by default every channel the
                template has and the recipient has an address for.
            priority: "high", "normal" or "low": the queue each delivery goes to.
            dedup_key: with the channel and its address, what makes a later
                send within the channel's `dedup_window` a "duplicate".
            send_at: an aware datetime: deliver no earlier than this (held in UTC).
            locale: a tag like "de" or "pt-BR"; templates fall back to the default ones.

        Returns:
            The notification's id and its deliveries, each "queued",
            "scheduled" or "duplicate".

        Raises:
            NotifyError: a subclass naming the offending field, before anything
                is recorded or enqueued (`ValidationError`, `TemplateError`), or
                `StoreUnavailable` when the store cannot record it.
        """
        with tracing.span("notify.send", {"notify.template": _named(template)}) as span:
            intent = Intent(
                template,
                to,
                data=data,
                channels=channels,
                priority=priority,
                dedup_key=dedup_key,
                send_at=send_at,
                locale=locale,
            )
            [result] = self._record_and_publish([self._prepare(intent)], grouped=False)
            tracing.note(span, "notify.notification_id", result.id)
            return result

    def send_many(self, intents: Iterable[Intent], /, *, batch_size: int = BATCH_SIZE) -> list[SendResult]:
        """Validate every intent, then record and publish them `batch_size` at a time.

        Args:
            intents: `Intent`s, each carrying `send()`'s arguments.
            batch_size: intents recorded per store transaction.

        Returns:
            The `SendResult`s, in the order of `intents`.

        Raises:
            NotifyError: the error `send()` would raise, its field named
                `intents[i].<field>`, before any intent is recorded.
            PartiallyRecorded: the store went away after some batches were
                recorded; it carries their results and the intents not recorded.
            StoreUnavailable: the store went away before the first batch.
        """
        results: list[SendResult] = []
        for batch in self.send_in_batches(intents, batch_size=batch_size):
            results += batch
        return results

    def send_in_batches(
        self, intents: Iterable[Intent], /, *, batch_size: int = BATCH_SIZE
    ) -> Iterator[list[SendResult]]:
        """`send_many()` a batch at a time (for progress): every intent is validated before this returns."""
        size = _batch_size(batch_size)
        given = _intents(intents)
        prepared = [self._prepare_at(i, intent) for i, intent in enumerate(given)]
        return self._batches(given, prepared, size)

    def _batches(
        self, given: list[object], prepared: list[NewNotification], size: int
    ) -> Iterator[list[SendResult]]:
        """Each batch recorded and published in turn; a lost store after the first says what was kept."""
        done: list[SendResult] = []
        for start in range(0, len(prepared), size):
            chunk = prepared[start : start + size]
            try:
                with tracing.span("notify.send_many", {"notify.notifications": len(chunk)}):
                    batch = self._record_and_publish(chunk, grouped=True)
            except StoreUnavailable as exc:
                if not done:
                    raise
                raise PartiallyRecorded(exc, done, given[start:]) from exc  # type: ignore[arg-type]
            done += batch
            yield batch

    def _prepare_at(self, index: int, intent: object) -> NewNotification:
        """`_prepare(intent)`, its errors naming the field as `intents[index].<field>`."""
        try:
            if not isinstance(intent, Intent):
                raise ValidationError("", f"must be a notify.Intent, not {type(intent).__name__}")
            return self._prepare(intent)
        except ValidationError as exc:
            raise _at(exc, f"intents[{index}]") from exc

    def _prepare(self, intent: Intent) -> NewNotification:
        """The notification and deliveries `intent` asks for, or the NotifyError naming what is wrong."""
        addresses = self._addresses(intent.to)
        level = _priority(intent.priority)
        payload, payload_json = data_from(intent.data, self.settings.max_data_bytes)
        release_at = utc_send_at(intent.send_at)
        if intent.dedup_key is not None:
            check_text("dedup_key", intent.dedup_key, MAX_DEDUP_KEY)
        check_locale(intent.locale)
        chosen = self._channels(intent.template, addresses, intent.channels)
        if intent.dedup_key is not None:
            for channel in chosen:
                _check_dedup_index(intent.dedup_key, addresses[registry.channel(channel).address])
        config = self.renderer.config(intent.template)
        if config.unsubscribe:
            unsubscribe.check_settings(self.settings, intent.template)
        for channel in chosen:
            data = payload
            if config.unsubscribe and config.category:  # the link the worker will put there, as long
                address = addresses[registry.channel(channel).address]
                link = unsubscribe.unsubscribe_url(self.settings, channel, address, config.category)
                data = {**payload, UNSUBSCRIBE_URL: link}
            self._validate_render(intent.template, channel, data, intent.locale)
        # The store's clock decides, as it does when it releases: a skewed producer must not.
        held = release_at is not None and release_at > self.store.now()
        new = tuple(
            NewDelivery(
                id=str(uuid.uuid4()),
                channel=channel,
                address=addresses[registry.channel(channel).address],
                priority=level,
                status=Status.SCHEDULED if held else Status.QUEUED,
                dedup_key=intent.dedup_key,
                dedup_window=self.policies[channel].dedup_window,
                release_at=release_at if held else None,
            )
            for channel in chosen
        )
        return NewNotification(
            str(uuid.uuid4()), intent.template, intent.locale, payload_json, new, category=config.category
        )

    def _record_and_publish(self, batch: Sequence[NewNotification], *, grouped: bool) -> list[SendResult]:
        recorded = self.store.record_many(batch)
        by_priority = {d.id: d.priority for n in batch for d in n.deliveries}
        self._publish(
            (
                Queued(d.id, d.channel, by_priority[d.id])
                for ds in recorded
                for d in ds
                if d.status == Status.QUEUED
            ),
            grouped=grouped,
        )
        return [SendResult(id=n.id, deliveries=tuple(ds)) for n, ds in zip(batch, recorded, strict=True)]

    def status(self, notification_id: str) -> list[Delivery]:
        """The deliveries of notification `notification_id` as the store has them now.

        Raises:
            ValidationError: the id is not a string or no notification has it.
        """
        found = self.store.deliveries_of(check_text("notification_id", notification_id, MAX_ID))
        if not found:
            raise ValidationError("notification_id", f"no notification {notification_id!r}")
        return found

    def close(self) -> None:
        """Publish what is pending, then release the store's and the broker's connections.

        The notifier stays usable: a later send() opens what it needs again.
        """
        if "relay" in self.__dict__:
            self.__dict__.pop("relay").close()
        if "publisher" in self.__dict__:
            self.__dict__.pop("publisher").close()
        if "store" in self.__dict__:
            self.store.close()  # a disposed engine opens new connections when next used
        if "producer" in self.__dict__:
            # Broker connections live in kombu's process-wide pools, shared by
            # every app with the same broker URL; they are not ours to close.
            self.producer.close()

    def replay(self, ids: list[str] | None, *, flush_timeout: float = REPLAY_FLUSH_TIMEOUT) -> Replayed:
        """Re-queue failed deliveries for a fresh attempt cycle (same ids), on the broker when it returns.

        Args:
            ids: the deliveries to replay, or None for every failed one; ids
                unknown or not failed come back in `Replayed.not_found`.
            flush_timeout: how long to wait for the broker to take the messages (the sweep
                publishes what it did not); 0: do not wait.

        Raises:
            ValidationError: `ids` is not a list of ids; its `field` names the one at fault (`ids[2]`).
        """
        ids = None if ids is None else check_ids("ids", ids, MAX_ID)
        with tracing.span("notify.replay") as span:
            reset = self.store.replay(ids)
            tracing.note(span, "notify.deliveries", len(reset))
            self._publish(reset, grouped=True)
        # An operator's command: on the broker when it returns.
        if flush_timeout and not self.flush(flush_timeout):
            log.warning(
                "replay: the broker did not take every message in %.0fs; the sweep will", flush_timeout
            )
        done = [delivery_id for delivery_id, _, _ in reset]
        left = self.store.failed_and_suppressed(ids)
        found = set(done) | set(left)
        return Replayed(replayed=done, not_found=[i for i in ids or [] if i not in found], suppressed=left)

    def suppress(
        self, channel: str, address: str, reason: str = "manual", *, category: str | None = None
    ) -> bool:
        """Send nothing more to `address` on `channel`: later sends to it are recorded `suppressed`.

        Args:
            channel: a registered channel's name ("email", "sms", ...).
            address: as `send()` takes it for that channel; kept in the form it sends to.
            reason: a `SuppressionReason` value; "manual" when a person decides.
            category: only the templates of this category (template.toml), as an unsubscribe
                does; None: every template, transactional ones included.

        Returns:
            False if it was on the list already (its first reason is kept).

        Raises:
            ValidationError: the channel, address or reason is not one of these.
        """
        spec, normal = self._suppression_target(channel, address)
        if not isinstance(reason, str) or reason not in set(SuppressionReason):
            choices = ", ".join(SuppressionReason)
            raise ValidationError("reason", f"{shown(reason)} is not a suppression reason ({choices})")
        if category is not None and (not is_category(category) or category == TRANSACTIONAL):
            raise ValidationError(
                "category", f"{shown(category)} is not a template category (lowercase, not transactional)"
            )
        return self.store.suppress(spec.name, normal, reason, "by hand", category=category or "")

    def unsuppress(self, channel: str, address: str) -> bool:
        """Take `address` off `channel`'s suppression list (every category); False if it was not on it.

        Raises:
            ValidationError: the channel or address is not one `send()` would take.
        """
        spec, normal = self._suppression_target(channel, address)
        return self.store.unsuppress(spec.name, normal) > 0

    def suppressions(self, *, channel: str | None = None, limit: int = 100) -> list[Suppression]:
        """The suppression list, newest first: `channel`'s only, if given; at most `limit`."""
        if channel is not None and channel not in registry.names():
            raise ValidationError("channel", f"{shown(channel)} is not a registered channel")
        return self.store.suppressions(channel=channel, limit=check_count("limit", limit, 1, MAX_LISTED))

    def _suppression_target(self, channel: object, address: object) -> tuple[registry.ChannelSpec, str]:
        if not isinstance(channel, str) or channel not in registry.names():
            raise ValidationError("channel", f"{shown(channel)} is not a registered channel")
        spec = registry.channel(channel)
        try:
            return spec, _checked(spec, address, self.settings)
        except ValidationError as exc:
            message = str(exc).split(": ", 1)[-1]
            raise ValidationError("address", message) from None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what this notifier recorded has been handed to the broker; False on timeout.

        Not needed for safety: a delivery is safe once send() returns. For
        a caller that wants its messages on the broker before it goes on.
        """
        return self.relay.flush(timeout) if "relay" in self.__dict__ else True

    def _publish(self, queued: Iterable[Queued], *, grouped: bool) -> None:
        """Hand deliveries to the relay; `grouped` shares messages among a burst's deliveries."""
        self.relay.submit(list(queued), grouped=grouped)

    def _publish_now(self, queued: Sequence[Queued], grouped: bool) -> None:
        self.publisher.publish(queued, batch=PUBLISH_BATCH, grouped=grouped)

    def _addresses(self, to: object) -> dict[str, str]:
        """The recipient's addresses by kind, each checked by its channel and in the form it is sent to."""
        if isinstance(to, Recipient):
            given: dict[object, object] = {kind: value for kind, value in to.addresses.items()}
        elif isinstance(to, Mapping):
            given = dict(to)
        else:
            raise ValidationError("to", f"must be a Recipient or a mapping, not {type(to).__name__}")
        by_kind = registry.by_address()
        unknown = [kind for kind in given if kind not in by_kind]
        if unknown:
            raise ValidationError("to", f"unknown address kind {shown(unknown[0])} ({', '.join(by_kind)})")
        return {
            str(kind): _checked(by_kind[str(kind)], value, self.settings)
            for kind, value in given.items()
            if value is not None
        }

    def _channels(
        self, template: str, addresses: Mapping[str, str], channels: Iterable[str] | None
    ) -> list[str]:
        available = self.renderer.channels(template)
        if channels is None:
            chosen = [c for c in available if registry.channel(c).address in addresses]
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
            kind = registry.channel(channel).address
            if kind not in addresses:
                raise ValidationError(f"to.{kind}", f"required for the {channel} channel")
            if channel not in chosen:
                chosen.append(channel)
        if not chosen:
            raise ValidationError("channels", "must name at least one channel")
        return chosen

    def _validate_render(self, template: str, channel: str, data: dict[str, Any], locale: str | None) -> None:
        rendered = self.renderer.render(template, channel, data, locale)
        check = registry.channel(channel).check_rendered
        try:
            problem = check(rendered) if check else None
        except Exception as exc:  # a channel's own check failing: still only a NotifyError
            problem = f"cannot be checked ({type(exc).__name__}: {exc})"
        if problem:
            raise TemplateError("template", f"{template}: the {channel} message {problem}")


def _checked(spec: registry.ChannelSpec, value: object, settings: Settings) -> str:
    """`value` as `spec` sends to it; whatever the channel's check raises becomes a ValidationError."""
    try:
        return spec.check_address(value, settings)
    except NotifyError:
        raise
    except Exception as exc:
        raise ValidationError(
            f"to.{spec.address}", f"refused by the {spec.name} channel's check ({type(exc).__name__}: {exc})"
        ) from None


def _named(template: object) -> str:
    """A template's name for a span: what send() was given, before it is checked."""
    return template[:200] if isinstance(template, str) else f"<{type(template).__name__}>"


def _intents(intents: object) -> list[object]:
    if isinstance(intents, str | bytes | Mapping) or not isinstance(intents, Iterable):
        raise ValidationError("intents", f"must be a list of notify.Intent, not {type(intents).__name__}")
    return list(intents)


def _check_dedup_index(key: str, address: str) -> None:
    """The store indexes a dedup key with its address: PostgreSQL's btree takes about 2.7 KB a row,
    which 512 characters of address and 200 of key, each 4 bytes in UTF-8, overflow."""
    size = len(address.encode("utf-8", "surrogatepass")) + len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_DEDUP_INDEX_BYTES:
        raise ValidationError(
            "dedup_key",
            f"with its address, {size} bytes in UTF-8, over the {MAX_DEDUP_INDEX_BYTES} the store can "
            "index together: use a shorter key (a hash of it, say)",
        )


def _batch_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValidationError("batch_size", f"must be a positive integer, not {shown(size)}")
    return size


def _at(exc: ValidationError, prefix: str) -> ValidationError:
    """The same error, its field named from `prefix` (an intent of a batch)."""
    message = str(exc).removeprefix(f"{exc.field}: ")
    return type(exc)(f"{prefix}.{exc.field}" if exc.field else prefix, message)


def _names(channels: object) -> Iterable[object]:
    """`channels`, if it is a list (or any iterable but a string) of channel names."""
    if isinstance(channels, str) or not isinstance(channels, Iterable):
        kind = "a string" if isinstance(channels, str) else type(channels).__name__
        raise ValidationError("channels", f"must be a list of channel names, not {kind}")
    return channels


def _channel(name: object) -> str:
    known = registry.channels()
    if isinstance(name, str) and name in known:
        return name
    raise ValidationError("channels", f"unknown channel {shown(name)} (known: {', '.join(known)})")


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


def _on_default_notifier(method: Callable[Concatenate[Notifier, P], R]) -> Callable[P, R]:
    """`method` as a module-level function of the process-wide notifier: one signature, one docstring."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return method(default_notifier(), *args, **kwargs)

    parameters = list(inspect.signature(method).parameters.values())[1:]  # without self
    call.__signature__ = inspect.signature(method).replace(parameters=parameters)  # type: ignore[attr-defined]
    return call


send = _on_default_notifier(Notifier.send)
send_many = _on_default_notifier(Notifier.send_many)
status = _on_default_notifier(Notifier.status)
suppress = _on_default_notifier(Notifier.suppress)
unsuppress = _on_default_notifier(Notifier.unsuppress)
suppressions = _on_default_notifier(Notifier.suppressions)


__all__ = [
    "Intent",
    "Notifier",
    "NotifyError",
    "send",
    "send_many",
    "status",
    "suppress",
    "suppressions",
    "unsuppress",
]
