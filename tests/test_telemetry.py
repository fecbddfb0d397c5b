"""Telemetry, sans I/O: parsing (table and fuzz), trails, grid cells, ordering, rate limits."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub.config import Site, load_config
from hub.telemetry import (
    MAX_BYTES,
    GridIndex,
    RateLimiter,
    Telemetry,
    TelemetryError,
    Tracker,
    UnknownUnit,
    parse_telemetry,
)
from tests.conftest import DEMO

NOW = datetime(2025, 6, 1, 8, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
GOOD: dict[str, Any] = {"lat": 34.767, "lon": 113.667, "speed": 4.5, "heading": 90,
                        "accuracy": 8, "time": NOW_MS}


@pytest.fixture(scope="module")
def site() -> Site:
    """The demo configuration (grids and units), loaded once."""
    return load_config(DEMO)


def msg(**changes: Any) -> dict[str, Any]:
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


DROP = object()


def fix(seconds: float, lon: float = 113.667, lat: float = 34.767) -> Telemetry:
    return Telemetry(lat=lat, lon=lon, time=NOW + timedelta(seconds=seconds))


# --- parsing -----------------------------------------------------------------------------

GOOD_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("full object", GOOD, {"lat": 34.767, "lon": 113.667, "speed": 4.5, "heading": 90.0}),
    ("as JSON text", json.dumps(GOOD), {"lat": 34.767}),
    ("as UTF-8 bytes", json.dumps(GOOD).encode(), {"lon": 113.667}),
    ("optional fields absent", msg(speed=DROP, heading=DROP, accuracy=DROP),
     {"speed": None, "heading": None, "accuracy": None}),
    ("optional fields null", msg(speed=None, heading=None, accuracy=None), {"heading": None}),
    ("ISO time with Z", msg(time="2025-06-01T07:59:30Z"),
     {"time": datetime(2025, 6, 1, 7, 59, 30, tzinfo=UTC)}),
    ("ISO time with +08:00", msg(time="2025-06-01T15:59:30.5+08:00"),
     {"time": datetime(2025, 6, 1, 7, 59, 30, 500000, tzinfo=UTC)}),
    ("float epoch ms", msg(time=NOW_MS + 0.5), {"lat": 34.767}),
    ("a little in the future", msg(time=NOW_MS + 30_000), {"lat": 34.767}),
    ("heading 360 is north", msg(heading=360), {"heading": 0.0}),
    ("edges of the world", msg(lat=-90, lon=180), {"lat": -90.0, "lon": 180.0}),
    ("unknown keys ignored", msg(altitude=120, unit="patrol-01"), {"lat": 34.767}),
]

BAD_CASES: list[tuple[str, Any, str]] = [
    ("not JSON", "{lat: 1", "not JSON"),
    ("not UTF-8", b"\xff\xfe{}", "not UTF-8"),
    ("JSON array", "[34.7, 113.6]", "not a JSON object"),
    ("JSON string", '"hello"', "not a JSON object"),
    ("JSON null", "null", "not a JSON object"),
    ("empty", "", "not JSON"),
    ("deep nesting", "[" * 2000 + "]" * 2000, "not JSON"),
    ("oversized text", json.dumps(msg(pad="x" * MAX_BYTES)), "over 4096 bytes"),
    ("oversized object", msg(pad="x" * MAX_BYTES), "over 4096 bytes"),
    ("lat missing", msg(lat=DROP), "lat is missing"),
    ("lon missing", msg(lon=DROP), "lon is missing"),
    ("lat null", msg(lat=None), "lat is missing"),
    ("lat NaN (JSON extension)", json.dumps(GOOD).replace("34.767", "NaN"), "finite"),
    ("lat NaN (object)", msg(lat=float("nan")), "finite"),
    ("lon Infinity", json.dumps(GOOD).replace("113.667", "Infinity"), "finite"),
    ("lat 1e400", json.dumps(GOOD).replace("34.767", "1e400"), "finite"),
    ("lat huge int", json.dumps(GOOD).replace("34.767", "9" * 400), "out of range"),
    ("lat too big", msg(lat=90.5), "lat 90.5 is outside -90..90"),
    ("lon too small", msg(lon=-180.1), "lon -180.1 is outside -180..180"),
    ("lat as string", msg(lat="34.7"), "lat must be a number"),
    ("lat as bool", msg(lat=True), "lat must be a number"),
    ("negative speed", msg(speed=-1), "speed -1 is negative"),
    ("negative accuracy", msg(accuracy=-0.5), "accuracy -0.5 is negative"),
    ("heading over 360", msg(heading=361), "heading 361 is outside 0..360"),
    ("negative heading", msg(heading=-1), "heading -1 is outside 0..360"),
    ("time missing", msg(time=DROP), "time is missing"),
    ("time in seconds", msg(time=NOW_MS // 1000), "looks like seconds"),
    ("time far in the future", msg(time=NOW_MS + 3_600_000), "in the future"),
    ("time ISO far in the future", msg(time="2030-01-01T00:00:00Z"), "in the future"),
    ("time before 2000", msg(time="1999-12-31T23:59:59Z"), "before 2000"),
    ("time negative", msg(time=-1), "before 2000"),
    ("time unparseable", msg(time="yesterday"), "not ISO 8601"),
    ("time without offset", msg(time="2025-06-01T07:59:30"), "UTC offset"),
    ("time as object", msg(time={"s": 1}), "epoch milliseconds or ISO 8601"),
    ("time huge", msg(time=1e300), "out of range"),
    ("time infinite", json.dumps(GOOD).replace(str(NOW_MS), "-Infinity"), "finite"),
    ("not a message type", 12345, "not a message"),
]


@pytest.mark.parametrize(("raw", "expect"), [c[1:] for c in GOOD_CASES],
                         ids=[c[0] for c in GOOD_CASES])
def test_parse_accepts(raw: Any, expect: dict[str, Any]) -> None:
    """Well-formed telemetry in each accepted form parses to the expected values."""
    t = parse_telemetry(raw, now=NOW)
    for key, value in expect.items():
        assert getattr(t, key) == value, key
    assert t.time.tzinfo is not None


@pytest.mark.parametrize(("raw", "reason"), [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_parse_rejects_with_a_clear_reason(raw: Any, reason: str) -> None:
    """Each kind of bad telemetry raises TelemetryError whose message names the problem."""
    with pytest.raises(TelemetryError) as info:
        parse_telemetry(raw, now=NOW)
    assert reason in str(info.value)
    assert info.value.reason


def test_to_json_round_trips() -> None:
    """A parsed fix serialised with to_json parses back to the same fix."""
    t = parse_telemetry(GOOD, now=NOW)
    assert parse_telemetry(json.dumps(t.to_json()), now=NOW) == t


def _mutations(rng: random.Random) -> Any:
    base = json.dumps(GOOD)
    kind = rng.randrange(5)
    if kind == 0:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    if kind == 1:  # flip, drop or insert characters of a valid message
        chars = list(base)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                chars[i] = chr(rng.randrange(0x20, 0x7F))
            elif op == 1:
                del chars[i]
            else:
                chars.insert(i, rng.choice('{}[]",:0123456789.eE-+ntfaluNI\\'))
        return "".join(chars)
    values: list[Any] = [None, True, False, 0, -1, 1e308, -1e308, float("nan"), float("inf"),
                         "", "x", "2025-06-01T07:59:30Z", [], {}, [1, 2], {"a": 1},
                         2**70, -(2**70), 0.5, 400, NOW_MS, "\ud800", "9" * 40]
    if kind == 2:  # each field replaced by a value of a random type
        obj = {k: rng.choice(values) if rng.random() < 0.4 else v for k, v in GOOD.items()}
        return obj if rng.random() < 0.5 else json.dumps(obj)
    if kind == 3:  # random keys, random values
        return {rng.choice(["lat", "lon", "time", "speed", "x"]): rng.choice(values)
                for _ in range(rng.randrange(6))}
    return rng.choice(values)  # not an object at all


def test_fuzz_never_raises_anything_else() -> None:
    """Random bytes and mutated messages either parse or raise TelemetryError, never else."""
    rng = random.Random(20250601)
    parsed = 0
    for _ in range(20_000):
        raw = _mutations(rng)
        try:
            t = parse_telemetry(raw, now=NOW)
        except TelemetryError as err:
            assert str(err) and err.reason
            continue
        parsed += 1
        assert -90 <= t.lat <= 90 and -180 <= t.lon <= 180
        assert t.heading is None or 0 <= t.heading < 360
    assert parsed > 0  # the mutations are not all hopeless


# --- grid cells --------------------------------------------------------------------------


@pytest.mark.parametrize(("lon", "lat", "grid"), [
    (113.667, 34.767, "zz-jinshui-jingba-c1-g01"),  # inside the first demo cell
    (113.672, 34.768, "zz-jinshui-jingba-c1-g02"),  # inside the second
    (113.670, 34.767, "zz-jinshui-jingba-c1-g01"),  # on the shared edge: deterministic
    (113.665, 34.765, "zz-jinshui-jingba-c1-g01"),  # on the corner shared with the parents
    (113.672, 34.773, "zz-jinshui-jingba-c1"),  # community, outside both cells
    (113.680, 34.780, "zz-jinshui-jingba"),  # street only
    (113.700, 34.800, "zz-jinshui"),  # district only
    (113.550, 34.650, "zz"),  # city only
    (120.000, 30.000, None),  # outside every grid
    (113.667, -34.767, None),  # wrong hemisphere
])
def test_grid_cell_is_the_deepest_grid_containing_the_point(
    site: Site, lon: float, lat: float, grid: str | None
) -> None:
    """A point gets the deepest demo grid that contains it, or None outside all grids."""
    cell = GridIndex(site.grids).cell_at(lon, lat)
    assert (cell.id if cell else None) == grid


# --- tracking ----------------------------------------------------------------------------


def test_tracker_sets_last_position_and_grid(site: Site) -> None:
    """Applying a fix records it as the unit's last position, with its grid cell."""
    tr = Tracker(site)
    track = tr.update("patrol-01", fix(0), NOW)
    assert track is not None and track.last == fix(0)
    assert track.grid is not None and track.grid.id == "zz-jinshui-jingba-c1-g01"
    moved = tr.update("patrol-01", fix(1, lon=120.0, lat=30.0), NOW)
    assert moved is not None and moved.grid is None
    assert tr.get("patrol-02").last is None


