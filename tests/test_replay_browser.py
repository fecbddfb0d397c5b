"""Replay in a real browser (Debian chromium via Playwright): two RTSP cameras (the real
GStreamer RTSP server, 25 fps, a keyframe every 25 frames) recorded by the real hub, one of
them cut off for a few seconds to leave a gap; a detector incident on it; then the
incident's clip plays to its end, the /replay page shows coverage, the gap and the
incident, plays, seeks where the timeline is clicked, changes speed, steps frames and
keeps the two cameras in sync; the window endpoint answers Range requests."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import pytest_asyncio
import yaml

from hub.api_replay import RANGE_MIN_BYTES, ReplayCache, range_cap
from hub.bus import IncidentCandidate
from hub.recordings import RecordingService
from ingest.replay import cut_window
from tests.conftest import DEMO, RunningHub, running_hub
from tests.recording_helpers import peer, until

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

FPS = 25
GOP_S = 1.0  # -g 25 at 25 fps
FRAME_S = 1 / FPS
CAM_A, CAM_B = "cam-replay-a", "cam-replay-b"
GRID = "zz-jinshui-jingba-c1-g01"
OUTAGE_S = 7.0  # camera A's server is down this long: more than the recorder's 5 s jump
PREROLL_S, POSTROLL_S = 2.0, 3.0
WAIT_MS = 20_000


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def wall_of(pieces: list[list[float]], media: float) -> float:
    """The window's map, as the API documents it: media time -> wall time."""
    hit = next(p for p in reversed(pieces) if media + 1e-3 >= p[0])
    return hit[1] + (media - hit[0])


@dataclass
class Scene:
    hub: RunningHub
    auth: dict[str, str]
    incident: dict[str, Any]
    gap: tuple[float, float]  # camera A's gap, Unix s
    before: tuple[float, float]  # camera A's recording before the gap
    after: tuple[float, float]  # ... and after it


def camera(cam_id: str, url: str, lon: float) -> dict[str, Any]:
    return {"id": cam_id, "name": cam_id.upper(), "grid": GRID, "position": [lon, 34.7675],
            "source": {"type": "rtsp", "url": url, "stall_s": 1.0, "open_timeout_s": 2.0,
                       "backoff_max_s": 1.0}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    """The hub recording two RTSP cameras in 4 s segments; camera A's server is killed for
    ``OUTAGE_S`` and started again (a gap), then a detector incident on A before the gap
    gets its clip ([t - 2 s, t + 3 s])."""
    tmp = tmp_path_factory.mktemp("replay")
    clip = peer.make_clip(tmp / "cam.h264", width=640, height=360, fps=FPS, seconds=4,
                          gop=FPS)
    servers = [peer.ServerProcess(["--h264", str(clip), "--fps", str(FPS)], tmp / f"{n}.log")
               for n in ("a", "b")]
    for s in servers:
        s.start()
    config = tmp / "config"
    shutil.copytree(DEMO, config)
    (config / "cameras.yaml").write_text(yaml.safe_dump({"cameras": [
        camera(CAM_A, servers[0].url(), 113.6675), camera(CAM_B, servers[1].url(), 113.6677),
    ]}), encoding="utf-8")
    rules = yaml.safe_load((config / "rules.yaml").read_text(encoding="utf-8"))
    rules["detect_fps"] = 0.5  # the detector runs, slowly: the test is about video
    rules["recording"] = {**rules.get("recording", {}), "segment_s": 4,
                          "preroll_s": PREROLL_S, "postroll_s": POSTROLL_S, "min_free_gb": 0}
    (config / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True),
                                       encoding="utf-8")
    try:
        async with running_hub(config, tmp / "data", with_worker=True) as hub, \
                httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
            r = await c.post("/api/auth/token", data={"username": "operator",
                                                      "password": "demo"})
            auth = {"Authorization": f"Bearer {r.json()['access_token']}"}

            async def listing(cam: str) -> dict[str, Any]:
                r = await c.get("/api/recordings", params={"camera": cam}, headers=auth)
                return dict(r.json())

            async def recorded_s(cam: str) -> float:
                items = (await listing(cam))["items"]
                return ts(items[-1]["end"]) - ts(items[0]["start"]) if items else 0.0

            async def both_recording_8s() -> bool:
                return min([await recorded_s(CAM_A), await recorded_s(CAM_B)]) >= 8.0

            await until(both_recording_8s, 60, "8 s recorded of both cameras")
            servers[0].kill()
            await asyncio.sleep(OUTAGE_S)  # the outage itself, not a wait for something
            servers[0].start(servers[0].port)

            async def gap_then_6s() -> dict[str, Any] | None:
                got = await listing(CAM_A)
                if not got["gaps"]:
                    return None
                return got if ts(got["items"][-1]["end"]) - ts(got["gaps"][0]["end"]) >= 6 \
                    else None

            got = await until(gap_then_6s, 40, "camera A recording again after its gap")
            gap = (ts(got["gaps"][0]["start"]), ts(got["gaps"][0]["end"]))
            before = (ts(got["items"][0]["start"]), gap[0])
            after = (gap[1], ts(got["items"][-1]["end"]))
            at = datetime.fromtimestamp(before[0] + 4.0, UTC)  # well inside the first part
            assert before[1] - before[0] >= 8.0, got
            await hub.state.bus.publish(IncidentCandidate(  # type: ignore[attr-defined]
                event_id="ev-replay", phase="start", type="person_down", camera_id=CAM_A,
                at=at, started_at=at, confidence=0.9, frame_size=(640, 360),
                clip_start=at - timedelta(seconds=1), clip_end=at + timedelta(seconds=1)))

            async def with_clip() -> dict[str, Any] | None:
                r = await c.get("/api/incidents", headers=auth)
                items = [i for i in r.json()["items"] if i["camera_id"] == CAM_A]
                return items[0] if items and items[0]["clip_url"] else None

            inc = await until(with_clip, 30, "the incident's clip")
            yield Scene(hub, auth, inc, gap, before, after)
    finally:
        for s in servers:
            s.kill()


