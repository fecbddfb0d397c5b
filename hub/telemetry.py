"""Patrol-unit telemetry, sans I/O: parse GPS messages, track positions, trails and grid cells.

A unit sends, over the WHIP data channel or the console WebSocket, one JSON object per fix::

    {"lat": 34.767, "lon": 113.667, "speed": 4.2, "heading": 90, "accuracy": 8,
     "time": 1718000000000}

``lat``/``lon`` in degrees (WGS 84), ``speed`` m/s, ``heading`` degrees clockwise from
north (0-360), ``accuracy`` metres, ``time`` epoch milliseconds or ISO 8601 with an
offset. ``speed``, ``heading`` and ``accuracy`` are optional (null or absent); keys
this module does not know are ignored so clients can add fields.

Nothing here touches a socket, the bus or the clock (``now`` is always passed in), so
it is tested with tables and fuzzed (tests/test_telemetry.py).

Exceptions::

    TelemetryError      telemetry rejected; ``reason`` is a short code used in counters
    ├── UnknownUnit     the unit id is not in units.yaml
    └── RateLimited     the unit sends faster than its rate allows
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shapely import STRtree
from shapely.geometry import Point, shape

from hub.config import GRID_LEVELS, GridNode, Site

MAX_BYTES = 4096  # a fix is ~150 bytes; anything over this is not a fix
MAX_FUTURE_S = 60.0  # device clocks drift a little; a minute ahead is not a fix from now
MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
TRAIL_POINTS = 600  # ten minutes at 1 Hz
TRAIL_SECONDS = 600.0
STALE_S = 30.0  # no fix for this long: the unit is shown offline
RATE_HZ = 5.0
RATE_BURST = 10


class TelemetryError(ValueError):
    """Telemetry was rejected; the message says why, ``reason`` is a short code."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class UnknownUnit(TelemetryError):
    """Telemetry for a unit that is not configured."""

    def __init__(self, unit_id: str) -> None:
        super().__init__(f"unknown unit {unit_id[:64]!r}", "unknown_unit")
        self.unit_id = unit_id


class RateLimited(TelemetryError):
    """The unit sends faster than allowed; this fix was dropped."""

    def __init__(self, unit_id: str, rate_hz: float) -> None:
        super().__init__(f"unit {unit_id!r} sends more than {rate_hz:g} fixes/s", "rate_limited")


# --- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One validated GPS fix."""

    lat: float
    lon: float
    time: datetime  # aware, UTC
    speed: float | None = None
    heading: float | None = None
    accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "lat": self.lat, "lon": self.lon, "speed": self.speed, "heading": self.heading,
            "accuracy": self.accuracy, "time": self.time.isoformat().replace("+00:00", "Z"),
        }


def _number(obj: dict[str, Any], key: str, *, required: bool) -> float | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise TelemetryError(f"{key} is missing", key)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TelemetryError(f"{key} must be a number, not {type(value).__name__}", key)
    try:
        out = float(value)
    except OverflowError as err:
        raise TelemetryError(f"{key} is out of range", key) from err
    if not math.isfinite(out):
        raise TelemetryError(f"{key} must be a finite number", key)
    return out