def test_out_of_order_and_duplicates_are_ignored(site: Site) -> None:
    """A fix with the same or an older time than the last one changes nothing."""
    tr = Tracker(site)
    assert tr.update("patrol-01", fix(10, lon=113.672), NOW) is not None
    assert tr.update("patrol-01", fix(10, lon=113.667), NOW) is None  # duplicate time
    assert tr.update("patrol-01", fix(5, lon=113.667), NOW) is None  # older
    track = tr.get("patrol-01")
    assert track.last is not None and track.last.lon == 113.672
    assert len(track.trail) == 1


def test_clock_set_back_is_accepted_once_the_unit_is_stale(site: Site) -> None:
    """An older fix is ignored while the unit is fresh, but taken (with a new trail) once
    stale_s has passed on the hub since the last accepted fix: a device whose clock was
    set back is not frozen for ever."""
    tr = Tracker(site, stale_s=30)
    tr.update("patrol-01", fix(3600), NOW)
    tr.update("patrol-01", fix(3601), NOW + timedelta(seconds=1))
    assert tr.update("patrol-01", fix(0), NOW + timedelta(seconds=29)) is None
    track = tr.update("patrol-01", fix(1, lon=113.672), NOW + timedelta(seconds=31))
    assert track is not None and track.last == fix(1, lon=113.672)
    assert list(track.trail) == [fix(1, lon=113.672)]


