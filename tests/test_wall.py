"""The video wall end to end: the hub app plus the live router on a real uvicorn (port 0),
FileSources playing H.264 clips generated with ffmpeg, and Debian chromium (Playwright)
playing them through Media Source Extensions on /wall."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ingest.file_source import FileSource
from ingest.live import LiveHub
from tests.conftest import DEMO
from tests.test_live_mux import make_clip

T = TypeVar("T")

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--autoplay-policy=no-user-gesture-required",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
CAMERAS = {  # id -> test pattern; cam-dead points at a file that does not exist
    "cam-a": "testsrc", "cam-b": "testsrc2", "cam-c": "smptebars", "cam-d": "rgbtestsrc",
    "cam-dead": None,
}


def wait_until(cond: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def wall_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 10 s looping clip per camera, each a different ffmpeg test pattern."""
    d = tmp_path_factory.mktemp("wall-clips")
    return {cid: make_clip(d / f"{cid}.mp4", pattern=pat, seconds=10, gop=15)
            for cid, pat in CAMERAS.items() if pat is not None}


def wall_config(dst: Path, clips: dict[str, Path]) -> Path:
    """The demo configuration with the test cameras instead of the demo scene (the config
    must name an existing file; the test's own source for cam-dead plays a missing one)."""
    shutil.copytree(DEMO, dst)
    cams = [{"id": cid, "name": f"测试 {cid}", "grid": "zz-jinshui-jingba-c1-g01",
             "source": {"type": "file", "path": str(clips.get(cid, clips["cam-a"]))}}
            for cid in CAMERAS]
    (dst / "cameras.yaml").write_text(yaml.safe_dump({"cameras": cams}, allow_unicode=True))
    return dst


class _LoopProbe:
    """A hub service that only remembers the server's event loop."""

    loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        return None


class WallServer:
    """The hub, the live router and the test's FileSources on a real uvicorn in a thread."""

    def __init__(self, config: Path, data: Path, clips: dict[str, Path]) -> None:
        import uvicorn
        from fastapi import FastAPI

        from console.server import mount_console
        from hub.api_wall import mount_wall_api
        from hub.app import create_app
        from hub.config import load_config
        from hub.settings import Settings
        from ingest.live_http import make_live_router

        self.sources = {cid: FileSource(cid, clips.get(cid, config / "missing.mp4"),
                                        loop=True, realtime=True) for cid in CAMERAS}
        self.live = LiveHub()
        self.probe = _LoopProbe()

        def add_live(app: FastAPI) -> None:
            app.include_router(make_live_router(
                verify_token=lambda tok: app.state.hub.accounts.verify(tok),
                get_source=self.sources.get, list_sources=lambda: list(self.sources),
                hub=self.live,
            ))

        settings = Settings(config_dir=config, data_dir=data, port=0, with_worker=False)
        self.app = create_app(
            settings, load_config(config),
            services=[lambda _s: self.probe, lambda _s: self.live],
            routers=[mount_console, mount_wall_api, add_live],
        )
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
            ws_per_message_deflate=False))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="wall-uvicorn", daemon=True)

    def start(self) -> None:
        for src in self.sources.values():
            src.start()
        self._thread.start()
        wait_until(lambda: self.server.started or not self._thread.is_alive(), 30, "uvicorn")
        assert self.server.started, "uvicorn did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()
        for src in self.sources.values():
            src.stop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (publishing on its bus, for instance)."""
        assert self.probe.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.probe.loop).result(10)

    def token(self, user: str) -> str:
        r = httpx.post(f"{self.url}/api/auth/token", data={"username": user, "password": "demo"})
        r.raise_for_status()
        return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def wall_server(tmp_path_factory: pytest.TempPathFactory,
                wall_clips: dict[str, Path]) -> Iterator[WallServer]:
    """One server for the module (4 playing cameras and a dead one)."""
    root = tmp_path_factory.mktemp("wall")
    srv = WallServer(wall_config(root / "config", wall_clips), root / "data", wall_clips)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium (never a downloaded browser), fresh temporary profile."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def wall_page(browser: Any, wall_server: WallServer) -> Iterator[Callable[[str], Any]]:
    """Open /wall signed in as a user, in a context of its own; page errors fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_as(user: str) -> Any:
        ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{wall_server.url}/wall")
        page.fill("#wall-login-form input[name=username]", user)
        page.fill("#wall-login-form input[name=password]", "demo")
        page.click("#wall-login-submit")
        page.wait_for_selector("#wall:not([hidden]) .tile", timeout=20_000)
        return page

    yield open_as
    for ctx in contexts:
        ctx.close()
    assert not errors, errors


def tiles(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("window.gridhubWall.tiles()"))


@pytest.fixture(autouse=True)
def _fresh_layouts(wall_server: WallServer) -> None:
    """Every test starts from the default layout for its users."""
    for user in ("operator", "dispatcher"):
        wall_server.run(wall_server.app.state.hub.store.put_doc(
            "wall_layouts", user, {"tiles": 4, "sources": ["cam-a", "cam-b", "cam-c", "cam-d"]}))


