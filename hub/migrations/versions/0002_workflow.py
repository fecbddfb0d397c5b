"""Workflow: incident projections for queues, deadlines and statistics; assignments,
photos, challenges and the notification outbox.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_COLUMNS = (
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("source", sa.Text, nullable=False, server_default="detector"),
    sa.Column("queue_grid", sa.Text),
    sa.Column("lat", sa.Float),
    sa.Column("lon", sa.Float),
    sa.Column("ack_due", sa.Text),
    sa.Column("resolve_due", sa.Text),
    sa.Column("dispatched_at", sa.Text),
    sa.Column("accepted_at", sa.Text),
    sa.Column("resolved_at", sa.Text),
    sa.Column("closed_at", sa.Text),
    sa.Column("alarm_at", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        for col in NEW_COLUMNS:
            batch.add_column(col)
    op.execute("UPDATE incidents SET queue_grid = grid_id")
    op.create_index("incidents_state", "incidents", ["state"])
    op.create_index("incidents_alarm", "incidents", ["alarm_at"])
    op.create_index("incidents_type_created", "incidents", ["type", "created_at"])
    op.create_index("timeline_at_action", "timeline", ["at", "action"])
    op.create_table(
        "assignments",
        sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), primary_key=True),
        sa.Column("assignee", sa.Text, primary_key=True),
        sa.Column("lead", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("at", sa.Text, nullable=False),
    )
    op.create_index("assignments_assignee", "assignments", ["assignee"])
    op.create_table(
        "photos",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("by", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("photos_incident", "photos", ["incident_id"])
    op.create_table(
        "challenges",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("incident_id", sa.Text, sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("from_grid", sa.Text, nullable=False),
        sa.Column("to_grid", sa.Text, nullable=False),
        sa.Column("by", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("due_at", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("answered_at", sa.Text),
        sa.Column("answered_by", sa.Text),
        sa.Column("answer", sa.Text),
    )
    op.create_index("challenges_incident", "challenges", ["incident_id"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("incident_id", sa.Text),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at", sa.Text, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", sa.Text),
    )
    op.create_index("outbox_due", "outbox", ["state", "next_at"])


def downgrade() -> None:
    for t in ("outbox", "challenges", "photos", "assignments"):
        op.drop_table(t)
    op.drop_index("timeline_at_action", "timeline")
    op.drop_index("incidents_type_created", "incidents")
    op.drop_index("incidents_state", "incidents")
    op.drop_index("incidents_alarm", "incidents")
    with op.batch_alter_table("incidents") as batch:
        for col in NEW_COLUMNS:
            batch.drop_column(col.name)
