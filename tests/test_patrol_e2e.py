"""Patrol ingest end to end in the composed application: ``hub.cli.build_app`` (API,
console, WHIP, live wall, units and the embedded detection worker with the real ONNX
model) on a real uvicorn on 127.0.0.1, one Debian chromium driven by Playwright.

Context A is a patrol tablet on /patrol publishing its camera over WebRTC; context B is
an operator on the console, /map and /wall. The only stand-ins are chromium's fake camera
(a .y4m test pattern made here by ffmpeg) and Playwright's emulated GPS: a headless test
machine has no camera and no GPS receiver."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import RunningHub, running_hub

pytestmark = [pytest.mark.browser, pytest.mark.slow]

T = TypeVar("T")

UNIT = "patrol-01"
G01 = "zz-jinshui-jingba-c1-g01"
G02 = "zz-jinshui-jingba-c1-g02"
P1 = {"latitude": 34.7675, "longitude": 113.6675, "accuracy": 8}  # inside cell g01
P2 = {"latitude": 34.7675, "longitude": 113.6725, "accuracy": 5}  # inside cell g02
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def y4m_720p(tmp_path: Path) -> Path:
    """A 3 s 1280x720 15 fps test pattern for chromium's fake camera (it loops it)."""
    out = tmp_path / "patrol_720p.y4m"
    subprocess.run(
        ["/usr/bin/ffmpeg", "-v", "error", "-f", "lavfi", "-i",
         "testsrc2=size=1280x720:rate=15", "-frames:v", "45", "-pix_fmt", "yuv420p",
         str(out)], check=True, timeout=120,
    )
    return out


@pytest.fixture
def patrol_site(demo_config: Path) -> Path:
    """The demo configuration without its demo camera: the patrol unit is the only source."""
    (demo_config / "cameras.yaml").write_text("cameras: []\n", encoding="utf-8")
    return demo_config


@asynccontextmanager
async def composed_hub(config: Path, data: Path) -> AsyncIterator[RunningHub]:
    """``build_app`` with the worker, ICE on 127.0.0.1 only, on a real uvicorn on port 0."""
    async with running_hub(config, data, with_worker=True, ice_hosts=("127.0.0.1",)) as hub:
        yield hub


@pytest.fixture
async def hub(patrol_site: Path, tmp_path: Path) -> AsyncIterator[RunningHub]:
    """The whole composed hub, stopped afterwards."""
    async with composed_hub(patrol_site, tmp_path / "data") as h:
        yield h


@pytest.fixture
async def browser(hub: RunningHub, y4m_720p: Path) -> AsyncIterator[Any]:
    """Debian's chromium (never a downloaded browser) with the fake camera; Playwright
    gives it a fresh temporary profile. Closed before the hub stops."""
    from playwright.async_api import async_playwright

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is not installed")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=exe,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={y4m_720p}"],
        )
        try:
            yield b
        finally:
            await b.close()


# --- helpers ------------------------------------------------------------------------------


async def poll(fetch: Callable[[], Awaitable[T]], pred: Callable[[T], bool], within: float,
               what: str) -> T:
    """Fetch until ``pred`` holds; fail naming ``what`` and the last value seen."""
    last: T | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await fetch()
                if pred(last):
                    return last
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}; "
                             f"last seen: {last!r}") from None


def near(a: float, b: float) -> bool:
    return abs(a - b) < 1e-6


def service(h: RunningHub, kind: type[T]) -> T:
    """The running hub service of a type (the worker, the WHIP sessions, the live hub)."""
    found = [s for s in h.app.state.hub.services if isinstance(s, kind)]  # type: ignore[attr-defined]
    assert len(found) == 1, f"expected one {kind.__name__} among the hub's services, got {found}"
    return found[0]


# --- the test -----------------------------------------------------------------------------


