"""Units and grids on a real uvicorn: the API, the WebSocket telemetry fallback, live
unit events per role, the WHIP hook, and two hub replicas sharing the real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI

from hub.api_units import mount_units
from hub.app import HubState, create_app
from hub.bus import make_bus
from hub.config import Site, load_config
from hub.settings import Settings
from hub.units import UnitService, find_unit_service, telemetry_sink
from hub.ws import Clients
from tests.conftest import DEMO, REDIS_URL, RunningHub, serve_app

G01 = "zz-jinshui-jingba-c1-g01"
G02 = "zz-jinshui-jingba-c1-g02"


# --- the app under test ----------------------------------------------------------------


def build_units_app(
    settings: Settings, site: Site, unit_kwargs: dict[str, Any] | None = None
) -> FastAPI:
    """The process as hub.cli.build_app composes it; with custom UnitService settings, the
    hub with the units parts only."""
    from console.server import mount_console
    from hub.cli import build_app

    if unit_kwargs is None:
        return build_app(settings, site)

    def units(state: HubState) -> UnitService:
        svc = UnitService(state.site, state.bus, state.clients, **unit_kwargs)
        state.incidents.unit_grid = svc.grid_of
        return svc

    return create_app(settings, site, services=[units], routers=[mount_console, mount_units])


@asynccontextmanager
async def units_hub(
    config: Path, data: Path, *, redis_url: str | None = None, prefix: str = "gridhub",
    unit_kwargs: dict[str, Any] | None = None,
) -> AsyncIterator[RunningHub]:
    """Like conftest.running_hub (real uvicorn on port 0), with unit tracking mounted."""
    site = load_config(config)
    settings = Settings(
        config_dir=config, data_dir=data, port=0, with_worker=False,
        max_body_bytes=64 * 1024, redis_url=redis_url, redis_prefix=prefix,
    )
    async with serve_app(build_units_app(settings, site, unit_kwargs)) as hub:
        yield hub


@pytest.fixture
async def hub(demo_config: Path, tmp_path: Path) -> AsyncIterator[RunningHub]:
    """The hub with unit tracking, on the in-memory bus."""
    async with units_hub(demo_config, tmp_path / "data") as h:
        yield h


# --- helpers ---------------------------------------------------------------------------


_last_ms = 0


def now_ms() -> int:
    """Epoch ms, strictly increasing: two fixes in one millisecond would be duplicates."""
    global _last_ms
    _last_ms = max(int(time.time() * 1000), _last_ms + 1)
    return _last_ms


def fix(lon: float, lat: float, **extra: Any) -> dict[str, Any]:
    return {"lat": lat, "lon": lon, "time": now_ms(), **extra}


async def token(hub: RunningHub, user: str) -> str:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        r = await c.post("/api/auth/token", data={"username": user, "password": "demo"})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def get(hub: RunningHub, path: str, user: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {await token(hub, user)}"} if user else {}
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        return await c.get(path, headers=headers)


class Socket:
    """A console WebSocket of one user: send messages, wait for matching events."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, msg: Any) -> None:
        await self.ws.send(msg if isinstance(msg, str | bytes) else json.dumps(msg))

    async def wait(self, type_: str, pred: Callable[[Any], bool] = lambda d: True
                   ) -> dict[str, Any]:
        async with asyncio.timeout(15):
            while True:
                ev = json.loads(await self.ws.recv())
                self.seen.append(ev)
                if ev["type"] == type_ and pred(ev["data"]):
                    return ev["data"]  # type: ignore[no-any-return]


@asynccontextmanager
async def socket_of(hub: RunningHub, user: str) -> AsyncIterator[Socket]:
    async with websockets.connect(f"{hub.ws_url}?token={await token(hub, user)}") as ws:
        s = Socket(ws)
        await s.wait("hello")
        yield s


def of(unit: str) -> Callable[[Any], bool]:
    return lambda d: d["id"] == unit


# --- grids -----------------------------------------------------------------------------