# --- browser ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_every_tile_plays_live(wall_page: Callable[[str], Any]) -> None:
    """Four tiles with four different cameras all play: their videos' time and decoded frame
    counts keep growing, through MSE, in Debian chromium."""
    page = wall_page("operator")
    page.wait_for_function(
        "window.gridhubWall.tiles().length === 4 && "
        "window.gridhubWall.tiles().every(t => t.state === 'playing')", timeout=30_000)
    before = tiles(page)
    assert [t["source"] for t in before] == ["cam-a", "cam-b", "cam-c", "cam-d"]
    page.wait_for_function(
        """(before) => window.gridhubWall.tiles().every((t, i) =>
             t.frames >= before[i].frames + 15 && t.currentTime > before[i].currentTime + 0.5)""",
        arg=before, timeout=30_000)
    codecs = page.eval_on_selector_all(".tile", "ns => ns.map(n => n.dataset.codec)")
    assert all(c and c.startswith("avc1.") for c in codecs)


@pytest.mark.browser
def test_layout_saved_and_restored_after_reload(
        wall_page: Callable[[str], Any], wall_server: WallServer) -> None:
    """Switching to 9 tiles and picking cameras saves the layout for that user; a reload
    restores it, and another user's layout is untouched."""
    page = wall_page("operator")
    page.click("#wall-sizes [data-tiles='9']")
    page.wait_for_function("document.querySelectorAll('.tile').length === 9")
    page.select_option(".tile[data-index='0'] .tile-pick", "cam-d")
    page.select_option(".tile[data-index='8'] .tile-pick", "cam-b")
    page.select_option(".tile[data-index='3'] .tile-pick", "")
    page.wait_for_selector("#layout-status[data-state=saved]", timeout=10_000)
    want = ["cam-d", "cam-b", "cam-c", None, None, None, None, None, "cam-b"]
    r = httpx.get(f"{wall_server.url}/api/me/wall-layout",
                  headers={"Authorization": f"Bearer {wall_server.token('operator')}"})
    assert r.json() == {"tiles": 9, "sources": want}

    page.reload()
    page.wait_for_function("document.querySelectorAll('.tile').length === 9", timeout=20_000)
    got = page.eval_on_selector_all(".tile", "ns => ns.map(n => n.dataset.source || null)")
    assert got == want
    assert page.get_attribute("#wall-sizes [data-tiles='9']", "aria-pressed") == "true"
    page.wait_for_selector(".tile[data-index='8'][data-state=playing]", timeout=30_000)

    other = wall_page("dispatcher")
    assert len(other.query_selector_all(".tile")) == 4


@pytest.mark.browser
def test_offline_source_tile_says_why(wall_page: Callable[[str], Any]) -> None:
    """A tile on a source that cannot play shows offline and the source's reason."""
    page = wall_page("operator")
    page.select_option(".tile[data-index='1'] .tile-pick", "cam-dead")
    tile = ".tile[data-index='1'][data-source='cam-dead']"
    page.wait_for_selector(f"{tile}[data-state=offline]", timeout=20_000)
    assert "No such file" in page.inner_text(f"{tile} .tile-reason")
    assert page.inner_text(f"{tile} .tile-msg") == "离线"
    page.wait_for_selector(".tile[data-index='0'][data-state=playing]", timeout=30_000)


@pytest.mark.browser
def test_camera_health_and_incident_events_reach_tiles(
        wall_page: Callable[[str], Any], wall_server: WallServer) -> None:
    """A camera.health offline event on /ws marks its tile offline with the reason; an
    incident.created event for a camera flashes its tile in the severity colour."""
    from hub.bus import CameraHealth, IncidentEvent

    page = wall_page("operator")
    page.wait_for_selector("#events-status[data-state=live]", timeout=20_000)
    bus = wall_server.app.state.hub.bus
    wall_server.run(bus.broadcast(CameraHealth(camera_id="cam-c", status="offline",
                                             reason="link down (test)")))
    page.wait_for_selector(".tile[data-source='cam-c'][data-state=offline]", timeout=10_000)
    assert page.inner_text(".tile[data-source='cam-c'] .tile-reason") == "link down (test)"

    now = datetime.now(UTC).isoformat()
    incident = {"id": "inc-test-1", "type": "person_down", "state": "new", "severity": "red",
                "camera_id": "cam-b", "created_at": now, "updated_at": now,
                "started_at": now, "last_seen_at": now}
    wall_server.run(bus.broadcast(IncidentEvent(kind="incident.created", incident=incident)))
    page.wait_for_selector(".tile[data-source='cam-b'][data-flash=red]", timeout=10_000)
    assert page.query_selector(".tile[data-source='cam-a'][data-flash]") is None


