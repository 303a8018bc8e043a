"""The suppression list (`notify_suppressions`): addresses notify sends nothing more to.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from notify.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_suppressions",
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("address", sa.String(512), primary_key=True),
        sa.Column("category", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