def test_unknown_unit_is_rejected(site: Site) -> None:
    """Telemetry for a unit not in units.yaml raises UnknownUnit (a TelemetryError)."""
    tr = Tracker(site)
    with pytest.raises(UnknownUnit, match="patrol-99"):
        tr.update("patrol-99", fix(0), NOW)
    assert "patrol-99" not in tr


def test_trail_is_bounded_by_points(site: Site) -> None:
    """The trail keeps only the newest trail_points fixes."""
    tr = Tracker(site, trail_points=50)
    for i in range(500):
        tr.update("patrol-01", fix(i * 0.1), NOW)
    trail = tr.get("patrol-01").trail
    assert len(trail) == 50
    assert trail[-1] == fix(499 * 0.1) and trail[0] == fix(450 * 0.1)


def test_trail_is_bounded_by_age(site: Site) -> None:
    """Fixes older than trail_seconds before the newest one leave the trail."""
    tr = Tracker(site, trail_seconds=60)
    for i in range(0, 600, 5):
        tr.update("patrol-01", fix(i), NOW)
    trail = tr.get("patrol-01").trail
    assert trail[-1].time - trail[0].time <= timedelta(seconds=60)
    assert len(trail) == 13  # 535, 540, ..., 595


def test_online_turns_stale_without_fixes(site: Site) -> None:
    """A unit is online until stale_s seconds pass without a message from it; a repeat of
    its last fix (a parked car) keeps it online without moving it or growing its trail."""
    tr = Tracker(site, stale_s=30)
    track = tr.get("patrol-01")
    assert not track.online(NOW, tr.stale_s)
    tr.update("patrol-01", fix(0), NOW)
    assert track.online(NOW + timedelta(seconds=29), tr.stale_s)
    assert not track.online(NOW + timedelta(seconds=30), tr.stale_s)
    assert tr.update("patrol-01", fix(0), NOW + timedelta(seconds=25)) is None
    assert track.online(NOW + timedelta(seconds=54), tr.stale_s)
    assert track.received_at == NOW and len(track.trail) == 1


def test_rate_limiter_allows_the_rate_and_refuses_floods() -> None:
    """The token bucket lets a burst through, then only rate_hz per second, per unit."""
    rl = RateLimiter(rate_hz=5, burst=5)
    assert [rl.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.allow("b", 0.0)  # other units have their own bucket
    assert rl.allow("a", 0.2) and not rl.allow("a", 0.2)  # one token per 1/5 s
    assert sum(rl.allow("a", 10 + i * 0.2) for i in range(50)) == 50  # 5 Hz passes
