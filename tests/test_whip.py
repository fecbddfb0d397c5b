"""WHIP ingest against real peers: Debian chromium on /patrol and a GStreamer webrtcbin
client (tests/peers/gst_whip_client.py), publishing to the hub on a real uvicorn, all on
127.0.0.1. Also the DTLS cipher fix, proven with an in-memory DTLS handshake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.webrtc import IceSettings, WhipSessions, WhipSource
from tests.conftest import serve_app

ROOT = Path(__file__).resolve().parents[1]
GST_CLIENT = ROOT / "tests" / "peers" / "gst_whip_client.py"
SYSTEM_PYTHON = "/usr/bin/python3"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
]
ICE_PORTS = (42000, 42199)


# --- the hub with the WHIP router, as the composition root wires it ---------------------


@dataclass
class Recorder:
    """What the WHIP router told its owner; ``wait`` blocks until a condition holds."""

    started: list[WhipSource] = field(default_factory=list)
    ended: list[WhipSource] = field(default_factory=list)
    telemetry: list[tuple[str, str]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def notify(self) -> None:
        self._loop.call_soon_threadsafe(self._changed.set)

    def on_started(self, src: Any) -> None:
        self.started.append(src)
        src.packets.subscribe(lambda info, pkt: self.notify())  # encoder thread
        self.notify()

    def on_ended(self, src: Any) -> None:
        self.ended.append(src)
        self.notify()

    def on_telemetry(self, unit: str, raw: str) -> None:
        self.telemetry.append((unit, raw))
        self.notify()

    def source(self, unit: str) -> WhipSource | None:
        return next((s for s in reversed(self.started) if s.unit_id == unit), None)

    async def wait(self, pred: Callable[[], bool], within: float, what: str) -> None:
        try:
            async with asyncio.timeout(within):
                while not pred():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {within} s waiting for {what}; "
                                 f"{self.describe()}") from None

    def describe(self) -> str:
        return "; ".join(f"{s.unit_id}: {s.health.status} ({s.health.reason}) frames="
                         f"{s.health.frames} {s.health.width}x{s.health.height} packets="
                         f"{s.packets.total_packets}" for s in self.started) or "no sources"


@dataclass
class WhipHub:
    url: str
    sessions: WhipSessions
    rec: Recorder
    tokens: dict[str, str] = field(default_factory=dict)

    async def token(self, user: str) -> str:
        if user not in self.tokens:
            async with httpx.AsyncClient(base_url=self.url) as c:
                r = await c.post("/api/auth/token", data={"username": user, "password": "demo"})
                r.raise_for_status()
                self.tokens[user] = r.json()["access_token"]
        return self.tokens[user]


@asynccontextmanager
async def whip_hub(
    config: Path, data: Path, *, stall_s: float = 5.0, timeout_s: float = 20.0, **ice: Any
) -> AsyncIterator[WhipHub]:
    """The hub (API, console, WHIP) on a real uvicorn on 127.0.0.1, port 0."""
    from fastapi import FastAPI

    from console.server import STATIC, mount_console
    from hub.app import create_app
    from hub.config import load_config
    from hub.settings import Settings
    from ingest.whip_http import make_whip_router

    site = load_config(config)
    settings = Settings(config_dir=config, data_dir=data, port=0, with_worker=False,
                        max_body_bytes=64 * 1024, ice_hosts=("127.0.0.1",), **ice)
    rec = Recorder()
    holder: list[WhipSessions] = []

    def add_whip(app: FastAPI) -> None:
        router, sessions = make_whip_router(
            verify_token=lambda tok: app.state.hub.accounts.verify(tok),
            units=lambda unit: site.unit(unit) is not None,
            on_source_started=rec.on_started, on_source_ended=rec.on_ended,
            on_telemetry=rec.on_telemetry,
            ice_hosts=settings.ice_hosts, ice_port_min=settings.ice_port_min,
            ice_port_max=settings.ice_port_max, ice_servers=settings.ice_servers,
            patrol_page=STATIC / "patrol.html", stall_s=stall_s, timeout_s=timeout_s,
        )
        holder.append(sessions)
        app.include_router(router)

    app = create_app(settings, site, services=[lambda state: holder[0]],
                     routers=[mount_console, add_whip])
    async with serve_app(app) as running:
        yield WhipHub(running.url, holder[0], rec)
    assert len(holder[0]) == 0, "sessions left after shutdown"


@pytest.fixture
async def hub(demo_config: Path, tmp_path: Path) -> AsyncIterator[WhipHub]:
    """The hub with WHIP, ICE on 127.0.0.1 in a fixed UDP port range."""
    async with whip_hub(demo_config, tmp_path / "data", ice_port_min=ICE_PORTS[0],
                        ice_port_max=ICE_PORTS[1]) as h:
        yield h


# --- the GStreamer peer -------------------------------------------------------------------


class GstClient:
    """tests/peers/gst_whip_client.py under Debian's python3, its JSON events collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "garbage", "line": line.decode(errors="replace")})

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)

    async def stop(self, grace: float = 20) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                rc = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            rc = await self.proc.wait()
        await self._reader
        return rc


