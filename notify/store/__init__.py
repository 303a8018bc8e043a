"""The store: notifications, deliveries, dedup claims and dead letters, and all the SQL there is.

    store.py       the Store: record, claim, renew, record outcomes, release, sweep, purge, dead letters
    rows.py        what it takes and hands back (NewNotification, Claim, Queued, Refusal,
                   DeliveryRecord, AttemptRecord)
    statements.py  the hot statements, built once per store
    schema.py      the tables
    engines.py     SQLite's and PostgreSQL's engines, tuned
    clock.py       whose time counts: the database's on PostgreSQL

Nothing outside this package imports SQLAlchemy; the driver's errors leave it as `StoreUnavailable`.
"""

from notify.store.clock import Clock
from notify.store.rows import (
    AttemptRecord,
    Claim,
    DeliveryRecord,
    NewDelivery,
    NewNotification,
    NewReceipt,
    Queued,
    ReceiptTarget,
    Refusal,
)
from notify.store.store import BATCH, Store

__all__ = [
    "BATCH",
    "AttemptRecord",
    "Claim",
    "Clock",
    "DeliveryRecord",
    "NewDelivery",
    "NewNotification",
    "NewReceipt",
    "Queued",
    "ReceiptTarget",
    "Refusal",
    "Store",
]
