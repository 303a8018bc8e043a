"""The schema of notify 0.1.0, the first release under Alembic.

Revision ID: 0001
Revises: -

Types and lengths are written out, not taken from notify.constants: a
revision describes the schema as it was then, whatever the code says later.
Online, it creates only what is missing, so `notify db upgrade` also takes a
store made before revisions were recorded (its tables were made by the
release's `create_all`, and a development build may lack a column or two).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import context, op

from notify.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts() -> UTCDateTime:
    return UTCDateTime()


def _tables() -> dict[str, Callable[[], list[sa.schema.SchemaItem]]]:
    return {
        "notify_notifications": lambda: [
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("template", sa.String(200), nullable=False),
            sa.Column("locale", sa.String(35)),
            sa.Column("data", sa.Text, nullable=False),
            sa.Column("created_at", _ts(), nullable=False),
        ],
        "notify_deliveries": lambda: [
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column(
                "notification_id",
                sa.String(36),
                sa.ForeignKey("notify_notifications.id"),
                nullable=False,
            ),
            sa.Column("channel", sa.String(16), nullable=False),
            sa.Column("address", sa.String(512), nullable=False),
            sa.Column("priority", sa.String(16), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("dedup_key", sa.String(200)),
            sa.Column("duplicate_of", sa.String(36)),
            sa.Column("provider_id", sa.String(300)),
            sa.Column("last_error", sa.Text),
            sa.Column("error_code", sa.String(64)),
            sa.Column("created_at", _ts(), nullable=False),
            sa.Column("updated_at", _ts(), nullable=False),
            sa.Column("next_attempt_at", _ts()),
            sa.Column("release_at", _ts()),
            sa.Column("lease_until", _ts()),
            sa.Column("claim_token", sa.String(36)),
            sa.Column("worker_id", sa.String(36)),
            sa.Column("sent_at", _ts()),
            sa.Column("failed_at", _ts()),
        ],
        "notify_workers": lambda: [
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("beats", sa.BigInteger, nullable=False),
            sa.Column("dead", sa.Boolean, nullable=False),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("started_at", _ts(), nullable=False),
            sa.Column("beat_at", _ts(), nullable=False),
        ],
        "notify_dedup_claims": lambda: [
            sa.Column("channel", sa.String(16), primary_key=True),
            sa.Column("address", sa.String(512), primary_key=True),
            sa.Column("dedup_key", sa.String(200), primary_key=True),
            sa.Column("delivery_id", sa.String(36), nullable=False),
            sa.Column("expires_at", _ts(), nullable=False),
        ],
    }


_INDEXES = {
    "ix_notify_deliveries_notification_id": ("notify_deliveries", ["notification_id"]),
    "ix_notify_deliveries_status_release": ("notify_deliveries", ["status", "release_at"]),
    "ix_notify_deliveries_status_lease": ("notify_deliveries", ["status", "lease_until"]),
    "ix_notify_deliveries_status_worker": ("notify_deliveries", ["status", "worker_id"]),
}


def upgrade() -> None:
    offline = context.is_offline_mode()
    inspector = None if offline else sa.inspect(op.get_bind())
    present = set() if inspector is None else set(inspector.get_table_names())
    for name, columns in _tables().items():
        if name not in present:
            op.create_table(name, *columns())
            continue
        have = {c["name"] for c in inspector.get_columns(name)} if inspector else set()
        for column in columns():
            if isinstance(column, sa.Column) and column.name not in have:  # all such are nullable
                op.add_column(name, column)
    indexes = {i["name"] for t in present for i in inspector.get_indexes(t)} if inspector else set()
    for index, (table, indexed) in _INDEXES.items():
        if index not in indexes:
            op.create_index(index, table, indexed)
