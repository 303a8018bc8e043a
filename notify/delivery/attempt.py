"""One delivery attempt, as a worker makes it: claim, render, deliver, record.

Celery-free, so the rules live in one place: whatever runs an attempt (the
Celery task in `notify.worker.tasks`, an express lane) acks its message only
once the outcome is recorded. A claim names this process's worker, which
beats in the store (notify.delivery.heartbeat); if this process dies its
beats stop, and the sweep (notify.delivery.maintenance) hands the delivery on.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from notify import channels as registry
from notify import unsubscribe
from notify.constants import (
    BURST_PATIENCE,
    RFC5321_DATA_REPLY,
    SMTP_LOOP_SLACK,
    STORE_RETRY_PAUSE_MAX,
    UNSUBSCRIBE_URL,
)
from notify.delivery.gate import PriorityGate
from notify.delivery.heartbeat import Heartbeat
from notify.delivery.pace import Pace
from notify.errors import (
    ConfigurationError,
    CoreCode,
    CoreProvider,
    DeliveryError,
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    StoreUnavailable,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from notify.models import Status
from notify.observability import logs, tracing
from notify.observability.metrics import OFF, AttemptOutcome, Metrics
from notify.policy import ChannelPolicy, load_policies
from notify.providers import load_provider
from notify.providers.base import Message, Provider, Receipt
from notify.rendering import Renderer
from notify.settings import Settings, StatusHook, tell_status
from notify.store import Claim, Queued, Refusal, Store

log = logging.getLogger("notify.delivery")

PermanentFailureHook = Callable[[str, str, PermanentDeliveryError], None]
UNSTORED = "the provider's answer could not be stored; see the worker's log"
CUT_OFF = "not sent: this worker's heartbeat has not reached the store for most of a lease"


class AttemptStatus(enum.StrEnum):
    """What one attempt did, and who moves its delivery on.

    A StrEnum: the Celery task returns these strings and the logs show them.
    """

    SENT = "sent"
    """The provider accepted it and `sent` is recorded: terminal, nobody moves it on."""
    RETRYING = "retrying"
    """A transient failure, `retrying` recorded with its next time: the release step publishes it then."""
    FAILED = "failed"
    """Failed for good (or gave up after `max_attempts`), `failed` recorded: an operator replays it."""
    SKIPPED = "skipped"
    """The claim was refused (done, held, claimed by a live worker, not in the store): nothing to do.

    Whoever holds the delivery moves it on: its worker, or the sweep once that claim lapses.
    """
    LOST = "lost"
    """The claim lapsed and was taken over before the outcome was recorded: the new holder records its own."""
    SUPPRESSED = "suppressed"
    """Its address was unsubscribed from the template's category since it was queued: `suppressed`
    recorded, nothing handed over, terminal."""
    ERROR = "error"
    """A bug in this worker, logged; nothing recorded: the sweep hands it on (once its claim lapses)."""


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt."""

    status: AttemptStatus


def longest_attempt(settings: Settings) -> float:
    """How long one attempt may take: its budget, then SMTP's RFC 5321 wait for the reply to the
    end of DATA, and the SMTP loop thread's slack. Past that (and a lease), the heartbeat calls its
    outcome unknown."""
    return settings.delivery_timeout + RFC5321_DATA_REPLY + SMTP_LOOP_SLACK


def new_heartbeat(store: Store, settings: Settings) -> Heartbeat:
    """A heartbeat for the attempts of one process, each allowed as long as an attempt may take."""
    return Heartbeat(
        store, settings.lease, settings.heartbeat_every, longest_attempt(settings) + settings.lease
    )


@dataclass
class _Burst:
    """A message's deliveries, as one thread takes them in turn."""

    waiting: list[str]  # not taken yet, in order
    started: float = 0.0  # monotonic start of the attempt in progress
    route: tuple[str, str] | None = None  # (channel, priority), once a claim has told
    trace: tracing.Trace | None = None  # its message's trace context: the one it is handed on in
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> str | None:
        with self._lock:
            return self.waiting.pop(0) if self.waiting else None

    def take(self) -> list[str]:
        """Every waiting one, none left."""
        with self._lock:
            taken, self.waiting = self.waiting, []
            return taken


HandOn = Callable[[list[Queued]], object]  # publishes deliveries again (a Publisher's, to the front)