@asynccontextmanager
async def gst_client(url: str, token: str, *args: str) -> AsyncIterator[GstClient]:
    if shutil.which(SYSTEM_PYTHON) is None:
        pytest.fail("Debian's /usr/bin/python3 with GStreamer bindings is required")
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(GST_CLIENT), "--url", url, "--token", token, *args,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    client = GstClient(proc)
    try:
        yield client
    finally:
        await client.stop()


# --- tests --------------------------------------------------------------------------------


def _answer_candidates(sdp: str) -> list[tuple[str, int]]:
    out = []
    for ln in sdp.splitlines():
        if ln.startswith("a=candidate:"):
            parts = ln.split()
            out.append((parts[4], int(parts[5])))
    return out


def _decode_ring(src: WhipSource) -> list[tuple[int, int]]:
    """Decode the source's buffered H.264 with PyAV: the sizes of the frames it gives."""
    import av

    info, pkts = src.packets.snapshot()
    assert info is not None and info.codec == "h264"
    assert pkts and pkts[0].keyframe, "the ring must start on a keyframe"
    dec = av.CodecContext.create("h264", "r")
    sizes = []
    for p in pkts:
        for f in dec.decode(av.Packet(p.data)):
            sizes.append((f.width, f.height))
    return sizes


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_gstreamer_dashcam_publishes(hub: WhipHub, codec: str) -> None:
    """A GStreamer webrtcbin client with an RSA DTLS certificate publishes H.264 or VP8;
    frames are decoded, re-encoded once to H.264 from a keyframe, telemetry arrives, and
    DELETE ends the source."""
    token = await hub.token("patrol-02")
    async with gst_client(f"{hub.url}/whip/patrol-02", token, "--codec", codec,
                          "--telemetry-hz", "5") as client:
        await hub.rec.wait(lambda: hub.rec.source("patrol-02") is not None, 30, "a session")
        src = hub.rec.source("patrol-02")
        assert src is not None
        await hub.rec.wait(lambda: src.packets.total_packets >= 20, 60, "20 encoded frames")
        await hub.rec.wait(lambda: len(hub.rec.telemetry) >= 2, 30, "telemetry")
        assert src.health.status == "online"
        assert (src.health.width, src.health.height) == (640, 480)
        assert src.input_codec == codec.upper()
        sizes = _decode_ring(src)
        assert sizes and set(sizes) == {(640, 480)}
        unit, raw = hub.rec.telemetry[0]
        assert unit == "patrol-02" and {"lat", "lon", "time"} <= json.loads(raw).keys()
        session = hub.sessions.live("patrol-02")
        assert session is not None
        cands = _answer_candidates(session.answer)
        assert cands and all(h == "127.0.0.1" and ICE_PORTS[0] <= p <= ICE_PORTS[1]
                             for h, p in cands), cands
        rc = await client.stop()
    assert rc == 0, client.events
    deleted = client.event("deleted")
    assert deleted is not None and deleted["status"] == 200, client.events
    await hub.rec.wait(lambda: src in hub.rec.ended, 30, "the source to end")
    assert src.health.status == "offline" and "DELETE" in (src.health.reason or "")
    assert hub.sessions.live("patrol-02") is None


