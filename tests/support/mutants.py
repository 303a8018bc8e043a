"""Mutants of notify's code, applied when NOTIFY_MUTANT names one (tests/conftest.py imports this then).

Each rewrites one function's source text (every replacement must match exactly
once) and puts the rewritten function in its place, so tests/test_system_model.py
can check that the model (or a named test) fails with it.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mutant:
    module: str
    owner: str | None  # the class holding the function, or None for a module-level one
    function: str
    replacements: tuple[tuple[str, str], ...]
    what: str


MUTANTS: dict[str, Mutant] = {
    "requeue_unchecked": Mutant(
        "notify.store.store",
        "Store",
        "_requeue",
        ((".where(d.id.in_(ids), condition)", ".where(d.id.in_(ids))"),),
        "_requeue's UPDATE without its re-checked condition",
    ),
    "liveness_early": Mutant(
        "notify.delivery.liveness",
        "Liveness",
        "observe",
        (("if still >= self.lease:", "if still >= self.lease / 4:"),),
        "a worker judged dead after a quarter of a lease of standing still",
    ),
    "frozen_database_clock": Mutant(
        "notify.store.clock",
        "DatabaseClock",
        "__call__",
        (
            ("if self._base is None or elapsed > self.RESYNC_EVERY:", "if self._base is None:"),
            ("return self._base + timedelta(seconds=elapsed)", "return self._base"),
        ),
        "the database's clock read once and never advancing",
    ),
    "release_skips_null": Mutant(
        "notify.store.store",
        "Store",
        "release_due",
        (("sa.or_(d.release_at <= now, d.release_at.is_(None))", "d.release_at <= now"),),
        "release_due skipping held deliveries whose release_at is NULL",
    ),
    "queued_since_created_at": Mutant(
        "notify.store.store",
        "Store",
        "queued_since",
        (("d.updated_at < cutoff", "d.created_at < cutoff"),),
        "queued_since keyed on created_at instead of updated_at",
    ),
    "outcome_unfenced": Mutant(
        "notify.store.statements",
        None,
        "_outcome",
        (('d.claim_token == _param("b_token")', '_param("b_token") == _param("b_token")'),),
        "an outcome written without checking its claim's token",
    ),
    "handover_unrecorded": Mutant(
        "notify.delivery.attempt",
        "Deliverer",
        "_deliver",
        (("handing_over = self.store.handing_over(claim)", "handing_over = True"),),
        "a worker handing a message over without recording that in the store first",
    ),
    "reclaim_handed_over": Mutant(
        "notify.store.store",
        "Store",
        "reclaim_from_dead",
        (("sa.and_(_of_dead_worker(), d.handed_over_at.is_(None))", "_of_dead_worker()"),),
        "the sweep handing on a dead worker's claim it was handing over",
    ),
    "claim_ignores_suppression": Mutant(
        "notify.store.statements",
        None,
        "_claim_statement",
        ((", alive, ~suppressed(d.channel, d.address))", ", alive)"),),
        "the claim taking a delivery whose address was suppressed since it was queued",
    ),
    "receipt_overwrites_final": Mutant(
        "notify.store.store",
        "Store",
        "settle_receipt",
        (("d.provider_id == r.provider_id, d.status == Status.SENT)", "d.provider_id == r.provider_id)"),),
        "a receipt moving its delivery whatever its status now (a later one overwriting a final one)",
    ),
}


def apply(name: str) -> None:
    mutant = MUTANTS[name]
    module = importlib.import_module(mutant.module)
    owner: Any = module if mutant.owner is None else getattr(module, mutant.owner)
    source = textwrap.dedent(inspect.getsource(getattr(owner, mutant.function)))
    for old, new in mutant.replacements:
        count = source.count(old)
        if count != 1:
            raise RuntimeError(f"mutant {name}: {old!r} occurs {count} times in {mutant.function}")
        source = source.replace(old, new)
    made: dict[str, Any] = {}
    exec(compile(source, f"<mutant {name}>", "exec"), vars(module), made)
    setattr(owner, mutant.function, made[mutant.function])