async def open_replay(chromium: Any, scene: Scene, query: str,
                      errors: list[str]) -> Any:
    """A new browser context signed in on /replay, showing ``query``, every camera ready."""
    ctx = await chromium.new_context(locale="zh-CN", viewport={"width": 1400, "height": 900})
    page = await ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{scene.hub.url}/replay?{query}")
    await page.fill("input[name=username]", "operator")
    await page.fill("input[name=password]", "demo")
    await page.click("#login-submit")
    await page.wait_for_selector("#replay-view[data-state=ready]", timeout=WAIT_MS)
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.replay-tile')].every("
        "t => t.dataset.state !== 'loading')", timeout=WAIT_MS)
    return page


async def state(page: Any) -> dict[str, Any]:
    return dict(await page.evaluate("window.gridhubReplay.state()"))


async def window_of(scene: Scene, cam: str, page: Any) -> dict[str, Any]:
    """The window description the page plays (same camera and window), from the API."""
    st = await state(page)
    async with httpx.AsyncClient(base_url=scene.hub.url) as c:
        r = await c.get(f"/api/replay/{cam}/window", headers=scene.auth, params={
            "from": datetime.fromtimestamp(st["from"], UTC).isoformat(),
            "to": datetime.fromtimestamp(st["to"], UTC).isoformat()})
        assert r.status_code == 200, r.text
        return dict(r.json())


async def click_at(page: Any, cam: str, wall: float) -> float:
    """Click camera ``cam``'s timeline where it shows ``wall``; returns the wall time of
    the pixel clicked."""
    bar = page.locator(f".replay-bar[data-camera='{cam}']")
    box = await bar.bounding_box()
    st = await state(page)
    frac = (wall - st["from"]) / (st["to"] - st["from"])
    x = round(box["x"] + frac * box["width"])
    await page.mouse.click(x, box["y"] + box["height"] * 0.4)
    return float(st["from"] + (x - box["x"]) / box["width"] * (st["to"] - st["from"]))