async def test_vanished_publisher_goes_offline_then_frees_the_unit(
    demo_config: Path, tmp_path: Path
) -> None:
    """A publisher killed without DELETE: its source goes offline with a reason, the session
    ends on the video timeout, and the unit can publish again (no lasting 409)."""
    async with whip_hub(demo_config, tmp_path / "data", stall_s=1.0, timeout_s=4.0) as hub:
        token = await hub.token("patrol-01")
        async with gst_client(f"{hub.url}/whip/patrol-01", token) as client:
            await hub.rec.wait(lambda: (s := hub.rec.source("patrol-01")) is not None
                               and s.packets.total_packets >= 5, 60, "frames")
            src = hub.rec.source("patrol-01")
            assert src is not None
            client.proc.kill()
            await hub.rec.wait(lambda: src.health.status == "offline"
                               or src in hub.rec.ended, 30, "the source offline")
            assert "no video" in (src.health.reason or "") or "connection" in (
                src.health.reason or ""), src.health.reason
            await hub.rec.wait(lambda: src in hub.rec.ended, 30, "the session to end")
        assert hub.sessions.live("patrol-01") is None
        async with gst_client(f"{hub.url}/whip/patrol-01", token) as again:
            await hub.rec.wait(lambda: (s := hub.rec.source("patrol-01")) is not src
                               and s is not None and s.packets.total_packets >= 5, 60,
                               "frames from the new publisher")
            assert again.event("refused") is None


async def test_hub_shutdown_ends_live_sessions(demo_config: Path, tmp_path: Path) -> None:
    """Stopping the hub while a unit publishes ends its session (the WHIP service's stop)
    and the server exits cleanly."""
    async with contextlib.AsyncExitStack() as outer:  # the client outlives the hub
        async with whip_hub(demo_config, tmp_path / "data") as hub:
            token = await hub.token("patrol-02")
            await outer.enter_async_context(
                gst_client(f"{hub.url}/whip/patrol-02", token, "--codec", "vp8"))
            await hub.rec.wait(lambda: (s := hub.rec.source("patrol-02")) is not None
                               and s.packets.total_packets >= 5, 60, "frames")
            src = hub.rec.source("patrol-02")
            assert src is not None
        assert src in hub.rec.ended and src.health.reason == "hub shutting down"
        assert src.health.status == "offline"


VALID_OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
    "a=rtcp-mux\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
)


async def test_bad_requests_get_clear_errors_and_live_session_survives(hub: WhipHub) -> None:
    """Each bad request gets its status and a reason while a live GStreamer session keeps
    delivering frames; the hub stays up."""
    t1, t2 = await hub.token("patrol-01"), await hub.token("patrol-02")
    op, admin = await hub.token("operator"), await hub.token("admin")
    sdp = {"Content-Type": "application/sdp"}
    audio_only = VALID_OFFER.replace("m=video", "m=audio").replace("VP8/90000", "opus/48000/2")
    cases: list[tuple[str, str, str, dict[str, str], bytes, int, str]] = [
        ("no token", "POST", "/whip/patrol-02", sdp, VALID_OFFER.encode(), 401, "bearer"),
        ("bad token", "POST", "/whip/patrol-02", {**sdp, "Authorization": "Bearer nope"},
         VALID_OFFER.encode(), 401, "invalid token"),
        ("other unit's token", "POST", "/whip/patrol-02",
         {**sdp, "Authorization": f"Bearer {t1}"}, VALID_OFFER.encode(), 403, "may not"),
        ("operator role", "POST", "/whip/patrol-02", {**sdp, "Authorization": f"Bearer {op}"},
         VALID_OFFER.encode(), 403, "may not"),
        ("unknown unit", "POST", "/whip/patrol-99", {**sdp, "Authorization": f"Bearer {admin}"},
         VALID_OFFER.encode(), 404, "unknown unit"),
        ("wrong content type", "POST", "/whip/patrol-02",
         {"Content-Type": "text/plain", "Authorization": f"Bearer {t2}"},
         VALID_OFFER.encode(), 415, "application/sdp"),
        ("not SDP", "POST", "/whip/patrol-02", {**sdp, "Authorization": f"Bearer {t2}"},
         b"hello, hub", 400, "v=0"),
        ("no video", "POST", "/whip/patrol-02", {**sdp, "Authorization": f"Bearer {t2}"},
         audio_only.encode(), 400, "no video"),
        ("binary", "POST", "/whip/patrol-02", {**sdp, "Authorization": f"Bearer {t2}"},
         bytes(range(256)) * 4, 400, "UTF-8"),
        ("huge", "POST", "/whip/patrol-02", {**sdp, "Authorization": f"Bearer {t2}"},
         VALID_OFFER.encode() + b"a=x:" + b"y" * 100_000 + b"\r\n", 413, "over"),
        ("second publisher", "POST", "/whip/patrol-01", {**sdp, "Authorization": f"Bearer {t1}"},
         VALID_OFFER.encode(), 409, "already publishing"),
        ("GET on the endpoint", "GET", "/whip/patrol-02", {"Authorization": f"Bearer {t2}"},
         b"", 405, "POST"),
        ("DELETE unknown session", "DELETE", "/whip/patrol-02/nope",
         {"Authorization": f"Bearer {t2}"}, b"", 404, "no such"),
    ]
    token = await hub.token("patrol-01")
    async with gst_client(f"{hub.url}/whip/patrol-01", token, "--codec", "vp8"):
        await hub.rec.wait(lambda: (s := hub.rec.source("patrol-01")) is not None
                           and s.packets.total_packets >= 5, 60, "the live session's frames")
        live = hub.rec.source("patrol-01")
        assert live is not None
        session = hub.sessions.live("patrol-01")
        assert session is not None
        before = live.health.frames
        async with httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
            for name, method, path, headers, body, status, reason in cases:
                r = await c.request(method, path, headers=headers, content=body or None)
                assert r.status_code == status, (name, r.status_code, r.text)
                assert reason.lower() in r.json()["detail"].lower(), (name, r.text)
            r = await c.patch(session.location, headers={
                "Authorization": f"Bearer {t1}", "Content-Type": "application/trickle-ice-sdpfrag"
            }, content=b"a=end-of-candidates\r\n")
            assert r.status_code == 405 and "DELETE" in r.headers["allow"], r.text
            r = await c.options("/whip/patrol-02")
            assert r.status_code == 204 and r.headers["accept-post"] == "application/sdp"
            assert (await c.get("/api/health")).status_code == 200
        await hub.rec.wait(lambda: live.health.frames >= before + 15, 30,
                           "frames after the bad requests")
        assert live.health.status == "online"
        assert hub.sessions.live("patrol-01") is session
        assert hub.sessions.live("patrol-02") is None


