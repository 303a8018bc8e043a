"""A delivery records when its claim's worker began to hand it over (`handed_over_at`).

Revision ID: 0002
Revises: 0001

A claim whose worker is taken for dead after that ends as an unknown outcome
instead of going to another worker. Stop every older worker before starting
the new ones: an older sweep does not know the mark.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from notify.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not context.is_offline_mode():
        have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("notify_deliveries")}
        if "handed_over_at" in have:  # a development build added it before revisions were kept
            return
    op.add_column("notify_deliveries", sa.Column("handed_over_at", UTCDateTime()))
