"""Cameras added, changed and removed at run time through the API, with a real worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningHub, running_hub


@pytest.fixture
def empty_site(demo_config: Path) -> Path:
    """The demo configuration without its demo camera."""
    (demo_config / "cameras.yaml").write_text("cameras: []\n", encoding="utf-8")
    return demo_config


async def login(c: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await c.post("/api/auth/token", data={"username": user, "password": "demo"})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def wait_camera(
    c: httpx.AsyncClient, h: dict[str, str], cam_id: str, pred: Any, within_s: float = 20
) -> dict[str, Any]:
    """Poll GET /api/cameras/{id} until ``pred(camera)`` holds (health comes every 2 s)."""
    async with asyncio.timeout(within_s):
        while True:
            r = await c.get(f"/api/cameras/{cam_id}", headers=h)
            if r.status_code == 200 and pred(r.json()):
                return dict(r.json())
            await asyncio.sleep(0.2)


@pytest.fixture
async def hub(empty_site: Path, tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with running_hub(empty_site, tmp_path / "data", with_worker=True) as h:
        yield h


UNREACHABLE = "rtsp://admin:s3cret@127.0.0.1:9/stream1"  # discard port: nothing listens


async def test_add_unreachable_camera_shows_offline_with_reason(hub: RunningHub) -> None:
    """An unreachable URL is accepted (201), shown offline with a reason, password masked."""
    async with httpx.AsyncClient(base_url=hub.url) as c:
        admin = await login(c, "admin")
        body = {"id": "cam-new", "name": "新摄像头", "url": UNREACHABLE,
                "grid": "zz-jinshui-jingba-c1-g01"}
        r = await c.post("/api/cameras", json=body, headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["url"] == "rtsp://admin:***@127.0.0.1:9/stream1"
        assert "s3cret" not in r.text
        cam = await wait_camera(c, admin, "cam-new", lambda x: x["status"] == "offline"
                                and x["reason"] not in (None, "starting"))
        assert cam["kind"] == "rtsp"
        listed = (await c.get("/api/cameras", headers=admin)).json()
        assert [x["id"] for x in listed] == ["cam-new"]
        for user in ("operator", "civil-affairs", "patrol-01"):  # addresses: admins only
            seen = (await c.get("/api/cameras", headers=await login(c, user))).json()
            assert seen[0]["id"] == "cam-new" and seen[0]["url"] is None, user
        assert (await c.get("/api/health")).status_code == 200  # the hub is fine


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"id": "c1", "name": "x", "url": "http://x/", "grid": "zz-jinshui-jingba-c1-g01"},
         422, "url"),
        ({"id": "c1", "name": "x", "url": "rtsp://h/", "grid": "nowhere"}, 422, "unknown grid"),
        ({"id": "c 1", "name": "x", "url": "rtsp://h/", "grid": "zz-jinshui-jingba-c1-g01"},
         422, "id"),
        ({"id": "c1", "name": "x", "url": "rtsp://h/", "grid": "zz-jinshui-jingba-c1-g01",
          "colour": "red"}, 422, "colour"),
        ({"id": "patrol-01", "name": "x", "url": "rtsp://h/", "grid": "zz-jinshui-jingba-c1-g01"},
         422, "patrol unit"),
        ({"id": "c1", "name": "x", "url": "rtsp://h/", "grid": "zz-jinshui-jingba-c1-g01",
          "zones": [{"id": "z", "polygon": [[0, 0], [2, 0], [0, 1]]}]}, 422, "between 0 and 1"),
    ],
)
async def test_invalid_cameras_are_refused(
    hub: RunningHub, body: dict[str, Any], status: int, needle: str
) -> None:
    """A bad camera is refused with a status and a reason naming the problem."""
    async with httpx.AsyncClient(base_url=hub.url) as c:
        admin = await login(c, "admin")
        r = await c.post("/api/cameras", json=body, headers=admin)
        assert r.status_code == status, r.text
        assert needle in r.text
        assert (await c.get("/api/cameras", headers=admin)).json() == []


async def test_only_admin_changes_cameras(hub: RunningHub) -> None:
    """Operators can read cameras but not change them; no token is 401."""
    body = {"id": "c1", "name": "x", "url": UNREACHABLE, "grid": "zz-jinshui-jingba-c1-g01"}
    async with httpx.AsyncClient(base_url=hub.url) as c:
        op = await login(c, "operator")
        assert (await c.post("/api/cameras", json=body, headers=op)).status_code == 403
        assert (await c.post("/api/cameras", json=body)).status_code == 401
        assert (await c.patch("/api/cameras/c1", json={"name": "y"}, headers=op)).status_code \
            == 403
        assert (await c.delete("/api/cameras/c1", headers=op)).status_code == 403
        assert (await c.get("/api/cameras", headers=op)).status_code == 200


async def test_change_remove_and_conflicts(hub: RunningHub) -> None:
    """PATCH changes fields and keeps the rest; duplicate id is 409; unknown id is 404."""
    body = {"id": "c1", "name": "x", "url": UNREACHABLE, "grid": "zz-jinshui-jingba-c1-g01"}
    async with httpx.AsyncClient(base_url=hub.url) as c:
        admin = await login(c, "admin")
        assert (await c.post("/api/cameras", json=body, headers=admin)).status_code == 201
        assert (await c.post("/api/cameras", json=body, headers=admin)).status_code == 409
        r = await c.patch("/api/cameras/c1", json={"name": "改名", "transport": "udp"},
                          headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "改名"
        assert r.json()["url"] == "rtsp://admin:***@127.0.0.1:9/stream1"
        assert (await c.patch("/api/cameras/zz", json={"name": "y"}, headers=admin)) \
            .status_code == 404
        assert (await c.patch("/api/cameras/c1", json={"grid": "nowhere"}, headers=admin)) \
            .status_code == 422
        assert (await c.patch("/api/cameras/c1", json={"bogus": 1}, headers=admin)) \
            .status_code == 422
        assert (await c.delete("/api/cameras/c1", headers=admin)).status_code == 204
        assert (await c.delete("/api/cameras/c1", headers=admin)).status_code == 404
        assert (await c.get("/api/cameras", headers=admin)).json() == []
        workers = [s for s in hub.state.services if hasattr(s, "source_ids")]  # type: ignore[attr-defined]
        assert workers and workers[0].source_ids() == []


async def test_changes_survive_a_restart(empty_site: Path, tmp_path: Path) -> None:
    """Cameras added, changed and removed at run time are still so after a restart,
    including removal of a camera that came from cameras.yaml."""
    (empty_site / "cameras.yaml").write_text(
        "cameras:\n  - {id: yaml-cam, name: Y, grid: zz-jinshui-jingba-c1-g01,\n"
        "     source: {type: rtsp, url: 'rtsp://127.0.0.1:9/y'}}\n", encoding="utf-8",
    )
    data = tmp_path / "data"
    body = {"id": "c1", "name": "x", "url": UNREACHABLE, "grid": "zz-jinshui-jingba-c1-g01"}
    async with running_hub(empty_site, data, with_worker=True) as h, \
            httpx.AsyncClient(base_url=h.url) as c:
        admin = await login(c, "admin")
        assert [x["id"] for x in (await c.get("/api/cameras", headers=admin)).json()] == [
            "yaml-cam"]
        assert (await c.post("/api/cameras", json=body, headers=admin)).status_code == 201
        assert (await c.patch("/api/cameras/c1", json={"name": "改"}, headers=admin)) \
            .status_code == 200
        assert (await c.delete("/api/cameras/yaml-cam", headers=admin)).status_code == 204
    async with running_hub(empty_site, data, with_worker=True) as h, \
            httpx.AsyncClient(base_url=h.url) as c:
        admin = await login(c, "admin")
        cams = (await c.get("/api/cameras", headers=admin)).json()
        assert [(x["id"], x["name"]) for x in cams] == [("c1", "改")]
        await wait_camera(c, admin, "c1", lambda x: x["status"] == "offline")


def _peer() -> Any:
    import importlib.util

    path = Path(__file__).parent / "peers" / "rtsp_server.py"
    spec = importlib.util.spec_from_file_location("rtsp_server_peer_api", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def test_real_rtsp_camera_added_changed_removed(hub: RunningHub, tmp_path: Path) -> None:
    """A camera added over the API against GStreamer's RTSP server comes online with its
    figures; pointed at a dead URL it goes offline with a reason; removed, its source stops."""
    peer = _peer()
    clip = peer.make_clip(tmp_path / "c.h264", width=640, height=360, fps=15, seconds=4)
    server = peer.ServerProcess(["--h264", str(clip), "--fps", "15"], tmp_path / "rtsp.log")
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(base_url=hub.url) as c:
            admin = await login(c, "admin")
            body = {"id": "cam-rtsp", "name": "RTSP", "url": server.url("/cam"),
                    "grid": "zz-jinshui-jingba-c1-g01"}
            assert (await c.post("/api/cameras", json=body, headers=admin)).status_code == 201
            cam = await wait_camera(c, admin, "cam-rtsp",
                                    lambda x: x["status"] == "online" and x["frames"] > 0)
            assert (cam["width"], cam["height"], cam["codec"]) == (640, 360, "h264")
            assert cam["fps"] > 0 and cam["bitrate_kbps"] > 0
            worker = next(s for s in hub.state.services if hasattr(s, "source_ids"))  # type: ignore[attr-defined]
            async with asyncio.timeout(20):  # the detector runs on the RTSP camera too
                while not any(p.source_id == "cam-rtsp" and p.detection.inferences > 0  # noqa: ASYNC110
                              for p in worker.pipelines):  # a counter on a thread: polled
                    await asyncio.sleep(0.1)
            running = worker.source("cam-rtsp")
            r = await c.patch("/api/cameras/cam-rtsp", json={"name": "改名", "zones": [
                {"id": "road", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}]}, headers=admin)
            assert r.status_code == 200, r.text
            assert worker.source("cam-rtsp") is running, "a rename must not reconnect"
            assert next(p for p in worker.pipelines if p.source_id == "cam-rtsp") \
                .camera.name == "改名"
            r = await c.patch("/api/cameras/cam-rtsp", json={"url": UNREACHABLE}, headers=admin)
            assert r.status_code == 200, r.text
            await wait_camera(c, admin, "cam-rtsp", lambda x: x["status"] == "offline"
                              and x["reason"] not in (None, "starting"))
            assert worker.source("cam-rtsp") is not running, "a new URL is a new stream"
            assert (await c.delete("/api/cameras/cam-rtsp", headers=admin)).status_code == 204
            assert worker.source_ids() == []
    finally:
        await asyncio.to_thread(server.kill)


async def test_concurrent_patches_both_apply(hub: RunningHub) -> None:
    """Two PATCHes at once, one of the URL and one of the transport, both take effect."""
    body = {"id": "c1", "name": "x", "url": UNREACHABLE, "grid": "zz-jinshui-jingba-c1-g01"}
    other = "rtsp://127.0.0.1:9/other"
    async with httpx.AsyncClient(base_url=hub.url) as c:
        admin = await login(c, "admin")
        assert (await c.post("/api/cameras", json=body, headers=admin)).status_code == 201
        a, b = await asyncio.gather(
            c.patch("/api/cameras/c1", json={"url": other}, headers=admin),
            c.patch("/api/cameras/c1", json={"transport": "udp"}, headers=admin),
        )
        assert a.status_code == b.status_code == 200
        cam = hub.state.camera_registry.get("c1")  # type: ignore[attr-defined]
        assert (cam.source.url, cam.source.transport) == (other, "udp")
