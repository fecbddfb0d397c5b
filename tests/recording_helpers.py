"""Shared set-up of the tests with a recorded camera (test_recording,
test_evidence_browser): the real GStreamer RTSP server peer, a configuration with
recording settings, waiting, signing in. (The async ``chromium`` fixture of the browser
tests is in conftest.py.)"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from hub.recordings import RecordingService
from ingest.recorder import RecorderStatus, Segment
from ingest.source import Source
from tests.conftest import RunningHub

PEER = Path(__file__).parent / "peers" / "rtsp_server.py"
CAM = "cam-rtsp"


def _load_peer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rtsp_server_peer_rec", PEER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


peer = _load_peer()


async def until(pred: Callable[[], Awaitable[Any]], within_s: float, what: str) -> Any:
    """Wait for ``pred()`` to return something truthy (checked every 100 ms)."""
    try:
        async with asyncio.timeout(within_s):
            while True:
                got = await pred()
                if got:
                    return got
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"timed out after {within_s} s waiting for {what}")


async def login(c: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await c.post("/api/auth/token", data={"username": user, "password": "demo"})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def service(hub: RunningHub) -> RecordingService:
    return next(s for s in hub.state.services  # type: ignore[attr-defined]
                if isinstance(s, RecordingService))


def with_recording(config: Path, cameras: list[dict[str, Any]] | None, **rec: Any) -> Path:
    """The config folder with ``cameras`` (None: unchanged) and recording settings."""
    if cameras is not None:
        (config / "cameras.yaml").write_text(yaml.safe_dump({"cameras": cameras}),
                                             encoding="utf-8")
    rules = yaml.safe_load((config / "rules.yaml").read_text(encoding="utf-8"))
    rules["recording"] = {**rules.get("recording", {}), **rec}
    (config / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True),
                                       encoding="utf-8")
    return config


def rtsp_camera(url: str) -> dict[str, Any]:
    return {"id": CAM, "name": "RTSP", "grid": "zz-jinshui-jingba-c1-g01",
            "position": [113.6675, 34.7675], "source": {"type": "rtsp", "url": url}}


class FedSource(Source):
    """A source fed by the test itself (packets of a real clip, as the RTSP source puts
    them): no thread of its own."""

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        pass


class RecordingSink:
    """Collects what a Recorder reports (closed segments, status changes)."""

    def __init__(self) -> None:
        self.closed: list[Segment] = []
        self.statuses: list[RecorderStatus] = []

    def segment_opened(self, seg: Segment) -> None:
        pass

    def segment_progress(self, seg: Segment) -> None:
        pass

    def segment_closed(self, seg: Segment) -> None:
        self.closed.append(seg)

    def status_changed(self, status: RecorderStatus) -> None:
        self.statuses.append(status)
