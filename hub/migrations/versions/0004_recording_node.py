"""Recordings: which hub's data folder holds each segment (several hubs share one store).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before this column existed have none: they belong to whichever hub
    # finds their file (the single-hub set-up, the only one that recorded before).
    op.add_column("recordings", sa.Column("node", sa.Text))
    op.create_index("recordings_node_start", "recordings", ["node", "start_at"])


def downgrade() -> None:
    op.drop_index("recordings_node_start", "recordings")
    op.drop_column("recordings", "node")
