"""Provider receipts (`notify_receipts`): what a provider said after it accepted a message.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from notify.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_receipts",
        sa.Column("delivery_id", sa.String(36), primary_key=True),
        sa.Column("provider_id", sa.String(300), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("code", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("settled_at", UTCDateTime()),
        sa.Column("effect", sa.String(16)),
    )
    op.create_index("ix_notify_receipts_settled", "notify_receipts", ["settled_at"])