async def test_grids_are_a_geojson_feature_collection(hub: RunningHub) -> None:
    """/api/grids returns every demo grid node as a Feature with id, name, level, parent."""
    r = await get(hub, "/api/grids", "operator")
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "FeatureCollection"
    site = load_config(DEMO)
    assert [f["id"] for f in body["features"]] == [g.id for g in site.grids]
    for f, g in zip(body["features"], site.grids, strict=True):
        assert f["type"] == "Feature"
        assert f["geometry"] == g.polygon and f["geometry"]["type"] == "Polygon"
        assert f["properties"] == {"id": g.id, "name": g.name, "level": g.level,
                                   "parent": g.parent, "contact": g.contact}
    street = next(f for f in body["features"] if f["id"] == "zz-jinshui-jingba")
    assert street["properties"]["contact"].startswith("街道值班室")


@pytest.mark.parametrize("path", ["/api/grids", "/api/units", "/api/units/patrol-01",
                                  "/api/units/names"])
async def test_units_and_grids_need_a_token(hub: RunningHub, path: str) -> None:
    """Without a token, or with a forged one, the units and grids endpoints are 401."""
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        assert (await c.get(path)).status_code == 401
        r = await c.get(path, headers={"Authorization": "Bearer forged"})
        assert r.status_code == 401


# --- units -----------------------------------------------------------------------------


async def test_units_before_any_telemetry(hub: RunningHub) -> None:
    """Every configured unit is listed with name and crew, no fix, offline, empty trail."""
    r = await get(hub, "/api/units", "dispatcher")
    assert r.status_code == 200
    units = {u["id"]: u for u in r.json()}
    assert set(units) == {"patrol-01", "patrol-02"}
    assert units["patrol-01"]["name"] == "巡逻一号车"
    assert units["patrol-01"]["crew"] == "张伟 / 李娜"
    assert units["patrol-01"]["telemetry"] is None and units["patrol-01"]["grid"] is None
    assert units["patrol-01"]["online"] is False and units["patrol-01"]["trail_length"] == 0
    assert (await get(hub, "/api/units/patrol-99", "operator")).status_code == 404


async def test_units_list_their_open_cases(hub: RunningHub) -> None:
    """A unit dispatched to a case lists it in ``cases`` (the console warns before sending
    it to another) until the case is resolved; another dispatch to it is still allowed."""
    headers = {"Authorization": f"Bearer {await token(hub, 'dispatcher')}"}
    patrol = {"Authorization": f"Bearer {await token(hub, 'patrol-01')}"}
    async with httpx.AsyncClient(base_url=hub.url, timeout=30, headers=headers) as c:
        ids = []
        for lon in (113.6671, 113.6691):
            r = await c.post("/api/reports", json={
                "type": "road_damage", "description": "坑", "position": {
                    "lat": 34.7675, "lon": lon}})
            assert r.status_code in (200, 201), r.text
            ids.append(r.json()["incident"]["id"])
        for iid in ids:
            r = await c.post(f"/api/incidents/{iid}/dispatch", json={"units": ["patrol-01"]})
            assert r.status_code == 200, r.text
        units = {u["id"]: u for u in (await c.get("/api/units")).json()}
        assert units["patrol-01"]["cases"] == ids and units["patrol-02"]["cases"] == []
        for step, body in (("accept", {}), ("resolve", {"result": "填平"})):
            r = await c.post(f"/api/incidents/{ids[0]}/{step}", json=body, headers=patrol)
            assert r.status_code == 200, r.text
        units = {u["id"]: u for u in (await c.get("/api/units")).json()}
        assert units["patrol-01"]["cases"] == ids[1:]


async def test_ws_telemetry_reaches_the_api_and_operators(hub: RunningHub) -> None:
    """A patrol account's fix over /ws shows up in GET /api/units with its grid cell and
    reaches an operator's /ws as unit.telemetry; a second fix moves it to the next cell."""
    async with socket_of(hub, "operator") as op, socket_of(hub, "patrol-01") as patrol:
        await patrol.send({"type": "telemetry",
                           "data": fix(113.667, 34.767, speed=3.5, heading=90, accuracy=5)})
        ev = await op.wait("unit.telemetry", of("patrol-01"))
        assert ev["grid"]["id"] == G01 and ev["online"] is True
        assert ev["telemetry"]["lon"] == 113.667 and ev["telemetry"]["heading"] == 90

        units = {u["id"]: u for u in (await get(hub, "/api/units", "operator")).json()}
        p1 = units["patrol-01"]
        assert p1["telemetry"]["lat"] == 34.767 and p1["telemetry"]["speed"] == 3.5
        assert p1["grid"] == {"id": G01, "name": "黄河路社区 第一网格", "level": "cell"}
        assert p1["online"] is True and p1["trail_length"] == 1
        assert units["patrol-02"]["telemetry"] is None

        await patrol.send({"type": "telemetry", "data": fix(113.672, 34.768)})
        ev = await op.wait("unit.telemetry", lambda d: d["grid"]["id"] == G02)
        assert ev["trail_length"] == 2
        r = await get(hub, "/api/units/patrol-01", "operator")
        assert r.status_code == 200
        assert [(p["lon"], p["lat"]) for p in r.json()["trail"]] == [
            (113.667, 34.767), (113.672, 34.768)]