@pytest.mark.browser
def test_double_click_toggles_full_screen(wall_page: Callable[[str], Any]) -> None:
    """Double-clicking a tile makes it full screen; double-clicking again brings it back."""
    page = wall_page("operator")
    page.dblclick(".tile[data-index='2'] video", force=True)
    page.wait_for_selector(".tile[data-index='2'][data-full='1']")
    box = page.locator(".tile[data-index='2']").bounding_box()
    assert box is not None and box["width"] >= 1200
    page.dblclick(".tile[data-index='2'] video", force=True)
    page.wait_for_selector(".tile[data-index='2']:not([data-full])")


@pytest.mark.browser
def test_live_socket_refuses_a_bad_token_in_the_browser(
        wall_page: Callable[[str], Any], wall_server: WallServer) -> None:
    """The page's live socket with a bad token is closed with 4401, and no video is sent."""
    page = wall_page("operator")
    result = page.evaluate("""() => new Promise((resolve) => {
        const ws = new WebSocket(`ws://${location.host}/live/cam-a?token=not-a-token`);
        let binary = 0;
        ws.onmessage = (ev) => { if (typeof ev.data !== 'string') binary++; };
        ws.onclose = (ev) => resolve({code: ev.code, reason: ev.reason, binary});
    })""")
    assert result == {"code": 4401, "reason": "not authenticated", "binary": 0}


# --- HTTP and raw WebSocket --------------------------------------------------------------------


@pytest.mark.parametrize("token,source,code", [
    ("", "cam-a", 4401), ("garbage", "cam-a", 4401), ("operator", "cam-nope", 4404),
    ("civil-affairs", "cam-a", 4403),
])
def test_live_socket_refusals(wall_server: WallServer, token: str, source: str,
                              code: int) -> None:
    """Missing or bad token: 4401; unknown source: 4404; a department account: 4403."""
    if token in ("operator", "civil-affairs"):
        token = wall_server.token(token)
    with connect(f"ws://127.0.0.1:{wall_server.port}/live/{source}?token={token}",
                 open_timeout=10) as ws, pytest.raises(ConnectionClosed) as err:
        ws.recv(timeout=10)
    assert err.value.rcvd is not None and err.value.rcvd.code == code


def test_live_socket_protocol(wall_server: WallServer) -> None:
    """A raw client gets a status, the init message and segment, then fragments (moof)."""
    tok = wall_server.token("operator")
    with connect(f"ws://127.0.0.1:{wall_server.port}/live/cam-a?token={tok}",
                 open_timeout=10, compression=None) as ws:
        status = json.loads(ws.recv(timeout=10))
        assert status["type"] == "status"
        init = json.loads(ws.recv(timeout=10))
        assert init["type"] == "init" and init["codec"].startswith("avc1.")
        assert (init["width"], init["height"]) == (320, 240)
        seg = ws.recv(timeout=10)
        assert isinstance(seg, bytes) and seg[4:8] == b"ftyp"
        frag = ws.recv(timeout=10)
        assert isinstance(frag, bytes) and frag[4:8] == b"moof"
    r = httpx.get(f"{wall_server.url}/api/live/sources", headers={"Authorization": f"Bearer {tok}"})
    by_id = {s["id"]: s for s in r.json()}
    assert set(by_id) == set(CAMERAS)
    assert by_id["cam-dead"]["status"] == "offline"


@pytest.mark.parametrize("body", [
    {"tiles": 5, "sources": []},
    {"tiles": 4, "sources": ["cam-a"] * 5},
    {"tiles": 4, "sources": [1, 2]},
    {"tiles": 4, "sources": [], "theme": "dark"},
    {"sources": ["cam-a"]},
    {"tiles": 1, "sources": [""]},
])
def test_layout_api_rejects_bad_layouts(wall_server: WallServer, body: dict[str, Any]) -> None:
    """Anything but {"tiles": 1|4|9|16, "sources": [id or null, ...]} is a 422."""
    r = httpx.put(f"{wall_server.url}/api/me/wall-layout", json=body,
                  headers={"Authorization": f"Bearer {wall_server.token('operator')}"})
    assert r.status_code == 422, r.text


def test_layout_api_is_per_user(wall_server: WallServer) -> None:
    """Each user reads back what they saved (short lists padded with null); no token is 401;
    a user who never saved gets 4 tiles with the site's first cameras."""
    url = f"{wall_server.url}/api/me/wall-layout"
    op = {"Authorization": f"Bearer {wall_server.token('operator')}"}
    rv = {"Authorization": f"Bearer {wall_server.token('reviewer')}"}
    r = httpx.put(url, json={"tiles": 16, "sources": ["cam-b", None, "cam-a"]}, headers=op)
    assert r.status_code == 200
    assert httpx.get(url, headers=op).json() == {
        "tiles": 16, "sources": ["cam-b", None, "cam-a", *[None] * 13]}
    assert httpx.get(url, headers=rv).json() == {
        "tiles": 4, "sources": ["cam-a", "cam-b", "cam-c", "cam-d"]}
    assert httpx.get(url).status_code == 401