async def settled(page: Any) -> dict[str, Any]:
    await page.wait_for_function(
        "() => window.gridhubReplay.state().cams.every(c => !c.seeking)", timeout=WAIT_MS)
    return await state(page)


def cam_state(st: dict[str, Any], cam: str) -> dict[str, Any]:
    return dict(next(c for c in st["cams"] if c["id"] == cam))


# --- (a) the incident's clip ---------------------------------------------------------------


async def test_incident_clip_plays_to_its_end_in_chromium(scene: Scene, chromium: Any) -> None:
    """The incident's clip (cut by stream copy around it) plays in a <video> element to its
    ``ended`` event, and its duration is the clip window, within one GOP."""
    ctx = await chromium.new_context()
    page = await ctx.new_page()
    await page.goto(f"{scene.hub.url}/replay")  # any page of the hub: same origin
    token = scene.auth["Authorization"].split()[1]
    got = await page.evaluate("""async ([url, token]) => {
        const r = await fetch(url, {headers: {Authorization: `Bearer ${token}`}});
        const v = document.createElement("video");
        v.muted = true;
        document.body.append(v);
        const ended = new Promise((ok, bad) => {
          v.addEventListener("ended", () => ok(true));
          v.addEventListener("error", () => bad(new Error(`video error ${v.error?.code}`)));
        });
        v.src = URL.createObjectURL(await r.blob());
        await new Promise((ok) => v.addEventListener("loadedmetadata", ok, {once: true}));
        v.playbackRate = 2;
        await v.play();
        await ended;
        return {duration: v.duration, currentTime: v.currentTime, w: v.videoWidth,
                type: r.headers.get("content-type")};
    }""", [scene.incident["clip_url"], token])
    window = PREROLL_S + POSTROLL_S
    assert got["type"] == "video/mp4" and got["w"] == 640
    assert window - FRAME_S <= got["duration"] <= window + GOP_S + FRAME_S, got
    assert got["currentTime"] == pytest.approx(got["duration"], abs=FRAME_S)
    await ctx.close()


# --- (b) the page ---------------------------------------------------------------------------


