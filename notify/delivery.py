"""One delivery attempt, as a worker makes it: claim, render, deliver, record.

Celery-free, so the rules live in one place: the Celery task in `workers/`
only turns the `Outcome` into "done" or "publish again in N seconds".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parseaddr

from notify.channels import load_provider
from notify.channels.base import EmailMessage, Message, Provider, PushMessage, SmsMessage
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    NotifyError,
    PermanentDeliveryError,
    TemplateError,
    TransientDeliveryError,
)
from notify.policy import ChannelPolicy, load_policies
from notify.rendering import Rendered, Renderer
from notify.settings import Settings
from notify.store import Job, Refusal, Store, utcnow

log = logging.getLogger("notify.delivery")

PermanentFailureHook = Callable[[str, str, PermanentDeliveryError], None]


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt; `again_in` asks the task to publish once more."""

    status: str  # sent | retrying | failed | skipped
    again_in: float | None = None


def message_id(delivery_id: str, sender: str | None) -> str:
    """A Message-ID that is the same on every try of a delivery."""
    domain = parseaddr(sender or "")[1].rpartition("@")[2] or "notify.invalid"
    return f"<{delivery_id}@{domain}>"


def build_message(job: Job, rendered: Rendered, sender: str | None) -> Message:
    if job.channel == "email":
        return EmailMessage(
            delivery_id=job.delivery_id,
            to=job.address,
            subject=rendered["subject"],
            text=rendered["text"],
            html=rendered.get("html"),
            message_id=message_id(job.delivery_id, sender),
        )
    if job.channel == "sms":
        return SmsMessage(delivery_id=job.delivery_id, to=job.address, body=rendered["body"])
    return PushMessage(
        delivery_id=job.delivery_id,
        token=job.address,
        title=rendered["title"],
        body=rendered["body"],
        data={"notify_delivery_id": job.delivery_id},
    )


class Deliverer:
    """Attempts deliveries for a worker process; providers are built once per channel."""

    def __init__(
        self, settings: Settings, *, on_permanent_failure: PermanentFailureHook | None = None
    ) -> None:
        self.settings = settings
        self.store = Store(settings.resolved_database_url)
        self.renderer = Renderer(settings.templates_dir)
        self.policies: dict[str, ChannelPolicy] = load_policies(settings.resolved_config_path)
        self.on_permanent_failure = on_permanent_failure
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def provider(self, channel: str) -> Provider:
        with self._lock:
            if channel not in self._providers:
                self._providers[channel] = load_provider(channel, self.settings)
            return self._providers[channel]

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()
        self.store.close()

    def attempt(self, delivery_id: str) -> Outcome:
        claim = self.store.claim(delivery_id, self.settings.lease)
        if isinstance(claim, Refusal):
            return self._refused(delivery_id, claim)
        try:
            rendered = self.renderer.render(claim.template, claim.channel, claim.data, claim.locale)
            message = build_message(claim, rendered, self.settings.email_from)
            receipt = self.provider(claim.channel).deliver(message)
        except TemplateError as exc:  # the template changed since send() checked it
            return self._fail(
                claim,
                PermanentDeliveryError(
                    str(exc), channel=claim.channel, provider="templates", code="template"
                ),
            )
        except PermanentDeliveryError as exc:
            return self._fail(claim, exc)
        except TransientDeliveryError as exc:
            return self._retry(claim, exc)
        except ConfigurationError as exc:  # bad credentials: loud, and keep the delivery
            log.critical("delivery %s: provider configuration error: %s", claim.delivery_id, exc)
            return self._retry(
                claim,
                TransientDeliveryError(
                    str(exc), channel=claim.channel, provider="config", code="configuration"
                ),
            )
        except Exception as exc:
            log.exception("delivery %s: unexpected error", claim.delivery_id)
            return self._retry(
                claim,
                TransientDeliveryError(
                    f"{type(exc).__name__}: {exc}", channel=claim.channel, provider="notify", code="bug"
                ),
            )
        self.store.mark_sent(claim.delivery_id, receipt.provider_id)
        log.info("delivery %s sent (%s, try %d)", claim.delivery_id, claim.channel, claim.attempts)
        return Outcome("sent")

    def _refused(self, delivery_id: str, refusal: Refusal) -> Outcome:
        if refusal.status is None:
            log.warning("delivery %s: not in the store; dropping its message", delivery_id)
        elif refusal.retry_in is not None:
            # Another worker holds it (or held it and died): look again when its lease ends.
            return Outcome(
                "skipped", again_in=min(max(refusal.retry_in, 1.0), self.settings.max_broker_delay)
            )
        return Outcome("skipped")

    def _retry(self, job: Job, exc: TransientDeliveryError) -> Outcome:
        policy = self.policies[job.channel]
        if job.attempts >= policy.max_attempts:
            return self._fail(job, exc, note=f" (gave up after {job.attempts} tries)")
        delay = policy.delay(job.attempts, retry_after=exc.retry_after)
        held = delay > self.settings.max_broker_delay
        self.store.mark_retrying(
            job.delivery_id, _reason(exc), exc.code, utcnow() + timedelta(seconds=delay), held=held
        )
        log.info(
            "delivery %s: try %d failed (%s), next in %.1fs",
            job.delivery_id,
            job.attempts,
            _reason(exc),
            delay,
        )
        return Outcome("retrying", again_in=None if held else delay)

    def _fail(self, job: Job, exc: DeliveryError, note: str = "") -> Outcome:
        self.store.mark_failed(job.delivery_id, _reason(exc) + note, exc.code)
        log.warning("delivery %s failed for good: %s%s", job.delivery_id, _reason(exc), note)
        if isinstance(exc, PermanentDeliveryError) and self.on_permanent_failure is not None:
            try:
                self.on_permanent_failure(job.channel, job.address, exc)
            except Exception:
                log.exception("on_permanent_failure hook raised")
        return Outcome("failed")


def _reason(exc: NotifyError) -> str:
    return exc.reason if isinstance(exc, DeliveryError) else str(exc)