# --- chromium on /patrol ------------------------------------------------------------------


@pytest.fixture(scope="module")
def y4m_720p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1280x720 test pattern as .y4m for chromium's fake camera (made here by ffmpeg)."""
    out = tmp_path_factory.mktemp("media") / "patrol_720p.y4m"
    subprocess.run(
        ["/usr/bin/ffmpeg", "-v", "error", "-f", "lavfi", "-i",
         "testsrc2=size=1280x720:rate=15", "-frames:v", "30", "-pix_fmt", "yuv420p",
         str(out)], check=True, timeout=120,
    )
    return out


@asynccontextmanager
async def chromium(y4m: Path) -> AsyncIterator[Any]:
    """Debian's chromium (never a downloaded browser) with a fake camera playing ``y4m``;
    Playwright gives it a fresh temporary profile."""
    from playwright.async_api import async_playwright

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is not installed")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=exe, args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={y4m}"]
        )
        try:
            yield browser
        finally:
            await browser.close()


def _fixes(rec: Recorder, unit: str) -> list[dict[str, Any]]:
    out = []
    for u, raw in rec.telemetry:
        if u == unit:
            out.append(json.loads(raw))
    return out


@pytest.mark.browser
async def test_chromium_patrol_page_publishes_720p_with_gps(hub: WhipHub, y4m_720p: Path) -> None:
    """Chromium logs in on /patrol as patrol-01 and publishes a 1280x720 camera: the hub
    decodes 1280x720 frames, its ring holds H.264 from a keyframe, GPS positions arrive
    as Playwright moves the unit (over the WebSocket before publishing, then the data
    channel), the page reconnects when the hub drops it, and Stop ends it with DELETE."""
    a, b, c = ((34.7466, 113.6254), (34.7512, 113.6301), (34.7555, 113.6399))
    errors: list[str] = []
    async with chromium(y4m_720p) as browser:
        ctx = await browser.new_context(
            locale="zh-CN", permissions=["camera", "geolocation"],
            geolocation={"latitude": a[0], "longitude": a[1], "accuracy": 8},
        )
        page = await ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        ws_sent: list[dict[str, Any]] = []

        def on_ws(ws: Any) -> None:
            def sent(payload: str | bytes) -> None:
                if isinstance(payload, str) and '"telemetry"' in payload:
                    ws_sent.append(json.loads(payload))
                    hub.rec.notify()

            ws.on("framesent", sent)

        page.on("websocket", on_ws)
        await page.goto(f"{hub.url}/patrol")
        await page.fill("input[name=username]", "patrol-01")
        await page.fill("input[name=password]", "demo")
        await page.click("#login-submit")
        await page.wait_for_selector("#start-btn:visible", timeout=20_000)
        assert await page.text_content("#start-btn") == "开始回传"
        # Not publishing yet (no data channel): GPS goes over the console WebSocket.
        await hub.rec.wait(lambda: bool(ws_sent), 20, "telemetry on the WebSocket")
        assert ws_sent[0]["type"] == "telemetry"
        assert (ws_sent[0]["data"]["lat"], ws_sent[0]["data"]["lon"]) == a
        await page.click("#start-btn")
        await page.wait_for_selector("#state[data-state=live]", timeout=30_000)

        await hub.rec.wait(lambda: hub.rec.source("patrol-01") is not None, 10, "a session")
        src = hub.rec.source("patrol-01")
        assert src is not None
        await hub.rec.wait(lambda: (src.health.width, src.health.height) == (1280, 720), 60,
                           "1280x720 frames (bitrate hints honoured)")
        await hub.rec.wait(lambda: src.packets.info is not None
                           and src.packets.info.width == 1280
                           and len(src.packets.snapshot()[1]) >= 10, 30, "720p H.264 packets")
        frame = src.slot.take()
        assert frame is not None and frame.image().shape == (720, 1280, 3)
        assert (1280, 720) in _decode_ring(src)

        def at(pos: tuple[float, float]) -> Callable[[], bool]:
            return lambda: any(abs(f["lat"] - pos[0]) < 1e-6 and abs(f["lon"] - pos[1]) < 1e-6
                               for f in _fixes(hub.rec, "patrol-01"))

        await hub.rec.wait(at(a), 20, f"telemetry at {a}")
        await ctx.set_geolocation({"latitude": b[0], "longitude": b[1], "accuracy": 5})
        await hub.rec.wait(at(b), 20, f"telemetry at {b}")
        await ctx.set_geolocation({"latitude": c[0], "longitude": c[1], "accuracy": 5})
        await hub.rec.wait(at(c), 20, f"telemetry at {c}")
        fix = _fixes(hub.rec, "patrol-01")[-1]
        assert set(fix) == {"lat", "lon", "speed", "heading", "accuracy", "time"}
        assert isinstance(fix["time"], int) and fix["time"] > 1_600_000_000_000
        assert await page.evaluate("window.gridhubPatrol.channel") == "datachannel"

        # The hub drops the session: the page notices, reconnects and is live again.
        session = hub.sessions.live("patrol-01")
        assert session is not None
        await hub.sessions.end(session, "dropped by the test")
        await hub.rec.wait(lambda: (s := hub.rec.source("patrol-01")) is not src
                           and s is not None and s.packets.total_packets >= 5, 60,
                           "a new session from the page's reconnect")
        await page.wait_for_selector("#state[data-state=live]", timeout=30_000)
        src2 = hub.rec.source("patrol-01")
        assert src2 is not None and src2 is not src

        await page.click("#stop-btn")
        await hub.rec.wait(lambda: src2 in hub.rec.ended, 20, "the source to end")
        assert "DELETE" in (src2.health.reason or "")
        await page.wait_for_selector("#state[data-state=idle]", timeout=5_000)
        await page.click("#lang-toggle")
        assert await page.text_content("#start-btn") == "Start streaming"
        await ctx.close()
    assert not errors, errors