async def test_replay_page_shows_coverage_gap_incident_and_seeks(
        scene: Scene, chromium: Any) -> None:
    """/replay?incident=ID shows camera A's coverage, its gap and the incident marker,
    plays, lands where the timeline is clicked (within one GOP), changes the playback rate
    and steps one frame at a time, by buttons and keys."""
    errors: list[str] = []
    inc = scene.incident
    page = await open_replay(chromium, scene, f"incident={inc['id']}", errors)
    st = await state(page)
    t0 = ts(inc["started_at"])
    assert (st["from"], st["to"]) == pytest.approx((t0 - 60, t0 + 90), abs=1e-3)
    # The same grid's other camera is shown too, the incident's own first.
    assert [c["id"] for c in st["cams"]] == [CAM_A, CAM_B]
    assert await page.get_attribute(f".replay-tile[data-camera='{CAM_A}']", "data-focus") == "true"

    bar_a = f".replay-bar[data-camera='{CAM_A}']"
    cov = await page.eval_on_selector_all(
        f"{bar_a} rect.tl-cov", "els => els.map(e => [+e.dataset.start, +e.dataset.end])")
    assert cov and min(s for s, _ in cov) == pytest.approx(scene.before[0], abs=1e-2)
    # The gaps are those of the index (the one made, and any a loaded machine added).
    for cam in (CAM_A, CAM_B):
        shown = await page.eval_on_selector_all(
            f".replay-bar[data-camera='{cam}'] rect.tl-gap",
            "els => els.map(e => [+e.dataset.start, +e.dataset.end])")
        async with httpx.AsyncClient(base_url=scene.hub.url) as c:
            listed = (await c.get("/api/recordings", headers=scene.auth, params={
                "camera": cam, "from": datetime.fromtimestamp(st["from"], UTC).isoformat(),
                "to": datetime.fromtimestamp(st["to"], UTC).isoformat()})).json()["gaps"]
        want = sorted([ts(g["start"]), ts(g["end"])] for g in listed)
        assert len(shown) == len(want)
        assert all(a == pytest.approx(b, abs=1e-2) for a, b in zip(sorted(shown), want,
                                                                   strict=True))
        if cam == CAM_A:
            assert [g for g in shown if g == pytest.approx(list(scene.gap), abs=1e-2)]
    assert scene.gap[1] - scene.gap[0] >= OUTAGE_S - 2  # the outage, less the stall timeout
    # Nothing of the gap is covered.
    assert not [c for c in cov if c[0] < scene.gap[1] - 1e-2 and c[1] > scene.gap[0] + 1e-2]
    marker = await page.query_selector(f"{bar_a} line.tl-marker.focus[data-incident='{inc['id']}']")
    assert marker is not None
    assert float(await marker.get_attribute("data-at")) == pytest.approx(t0, abs=1e-3)
    assert (await marker.get_attribute("x1")).endswith("%")
    assert float((await marker.get_attribute("x1"))[:-1]) == pytest.approx(60 / 150 * 100,
                                                                           abs=0.01)
    # It opened at the incident's moment.
    st = await settled(page)
    a = cam_state(st, CAM_A)
    assert a["covered"] is True and a["wall"] == pytest.approx(t0, abs=FRAME_S)

    # Play: the clock and the videos move.
    await page.click("#play-btn")
    await page.wait_for_function(
        f"() => window.gridhubReplay.state().wall > {t0 + 0.8}", timeout=WAIT_MS)
    st = await state(page)
    assert st["playing"] and not cam_state(st, CAM_A)["paused"]
    await page.keyboard.press("Space")  # pause
    st = await settled(page)
    assert not st["playing"] and cam_state(st, CAM_A)["paused"]

    # Seek by clicking the timeline (clear of the marker): camera A lands there.
    win = await window_of(scene, CAM_A, page)
    for target in (scene.before[0] + 7.3, scene.after[0] + 2.6, scene.before[0] + 1.2):
        clicked = await click_at(page, CAM_A, target)
        await page.wait_for_function(
            f"() => Math.abs(window.gridhubReplay.state().wall - {clicked}) < 0.2",
            timeout=WAIT_MS)
        st = await settled(page)
        a = cam_state(st, CAM_A)
        landed = wall_of(win["pieces"], a["currentTime"])
        assert abs(landed - clicked) <= GOP_S, (target, clicked, landed)
        assert abs(landed - clicked) <= 0.2  # in fact exact, to a pixel of the timeline
        assert a["covered"] is True

    # Clicking into the gap: camera A shows "no recording", camera B plays on regardless.
    clicked = await click_at(page, CAM_A, (scene.gap[0] + scene.gap[1]) / 2)
    await page.wait_for_selector(
        f".replay-tile[data-camera='{CAM_A}'][data-covered=false]", timeout=WAIT_MS)
    assert await page.is_visible(f".replay-tile[data-camera='{CAM_A}'] .replay-nodata")
    assert await page.is_hidden(f".replay-tile[data-camera='{CAM_B}'] .replay-nodata")

    # Speed.
    for rate in ("2", "0.25", "4", "1"):
        await page.select_option("#speed", rate)
        st = await state(page)
        assert st["rate"] == float(rate)
        assert all(c["playbackRate"] == float(rate) for c in st["cams"])
    await page.keyboard.press("ArrowUp")
    assert (await state(page))["rate"] == 1.5

    # Frame steps, by button and by key: one frame each.
    await click_at(page, CAM_A, scene.after[0] + 3.1)
    before = cam_state(await settled(page), CAM_A)["currentTime"]
    await page.click("#step-fwd")
    one = cam_state(await settled(page), CAM_A)["currentTime"]
    assert one - before == pytest.approx(FRAME_S, abs=0.004)
    await page.keyboard.press("ArrowRight")
    two = cam_state(await settled(page), CAM_A)["currentTime"]
    assert two - one == pytest.approx(FRAME_S, abs=0.004)
    await page.keyboard.press("ArrowLeft")
    await page.keyboard.press("ArrowLeft")
    back = cam_state(await settled(page), CAM_A)["currentTime"]
    assert back == pytest.approx(before, abs=0.004)
    assert errors == []
    await page.context.close()


