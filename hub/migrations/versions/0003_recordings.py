"""Recordings: the index of recorded segments, evidence locks, incident clips.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("camera", sa.Text, nullable=False),
        sa.Column("start_at", sa.Text, nullable=False),
        sa.Column("end_at", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("codec", sa.Text),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
    )
    op.create_index("recordings_camera_start", "recordings", ["camera", "start_at"])
    op.create_index("recordings_start", "recordings", ["start_at"])
    op.create_table(
        "evidence_locks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("camera", sa.Text, nullable=False),
        sa.Column("start_at", sa.Text, nullable=False),
        sa.Column("end_at", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("released_at", sa.Text),
        sa.Column("released_by", sa.Text),
        sa.Column("release_reason", sa.Text),
    )
    op.create_index("evidence_locks_camera", "evidence_locks", ["camera", "start_at"])
    op.create_index("evidence_locks_incident", "evidence_locks", ["incident_id"])
    op.create_table(
        "clips",
        sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), primary_key=True),
        sa.Column("camera", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("start_at", sa.Text, nullable=False),
        sa.Column("end_at", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("clips")
    op.drop_index("evidence_locks_incident", "evidence_locks")
    op.drop_index("evidence_locks_camera", "evidence_locks")
    op.drop_table("evidence_locks")
    op.drop_index("recordings_start", "recordings")
    op.drop_index("recordings_camera_start", "recordings")
    op.drop_table("recordings")
