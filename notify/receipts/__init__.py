"""Receipts: what a provider says about a message after it accepted it, and what notify does then.

A receipt moves a `sent` delivery to `delivered` or `undelivered`, once: it
is kept as it came (a provider's retry of it changes nothing). `undelivered`
acts only on the delivery still `sent` by the very message it is about (a
later, lesser receipt, or one for an earlier send of a retried delivery,
settles with no effect). `delivered` says the recipient has the message,
whichever send it was about, so it also ends a delivery that was to be sent
again (`retrying`, `queued`) or that failed, an unknown outcome included:
notify never sends a second copy of what a provider confirmed. A receipt that
comes while its delivery is `sending` (or an unknown outcome whose worker may
still answer) waits, unsettled, and the sweep settles it once the outcome is
recorded (`settle_waiting`, every worker's maintenance), within RECEIPT_WAIT.

Each provider's receipts are one module of this package: it verifies and
reads the provider's request (`notify web` routes it) and judges each code
(`judge`: may another send reach it, does it suppress the address). Twilio's
is `notify.receipts.twilio`; an email provider's bounce events would be one
more module beside it.
"""

from __future__ import annotations

import enum
import importlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from notify import channels as registry
from notify.errors import CoreCode
from notify.models import Status, SuppressionReason
from notify.policy import ChannelPolicy, load_policies
from notify.settings import Settings, StatusHook, tell_status
from notify.store import NewReceipt, ReceiptTarget, Store

__all__ = ["RECEIPT_WAIT", "SOURCES", "Judgement", "Receipts", "Taken"]

log = logging.getLogger("notify.receipts")

RECEIPT_WAIT = 3600.0  # seconds a receipt waits for its delivery's `sent` before it is settled unused
SOURCES = {"twilio": "notify.receipts.twilio"}  # provider -> the module that reads its receipts
# What a `delivered` receipt moves on whichever send it was about (never sending: that claim's own).
_PROVEN = frozenset({Status.SENT, Status.RETRYING, Status.QUEUED, Status.FAILED})


@dataclass(frozen=True)
class Judgement:
    """What a provider's code means beyond delivered or not."""

    retry_once: bool = False  # another send may reach it (Twilio 30003, the handset unreachable)
    suppress: SuppressionReason | None = None  # nothing more to this address (Twilio 21610, a STOP)


class Source(Protocol):
    def judge(self, receipt: NewReceipt) -> Judgement: ...


class Taken(enum.StrEnum):
    """What one receipt did."""

    MOVED = "moved"  # its delivery is now delivered, undelivered, or retrying
    REPEATED = "repeated"  # the same receipt came before: nothing more
    WAITING = "waiting"  # its delivery's `sent` is not recorded yet: the sweep settles it
    IGNORED = "ignored"  # its delivery is gone, final already, or sent again since: no effect


class Receipts:
    """Takes receipts for the store at hand: web's hooks, and every worker's sweep."""

    def __init__(self, store: Store, settings: Settings, *, on_status: StatusHook | None = None) -> None:
        self.store = store
        self.on_status = on_status
        self.policies: dict[str, ChannelPolicy] = load_policies(
            settings.resolved_config_path, registry.default_policies()
        )

    def take(self, receipt: NewReceipt) -> Taken:
        """Keep `receipt` and act on it; StoreUnavailable if the store does not answer (the
        provider should send it again: nothing was kept, or the copy will be a repeat)."""
        if not self.store.add_receipt(receipt):
            return Taken.REPEATED
        return self._settle(receipt, waited=0.0)

    def settle_waiting(self) -> int:
        """Settle the receipts that came before their delivery's `sent`; how many moved one."""
        moved = 0
        now = self.store.now()
        for receipt, received_at in self.store.unsettled_receipts():
            waited = (now - received_at).total_seconds()
            moved += self._settle(receipt, waited=waited) is Taken.MOVED
        return moved

    def _settle(self, receipt: NewReceipt, *, waited: float) -> Taken:
        target = self.store.receipt_target(receipt.delivery_id)
        if target is None:
            self.store.settle_receipt(receipt)
            return Taken.IGNORED
        if receipt.status is Status.DELIVERED and target.status in _PROVEN:
            # Signed for this delivery's own callback: the recipient has it, whichever send it was
            # about. A retry of it is not made; an unknown outcome in the dead letters is known.
            if not self.store.settle_receipt(receipt, proven=True):
                return Taken.IGNORED
            return self._moved(receipt, target, Status.DELIVERED)
        unknown = target.status is Status.FAILED and target.error_code == CoreCode.OUTCOME_UNKNOWN
        if (target.status is Status.SENDING or unknown) and waited < RECEIPT_WAIT:
            return Taken.WAITING  # its worker has not recorded `sent` yet, and may still
        if target.status is not Status.SENT or target.provider_id != receipt.provider_id:
            self.store.settle_receipt(receipt)
            return Taken.IGNORED
        judgement = _judge(receipt)
        becomes, retry_at = receipt.status, None
        policy = self.policies.get(target.channel)
        if (
            receipt.status is Status.UNDELIVERED
            and judgement.retry_once
            and receipt.code not in target.earlier_codes
            and policy is not None
            and target.attempts < policy.max_attempts
        ):
            becomes = Status.RETRYING
            retry_at = self.store.now() + timedelta(seconds=policy.delay(target.attempts))
        if judgement.suppress is not None:
            # First: whoever sees the delivery undelivered and sends again finds the address
            # suppressed. A store that fails here leaves the receipt unsettled, for the sweep.
            detail = f"{receipt.provider} {receipt.code}: {receipt.detail or 'receipt'}"
            self.store.suppress(target.channel, target.address, str(judgement.suppress), detail)
        if not self.store.settle_receipt(receipt, becomes, retry_at):
            return Taken.IGNORED  # another receipt moved it first
        return self._moved(receipt, target, becomes)

    def _moved(self, receipt: NewReceipt, target: ReceiptTarget, becomes: Status) -> Taken:
        log.info(
            "delivery %s: %s (receipt from %s%s)",
            receipt.delivery_id,
            becomes,
            receipt.provider,
            f", code {receipt.code}" if receipt.code else "",
            extra={
                "delivery_id": receipt.delivery_id,
                "channel": target.channel,
                "provider": receipt.provider,
                "status": becomes.value,
            },
        )
        if becomes is not Status.RETRYING:
            tell_status(self.on_status, receipt.delivery_id, target.channel, becomes, receipt.code)
        return Taken.MOVED


def _judge(receipt: NewReceipt) -> Judgement:
    module = SOURCES.get(receipt.provider)
    if module is None:
        return Judgement()
    source: Source = importlib.import_module(module)
    return source.judge(receipt)
