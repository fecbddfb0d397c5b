"""Public shapes of the hub's data: incidents, timeline entries, users, request bodies.

These are the API contract (OpenAPI is generated from them) and what the store keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hub.config import Role, Severity

State = Literal[
    "new",
    "confirmed",
    "dispatched",
    "accepted",
    "on_scene",
    "resolved",
    "closed",
    "dismissed",
    "escalated",
    "reopened",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class TimelineEntry(BaseModel):
    """One step in an incident's life: who did what, when, and what changed."""

    seq: int = Field(description="1, 2, 3... per incident.")
    at: datetime
    actor: str = Field(description="Username, or detector:<camera id>.")
    action: str = Field(description="created, updated, cleared, dispatch, accept...")
    from_state: State | None = None
    to_state: State | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    hash: str = Field(description="sha256 over the previous entry's hash and this entry.")


class Incident(BaseModel):
    """An incident as the API returns it."""

    id: str
    type: str
    state: State
    severity: Severity
    source: Literal["detector", "manual"] = "detector"
    camera_id: str | None = None
    camera_name: str | None = None
    grid_id: str | None = None
    grid_name: str | None = None
    zone: str | None = None
    confidence: float = 0.0
    created_at: datetime
    updated_at: datetime
    started_at: datetime
    last_seen_at: datetime
    ended_at: datetime | None = Field(None, description="When the detector saw it clear.")
    boxes: list[tuple[float, float, float, float]] = Field(default_factory=list)
    frame_size: tuple[int, int] | None = None
    track_id: int | None = None
    snapshot_url: str | None = None
    clip_start: datetime | None = None
    clip_end: datetime | None = None
    clip_url: str | None = Field(None, description="The incident's video clip (MP4, cut "
                                 "from the recordings once the post-roll has passed).")
    suggested_departments: list[str] = Field(default_factory=list)
    departments: list[str] = Field(default_factory=list, description="Assigned departments.")
    lead_department: str | None = None
    # --- workflow ---
    version: int = Field(1, description="Bumped on every stored change (optimistic locking).")
    queue_grid: str | None = Field(
        None, description="Grid level whose queue holds the case (moves up on escalation).")
    queue_grid_name: str | None = None
    position: tuple[float, float] | None = Field(None, description="(lat, lon) of the place.")
    description: str | None = Field(None, description="What a reporter wrote.")
    reporter: str | None = Field(None, description="Who reported it (manual reports).")
    reports: int = Field(1, description="Reports and detections merged into this case.")
    people: int = Field(0, description="People involved, when known.")
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Detector facts: water coverage, trend, posture...")
    severity_reason: str | None = Field(None, description="Why an operator set the severity.")
    suggested_unit: str | None = Field(None, description="Nearest available patrol unit.")
    units: list[str] = Field(default_factory=list, description="Assigned patrol units.")
    ack_due: datetime | None = Field(None, description="Accept by then (after a dispatch).")
    resolve_due: datetime | None = Field(None, description="Resolve by then.")
    warned: list[str] = Field(default_factory=list, description="Deadline warnings sent.")
    resolve_from: datetime | None = Field(None, description="Start of the resolve window.")
    dispatched_at: datetime | None = None
    accepted_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    escalations: list[dict[str, Any]] = Field(
        default_factory=list, description="Each move up the grid: from, to, at, by, reason.")
    open_challenges: int = Field(0, description="Challenges (质询) waiting for an answer.")
    photos: list[str] = Field(default_factory=list, description="Photo ids.")
    last_action: str | None = Field(None, description="The latest action, for the ledger.")
    last_note: str | None = Field(None, description="The latest feedback or comment.")


class IncidentDetail(Incident):
    """An incident with its whole timeline."""

    timeline: list[TimelineEntry]


class IncidentList(BaseModel):
    items: list[Incident]


class DispatchBody(BaseModel):
    """Whom to send the case to. Empty: the suggestion (its departments, the first leading,
    and the suggested patrol unit), which is what the dispatcher's one click sends."""

    model_config = ConfigDict(extra="forbid")
    department: str | None = Field(None, description="One department (same as departments=[x]).")
    departments: list[str] = Field(default_factory=list, max_length=20,
                                   description="Departments for a joint dispatch.")
    lead: str | None = Field(None, description="The leading department (default: the first).")
    units: list[str] = Field(default_factory=list, max_length=20, description="Patrol units.")
    note: str | None = Field(None, max_length=2000, description="Instructions for them.")


class DismissBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, description="Why it is a false alarm.")
    label: Literal["not_person", "person_ok", "other"] = Field(
        "other", description="What the detection really was, for the labelled example: "
        "not_person (an object, animal, shadow), person_ok (a person, not in trouble), other.")


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(None, max_length=2000, description="Free text for the timeline.")


class ReasonBody(BaseModel):
    """Actions that need a reason (escalate, reopen, challenge)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, description="Why.")


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000, description="The comment.")


class FeedbackBody(BaseModel):
    """A report back from the department or patrol unit on the case."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000, description="What was found or done.")
    photos: list[str] = Field(default_factory=list, max_length=20,
                              description="Photo ids uploaded with POST .../photos.")


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    result: str = Field(min_length=1, max_length=4000, description="How it was solved.")
    photos: list[str] = Field(default_factory=list, max_length=20, description="Photo ids.")


class SeverityBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    severity: Severity = Field(description="The new level.")
    reason: str = Field(min_length=1, max_length=2000, description="Why it changes.")


class Position(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class ReportBody(BaseModel):
    """A problem reported by a person (grid staff, hotline operator, patrol crew)."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="Incident type id (manual or detector type).")
    description: str = Field(min_length=1, max_length=4000, description="What is wrong.")
    position: Position = Field(description="Where (WGS84); the grid cell is found from it.")
    people: int = Field(0, ge=0, le=10000, description="People involved, if known.")
    channel: Literal["staff", "hotline", "patrol", "department", "other"] = Field(
        "staff", description="Where the report came from.")


class ReportOut(BaseModel):
    merged: bool = Field(description="True when it joined an open case of the same type nearby.")
    incident: Incident


class ChallengeOut(BaseModel):
    id: str
    incident_id: str
    from_grid: str
    to_grid: str
    by: str
    reason: str
    at: datetime
    due_at: datetime
    state: Literal["open", "answered", "overdue"]
    answered_at: datetime | None = None
    answered_by: str | None = None
    answer: str | None = None


class PhotoOut(BaseModel):
    id: str
    url: str
    sha256: str
    content_type: str


class User(BaseModel):
    """The signed-in user."""

    username: str
    name: str
    role: Role
    department: str | None = None
    grid: str | None = None
    unit: str | None = None  # the patrol unit a patrol account publishes as


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


class DepartmentOut(BaseModel):
    id: str
    name: str
    name_en: str
    handles: list[str]


class CameraOut(BaseModel):
    id: str
    name: str
    grid: str
    kind: str = Field("file", description="Source kind: rtsp, file, demo_scene.")
    url: str | None = Field(None, description="Main stream URL, password masked.")
    sub_url: str | None = Field(None, description="Sub stream URL, password masked.")
    enabled: bool = True
    position: tuple[float, float] | None = None
    zones: list[dict[str, Any]] = Field(default_factory=list)
    status: Literal["online", "degraded", "offline", "unknown"]
    reason: str | None = None
    fps: float = 0.0
    bitrate_kbps: float = 0.0
    frames: int = 0
    dropped: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    last_frame_at: datetime | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None


class CameraBody(BaseModel):
    """A camera added at run time (RTSP)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^rtsps?://", max_length=2000, description="Main stream.")
    grid: str
    sub_url: str | None = Field(None, pattern=r"^rtsps?://", max_length=2000)
    transport: Literal["tcp", "udp"] = "tcp"
    zones: list[dict[str, Any]] = Field(default_factory=list)
    position: tuple[float, float] | None = None
    enabled: bool = True


class CameraPatchBody(BaseModel):
    """Fields of a camera to change; the rest stay as they are."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    url: str | None = Field(None, pattern=r"^rtsps?://", max_length=2000)
    grid: str | None = None
    sub_url: str | None = Field(None, pattern=r"^rtsps?://", max_length=2000)
    transport: Literal["tcp", "udp"] | None = None
    zones: list[dict[str, Any]] | None = None
    position: tuple[float, float] | None = None
    enabled: bool | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    components: dict[str, dict[str, Any]]