def _time(value: Any, now: datetime) -> datetime:
    if value is None:
        raise TelemetryError("time is missing", "time")
    if isinstance(value, bool):
        raise TelemetryError("time must be epoch milliseconds or ISO 8601", "time")
    if isinstance(value, int | float):
        try:
            ms = float(value)
        except OverflowError as err:
            raise TelemetryError("time is out of range", "time") from err
        if not math.isfinite(ms):
            raise TelemetryError("time must be a finite number", "time")
        if 0 < ms < 1e11:
            raise TelemetryError(
                "time must be epoch milliseconds (this looks like seconds)", "time"
            )
        try:
            t = datetime.fromtimestamp(ms / 1000.0, UTC)
        except (OverflowError, OSError, ValueError) as err:
            raise TelemetryError("time is out of range", "time") from err
    elif isinstance(value, str):
        if len(value) > 64:
            raise TelemetryError("time is not ISO 8601", "time")
        try:
            t = datetime.fromisoformat(value)
        except ValueError as err:
            raise TelemetryError(f"time {value[:40]!r} is not ISO 8601", "time") from err
        if t.tzinfo is None or t.utcoffset() is None:
            raise TelemetryError("time needs a UTC offset (e.g. ...Z or +08:00)", "time")
        try:
            t = t.astimezone(UTC)
        except (OverflowError, ValueError) as err:
            raise TelemetryError("time is out of range", "time") from err
    else:
        raise TelemetryError("time must be epoch milliseconds or ISO 8601", "time")
    if t < MIN_TIME:
        raise TelemetryError(f"time {t.isoformat()} is before 2000", "time")
    if t > now + timedelta(seconds=MAX_FUTURE_S):
        raise TelemetryError(
            f"time {t.isoformat()} is more than {MAX_FUTURE_S:g} s in the future", "time_future"
        )
    return t