# --- (c) two cameras in sync --------------------------------------------------------------


async def test_two_cameras_stay_in_sync_after_a_seek(scene: Scene, chromium: Any) -> None:
    """After a seek while playing, both cameras show the same wall-clock moment (within
    0.2 s) as they play on."""
    errors: list[str] = []
    page = await open_replay(chromium, scene, f"incident={scene.incident['id']}", errors)
    wins = {cam: await window_of(scene, cam, page) for cam in (CAM_A, CAM_B)}
    await page.click("#play-btn")
    target = scene.after[0] + 1.5  # both recorded there
    clicked = await click_at(page, CAM_B, target)
    await page.wait_for_function(
        f"() => window.gridhubReplay.state().wall > {clicked + 1.0}", timeout=WAIT_MS)
    spreads = []
    for _ in range(6):
        st = await state(page)
        assert st["playing"]
        walls = {}
        for cam in (CAM_A, CAM_B):
            c = cam_state(st, cam)
            assert not c["paused"] and c["covered"], c
            walls[cam] = wall_of(wins[cam]["pieces"], c["currentTime"])
        spreads.append(abs(walls[CAM_A] - walls[CAM_B]))
        assert abs(walls[CAM_A] - st["wall"]) < 0.25
        await asyncio.sleep(0.25)  # samples while it plays
    assert max(spreads) <= 0.2, spreads
    assert errors == []
    await page.context.close()


# --- the link from the incident ------------------------------------------------------------


async def test_console_incident_detail_links_to_its_replay(scene: Scene, chromium: Any) -> None:
    """The console's incident detail has a Replay link; it opens /replay?incident=ID in a new
    tab, signed in with the console's login, at the incident's moment."""
    errors: list[str] = []
    ctx = await chromium.new_context(locale="en", viewport={"width": 1400, "height": 900})
    page = await ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(scene.hub.url)
    await page.fill("input[name=username]", "operator")
    await page.fill("input[name=password]", "demo")
    await page.click("#login-submit")
    await page.wait_for_selector("#conn-status[data-state=live]", timeout=WAIT_MS)
    iid = scene.incident["id"]
    await page.click(f"li.incident[data-id='{iid}']")
    link = await page.wait_for_selector(f"#incident-detail[data-id='{iid}'] a#replay-link")
    assert await link.get_attribute("href") == f"/replay?incident={iid}"
    assert await link.inner_text() == "回放事件时刻"  # the console speaks Chinese first
    async with ctx.expect_page() as opened:
        await link.click()
    replay = await opened.value
    replay.on("pageerror", lambda exc: errors.append(str(exc)))
    await replay.wait_for_selector("#replay-view[data-state=ready]", timeout=WAIT_MS)
    assert await replay.is_hidden("#login-view")  # the console's sign-in carried over
    st = await state(replay)
    assert st["wall"] == pytest.approx(ts(scene.incident["started_at"]), abs=1e-3)
    assert "事件回放" in await replay.inner_text("#replay-title")
    assert errors == []
    await ctx.close()


# --- (d) the window endpoint ---------------------------------------------------------------