PLAIN_WHIP_PUBLISH = """async ({unit, token}) => {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: 1280, height: 720}, audio: false});
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: "sendonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") resolve();
    pc.onicegatheringstatechange = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
  });
  const resp = await fetch(`/whip/${unit}`, {method: "POST", body: pc.localDescription.sdp,
    headers: {"Content-Type": "application/sdp", "Authorization": `Bearer ${token}`}});
  if (resp.status !== 201) throw new Error(`${resp.status} ${await resp.text()}`);
  await pc.setRemoteDescription({type: "answer", sdp: await resp.text()});
  window.whipLocation = resp.headers.get("Location");
  window.whipPc = pc;
}"""


@pytest.mark.browser
async def test_chromium_plain_whip_client_gets_720p_from_answer_hints(
    hub: WhipHub, y4m_720p: Path
) -> None:
    """A plain browser WHIP client (no contentHint, no degradation preference) sends
    1280x720 because of the bitrate hints in the hub's answer (without them Chromium
    starts at 640x360: see bench/bench_whip.py)."""
    token = await hub.token("patrol-02")
    async with chromium(y4m_720p) as browser:
        ctx = await browser.new_context(permissions=["camera"])
        page = await ctx.new_page()
        await page.goto(f"{hub.url}/api/health")
        await page.evaluate(PLAIN_WHIP_PUBLISH, {"unit": "patrol-02", "token": token})
        await hub.rec.wait(lambda: hub.rec.source("patrol-02") is not None, 10, "a session")
        src = hub.rec.source("patrol-02")
        assert src is not None
        await hub.rec.wait(lambda: src.packets.total_packets >= 1, 30, "the first frame")
        first = (src.health.width, src.health.height)
        await hub.rec.wait(lambda: src.packets.total_packets >= 30, 30, "30 frames")
        assert first == (1280, 720) and (src.health.width, src.health.height) == (1280, 720)
        status = await page.evaluate("""async (token) => (await fetch(window.whipLocation,
            {method: "DELETE", headers: {"Authorization": `Bearer ${token}`}})).status""", token)
        assert status == 200
        await hub.rec.wait(lambda: src in hub.rec.ended, 20, "the source to end")
        await ctx.close()