def parse_telemetry(raw: str | bytes | dict[str, Any], *, now: datetime | None = None) -> Telemetry:
    """Validate one telemetry message; raises :class:`TelemetryError` naming the problem.

    ``now`` (aware) bounds how far in the future ``time`` may be; default: the clock.
    """
    now = datetime.now(UTC) if now is None else now
    if isinstance(raw, dict):
        obj: Any = raw
        try:
            size = len(json.dumps(raw, default=str))
        except (TypeError, ValueError, RecursionError) as err:
            raise TelemetryError("not a JSON object", "json") from err
        if size > MAX_BYTES:
            raise TelemetryError(f"message over {MAX_BYTES} bytes", "size")
    elif isinstance(raw, bytes | bytearray | memoryview | str):
        if len(raw) > MAX_BYTES:
            raise TelemetryError(f"message over {MAX_BYTES} bytes", "size")
        if not isinstance(raw, str):
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as err:
                raise TelemetryError("not UTF-8 text", "json") from err
        elif len(raw.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            raise TelemetryError(f"message over {MAX_BYTES} bytes", "size")
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise TelemetryError(f"not JSON: {str(err)[:80]}", "json") from err
    else:
        raise TelemetryError(f"not a message: {type(raw).__name__}", "json")
    if not isinstance(obj, dict):
        raise TelemetryError(f"not a JSON object but {type(obj).__name__}", "json")

    lat = _number(obj, "lat", required=True)
    lon = _number(obj, "lon", required=True)
    assert lat is not None and lon is not None
    if not -90.0 <= lat <= 90.0:
        raise TelemetryError(f"lat {lat:g} is outside -90..90", "lat")
    if not -180.0 <= lon <= 180.0:
        raise TelemetryError(f"lon {lon:g} is outside -180..180", "lon")
    speed = _number(obj, "speed", required=False)
    if speed is not None and speed < 0:
        raise TelemetryError(f"speed {speed:g} is negative", "speed")
    heading = _number(obj, "heading", required=False)
    if heading is not None and not 0.0 <= heading <= 360.0:
        raise TelemetryError(f"heading {heading:g} is outside 0..360", "heading")
    accuracy = _number(obj, "accuracy", required=False)
    if accuracy is not None and accuracy < 0:
        raise TelemetryError(f"accuracy {accuracy:g} is negative", "accuracy")
    return Telemetry(
        lat=lat, lon=lon, time=_time(obj.get("time"), now), speed=speed,
        heading=None if heading is None else heading % 360.0, accuracy=accuracy,
    )


# --- grid lookup -----------------------------------------------------------------------


class GridIndex:
    """Which grid node contains a point: the deepest level wins, then the smallest area."""

    def __init__(self, grids: list[GridNode]) -> None:
        self._grids = list(grids)
        self._geoms = [shape(g.polygon) for g in self._grids]
        self._tree = STRtree(self._geoms)

    def cell_at(self, lon: float, lat: float) -> GridNode | None:
        """The deepest grid node covering (lon, lat) (boundaries count), or None."""
        hits = self._tree.query(Point(lon, lat), predicate="covered_by")
        if len(hits) == 0:
            return None
        best = min(
            (int(i) for i in hits),
            key=lambda i: (
                -GRID_LEVELS.index(self._grids[i].level), self._geoms[i].area, self._grids[i].id
            ),
        )
        return self._grids[best]


# --- tracking --------------------------------------------------------------------------


@dataclass
class UnitTrack:
    """What the hub knows about one unit's position."""

    unit_id: str
    max_points: int
    last: Telemetry | None = None
    received_at: datetime | None = None  # hub clock when the last applied fix arrived
    seen_at: datetime | None = None  # hub clock when any fix (even a repeat) last arrived
    grid: GridNode | None = None
    trail: deque[Telemetry] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.trail = deque(self.trail, maxlen=self.max_points)

    def online(self, now: datetime, stale_s: float) -> bool:
        return self.seen_at is not None and (now - self.seen_at).total_seconds() < stale_s


class Tracker:
    """Last position, bounded trail and grid cell of every configured unit.

    Fixes older than (or as old as) the unit's last one are ignored: duplicates and
    out-of-order delivery never move a unit backwards. They still show the unit is alive
    (a parked car's tablet repeats its last fix), so they keep it online. One exception
    bounds the damage of a device clock set back (or one that ran ahead): once
    ``stale_s`` has passed on the hub since the last applied fix, a strictly older fix is
    taken and starts a new trail.
    """

    def __init__(
        self,
        site: Site,
        *,
        trail_points: int = TRAIL_POINTS,
        trail_seconds: float = TRAIL_SECONDS,
        stale_s: float = STALE_S,
    ) -> None:
        if trail_points < 1 or trail_seconds <= 0 or stale_s <= 0:
            raise ValueError("trail_points, trail_seconds and stale_s must be positive")
        self.index = GridIndex(site.grids)
        self.trail_seconds = trail_seconds
        self.stale_s = stale_s
        self._tracks = {u.id: UnitTrack(u.id, trail_points) for u in site.units}

    def __contains__(self, unit_id: object) -> bool:
        return unit_id in self._tracks

    def __iter__(self) -> Iterator[UnitTrack]:
        return iter(self._tracks.values())

    def get(self, unit_id: str) -> UnitTrack:
        try:
            return self._tracks[unit_id]
        except KeyError as err:
            raise UnknownUnit(unit_id) from err

    def update(self, unit_id: str, fix: Telemetry, received_at: datetime) -> UnitTrack | None:
        """Apply a fix; returns the track, or None when the fix is not newer than the last
        (the unit is still marked as seen)."""
        track = self.get(unit_id)
        if track.seen_at is None or received_at > track.seen_at:
            track.seen_at = received_at
        if track.last is not None and fix.time <= track.last.time:
            clock_went_back = (
                fix.time < track.last.time and track.received_at is not None
                and (received_at - track.received_at).total_seconds() >= self.stale_s
            )
            if not clock_went_back:
                return None
            track.trail.clear()  # its old trail cannot continue
        track.last = fix
        track.received_at = received_at
        track.grid = self.index.cell_at(fix.lon, fix.lat)
        track.trail.append(fix)
        horizon = fix.time - timedelta(seconds=self.trail_seconds)
        while track.trail and track.trail[0].time < horizon:
            track.trail.popleft()
        return track


class RateLimiter:
    """Token bucket per key: ``rate_hz`` on average, bursts of ``burst``."""

    def __init__(self, rate_hz: float = RATE_HZ, burst: int = RATE_BURST) -> None:
        if rate_hz <= 0 or burst < 1:
            raise ValueError("rate_hz and burst must be positive")
        self.rate_hz = rate_hz
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def allow(self, key: str, now: float) -> bool:
        """Take a token for ``key`` at monotonic time ``now``; False when none is left.

        Callers pass only known keys (configured unit ids), so the table stays bounded.
        """
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate_hz)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True