async def test_patrol_cannot_report_for_another_unit(hub: RunningHub) -> None:
    """patrol-01 claiming patrol-02's id is refused with an error; patrol-02 does not move,
    and patrol-01 only sees its own unit."""
    async with socket_of(hub, "patrol-01") as patrol:
        await patrol.send({"type": "telemetry", "data": fix(113.667, 34.767, unit="patrol-02")})
        err = await patrol.wait("error")
        assert err["for"] == "telemetry" and err["code"] == "forbidden"
        assert "patrol-02" in err["message"]
        await patrol.send({"type": "telemetry", "data": fix(113.667, 34.767)})
        mine = await patrol.wait("unit.telemetry")  # still connected; its own unit works
        assert mine["id"] == "patrol-01"
    r = await get(hub, "/api/units/patrol-02", "operator")
    assert r.json()["telemetry"] is None
    own = await get(hub, "/api/units", "patrol-01")
    assert [u["id"] for u in own.json()] == ["patrol-01"]
    assert (await get(hub, "/api/units/patrol-02", "patrol-01")).status_code == 404


async def test_only_patrol_accounts_may_send_telemetry(hub: RunningHub) -> None:
    """An operator sending telemetry gets an error back and stays connected."""
    async with socket_of(hub, "operator") as op, socket_of(hub, "patrol-02") as patrol:
        await op.send({"type": "telemetry", "data": fix(113.667, 34.767)})
        err = await op.wait("error")
        assert err["code"] == "forbidden" and "patrol" in err["message"]
        await patrol.send({"type": "telemetry", "data": fix(113.668, 34.768)})
        ev = await op.wait("unit.telemetry")  # the operator's socket still works
        assert ev["id"] == "patrol-02"
    r = await get(hub, "/api/units", "operator")
    assert {u["id"]: u["telemetry"] is not None for u in r.json()} == {
        "patrol-01": False, "patrol-02": True}


async def test_department_users_get_no_unit_events(hub: RunningHub) -> None:
    """A department user's /ws never carries unit events, and /api/units is 403 for them."""
    async with socket_of(hub, "civil-affairs") as dep, socket_of(hub, "operator") as op, \
            socket_of(hub, "patrol-01") as patrol:
        await patrol.send({"type": "telemetry", "data": fix(113.667, 34.767)})
        await op.wait("unit.telemetry")
        # The event was queued for every client before the operator got it; the department's
        # reply to this message is queued after it, so it is a barrier, not a guess.
        await dep.send("barrier")
        await dep.wait("error")
        assert not [e for e in dep.seen if e["type"].startswith("unit.")]
    assert (await get(hub, "/api/units", "civil-affairs")).status_code == 403
    assert (await get(hub, "/api/units/patrol-01", "civil-affairs")).status_code == 403
    assert (await get(hub, "/api/grids", "civil-affairs")).status_code == 200
    # The names (not the positions) are for everyone: a department's console names the
    # units working its cases.
    r = await get(hub, "/api/units/names", "civil-affairs")
    assert r.status_code == 200
    assert r.json() == [{"id": "patrol-01", "name": "巡逻一号车"},
                        {"id": "patrol-02", "name": "巡逻二号车"}]


