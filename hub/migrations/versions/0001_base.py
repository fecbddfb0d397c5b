"""The schema as it stood before migrations (GridHub 0.1, schema_version 1).

Stores made by those versions already have these tables: each is created only if it is
missing, and the column added late in 0.1 (frames.box) is added if missing, so such a
store is adopted without losing anything.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "meta" not in have:
        op.create_table("meta", sa.Column("key", sa.Text, primary_key=True),
                        sa.Column("value", sa.Text, nullable=False))
    if "incidents" not in have:
        op.create_table(
            "incidents",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("event_id", sa.Text, unique=True),
            sa.Column("type", sa.Text, nullable=False),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("severity", sa.Text, nullable=False),
            sa.Column("grid_id", sa.Text),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("updated_at", sa.Text, nullable=False),
            sa.Column("doc", sa.Text, nullable=False),
        )
        op.create_index("incidents_created", "incidents", ["created_at"])
    if "timeline" not in have:
        op.create_table(
            "timeline",
            sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("at", sa.Text, nullable=False),
            sa.Column("actor", sa.Text, nullable=False),
            sa.Column("action", sa.Text, nullable=False),
            sa.Column("from_state", sa.Text),
            sa.Column("to_state", sa.Text),
            sa.Column("detail", sa.Text, nullable=False),
            sa.Column("prev_hash", sa.Text, nullable=False),
            sa.Column("hash", sa.Text, nullable=False),
        )
    if "snapshots" not in have:
        op.create_table(
            "snapshots",
            sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), primary_key=True),
            sa.Column("at", sa.Text, nullable=False),
            sa.Column("jpeg", sa.LargeBinary, nullable=False),
        )
    if "frames" not in have:
        op.create_table(
            "frames",
            sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), primary_key=True),
            sa.Column("at", sa.Text, nullable=False),
            sa.Column("jpeg", sa.LargeBinary, nullable=False),
            sa.Column("detections", sa.Text, nullable=False),
            sa.Column("box", sa.Text),
        )
    elif "box" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("frames")}:
        op.add_column("frames", sa.Column("box", sa.Text))
    if "examples" not in have:
        op.create_table(
            "examples",
            sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), primary_key=True),
            sa.Column("type", sa.Text, nullable=False),
            sa.Column("camera_id", sa.Text),
            sa.Column("verdict", sa.Text, nullable=False),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("box", sa.Text),
            sa.Column("at", sa.Text, nullable=False),
            sa.Column("decided_at", sa.Text, nullable=False),
            sa.Column("decided_by", sa.Text, nullable=False),
            sa.Column("reason", sa.Text),
            sa.Column("jpeg", sa.LargeBinary, nullable=False),
            sa.Column("detections", sa.Text, nullable=False),
        )
    if "documents" not in have:
        op.create_table(
            "documents",
            sa.Column("scope", sa.Text, primary_key=True),
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("updated_at", sa.Text, nullable=False),
            sa.Column("doc", sa.Text, nullable=False),
        )


def downgrade() -> None:
    for t in ("documents", "examples", "frames", "snapshots", "timeline", "incidents", "meta"):
        op.drop_table(t)