# --- DTLS: RSA peers --------------------------------------------------------------------


def _rsa_server_context() -> Any:
    """A DTLS server like GStreamer 1.22's: an RSA 2048 certificate, its default ciphers."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gst")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_cipher_list(b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH")
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: True)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    return ctx


def _handshake(client_ctx: Any, server_ctx: Any) -> str:
    """Run a DTLS handshake over memory BIOs; the cipher agreed, or the server's error."""
    from OpenSSL import SSL

    client, server = SSL.Connection(client_ctx), SSL.Connection(server_ctx)
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(50):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as err:
                return f"error: {err}"
        for src, dst in ((client, server), (server, client)):
            while True:
                try:
                    dst.bio_write(src.bio_read(65536))
                except SSL.WantReadError:
                    break
        if client.get_cipher_name() and server.get_cipher_name():
            try:
                client.do_handshake()
                server.do_handshake()
                return str(client.get_cipher_name())
            except SSL.WantReadError:
                continue
    return "error: no progress"


def test_dtls_certificate_accepts_rsa_peer() -> None:
    """aiortc's stock DTLS context fails against an RSA-certificate server with "no shared
    cipher"; the hub's DtlsCertificate completes the handshake with an ECDHE-RSA suite."""
    from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80, RTCCertificate

    from ingest.webrtc import DtlsCertificate, WhipPeerConnection

    profiles = [SRTP_AES128_CM_SHA1_80]
    stock = RTCCertificate.generateCertificate()._create_ssl_context(profiles)
    assert "no shared cipher" in _handshake(stock, _rsa_server_context())
    ours = DtlsCertificate.generateCertificate()._create_ssl_context(profiles)
    assert _handshake(ours, _rsa_server_context()).startswith("ECDHE-RSA-")
    assert isinstance(WhipPeerConnection(IceSettings()).dtls_certificate, DtlsCertificate)


def test_whip_source_encodes_once_and_follows_resolution_changes() -> None:
    """WhipSource re-encodes fed frames to H.264 (odd sizes evened, any pixel format),
    starts the ring on a keyframe, and starts a new stream when the size changes."""
    import threading

    import av
    import numpy as np

    src = WhipSource("unit-x", keyframe_interval_s=3600)
    seen = threading.Condition()
    infos: list[Any] = []

    def listener(info: Any, pkt: Any) -> None:
        with seen:
            infos.append((info.width, info.height, pkt.keyframe))
            seen.notify_all()

    src.packets.subscribe(listener)
    src.start()
    try:
        def feed(w: int, h: int, fmt: str, n: int) -> None:
            for i in range(n):
                img = np.full((h, w, 3), (i * 20) % 255, dtype=np.uint8)
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                with seen:  # one frame at a time: the bounded queue never drops here
                    count = len(infos)
                    src.feed(vf if fmt == "rgb24" else vf.reformat(format=fmt))
                    assert seen.wait_for(lambda c=count: len(infos) > c, timeout=10)

        feed(65, 49, "rgb24", 5)
        info, pkts = src.packets.snapshot()
        assert info is not None and (info.codec, info.width, info.height) == ("h264", 64, 48)
        assert pkts[0].keyframe and not any(p.keyframe for p in pkts[1:])
        feed(96, 64, "yuv420p", 5)
        info, pkts = src.packets.snapshot()
        assert info is not None and (info.width, info.height) == (96, 64)
        assert len(pkts) == 5 and pkts[0].keyframe
        assert infos[5] == (96, 64, True)
        assert src.health.frames == 10 and src.encode_dropped == 0
        assert src.health.status == "online"
    finally:
        src.stop()
    assert not src._thread.is_alive()