async def test_window_endpoint_ranges_signed_urls_bounds_and_cache(scene: Scene) -> None:
    """The window MP4 answers Range (206 with the bytes asked; 416 past the end), starts on
    the keyframe at or before ``from`` as its description says, decodes to the length of
    its map, is cut once and then served from the cache; the signed URL works without a
    token and fails when altered; a department account gets 403; a window over 30 min is
    a 422."""
    hub = scene.hub
    t0 = ts(scene.incident["started_at"])
    frm = datetime.fromtimestamp(t0 - 2.5, UTC)
    to = datetime.fromtimestamp(scene.after[0] + 3, UTC)
    q = {"from": frm.isoformat(), "to": to.isoformat()}
    async with httpx.AsyncClient(base_url=hub.url) as c:
        cache = hub.app.state.replay  # type: ignore[attr-defined]
        cuts = cache.cuts
        r = await c.get(f"/api/replay/{CAM_A}/window", params=q, headers=scene.auth)
        assert r.status_code == 200, r.text
        win = r.json()
        assert win["recorded"] and cache.cuts == cuts + 1
        start = ts(win["start"])
        assert frm.timestamp() - GOP_S - FRAME_S <= start <= frm.timestamp()
        # The map: media time runs on, and one piece starts where the gap ends (more
        # pieces where the arrival times jittered by over 20 ms).
        pieces = win["pieces"]
        assert pieces[0][0] == 0 and pieces[0][1] == pytest.approx(start, abs=1e-3)
        for p, q_ in itertools.pairwise(pieces):
            assert q_[0] == pytest.approx(p[0] + p[2], abs=1e-3)
        after_gap = [p for p in pieces if p[1] >= scene.gap[1] - 0.05]
        assert after_gap and after_gap[0][1] == pytest.approx(scene.gap[1], abs=0.05)
        assert not [p for p in pieces  # nothing of the gap is in the video
                    if p[1] < scene.gap[1] - 0.05 and p[1] + p[2] > scene.gap[0] + 0.05]
        assert win["frame_s"] == pytest.approx(FRAME_S, abs=1e-3)
        full = await c.get(f"/api/replay/{CAM_A}", params=q, headers=scene.auth)
        assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
        assert float(full.headers["x-replay-start"]) == pytest.approx(start, abs=1e-3)
        assert cache.cuts == cuts + 1  # the same window again: from the cache
        body = full.content
        assert body[4:8] == b"ftyp" and 0 < body.find(b"moov") < body.find(b"mdat")
        size = len(body)
        r = await c.get(f"/api/replay/{CAM_A}", params=q,
                        headers={**scene.auth, "Range": "bytes=0-99"})
        assert r.status_code == 206 and len(r.content) == 100 and r.content == body[:100]
        assert r.headers["content-range"] == f"bytes 0-99/{size}"
        r = await c.get(f"/api/replay/{CAM_A}", params=q,
                        headers={**scene.auth, "Range": f"bytes={size + 10}-"})
        assert r.status_code == 416
        # An open range is answered with about RANGE_S of the video, and the Content-Range
        # says which; asking on from there, range by range, gives the whole file.
        cap = range_cap(size, win["duration_s"])
        assert RANGE_MIN_BYTES <= cap < size
        got, at = b"", 0
        while at < size:
            r = await c.get(f"/api/replay/{CAM_A}", params=q,
                            headers={**scene.auth, "Range": f"bytes={at}-"})
            assert r.status_code == 206 and len(r.content) == min(cap, size - at)
            assert r.headers["content-range"] == f"bytes {at}-{at + len(r.content) - 1}/{size}"
            got, at = got + r.content, at + len(r.content)
        assert got == body
        r = await c.get(f"/api/replay/{CAM_A}", params=q,  # a closed range past the cap too
                        headers={**scene.auth, "Range": f"bytes=10-{10 + cap + 5000}"})
        assert r.status_code == 206 and r.content == body[10:10 + cap]
        r = await c.get(f"/api/replay/{CAM_A}", params=q,  # a suffix range: as asked
                        headers={**scene.auth, "Range": "bytes=-500"})
        assert r.status_code == 206 and r.content == body[-500:]
        # The signed URL the page uses: no token needed; altered, refused.
        r = await c.get(win["url"], headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == body[100:200]
        assert (await c.get(win["url"].replace("sig=", "sig=0"))).status_code == 401
        assert (await c.get(f"/api/replay/{CAM_A}", params=q)).status_code == 401
        # Recorded video is for the command center: a department account gets 403.
        r = await c.post("/api/auth/token", data={"username": "civil-affairs",
                                                  "password": "demo"})
        dep = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert (await c.get(f"/api/replay/{CAM_A}/window", params=q, headers=dep)
                ).status_code == 403
        assert (await c.get(f"/api/replay/{CAM_A}", params=q, headers=dep)).status_code == 403
        # Bounds.
        long = {"from": frm.isoformat(), "to": (frm + timedelta(minutes=31)).isoformat()}
        r = await c.get(f"/api/replay/{CAM_A}", params=long, headers=scene.auth)
        assert r.status_code == 422 and "30 min" in r.json()["detail"]
        r = await c.get(f"/api/replay/{CAM_A}/window", params={"from": q["to"], "to": q["from"]},
                        headers=scene.auth)
        assert r.status_code == 422
        old = {"from": "2001-01-01T00:00:00Z", "to": "2001-01-01T00:10:00Z"}
        r = await c.get(f"/api/replay/{CAM_A}/window", params=old, headers=scene.auth)
        assert r.status_code == 200 and r.json()["recorded"] is False
        assert r.json()["url"] is None
        r = await c.get(f"/api/replay/{CAM_A}", params=old, headers=scene.auth)
        assert r.status_code == 404
    path = hub.state.settings.data_dir / "replay-cache" / f"{win['url'].split('v=')[1][:32]}.mp4"  # type: ignore[attr-defined]
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    media = sum(p[2] for p in win["pieces"])
    assert frames == round(media * FPS)
    assert win["duration_s"] == pytest.approx(media, abs=1e-3)


async def test_replay_cache_is_bounded_and_keeps_what_is_in_use(
        scene: Scene, tmp_path: Path) -> None:
    """Over its size bound the cache removes the least recently used cuts (never the one
    just made) and forgets them; a cut still in use stays; the same window of unchanged
    segments is cut once."""
    hub = scene.hub
    svc = next(s for s in hub.state.services  # type: ignore[attr-defined]
               if isinstance(s, RecordingService))
    recs = await svc.index.query(camera=CAM_A, since=scene.before[0] - 30, until=scene.gap[0])
    paths = [svc.data_dir / r.path for r in recs if r.state == "complete"]
    assert paths
    lo = scene.before[0]
    first = await (cache := ReplayCache(cut_window)).get(tmp_path, CAM_A, lo, lo + 3, paths)
    assert first is not None and first["file"].is_file()
    assert await cache.get(tmp_path, CAM_A, lo, lo + 3, paths) is not None
    assert cache.cuts == 1  # the same window of the same files: from the cache
    small = ReplayCache(cut_window)
    windows = [(lo + n + 0.5, lo + n + 4.0) for n in range(4)]  # 3.5 s each, a GOP apart
    made = [await small.get(tmp_path / "s", CAM_A, a, b, paths) for a, b in windows[:3]]
    assert all(m is not None for m in made) and small.cuts == 3
    sizes = [m["size"] for m in made]  # type: ignore[index]
    # Room for the first and one more of the same length, not for three.
    small.max_bytes = sizes[0] + int(1.5 * max(sizes))
    assert await small.version(tmp_path / "s", CAM_A, *windows[0],
                               made[0]["key"]) is not None  # type: ignore[index]  # in use
    extra = await small.get(tmp_path / "s", CAM_A, *windows[3], paths)
    assert extra is not None and extra["file"].is_file()
    kept = {p.stem for p in (tmp_path / "s" / "replay-cache").glob("*.mp4")}
    assert made[0]["key"] in kept  # type: ignore[index]  # used again just before
    assert made[1]["key"] not in kept  # type: ignore[index]  # the least recently used
    assert await small.version(tmp_path / "s", CAM_A, *windows[1],
                               made[1]["key"]) is None  # type: ignore[index]  # forgotten
    old = ReplayCache(cut_window, max_age_s=0)
    a = await old.get(tmp_path / "o", CAM_A, lo, lo + 3, paths)
    b = await old.get(tmp_path / "o", CAM_A, lo, lo + 4, paths)
    assert a is not None and b is not None
    assert not a["file"].exists() and b["file"].is_file()  # unused too long: removed
