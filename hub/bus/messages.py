"""Typed messages that cross the bus, one class per topic, each with a version.

Nothing else crosses a process boundary: no bare dicts or tuples. A consumer that
meets a message it cannot parse dead-letters it (see the bus implementations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class Message(BaseModel):
    """Base of every bus message; ``topic`` names the stream/channel."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")
    topic: ClassVar[str]
    v: int = Field(1, description="Message schema version.")


class IncidentCandidate(Message):
    """A detector's observation of a real-world event, raised and then kept up to date."""

    topic: ClassVar[str] = "detections.candidates"
    event_id: str = Field(description="Stable id of the real-world event (one incident per id).")
    phase: Literal["start", "update", "end"] = Field(description="Where the event is in its life.")
    type: str = Field(description="Incident type, e.g. person_down.")
    camera_id: str
    zone: str = Field("frame", description="Zone of the camera the rule fired in.")
    at: datetime = Field(description="Time of this observation (UTC).")
    started_at: datetime = Field(description="When the condition started (UTC).")
    confidence: float = Field(ge=0, le=1)
    boxes: list[tuple[float, float, float, float]] = Field(default_factory=list)
    polygons: list[list[tuple[float, float]]] = Field(
        default_factory=list, description="Mask outlines (e.g. the water), frame pixels.")
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Rule figures: coverage, trend_per_min, dwell_s, "
        "lying, in_water, severity_hint...")
    frame_size: tuple[int, int] = Field(description="(width, height) of the boxes' frame.")
    track_id: int | None = None
    snapshot_jpeg: bytes | None = Field(None, description="JPEG with the overlay drawn.")
    frame_jpeg: bytes | None = Field(
        None, description="The same frame without the overlay (kept as a labelled example "
        "when an operator confirms or dismisses the incident).")
    detections: list[dict[str, Any]] = Field(
        default_factory=list, description="Every detection in that frame: box (x1, y1, x2, "
        "y2), class (the model's name), meaning, confidence.")
    clip_start: datetime | None = Field(None, description="Clip window start (pre-roll).")
    clip_end: datetime | None = Field(None, description="Clip window end (post-roll).")


class IncidentEvent(Message):
    """An incident was created or changed; consoles get ``data`` as is."""

    topic: ClassVar[str] = "incidents.events"
    kind: Literal["incident.created", "incident.updated"]
    incident: dict[str, Any] = Field(description="The incident as the API returns it.")
    action: str | None = Field(None, description="The action that changed it (dispatch...).")
    notice: str | None = Field(
        None, description="What consoles should call attention to: escalated, merged, "
        "deadline.warning, deadline.breached, challenge.created, challenge.overdue.")
    # The sender's Incident (never serialized): listeners in the sender's process skip
    # validating ``incident`` again (the memory bus hands over the message; the Redis bus
    # recognises its own). None when it came from another hub.
    _model: Any = PrivateAttr(None)

    @property
    def sent_model(self) -> Any:
        return self._model


class CameraHealth(Message):
    """Health of one camera source."""

    topic: ClassVar[str] = "cameras.health"
    camera_id: str
    status: Literal["online", "degraded", "offline"]
    reason: str | None = None
    fps: float = 0.0
    bitrate_kbps: float = 0.0
    frames: int = 0
    dropped: int = Field(0, description="Frames superseded before detection took them.")
    decode_errors: int = Field(0, description="Damaged packets or frames dropped.")
    reconnects: int = 0
    last_frame_at: datetime | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None


class CameraChanged(Message):
    """A camera was added, changed (``camera`` set) or removed (``camera`` null) at run time."""

    topic: ClassVar[str] = "cameras.changed"
    camera_id: str
    camera: dict[str, Any] | None = Field(None, description="The camera's full configuration.")


class UnitTelemetry(Message):
    """A validated GPS fix of a patrol unit, shared live so every hub replica tracks it."""

    topic: ClassVar[str] = "units.telemetry"
    unit_id: str = Field(max_length=64)
    origin: str = Field(description="Hub replica that received it (it skips its own echo).")
    received_at: datetime = Field(description="Hub clock when the fix arrived (UTC).")
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    time: datetime = Field(description="The device's time of the fix (UTC).")
    speed: float | None = Field(None, ge=0, allow_inf_nan=False, description="m/s.")
    heading: float | None = Field(None, ge=0, le=360, allow_inf_nan=False, description="Degrees.")
    accuracy: float | None = Field(None, ge=0, allow_inf_nan=False, description="Metres.")


class RecordingStatus(Message):
    """A source's recorder changed state: ``recording.paused`` (disk full or low, with the
    reason) is an alert for the command center; ``recording.resumed`` clears it."""

    topic: ClassVar[str] = "recording.status"
    kind: Literal["recording.paused", "recording.resumed", "recording.unsupported"]
    camera_id: str
    reason: str | None = None
    at: datetime = Field(description="When it changed (UTC).")