BAD_FRAMES: list[tuple[str, Any, str]] = [
    ("not JSON", "{nope", "bad_json"),
    ("binary garbage", b"\x00\xff\xfe", "bad_json"),
    ("not an object", "[1, 2]", "bad_message"),
    ("no type", json.dumps({"data": {}}), "bad_message"),
    ("unknown type", json.dumps({"type": "launch", "data": {}}), "unknown_type"),
    ("too large", json.dumps({"type": "telemetry", "data": {"x": "y" * 20_000}}), "too_large"),
    ("data not an object", json.dumps({"type": "telemetry", "data": [1]}), "bad_telemetry"),
    ("data missing", json.dumps({"type": "telemetry"}), "bad_telemetry"),
    ("lat out of range", json.dumps({"type": "telemetry", "data": fix(113.6, 95.0)}), "lat"),
    ("time in the future", json.dumps({"type": "telemetry", "data": {
        "lat": 34.7, "lon": 113.6, "time": int(time.time() * 1000) + 3_600_000}}),
     "time_future"),
    ("lone surrogate type", '{"type": "\\ud800"}', "unknown_type"),
]


async def test_garbage_on_the_socket_gets_errors_and_the_socket_lives(hub: RunningHub) -> None:
    """Every kind of bad frame gets an error event naming the problem; then a good fix
    still goes through on the same socket and the hub is healthy."""
    async with socket_of(hub, "patrol-01") as patrol:
        for _name, frame, code in BAD_FRAMES:
            await patrol.send(frame)
            err = await patrol.wait("error")
            assert err["code"] == code, (_name, err)
            assert err["message"]
        await patrol.send({"type": "telemetry", "data": fix(113.667, 34.767)})
        assert (await patrol.wait("unit.telemetry"))["grid"]["id"] == G01
    health = (await get(hub, "/api/health", None)).json()
    assert health["components"]["units"]["rejected"]["lat"] == 1
    assert health["components"]["websocket"]["status"] == "ok"


async def test_whip_hook_submit_reaches_operators(hub: RunningHub) -> None:
    """The WHIP data channel's sync on_telemetry (telemetry_sink -> UnitService.submit)
    ingests a fix: operators see it live; bad text and unknown units are counted, not
    raised."""
    svc = find_unit_service(hub.state)  # type: ignore[arg-type]
    assert svc is not None
    on_telemetry = telemetry_sink(hub.app)  # type: ignore[arg-type]
    async with socket_of(hub, "operator") as op:
        on_telemetry("patrol-02", "not json")
        on_telemetry("patrol-99", json.dumps(fix(113.667, 34.767)))
        on_telemetry("patrol-02", json.dumps(fix(113.672, 34.768, heading=180)))
        ev = await op.wait("unit.telemetry", of("patrol-02"))
    assert ev["grid"]["id"] == G02 and ev["telemetry"]["heading"] == 180
    assert svc.rejected["json"] == 1 and svc.rejected["unknown_unit"] == 1


async def test_unit_goes_offline_after_stale_s(demo_config: Path, tmp_path: Path) -> None:
    """A unit that stops sending is reported offline with a unit.status event; repeating
    its last fix (a parked car) brings it back online without a new unit.telemetry."""
    async with units_hub(demo_config, tmp_path / "data",
                         unit_kwargs={"stale_s": 0.5, "sweep_s": 0.1}) as h:
        async with socket_of(h, "operator") as op, socket_of(h, "patrol-01") as patrol:
            parked = fix(113.667, 34.767)
            await patrol.send({"type": "telemetry", "data": parked})
            assert (await op.wait("unit.telemetry"))["online"] is True
            ev = await op.wait("unit.status", of("patrol-01"))
            assert ev["online"] is False and ev["telemetry"]["lon"] == 113.667
            await patrol.send({"type": "telemetry", "data": parked})
            back = await op.wait("unit.status", of("patrol-01"))
        assert back["online"] is True and back["trail_length"] == 1
        assert datetime.fromisoformat(back["seen_at"]) > datetime.fromisoformat(back["received_at"])
        assert not [e for e in op.seen if e["type"] == "unit.telemetry"][1:]


async def test_rate_limit_per_unit() -> None:
    """Within one instant a unit gets `burst` fixes through; the rest are refused and
    counted, and another unit is not affected."""
    site = load_config(DEMO)
    bus = make_bus(None)
    await bus.start()
    svc = UnitService(site, bus, Clients(), burst=3, clock=lambda: 100.0)
    await svc.start()
    try:
        from hub.telemetry import RateLimited

        base = now_ms()
        results = []
        for i in range(5):
            try:
                await svc.ingest("patrol-01", {"lat": 34.767, "lon": 113.667, "time": base + i})
                results.append(True)
            except RateLimited:
                results.append(False)
        assert results == [True, True, True, False, False]
        assert svc.rejected["rate_limited"] == 2
        assert await svc.ingest("patrol-02", fix(113.667, 34.767)) is not None
    finally:
        await svc.stop()
        await bus.close()