class Deliverer:
    """Attempts deliveries for a worker process; providers are built once per channel."""

    def __init__(
        self,
        settings: Settings,
        *,
        heartbeat: Heartbeat | None = None,
        gate: PriorityGate | None = None,
        rate_share: float = 1.0,
        on_permanent_failure: PermanentFailureHook | None = None,
        on_status: StatusHook | None = None,
        hand_on: HandOn | None = None,
        metrics: Metrics = OFF,
    ) -> None:
        """`heartbeat`, `gate`: the process's own (a worker's services start them), else new ones.
        `rate_share`: the part of each channel's rate limit this process may use (1 / a prefork
        pool's size, since every pool process has a deliverer of its own). `metrics`: told each
        outcome (notify.observability.metrics; the default records nothing)."""
        self.settings = settings
        self.metrics = metrics
        # Its own connections: the heartbeat's never wait behind the attempts' for a free one.
        self.store = Store(settings.resolved_database_url, require_current=True)
        self.renderer = Renderer(settings.templates_dir)
        self.policies: dict[str, ChannelPolicy] = load_policies(
            settings.resolved_config_path, registry.default_policies()
        )
        self.on_permanent_failure = on_permanent_failure
        self.on_status = on_status
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._bursts: list[_Burst] = []
        self.hand_on = hand_on  # without it, a burst's deliveries wait for its slow attempt
        self._owns_heartbeat = heartbeat is None  # and its store: closed with the deliverer
        self.heartbeat = heartbeat or new_heartbeat(
            Store(settings.resolved_database_url, require_current=True), settings
        )
        if hand_on is not None:
            self.heartbeat.also_at_every_beat(self._hand_on_stuck_bursts)
        self.gate = gate or PriorityGate()  # a high attempt has this process to itself for a moment
        self.paces = {
            name: Pace(rate * rate_share)
            for name, policy in self.policies.items()
            if (rate := policy.rate_per_second) is not None
        }

    def provider(self, channel: str) -> Provider:
        with self._lock:
            if channel not in self._providers:
                self._providers[channel] = load_provider(channel, self.settings)
                self.metrics.paused(channel, self._providers[channel].name, False)  # nothing pauses it yet
            return self._providers[channel]

    def close(self) -> None:
        """Close the providers (and the heartbeat and store, if it made them): every attempt is over."""
        self._closed = True
        with self._lock:
            providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            provider.close()
        if self._owns_heartbeat:
            self.heartbeat.stop()
            self.heartbeat.store.close()
        self.store.close()

    def attempt_burst(
        self, delivery_ids: Sequence[object], *, channel: str | None = None, urgent: bool = False
    ) -> list[Outcome]:
        """A message's deliveries, one after another, each claimed when its turn comes.

        `channel`, `urgent`: the message's, from the queue it came from: the
        channel's rate limit spaces each delivery before its claim, urgent ones first.

        The ones still waiting stay "queued" with their time renewed at every
        heartbeat, so the sweep does not take them for lost; a delivery that
        raises is logged and left for the sweep, the rest go on. Only a store
        outage stops the burst (StoreUnavailable: retry the whole message; the
        ones already done are refused at their claim).
        """
        ids = [i for i in delivery_ids if isinstance(i, str)]
        if len(ids) != len(delivery_ids):
            log.warning(
                "a message carried %d delivery ids that are not strings", len(delivery_ids) - len(ids)
            )
        if not ids:
            return []
        burst = _Burst(waiting=ids[1:], trace=tracing.carrier())  # the first is claimed at once
        if burst.waiting:
            self.store.keep_queued(burst.waiting)
            self.heartbeat.keep(burst.waiting)
            with self._lock:
                self._bursts.append(burst)
        outcomes: list[Outcome] = []
        try:
            delivery_id: str | None = ids[0]
            while delivery_id is not None:
                kept = bool(outcomes)
                outcomes.append(self._attempt_or_log(delivery_id, channel, urgent, kept, burst))
                delivery_id = burst.next()
        finally:
            with self._lock:
                if burst in self._bursts:
                    self._bursts.remove(burst)
            for delivery_id in burst.take():
                self.heartbeat.drop(delivery_id)
        return outcomes

    def _hand_on_stuck_bursts(self) -> None:
        """A burst whose attempt in progress is slow hands its waiting deliveries to other threads
        (published again, ahead of their priority's backlog): one slow reply holds no burst-mate."""
        now = time.monotonic()
        with self._lock:
            stuck = [b for b in self._bursts if b.route is not None and now - b.started >= BURST_PATIENCE]
        for burst in stuck:
            ids = burst.take()
            if not ids or burst.route is None or self.hand_on is None:
                continue
            channel, priority = burst.route
            try:
                self.store.keep_queued(ids)  # published now: not taken for lost
                with tracing.resumed(burst.trace):  # a heartbeat's thread: the message's context
                    self.hand_on([Queued(i, channel, priority) for i in ids])
            finally:  # kept no more: published, or the sweep's to publish
                for delivery_id in ids:
                    self.heartbeat.drop(delivery_id)
            log.info("%d deliveries handed on from behind a slow attempt", len(ids))

    def _attempt_or_log(
        self, delivery_id: str, channel: str | None, urgent: bool, kept: bool, burst: _Burst
    ) -> Outcome:
        try:
            return self.attempt(delivery_id, channel=channel, urgent=urgent, kept=kept, burst=burst)
        except StoreUnavailable:
            raise
        except Exception:
            log.exception(
                "delivery %s: unexpected error; left to the sweep, the burst goes on",
                delivery_id,
                extra={"delivery_id": delivery_id},
            )
            return Outcome(AttemptStatus.ERROR)

    def attempt(
        self,
        delivery_id: str,
        *,
        channel: str | None = None,
        urgent: bool = False,
        kept: bool = False,
        burst: _Burst | None = None,
    ) -> Outcome:
        """Claim, render, deliver and record one delivery; `channel`'s rate limit first, if known.

        `kept`: the delivery is kept from the sweep already (a burst's waiting
        one); it is let go once claimed. One waiting for its turn under the rate
        limit is kept too: it holds no claim, and must not look lost.
        """
        with tracing.delivering(delivery_id, channel) as span:
            outcome = self._claim_and_attempt(delivery_id, channel, urgent, kept, burst)
            tracing.note(span, "notify.outcome", outcome.status)
            return outcome

    def _claim_and_attempt(
        self, delivery_id: str, channel: str | None, urgent: bool, kept: bool, burst: _Burst | None
    ) -> Outcome:
        if self._closed:  # a thread that outlived the worker's shutdown: leave it to the next worker
            log.warning("delivery %s: the deliverer is closed; left for the sweep", delivery_id)
            return Outcome(AttemptStatus.SKIPPED)
        pace = self.paces.get(channel) if channel is not None else None
        token = str(uuid.uuid4())
        try:
            if pace is not None:
                if not kept:
                    self.store.keep_queued([delivery_id])
                    self.heartbeat.keep([delivery_id])
                    kept = True
                pace.wait(urgent=urgent)  # before the claim: a delivery waiting its turn holds nothing
            claim = self._claim(delivery_id, token)
        finally:
            if kept:
                self.heartbeat.drop(delivery_id)
        if isinstance(claim, Refusal):
            self.heartbeat.done(token)
            return self._refused(delivery_id, claim, channel)
        if burst is not None:
            burst.started, burst.route = time.monotonic(), (claim.channel, claim.priority)
        try:
            with logs.attempt_fields(claim):
                if claim.attempts > self.policies[claim.channel].max_attempts:
                    outcome = self._worker_lost(claim)
                else:
                    with self.gate.turn(claim.priority):
                        outcome = self._attempt(claim)
        except BaseException as exc:  # no outcome recorded: the heartbeat ends the claim
            self.heartbeat.abandon(token, f"the attempt raised {type(exc).__name__}")
            raise
        self.heartbeat.done(token)
        return outcome

    def _claim(self, delivery_id: str, token: str) -> Claim | Refusal:
        """Claim with a token the heartbeat answers for from before the claim: if the answer never
        comes back (the store went away mid-statement), the claim may exist, and is given back."""
        self.heartbeat.track(token, delivery_id)
        try:
            return self.store.claim(delivery_id, self.heartbeat.worker_id, token)
        except BaseException as exc:
            self.heartbeat.abandon(token, f"the claim's answer was lost ({type(exc).__name__})")
            raise

    def _worker_lost(self, claim: Claim) -> Outcome:
        """Every try ended with its worker dead (a delivery that crashes it?): give up, unsent again."""
        tries = claim.attempts - 1
        reason = f"the worker died during each of its {tries} tries; the last may have been sent"
        return self._fail(
            claim, OutcomeUnknownError(reason, channel=claim.channel, provider=CoreProvider.NOTIFY)
        )

    def _attempt(self, claim: Claim) -> Outcome:
        try:
            config = self.renderer.config(claim.template)
        except TemplateError as exc:  # its template.toml changed since send() read it
            return self._template_failed(claim, exc)
        # The claim consulted the list for every category; the template's own is read here.
        if config.category and self.store.is_suppressed(claim.channel, claim.address, config.category):
            return self._unsubscribed(claim)
        try:
            data, link = claim.data, None
            if config.unsubscribe and config.category:
                link = unsubscribe.unsubscribe_url(
                    self.settings, claim.channel, claim.address, config.category
                )
                data = {**claim.data, UNSUBSCRIBE_URL: link}
            rendered = self.renderer.render(claim.template, claim.channel, data, claim.locale)
            if link is not None:
                rendered[UNSUBSCRIBE_URL] = link
            build = registry.channel(claim.channel).build
            message = build(claim.delivery_id, claim.address, rendered, self.settings)
        except TemplateError as exc:  # the template changed since send() checked it
            return self._template_failed(claim, exc)
        except ConfigurationError as exc:  # NOTIFY_PUBLIC_URL or NOTIFY_SECRET_KEY unset since send()
            return self._misconfigured(claim, exc)
        except ValidationError as exc:  # the address no longer passes (a setting changed since send())
            return self._fail(
                claim,
                PermanentDeliveryError(
                    str(exc), channel=claim.channel, provider=CoreProvider.NOTIFY, code=CoreCode.ADDRESS
                ),
            )
        except Exception as exc:  # a bug before anything was handed over: safe to try again
            log.exception("delivery %s: unexpected error before delivery", claim.delivery_id)
            return self._retry(
                claim,
                TransientDeliveryError(
                    f"{type(exc).__name__}: {exc}",
                    channel=claim.channel,
                    provider=CoreProvider.NOTIFY,
                    code=CoreCode.BUG,
                ),
            )
        self.gate.checkpoint(claim.priority)
        return self._deliver(claim, message)

    def _deliver(self, claim: Claim, message: Message) -> Outcome:
        if not self.heartbeat.fresh(claim):  # cut off from the store: this worker may be taken for dead
            return self._give_back(claim)
        provider = self.provider(claim.channel)
        try:  # recorded first: if this worker is taken for dead from here on, it is not sent again
            handing_over = self.store.handing_over(claim)
        except StoreUnavailable:  # it may have been recorded; either way nothing was handed over
            return self._give_back(claim, "not sent: the store did not answer before the handover")
        if not handing_over:  # this worker was declared dead, its claim handed on: not sent
            log.error(
                "delivery %s: not sent: its claim was taken over before the handover",
                claim.delivery_id,
                extra=logs.outcome(AttemptStatus.LOST),
            )
            return Outcome(AttemptStatus.LOST)
        self.heartbeat.handing_over(claim.token)
        try:
            try:
                receipt = self._call(provider, claim, message)
            finally:
                self.heartbeat.answered(claim.token)
        except PermanentDeliveryError as exc:  # OutcomeUnknownError too: never resent blindly
            return self._fail(claim, exc)
        except TransientDeliveryError as exc:
            return self._retry(claim, exc)
        except ConfigurationError as exc:  # bad credentials
            return self._misconfigured(claim, exc)
        except Exception as exc:
            # A provider classifies its own failures; one that raised anything
            # else may have handed the message over already (a 201 whose body
            # does not parse): a retry could be a second copy.
            log.exception("delivery %s: unexpected error from the provider", claim.delivery_id)
            reason = f"{type(exc).__name__}: {exc}"
            unknown = OutcomeUnknownError(reason, channel=claim.channel, provider=CoreProvider.NOTIFY)
            return self._fail(claim, unknown)
        sent = functools.partial(self.store.mark_sent, claim, provider=provider.name)
        if not self._record(lambda: sent(receipt.provider_id), lambda: sent(None)):
            return self._lost(claim, AttemptStatus.SENT)
        log.info(
            "delivery %s sent (%s, try %d)",
            claim.delivery_id,
            claim.channel,
            claim.attempts,
            extra=logs.outcome(AttemptStatus.SENT, provider.name),
        )
        self._count_sent(claim, provider.name)
        self._tell(claim, Status.SENT, None)
        return Outcome(AttemptStatus.SENT)

    def _call(self, provider: Provider, claim: Claim, message: Message) -> Receipt:
        """The provider's call; how long it took, and what it raised, told to the metrics."""
        started = time.perf_counter()
        try:
            with tracing.calling(provider.name, claim.channel):
                receipt = provider.deliver(message)
        except BaseException as exc:
            self.metrics.called(claim.channel, provider.name, time.perf_counter() - started, exc)
            raise
        self.metrics.called(claim.channel, provider.name, time.perf_counter() - started, None)
        return receipt

    def _provider_name(self, channel: str) -> str:
        """The channel's provider, for a label where none was called; "none" if it does not load."""
        if not self.metrics.enabled:
            return ""
        try:
            return self.provider(channel).name
        except NotifyError:
            return "none"

    def _count_sent(self, claim: Claim, provider: str) -> None:
        self.metrics.attempted(claim.channel, provider, AttemptOutcome.SENT)
        self.metrics.finished(claim.channel, provider, Status.SENT)
        if self.metrics.enabled and claim.created_at is not None:  # the store's clock, as send() wrote it
            waited = (self.store.now() - claim.created_at).total_seconds()
            self.metrics.delivered(claim.channel, claim.priority, waited)

    def _record(self, write: Callable[[], bool], instead: Callable[[], bool] | None = None) -> bool:
        """Write an outcome, however long the store is away, whatever text it refuses.

        The provider has answered: giving up would leave the claim to the sweep
        and a second worker would send again what this one already sent (or
        resend an unknown outcome). The sweep hands a claim on only once this
        worker's beats stood still for a lease of the store answering, and
        retries come every half second at most: the outcome lands first. A
        write the store refuses for what it holds (the store escapes what it
        can; this is for what it cannot) is made `instead` without the
        provider's text.
        """
        delay, tries = 0.05, 0
        while True:
            try:
                return write()
            except StoreUnavailable as exc:
                tries += 1
                if tries & (tries - 1) == 0:  # the 1st, 2nd, 4th, 8th... failure
                    log.warning("%s; recording the outcome again (try %d)", exc, tries)
                time.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_PAUSE_MAX)
            except Exception:
                if instead is None:
                    raise
                log.exception(
                    "the store refused an outcome as written; recording it without the provider's text"
                )
                write, instead = instead, None

    def _give_back(self, claim: Claim, reason: str = CUT_OFF) -> Outcome:
        """Nothing was handed over: release the delivery for another try, its try uncounted."""
        if not self._record(lambda: self.store.give_back(claim, reason)):
            return self._lost(claim, AttemptStatus.RETRYING)
        log.warning(
            "delivery %s: %s; released for another try",
            claim.delivery_id,
            reason,
            extra=logs.outcome(AttemptStatus.RETRYING),
        )
        return Outcome(AttemptStatus.RETRYING)

    def _misconfigured(self, claim: Claim, exc: ConfigurationError) -> Outcome:
        """A setting is wrong, not the message: loud, and the delivery kept (retried by its policy)."""
        log.critical("delivery %s: configuration error: %s", claim.delivery_id, exc)
        error = TransientDeliveryError(
            str(exc), channel=claim.channel, provider=CoreProvider.CONFIGURATION, code=CoreCode.CONFIGURATION
        )
        return self._retry(claim, error)

    def _tell(self, claim: Claim, status: Status, code: str | None) -> None:
        """The NOTIFY_ON_STATUS hook, once for the status this attempt recorded."""
        tell_status(self.on_status, claim.delivery_id, claim.channel, status, code)

    def _template_failed(self, claim: Claim, exc: TemplateError) -> Outcome:
        error = PermanentDeliveryError(
            str(exc), channel=claim.channel, provider=CoreProvider.TEMPLATES, code=CoreCode.TEMPLATE
        )
        return self._fail(claim, error)

    def _unsubscribed(self, claim: Claim) -> Outcome:
        if not self._record(lambda: self.store.mark_suppressed(claim)):
            return self._lost(claim, AttemptStatus.SUPPRESSED)
        log.info(
            "delivery %s: its address unsubscribed from this category; not sent",
            claim.delivery_id,
            extra=logs.outcome(AttemptStatus.SUPPRESSED),
        )
        self.metrics.finished(claim.channel, self._provider_name(claim.channel), Status.SUPPRESSED)
        return Outcome(AttemptStatus.SUPPRESSED)

    def _suppress(self, claim: Claim, exc: PermanentDeliveryError) -> None:
        """The provider says the address is gone for good: nothing more is sent to it."""
        reason = str(exc.suppress)
        try:  # waits out a store outage, as an outcome does
            self._record(
                lambda: self.store.suppress(claim.channel, claim.address, reason, _detail(exc)) or True
            )
        except Exception:  # the outcome is recorded; the next failure to this address tries again
            log.exception("delivery %s: its address could not be suppressed", claim.delivery_id)
            return
        log.info(
            "delivery %s: its address is suppressed on %s (%s)", claim.delivery_id, claim.channel, reason
        )

    def _refused(self, delivery_id: str, refusal: Refusal, channel: str | None) -> Outcome:
        # Done, held by the store, or claimed by a live worker: this message has
        # nothing to do. A claim that lapses is the sweep's to hand on.
        fields = {"delivery_id": delivery_id, "status": AttemptStatus.SKIPPED.value}
        if refusal.ended and channel is not None:  # suppressed by this claim: a final status recorded
            self.metrics.finished(channel, self._provider_name(channel), Status.SUPPRESSED)
        if refusal.status is None:
            log.warning("delivery %s: not in the store; dropping its message", delivery_id, extra=fields)
        else:
            log.info(
                "delivery %s is %s: its message has nothing to do", delivery_id, refusal.status, extra=fields
            )
        return Outcome(AttemptStatus.SKIPPED)

    def _lost(self, claim: Claim, outcome: AttemptStatus) -> Outcome:
        log.error(
            "delivery %s: claim lapsed and was taken over before its outcome (%s) was recorded",
            claim.delivery_id,
            outcome,
            extra=logs.outcome(AttemptStatus.LOST),
        )
        return Outcome(AttemptStatus.LOST)

    def _retry(self, claim: Claim, exc: TransientDeliveryError) -> Outcome:
        policy = self.policies[claim.channel]
        if claim.attempts >= policy.max_attempts:
            return self._fail(claim, exc, note=f" (gave up after {claim.attempts} tries)")
        delay = policy.delay(claim.attempts, retry_after=exc.retry_after)

        def retrying(reason: str, code: str | None) -> bool:  # the store's time, read when it answers
            at = self.store.now() + timedelta(seconds=delay)
            return self.store.mark_retrying(claim, reason, code, at, provider=exc.provider)

        if not self._record(lambda: retrying(_reason(exc), exc.code), lambda: retrying(UNSTORED, None)):
            return self._lost(claim, AttemptStatus.RETRYING)
        log.info(
            "delivery %s: try %d failed (%s), next in %.1fs",
            claim.delivery_id,
            claim.attempts,
            _reason(exc),
            delay,
            extra=logs.outcome(AttemptStatus.RETRYING, exc.provider),
        )
        self.metrics.attempted(claim.channel, exc.provider, AttemptOutcome.RETRY)
        return Outcome(AttemptStatus.RETRYING)

    def _fail(self, claim: Claim, exc: DeliveryError, note: str = "") -> Outcome:
        failed = functools.partial(self.store.mark_failed, claim, provider=exc.provider)
        code = CoreCode.OUTCOME_UNKNOWN if isinstance(exc, OutcomeUnknownError) else None
        # Suppressed before the failure is recorded: whoever sees `failed` and sends again finds
        # the address suppressed. The provider's word stands even if this claim turns out lost.
        if isinstance(exc, PermanentDeliveryError) and exc.suppress:
            self._suppress(claim, exc)
        if not self._record(lambda: failed(_reason(exc) + note, exc.code), lambda: failed(UNSTORED, code)):
            return self._lost(claim, AttemptStatus.FAILED)
        log.warning(
            "delivery %s failed for good: %s%s",
            claim.delivery_id,
            _reason(exc),
            note,
            extra=logs.outcome(AttemptStatus.FAILED, exc.provider),
        )
        unknown = isinstance(exc, OutcomeUnknownError)
        self.metrics.attempted(
            claim.channel, exc.provider, AttemptOutcome.UNKNOWN if unknown else AttemptOutcome.FAILED
        )
        self.metrics.finished(claim.channel, exc.provider, Status.FAILED)
        self._tell(claim, Status.FAILED, exc.code)
        hook = self.on_permanent_failure
        # Only the address's fault is the hook's business; an unknown outcome is not.
        if isinstance(exc, PermanentDeliveryError) and not isinstance(exc, OutcomeUnknownError) and hook:
            try:
                hook(claim.channel, claim.address, exc)
            except Exception:
                log.exception("on_permanent_failure hook raised")
        return Outcome(AttemptStatus.FAILED)


def _detail(exc: DeliveryError) -> str:
    return f"{exc.provider} {exc.code + ' ' if exc.code else ''}{exc.reason}"


def _reason(exc: NotifyError) -> str:
    return exc.reason if isinstance(exc, DeliveryError) else str(exc)
