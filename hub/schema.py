"""The store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

The schema is created and changed only by the Alembic migrations in ``hub/migrations``;
these definitions are what the store's queries are written against, and a test checks
that the migrated database and this metadata agree.

Times are ISO 8601 text in UTC (``2026-11-23T08:00:00.123456+00:00``): they sort as text
on both databases and survive a round trip unchanged, which the hash chain needs.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)

metadata = MetaData()

meta = Table(
    "meta", metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

incidents = Table(
    "incidents", metadata,
    Column("id", Text, primary_key=True),
    Column("event_id", Text, unique=True),
    Column("type", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("grid_id", Text),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Column("doc", Text, nullable=False),
    # Projections of the document, for queries (the ledger, statistics, deadlines).
    Column("version", Integer, nullable=False, server_default="1"),
    Column("source", Text, nullable=False, server_default="detector"),
    Column("queue_grid", Text),
    Column("lat", Float),
    Column("lon", Float),
    Column("ack_due", Text),
    Column("resolve_due", Text),
    Column("dispatched_at", Text),
    Column("accepted_at", Text),
    Column("resolved_at", Text),
    Column("closed_at", Text),
    Column("alarm_at", Text),  # when the deadline checker must next look at it
)
Index("incidents_created", incidents.c.created_at)
Index("incidents_alarm", incidents.c.alarm_at)
Index("incidents_state", incidents.c.state)
Index("incidents_type_created", incidents.c.type, incidents.c.created_at)
Index("incidents_open_place", incidents.c.type, incidents.c.state, incidents.c.lat)

timeline = Table(
    "timeline", metadata,
    Column("incident_id", Text, ForeignKey("incidents.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("from_state", Text),
    Column("to_state", Text),
    Column("detail", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
)
Index("timeline_at_action", timeline.c.at, timeline.c.action)

snapshots = Table(
    "snapshots", metadata,
    Column("incident_id", Text, ForeignKey("incidents.id"), primary_key=True),
    Column("at", Text, nullable=False),
    Column("jpeg", LargeBinary, nullable=False),
)

# The frame behind the snapshot, without the overlay, and every detection in it.
frames = Table(
    "frames", metadata,
    Column("incident_id", Text, ForeignKey("incidents.id"), primary_key=True),
    Column("at", Text, nullable=False),
    Column("jpeg", LargeBinary, nullable=False),
    Column("detections", Text, nullable=False),
    Column("box", Text),
)

# Labelled examples: the frame of an incident an operator confirmed or dismissed.
examples = Table(
    "examples", metadata,
    Column("incident_id", Text, ForeignKey("incidents.id"), primary_key=True),
    Column("type", Text, nullable=False),
    Column("camera_id", Text),
    Column("verdict", Text, nullable=False),
    Column("label", Text, nullable=False),
    Column("box", Text),
    Column("at", Text, nullable=False),
    Column("decided_at", Text, nullable=False),
    Column("decided_by", Text, nullable=False),
    Column("reason", Text),
    Column("jpeg", LargeBinary, nullable=False),
    Column("detections", Text, nullable=False),
)

# Small JSON documents by (scope, key): runtime camera changes, per-user wall layouts.
documents = Table(
    "documents", metadata,
    Column("scope", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("updated_at", Text, nullable=False),
    Column("doc", Text, nullable=False),
)

# Departments (and patrol units) an incident is assigned to; one of them leads.
assignments = Table(
    "assignments", metadata,
    Column("incident_id", Text, ForeignKey("incidents.id"), primary_key=True),
    Column("assignee", Text, primary_key=True),  # department id, or unit:<unit id>
    Column("lead", Boolean, nullable=False, server_default="0"),
    Column("at", Text, nullable=False),
)
Index("assignments_assignee", assignments.c.assignee)

# Photos sent with reports and feedback.
photos = Table(
    "photos", metadata,
    Column("id", Text, primary_key=True),
    Column("incident_id", Text, ForeignKey("incidents.id"), nullable=False),
    Column("at", Text, nullable=False),
    Column("by", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
)
Index("photos_incident", photos.c.incident_id)

# Challenges (质询): a lower level asks an upper level about a case it escalated and that
# the upper level has not answered in time. Each is tracked with its own deadline.
challenges = Table(
    "challenges", metadata,
    Column("id", Text, primary_key=True),
    Column("incident_id", Text, ForeignKey("incidents.id"), nullable=False),
    Column("from_grid", Text, nullable=False),
    Column("to_grid", Text, nullable=False),
    Column("by", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Text, nullable=False),
    Column("due_at", Text, nullable=False),
    Column("state", Text, nullable=False),  # open, answered, overdue
    Column("answered_at", Text),
    Column("answered_by", Text),
    Column("answer", Text),
)
Index("challenges_incident", challenges.c.incident_id)

# Outgoing notifications (webhooks, SMS): kept until delivered; retried with backoff,
# then dead-lettered.
outbox = Table(
    "outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", Text, nullable=False),  # webhook:<name>, sms
    Column("event", Text, nullable=False),
    Column("incident_id", Text),
    Column("payload", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("state", Text, nullable=False),  # pending, delivered, dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_at", Text, nullable=False),
    Column("last_error", Text),
    Column("delivered_at", Text),
)
Index("outbox_due", outbox.c.state, outbox.c.next_at)

# Recorded segments (fragmented MP4 files under the data folder), one row per file.
# state: recording (being written, or cut short by a crash until the start-up repair),
# complete, repaired (cut back to its last complete fragment), damaged (nothing usable).
recordings = Table(
    "recordings", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("camera", Text, nullable=False),
    Column("start_at", Text, nullable=False),
    Column("end_at", Text, nullable=False),
    Column("path", Text, nullable=False, unique=True),  # relative to the data folder
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("codec", Text),
    Column("width", Integer),
    Column("height", Integer),
    Column("state", Text, nullable=False),
    Column("note", Text),  # what the repair found
    # The hub whose data folder holds the file (hub.settings.node_id); NULL for rows
    # from before migration 0004. Repair, retention and replay see only their own.
    Column("node", Text),
)
Index("recordings_camera_start", recordings.c.camera, recordings.c.start_at)
Index("recordings_start", recordings.c.start_at)
Index("recordings_node_start", recordings.c.node, recordings.c.start_at)

# Evidence locks: a camera's time window kept for an incident. Every segment of that
# camera overlapping the window (written before or after the lock) is kept by retention
# until a reviewer releases the lock (an audited incident action).
evidence_locks = Table(
    "evidence_locks", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", Text, ForeignKey("incidents.id"), nullable=False),
    Column("camera", Text, nullable=False),
    Column("start_at", Text, nullable=False),
    Column("end_at", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("released_at", Text),
    Column("released_by", Text),
    Column("release_reason", Text),
)
Index("evidence_locks_camera", evidence_locks.c.camera, evidence_locks.c.start_at)
Index("evidence_locks_incident", evidence_locks.c.incident_id)

# The clip cut for an incident (plain MP4 under the data folder).
clips = Table(
    "clips", metadata,
    Column("incident_id", Text, ForeignKey("incidents.id"), primary_key=True),
    Column("camera", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("start_at", Text, nullable=False),
    Column("end_at", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Text, nullable=False),
)