async def test_out_of_order_fix_is_ignored_end_to_end(hub: RunningHub) -> None:
    """A fix older than the unit's last one is ignored: the position stays, no event."""
    now = now_ms()
    async with socket_of(hub, "operator") as op, socket_of(hub, "patrol-01") as patrol:
        await patrol.send({"type": "telemetry", "data": {"lat": 34.768, "lon": 113.672,
                                                          "time": now}})
        await op.wait("unit.telemetry")
        await patrol.send({"type": "telemetry", "data": {"lat": 34.767, "lon": 113.667,
                                                          "time": now - 5000}})
        await patrol.send({"type": "telemetry", "data": {"lat": 34.769, "lon": 113.673,
                                                          "time": now + 1000}})
        ev = await op.wait("unit.telemetry")  # the next event is the newer fix, not the old
        assert ev["telemetry"]["lon"] == 113.673 and ev["trail_length"] == 2
    svc = find_unit_service(hub.state)  # type: ignore[arg-type]
    assert svc is not None and svc.ignored == 1


# --- two replicas on Redis ---------------------------------------------------------------


@pytest.mark.redis
async def test_two_hubs_on_one_redis_both_track_the_unit(
    demo_config: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """Two hub apps sharing one Redis prefix: a fix sent to hub A reaches hub B's
    operators live, and both hubs' /api/units show the unit at that position."""
    async with units_hub(demo_config, tmp_path / "a", redis_url=REDIS_URL,
                         prefix=redis_prefix) as a, \
            units_hub(demo_config, tmp_path / "b", redis_url=REDIS_URL,
                      prefix=redis_prefix) as b:
        assert (await get(b, "/api/health", None)).json()["components"]["bus"]["kind"] == "redis"
        async with socket_of(b, "operator") as op_b, socket_of(a, "patrol-01") as patrol:
            await patrol.send({"type": "telemetry", "data": fix(113.672, 34.768, speed=2)})
            ev = await op_b.wait("unit.telemetry", of("patrol-01"))
            assert ev["grid"]["id"] == G02
        for h in (a, b):
            units = {u["id"]: u for u in (await get(h, "/api/units", "operator")).json()}
            p1 = units["patrol-01"]
            assert (p1["telemetry"]["lon"], p1["telemetry"]["lat"]) == (113.672, 34.768)
            assert p1["grid"]["id"] == G02 and p1["online"] is True
            assert p1["received_at"] is not None
            assert datetime.fromisoformat(p1["received_at"]) <= datetime.now(UTC)


async def test_incident_on_a_patrol_stream_is_placed_where_the_unit_is(hub: RunningHub) -> None:
    """A detector incident raised on a patrol unit's stream gets the grid cell of the unit's
    last fix and the unit's name (home grid before any fix)."""
    from hub.bus import IncidentCandidate

    def cand(event_id: str) -> IncidentCandidate:
        now = datetime.now(UTC)
        return IncidentCandidate(
            event_id=event_id, phase="start", type="person_down", camera_id="patrol-01",
            at=now, started_at=now, confidence=0.7, boxes=[(1, 2, 3, 4)], frame_size=(64, 36),
        )

    async with socket_of(hub, "operator") as op, socket_of(hub, "patrol-01") as patrol:
        await hub.state.bus.publish(cand("before-fix"))  # type: ignore[attr-defined]
        first = await op.wait("incident.created", lambda d: d.get("camera_id") == "patrol-01")
        assert first["grid_id"] == "zz-jinshui-jingba"  # units.yaml: its home grid
        await patrol.send({"type": "telemetry", "data": fix(113.667, 34.767)})
        await op.wait("unit.telemetry", of("patrol-01"))
        await hub.state.bus.publish(cand("after-fix"))  # type: ignore[attr-defined]
        inc = await op.wait("incident.created",
                            lambda d: d.get("camera_id") == "patrol-01" and d["id"] != first["id"])
        assert inc["grid_id"] == G01
        assert inc["camera_name"] == "巡逻一号车"
