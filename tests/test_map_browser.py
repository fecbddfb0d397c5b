"""The map page in a real browser (Debian chromium via Playwright): the demo grids are
drawn, and a patrol unit reporting over the WebSocket fallback appears and moves."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from hub.config import load_config
from hub.settings import Settings
from tests.conftest import DEMO
from tests.test_units_api import G01, G02, build_units_app, now_ms

pytestmark = [pytest.mark.browser]

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


class ThreadHub:
    """The hub app (with unit tracking) on a real uvicorn on port 0, in its own thread, so
    the synchronous Playwright API can drive a browser against it."""

    def __init__(self, config: Path, data: Path, redis_url: str | None = None,
                 prefix: str = "gridhub") -> None:
        import uvicorn

        site = load_config(config)
        settings = Settings(config_dir=config, data_dir=data, port=0, with_worker=False,
                            max_body_bytes=64 * 1024, redis_url=redis_url, redis_prefix=prefix)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            build_units_app(settings, site), log_level="warning", lifespan="on",
            timeout_graceful_shutdown=5,
        ))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # uvicorn offers no event to wait on
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the hub did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def token(self, user: str) -> str:
        r = httpx.post(f"{self.url}/api/auth/token", data={"username": user, "password": "demo"})
        r.raise_for_status()
        return str(r.json()["access_token"])


@pytest.fixture
def thread_hub(demo_config: Path, tmp_path: Path) -> Iterator[ThreadHub]:
    """The hub in a background thread, stopped afterwards."""
    hub = ThreadHub(demo_config, tmp_path / "data")
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's chromium (never a downloaded browser) with a fresh profile directory."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is not installed (make test installs it)")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=exe, args=CHROMIUM_ARGS,
            locale="zh-CN", viewport={"width": 1280, "height": 800},
        )
        yield ctx
        ctx.close()


def fix(lon: float, lat: float, heading: float | None = None) -> str:
    data: dict[str, Any] = {"lat": lat, "lon": lon, "time": now_ms()}
    if heading is not None:
        data["heading"] = heading
    return json.dumps({"type": "telemetry", "data": data})


def centre(page: Any, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def inside(page: Any, point: tuple[float, float], selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    x, y = point
    return bool(box["x"] <= x <= box["x"] + box["width"]
                and box["y"] <= y <= box["y"] + box["height"])


def test_map_draws_grids_and_moves_a_unit(thread_hub: ThreadHub, browser: Any) -> None:
    """As operator, /map draws every demo grid; patrol-01's fix over the /ws fallback makes
    its marker appear inside cell g01, and the next fix moves it into g02 with a trail."""
    errors: list[str] = []
    foreign: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: None if req.url.startswith(
        (thread_hub.url, "ws://127.0.0.1", "data:")) else foreign.append(req.url))

    # Without a login the map points to the console's sign-in.
    page.goto(f"{thread_hub.url}/map")
    page.wait_for_selector("#map-login:not([hidden]) a#map-login-link[href='/']")

    # Sign in on the console (same tab: the token is kept in sessionStorage), open the map.
    page.goto(thread_hub.url)
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", "demo")
    page.click("#login-submit")
    page.wait_for_selector("#conn-status[data-state=live]", timeout=20_000)
    page.goto(f"{thread_hub.url}/map")
    page.wait_for_selector("#map[data-ready=true]", timeout=20_000)
    page.wait_for_selector("#conn-status[data-state=live]", timeout=20_000)

    site = load_config(DEMO)
    drawn = page.eval_on_selector_all("path.grid", "els => els.map(e => e.dataset.grid)")
    assert sorted(drawn) == sorted(g.id for g in site.grids)
    for g in ("zz-jinshui-jingba", G01, G02):
        assert page.get_attribute(f"path.grid[data-grid='{g}']", "d")
    assert page.is_visible(f"text.grid-label[data-grid='{G01}']")
    assert "黄河路社区 第一网格" in (page.text_content(f"text.grid-label[data-grid='{G01}']") or "")
    assert page.locator("g.unit").count() == 0  # no fix yet
    assert "巡逻一号车" in page.inner_text("#unit-list")

    marker = "g.unit[data-unit='patrol-01']"
    with connect(f"ws://127.0.0.1:{thread_hub.port}/ws?token={thread_hub.token('patrol-01')}",
                 open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        ws.send(fix(113.6675, 34.7675, heading=90))
        page.wait_for_selector(marker, timeout=15_000)
        assert page.get_attribute(marker, "data-lon") == "113.6675"
        assert page.get_attribute(marker, "data-lat") == "34.7675"
        assert page.get_attribute(marker, "data-heading") == "90"
        assert inside(page, centre(page, f"{marker} circle.dot"),
                      f"path.grid[data-grid='{G01}']")
        assert not inside(page, centre(page, f"{marker} circle.dot"),
                          f"path.grid[data-grid='{G02}']")

        ws.send(fix(113.6725, 34.7675))
        page.wait_for_function(
            "sel => document.querySelector(sel)?.dataset.lon === '113.6725'", arg=marker,
            timeout=15_000,
        )
    assert page.get_attribute(marker, "data-lat") == "34.7675"
    assert page.get_attribute(marker, "data-grid") == G02
    assert inside(page, centre(page, f"{marker} circle.dot"), f"path.grid[data-grid='{G02}']")
    assert page.get_attribute("polyline.trail[data-unit='patrol-01']", "data-points") == "2"
    assert "黄河路社区 第二网格" in page.inner_text("li.unit-row[data-unit='patrol-01']")

    page.click("#lang-toggle")
    page.wait_for_function("document.querySelector('#units-title').textContent === 'Patrol units'")
    assert "Cell" in page.inner_text("li.unit-row[data-unit='patrol-01']")
    assert errors == [] and foreign == []

