"""The store's tables, and the one column type they share (an aware UTC datetime)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from notify.constants import (
    MAX_ADDRESS,
    MAX_CODE,
    MAX_DEDUP_KEY,
    MAX_ID,
    MAX_LOCALE,
    MAX_PROVIDER_ID,
    MAX_TEMPLATE,
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware datetime kept in UTC on every database.

    SQLite has no time zone type: SQLAlchemy writes an aware value's local
    wall time and drops its offset. Converting to UTC on the way in (and
    marking UTC on the way out) makes 10:00-05:00 and 15:00Z the same instant.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; it keeps UTC instants only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()
_ts = UTCDateTime()

# The schema's revision (notify/store/migrations/versions): a store made here is made at it,
# and one at an older revision is brought to it by `notify db upgrade`.
REVISION = "0005"
SUPPRESSIONS_SINCE = "0003"  # a producer on an older schema records without the suppression list
ATTEMPTS_SINCE = "0005"  # a producer's `notify status` on an older schema shows no attempt rows
SCHEMA_LOCK = 0x6E6F74696679  # "notify": PostgreSQL's advisory lock for making or upgrading the schema
VERSION_TABLE = "notify_schema_version"  # Alembic's version table, named apart from an app's own
schema_version = sa.Table(
    VERSION_TABLE,
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)


def revision_of(conn: sa.Connection) -> str | None:
    """The schema's revision; None if made by a release before revisions were kept (or not made)."""
    if not sa.inspect(conn).has_table(schema_version.name):
        return None
    found: str | None = conn.execute(sa.select(schema_version.c.version_num)).scalar()
    return found


notifications = sa.Table(
    "notify_notifications",
    metadata,
    sa.Column("id", sa.String(MAX_ID), primary_key=True),
    sa.Column("template", sa.String(MAX_TEMPLATE), nullable=False),
    sa.Column("locale", sa.String(MAX_LOCALE)),
    sa.Column("data", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", _ts, nullable=False),
)

deliveries = sa.Table(
    "notify_deliveries",
    metadata,
    sa.Column("id", sa.String(MAX_ID), primary_key=True),
    sa.Column(
        "notification_id", sa.String(36), sa.ForeignKey(notifications.c.id), nullable=False, index=True
    ),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(MAX_ADDRESS), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # tries made in attempt cycles before the last `dlq replay` (which sets `attempts` to 0): a
    # try's number in `notify_attempts` is earlier_attempts + attempts, unique over its history
    sa.Column("earlier_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("dedup_key", sa.String(MAX_DEDUP_KEY)),
    sa.Column("duplicate_of", sa.String(36)),
    sa.Column("provider_id", sa.String(MAX_PROVIDER_ID)),
    sa.Column("last_error", sa.Text),
    sa.Column("error_code", sa.String(MAX_CODE)),
    sa.Column("created_at", _ts, nullable=False),
    sa.Column("updated_at", _ts, nullable=False),
    sa.Column("next_attempt_at", _ts),
    sa.Column("release_at", _ts),  # set while the store, not the broker, holds the next try
    sa.Column("lease_until", _ts),  # while "sending" by a worker of notify <= 0.3: its claim's lease
    sa.Column("claim_token", sa.String(36)),  # while "sending": which claim may record the outcome
    sa.Column("worker_id", sa.String(MAX_ID)),  # while "sending": the worker process that claimed it
    # set by the claim's worker just before it hands the message to the provider: a claim
    # whose worker dies after that is an unknown outcome, never handed over again blindly
    sa.Column("handed_over_at", _ts),
    sa.Column("sent_at", _ts),
    sa.Column("failed_at", _ts),
    sa.Index("ix_notify_deliveries_status_release", "status", "release_at"),
    sa.Index("ix_notify_deliveries_status_lease", "status", "lease_until"),
    sa.Index("ix_notify_deliveries_status_worker", "status", "worker_id"),
)

# One row per worker process that claims deliveries. Liveness is judged by `beats` moving
# on, as each observer sees it on its own monotonic clock (notify.delivery.liveness);
# `beat_at` is for people reading the table, never compared with another process's clock.
workers = sa.Table(
    "notify_workers",
    metadata,
    sa.Column("id", sa.String(MAX_ID), primary_key=True),
    sa.Column("beats", sa.BigInteger, nullable=False),
    sa.Column("dead", sa.Boolean, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", _ts, nullable=False),
    sa.Column("beat_at", _ts, nullable=False),
)

dedup_claims = sa.Table(
    "notify_dedup_claims",
    metadata,
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("address", sa.String(MAX_ADDRESS), primary_key=True),
    sa.Column("dedup_key", sa.String(MAX_DEDUP_KEY), primary_key=True),
    sa.Column("delivery_id", sa.String(36), nullable=False),
    sa.Column("expires_at", _ts, nullable=False),
)

# The suppression list: an address notify sends nothing more to on a channel. `address` is in
# the form deliveries keep (each channel's normal form, as dedup compares them).
suppressions = sa.Table(
    "notify_suppressions",
    metadata,
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("address", sa.String(MAX_ADDRESS), primary_key=True),
    # '' for every category; else the template category an unsubscribe came from
    sa.Column("category", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("created_at", _ts, nullable=False),
)

# Receipts: what a provider said after it accepted a message (Twilio's status callbacks), kept
# as they came, once each. A receipt is settled when it has moved its delivery on or cannot
# (its delivery is final, or was sent again meanwhile); one that came before its worker recorded
# `sent` waits, unsettled, for the sweep (notify.receipts).
receipts = sa.Table(
    "notify_receipts",
    metadata,
    sa.Column("delivery_id", sa.String(MAX_ID), primary_key=True),
    sa.Column("provider_id", sa.String(MAX_PROVIDER_ID), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),  # delivered or undelivered
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("code", sa.String(MAX_CODE)),
    sa.Column("detail", sa.Text),
    sa.Column("received_at", _ts, nullable=False),
    sa.Column("settled_at", _ts),
    sa.Column("effect", sa.String(16)),  # the status it gave its delivery; None: it changed nothing
    sa.Index("ix_notify_receipts_settled", "settled_at"),
)

# Attempts: one row per try whose outcome a worker (or the sweep) recorded, written in the same
# transaction as that outcome and only by the claim that still owned it. `number` is the try's
# number over the delivery's whole history: a `dlq replay` starts a new attempt cycle (attempts
# 0 again) and keeps the rows before it, its tries numbered on from them (earlier_attempts).
# A try that reached no provider and was uncounted (given back, or found suppressed at its
# claim) has no row. No foreign key: a delivery's rows are deleted with it, by the store.
attempts = sa.Table(
    "notify_attempts",
    metadata,
    sa.Column("delivery_id", sa.String(MAX_ID), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("provider", sa.String(32)),  # smtp, twilio, notify...; None: not known (the sweep's)
    sa.Column("outcome", sa.String(16), nullable=False),  # AttemptOutcome: sent, retry, failed, unknown
    sa.Column("code", sa.String(MAX_CODE)),
    sa.Column("reason", sa.Text),
    sa.Column("started_at", _ts),  # its claim's time; None: not known (ended by the heartbeat)
    sa.Column("ended_at", _ts, nullable=False),
)
