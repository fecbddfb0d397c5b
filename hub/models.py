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
    suggested_departments: list[str] = Field(default_factory=list)
    departments: list[str] = Field(default_factory=list, description="Assigned departments.")
    lead_department: str | None = None


class IncidentDetail(Incident):
    """An incident with its whole timeline."""

    timeline: list[TimelineEntry]


class IncidentList(BaseModel):
    items: list[Incident]


class DispatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    department: str = Field(description="Department id to dispatch to.", min_length=1)
    note: str | None = Field(None, max_length=2000, description="Instructions for the department.")


class DismissBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, description="Why it is a false alarm.")
    label: Literal["not_person", "person_ok", "other"] = Field(
        "other", description="What the detection really was, for the labelled example: "
        "not_person (an object, animal, shadow), person_ok (a person, not in trouble), other.")


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(None, max_length=2000, description="Free text for the timeline.")


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
