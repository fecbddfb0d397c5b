"""Incidents: an index for finding open cases of a type near a place (report merging).

Without it, the merge lookup walked every incident of the type ever recorded, newest
first, to find the few open ones inside a small box.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("incidents_open_place", "incidents", ["type", "state", "lat"])


def downgrade() -> None:
    op.drop_index("incidents_open_place", "incidents")
