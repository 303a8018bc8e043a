"""Attempts (`notify_attempts`): each try's provider, outcome, code and reason, and when it ran.

`notify_deliveries.earlier_attempts` numbers a replayed delivery's new tries on from its old ones.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from notify.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "notify_deliveries",
        sa.Column("earlier_attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "notify_attempts",
        sa.Column("delivery_id", sa.String(36), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("provider", sa.String(32)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("code", sa.String(64)),
        sa.Column("reason", sa.Text),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
    )