async def test_patrol_unit_reaches_worker_units_map_and_wall(
    hub: RunningHub, browser: Any
) -> None:
    """Chromium on /patrol publishes patrol-01 into build_app: a live 1280x720 source the
    worker detects on, a unit position in the right cell that moves on /map without reload,
    a /wall tile playing it, and a clean end on Stop with the hub healthy."""
    from detectors.worker import Worker
    from ingest.live import LiveHub
    from ingest.webrtc import WhipSessions

    worker, sessions, live = service(hub, Worker), service(hub, WhipSessions), service(
        hub, LiveHub)
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as c:
        r = await c.post("/api/auth/token", data={"username": "operator", "password": "demo"})
        r.raise_for_status()
        op = {"Authorization": f"Bearer {r.json()['access_token']}"}

        async def live_sources() -> dict[str, dict[str, Any]]:
            resp = await c.get("/api/live/sources", headers=op)
            assert resp.status_code == 200, resp.text
            return {s["id"]: s for s in resp.json()}

        async def unit() -> dict[str, Any]:
            resp = await c.get("/api/units", headers=op)
            assert resp.status_code == 200, resp.text
            return next(u for u in resp.json() if u["id"] == UNIT)

        def at(pos: dict[str, float], cell: str) -> Callable[[dict[str, Any]], bool]:
            def check(u: dict[str, Any]) -> bool:
                tm, grid = u["telemetry"], u["grid"]
                return bool(tm and near(tm["lat"], pos["latitude"])
                            and near(tm["lon"], pos["longitude"])
                            and grid and grid["id"] == cell and u["online"])
            return check

        assert UNIT not in await live_sources(), "no patrol source before anyone publishes"

        # 1. Context A, the tablet: sign in on /patrol as patrol-01 and start publishing.
        ctx_a = await browser.new_context(
            locale="zh-CN", permissions=["camera", "geolocation"], geolocation=P1)
        tablet = await ctx_a.new_page()
        tablet.on("pageerror", lambda exc: errors.append(f"/patrol: {exc}"))
        await tablet.goto(f"{hub.url}/patrol")
        await tablet.fill("input[name=username]", UNIT)
        await tablet.fill("input[name=password]", "demo")
        await tablet.click("#login-submit")
        await tablet.wait_for_selector("#start-btn:visible", timeout=20_000)
        await tablet.click("#start-btn")
        await tablet.wait_for_selector("#state[data-state=live]", timeout=30_000)

        src_info = (await poll(
            live_sources,
            lambda s: UNIT in s and s[UNIT]["status"] == "online"
            and (s[UNIT]["width"], s[UNIT]["height"]) == (1280, 720),
            60, "patrol-01 listed live at 1280x720 in /api/live/sources"))[UNIT]
        assert src_info["kind"] == "whip" and src_info["codec"] == "h264", src_info
        session = sessions.live(UNIT)
        assert session is not None, "the WHIP session of patrol-01"
        source = session.source
        assert worker.source(UNIT) is source, "patrol_started attached the WHIP source"
        pipe = next(p for p in worker.pipelines if p.source_id == UNIT)
        assert pipe.camera is None and pipe.source is source

        async def inferences() -> int:
            return pipe.detection.inferences

        await poll(inferences, lambda n: n >= 3, 60,
                   "the worker to run the ONNX model on patrol-01's frames")
        health = (await c.get("/api/health")).json()
        assert health["components"]["detector"]["status"] == "ok", health
        assert health["components"]["detector"]["inferences"] >= 3, health
        assert worker.errors == 0, worker.last_error

        await poll(unit, at(P1, G01), 30, f"GET /api/units: patrol-01 at {P1} in {G01}")

        # 2. Context B, the operator: console sign-in, then /map shows the unit and follows it.
        ctx_b = await browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
        console = await ctx_b.new_page()
        console.on("pageerror", lambda exc: errors.append(f"console: {exc}"))
        await console.goto(hub.url)
        await console.fill("input[name=username]", "operator")
        await console.fill("input[name=password]", "demo")
        await console.click("#login-submit")
        await console.wait_for_selector("#conn-status[data-state=live]", timeout=20_000)
        await console.goto(f"{hub.url}/map")
        await console.wait_for_selector("#map[data-ready=true]", timeout=20_000)
        await console.wait_for_selector("#conn-status[data-state=live]", timeout=20_000)

        marker = f"g.unit[data-unit='{UNIT}']"
        marker_at = """([sel, lon, lat]) => {
            const g = document.querySelector(sel);
            return !!g && Math.abs(Number(g.dataset.lon) - lon) < 1e-6
                && Math.abs(Number(g.dataset.lat) - lat) < 1e-6;
        }"""
        await console.wait_for_function(
            marker_at, arg=[marker, P1["longitude"], P1["latitude"]], timeout=15_000)
        assert await console.get_attribute(marker, "data-grid") == G01
        await console.evaluate("window.e2eSamePage = true")  # gone if the page reloads

        await ctx_a.set_geolocation(P2)
        await console.wait_for_function(
            marker_at, arg=[marker, P2["longitude"], P2["latitude"]], timeout=20_000)
        assert await console.get_attribute(marker, "data-grid") == G02
        assert await console.evaluate("window.e2eSamePage === true"), "the map was reloaded"
        await poll(unit, at(P2, G02), 10, f"GET /api/units: patrol-01 at {P2} in {G02}")
        assert session.telemetry_messages >= 1, "no fix came over the WHIP data channel"
        assert await tablet.evaluate("window.gridhubPatrol.channel") == "datachannel"

        # 3. The wall: a layout with patrol-01 in a tile plays it, from the one H.264 encode.
        r = await c.put("/api/me/wall-layout", headers=op,
                        json={"tiles": 4, "sources": [None, UNIT, None, None]})
        assert r.status_code == 200, r.text
        await console.goto(f"{hub.url}/wall")
        tile = f".tile[data-index='1'][data-source='{UNIT}']"
        await console.wait_for_selector(f"{tile}[data-state=playing]", timeout=30_000)
        before = next(t for t in await console.evaluate("window.gridhubWall.tiles()")
                      if t["source"] == UNIT)
        await console.wait_for_function(
            """([i, t0, f0]) => {
                const t = window.gridhubWall.tiles()[i];
                return t.source === 'patrol-01' && t.currentTime > t0 + 1 && t.frames >= f0 + 10;
            }""", arg=[before["index"], before["currentTime"], before["frames"] or 0],
            timeout=30_000)
        assert await console.get_attribute(tile, "data-size") == "1280x720"
        assert (await console.get_attribute(tile, "data-codec") or "").startswith("avc1.")
        stream = live.streams().get(UNIT)
        assert stream is not None and stream.source is source, \
            "the wall muxes the same WhipSource the worker reads (one decode, one encode)"
        assert (await live_sources())[UNIT]["viewers"] == 1

        # 3b. The hub drops the session (a network blip): the tablet publishes again and
        # the tile that was watching follows the new source and plays again.
        await sessions.end(session, "test: link lost")
        await poll(lambda: asyncio.sleep(0, sessions.live(UNIT)),
                   lambda s: s is not None and s is not session, 60,
                   "the tablet publishing again")
        session = sessions.live(UNIT)
        assert session is not None
        source = session.source
        await poll(lambda: asyncio.sleep(0, live.streams().get(UNIT)),
                   lambda st: st is not None and st.source is source, 30,
                   "the wall watching the new source")
        await console.wait_for_function(
            """() => window.gridhubWall.tiles().some(
                t => t.source === 'patrol-01' && t.state === 'playing')""", timeout=30_000)
        again = next(t for t in await console.evaluate("window.gridhubWall.tiles()")
                     if t["source"] == UNIT)
        await console.wait_for_function(
            """([i, f0]) => {
                const t = window.gridhubWall.tiles()[i];
                return t.source === 'patrol-01' && t.state === 'playing' && t.frames >= f0 + 10;
            }""", arg=[again["index"], again["frames"] or 0], timeout=30_000)

        # 4. Stop on the tablet: the source goes away everywhere, the hub stays healthy.
        await tablet.click("#stop-btn")
        await tablet.wait_for_selector("#state[data-state=idle]", timeout=10_000)
        await poll(live_sources, lambda s: UNIT not in s, 30,
                   "patrol-01 gone from /api/live/sources")
        assert worker.source(UNIT) is None, "the worker still has patrol-01 attached"
        assert all(p.source_id != UNIT for p in worker.pipelines)
        assert sessions.live(UNIT) is None
        assert source.health.status == "offline" and "DELETE" in (source.health.reason or "")
        await console.wait_for_selector(
            f".tile[data-source='{UNIT}']:is([data-state=offline], [data-state=unknown])",
            timeout=20_000)
        r = await c.get("/api/health")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok", r.json()
        assert r.json()["components"]["detector"]["status"] == "ok", r.json()
        u = await unit()
        assert u["grid"]["id"] == G02  # the last fix stays known after the video ends

        # 5. The patrol video was recorded from that same single encode (stream copy into
        # segments): after Stop its segments are closed, indexed and decodable.
        async def recorded() -> list[dict[str, Any]]:
            resp = await c.get("/api/recordings", params={"camera": UNIT}, headers=op)
            assert resp.status_code == 200, resp.text
            return [i for i in resp.json()["items"] if i["state"] != "recording"]

        segs = await poll(recorded, lambda items: bool(items), 30,
                          "patrol-01's recorded segments closed after Stop")
        assert all((i["codec"], i["width"], i["height"]) == ("h264", 1280, 720)
                   for i in segs), segs
        resp = await c.get(segs[0]["url"], headers=op)
        assert resp.status_code == 200 and resp.content[4:8] == b"ftyp"
        import av

        with av.open(io.BytesIO(resp.content)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames >= 10, f"only {frames} frames decoded from the recording"

        await ctx_a.close()
        await ctx_b.close()
    assert not errors, errors
