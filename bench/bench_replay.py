"""Replay seek time on loopback: the /replay page in Debian chromium, seeking in recorded
720p video by HTTP Range requests.

    .venv/bin/python bench/bench_replay.py [--seconds 300] [--cameras 2] [--seeks 30]

What it does: a hub (the whole app, ``build_app``; no detection worker) on 127.0.0.1;
``--cameras`` cameras of ``--seconds`` of 720p H.264 (25 fps, a keyframe every 25 frames,
~2 Mbit/s, made by ffmpeg) recorded by the real :class:`ingest.recorder.Recorder` into the
hub's recording index, as if they had been filmed in the minutes before; the /replay page
for the whole window (``?camera=&at=&cams=``) in chromium. Then, ``--seeks`` random times
each:

* ``seek``: the page's seek (``seekAll``: ``currentTime`` of every video) to the ``seeked``
  event of every video, and to the first frame painted (``requestVideoFrameCallback``);
* ``click``: a click on the timeline (``pointerdown``) to every video's ``seeked``.

Also the cut of the window (``GET /api/replay/{camera}/window``, not cached) and the Range
requests the browser made. Prints p50/p95/max in ms against the target (seek under
300 ms on loopback); asserts nothing.
"""

# ruff: noqa: T201

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import random
import shutil
import socket
import statistics
import tempfile
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
import yaml

from hub.cli import build_app
from hub.config import load_config
from hub.recordings import RecordingService
from hub.settings import Settings
from ingest.packets import StreamInfo, VideoPacket
from ingest.recorder import Recorder
from ingest.source import Source

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "tests" / "peers" / "rtsp_server.py"
FPS = 25
TARGET_MS = 300.0
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]

SEEK_JS = """async (wall) => {
  const videos = [...document.querySelectorAll(".replay-tile video")];
  const started = performance.now();
  const seeked = videos.map((v) => new Promise((ok) =>
    v.addEventListener("seeked", () => ok(performance.now() - started), {once: true})));
  const painted = videos.map((v) => Promise.race([
    new Promise((ok) => v.requestVideoFrameCallback(() => ok(performance.now() - started))),
    new Promise((ok) => setTimeout(() => ok(null), 5000))]));
  window.gridhubReplay.seek(wall);
  return {seeked: Math.max(...await Promise.all(seeked)),
          painted: (await Promise.all(painted)).reduce((a, b) => a === null || b === null
                   ? null : Math.max(a, b))};
}"""

ARM_CLICK_JS = """() => {
  const videos = [...document.querySelectorAll(".replay-tile video")];
  window.__clickDone = new Promise((ok) => {
    document.addEventListener("pointerdown", () => {
      const started = performance.now();
      Promise.race([
        Promise.all(videos.map((v) => new Promise((done) =>
          v.addEventListener("seeked", done, {once: true})))),
        new Promise((done) => setTimeout(done, 10000))])
        .then(() => ok(performance.now() - started));
    }, {once: true, capture: true});
  });
}"""


class _Src(Source):
    """Packets handed over by this script, as the RTSP source puts them (no thread)."""

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        pass


def _peer() -> Any:
    spec = importlib.util.spec_from_file_location("rtsp_server_peer", PEER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def record(svc: RecordingService, data: Path, cam: str, aus: list[bytes], is_idr: Any,
           seconds: int, t0: float) -> None:
    """Feed ``seconds`` of the looped clip to a real Recorder whose sink is the hub."""
    src = _Src(cam)
    rec = Recorder(src, data, svc, segment_s=60)
    rec.start()
    src.packets.set_info(StreamInfo("h264", 1280, 720, Fraction(1, 90000), None, FPS))
    for i in range(seconds * FPS):
        au = aus[i % len(aus)]
        ts = i * 90000 // FPS
        src.packets.put(VideoPacket(au, ts, ts, is_idr(au), time.monotonic(), t0 + i / FPS))
        if i % 50 == 49:
            time.sleep(0.01)  # the writer's queue holds 900 packets: stay well under
    rec.stop(30)
    if rec.status.queue_drops:
        print(f"warning: {cam}: {rec.status.queue_drops} packets dropped while feeding")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def line(name: str, ms: list[float]) -> str:
    return (f"  {name:<34} p50 {statistics.median(ms):6.0f} ms   p95 {pct(ms, 95):6.0f} ms"
            f"   max {max(ms):6.0f} ms   (target {TARGET_MS:.0f} ms: "
            f"{'met' if pct(ms, 95) < TARGET_MS else 'NOT met'} at p95)")


async def main(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    peer = _peer()
    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("Debian chromium is not installed (make test installs it)")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        clip = peer.make_clip(tmp / "720p.h264", width=1280, height=720, fps=FPS, seconds=10,
                              gop=FPS, preset="veryfast", bitrate="2M")
        aus = peer.access_units(clip.read_bytes())
        config = tmp / "config"
        shutil.copytree(ROOT / "configs" / "demo", config)
        cams = [f"cam-bench-{n}" for n in range(1, args.cameras + 1)]
        (config / "cameras.yaml").write_text(yaml.safe_dump({"cameras": [
            {"id": c, "name": c, "grid": "zz-jinshui-jingba-c1-g01",
             "position": [113.6675 + n * 1e-4, 34.7675],
             "source": {"type": "rtsp", "url": "rtsp://127.0.0.1:9/none"}}
            for n, c in enumerate(cams)]}), encoding="utf-8")
        site = load_config(config)
        data = tmp / "data"
        settings = Settings(config_dir=config, data_dir=data, port=0, with_worker=False)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(build_app(settings, site), log_level="warning",
                                               lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # uvicorn has no started event to wait on
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            app: Any = server.config.app
            svc = next(s for s in app.state.hub.services if isinstance(s, RecordingService))
            t0 = time.time() - args.seconds - 10
            began = time.perf_counter()
            await asyncio.gather(*(asyncio.to_thread(record, svc, data, c, aus, peer.is_idr,
                                                     args.seconds, t0) for c in cams))
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                r = await c.post("/api/auth/token", data={"username": "operator",
                                                          "password": "demo"})
                token = r.json()["access_token"]
                auth = {"Authorization": f"Bearer {token}"}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # the index is written on the hub's loop
                    items = (await c.get("/api/recordings", params={"camera": cams[-1]},
                                         headers=auth)).json()["items"]
                    if items and all(i["state"] == "complete" for i in items):
                        break
                    await asyncio.sleep(0.1)
                print(f"recorded {args.cameras} x {args.seconds} s of 720p25 in "
                      f"{time.perf_counter() - began:.1f} s")
                mid = t0 + args.seconds / 2
                half = args.seconds / 2
                q = {"from": datetime.fromtimestamp(mid - half, UTC).isoformat(),
                     "to": datetime.fromtimestamp(mid + half, UTC).isoformat()}
                cut_ms = []
                for cam in cams:  # the page's windows: cut here first, timed
                    began = time.perf_counter()
                    w = (await c.get(f"/api/replay/{cam}/window", params=q, headers=auth)).json()
                    cut_ms.append((time.perf_counter() - began) * 1000)
                print(f"window cut (GET /window, not cached): {args.seconds} s, "
                      f"{w['size'] / 1e6:.1f} MB, {statistics.mean(cut_ms):.0f} ms per camera")

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                ranges: list[str] = []
                page.on("request", lambda r: ranges.append(r.headers.get("range", "-"))
                        if "/api/replay/" in r.url and "/window" not in r.url else None)
                at = datetime.fromtimestamp(mid, UTC).isoformat()
                query = urlencode({"camera": cams[0], "at": at, "before": half, "after": half,
                                   "cams": ",".join(cams)})
                await page.goto(f"{url}/replay?{query}")
                await page.fill("input[name=username]", "operator")
                await page.fill("input[name=password]", "demo")
                await page.click("#login-submit")
                await page.wait_for_selector("#replay-view[data-state=ready]", timeout=60_000)
                await page.wait_for_function(
                    "() => [...document.querySelectorAll('.replay-tile')].every("
                    "t => t.dataset.state === 'ready')", timeout=60_000)
                rnd = random.Random(7)
                lo, hi = t0 + 1, t0 + args.seconds - 1
                await page.evaluate(SEEK_JS, lo + 5)  # warm up
                before = len(ranges)
                seek, painted = [], []
                for _ in range(args.seeks):
                    got = await page.evaluate(SEEK_JS, rnd.uniform(lo, hi))
                    seek.append(got["seeked"])
                    if got["painted"] is not None:
                        painted.append(got["painted"])
                seek_ranges = len(ranges) - before
                bar = await page.locator(".replay-bar").first.bounding_box()
                assert bar is not None
                clicks = []
                for _ in range(args.seeks):
                    await page.evaluate(ARM_CLICK_JS)
                    x = bar["x"] + rnd.uniform(0.01, 0.99) * bar["width"]
                    await page.mouse.click(x, bar["y"] + bar["height"] * 0.4)
                    clicks.append(await page.evaluate("window.__clickDone"))
                await browser.close()
        finally:
            server.should_exit = True
            await task
            sock.close()
    print(f"replay seeks, {args.cameras} camera(s) in sync, {args.seeks} random seeks each, "
          f"720p25 GOP 1 s, loopback, chromium {args.cameras} <video>:")
    print(line("seek -> seeked (all videos)", seek))
    if painted:
        print(line("seek -> first frame painted", painted))
    else:
        print("  seek -> first frame painted: requestVideoFrameCallback never fired")
    print(line("timeline click -> seeked (all)", clicks))
    print(f"  HTTP Range requests during the {args.seeks} seeks: {seek_ranges}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=300, help="recorded video per camera")
    ap.add_argument("--cameras", type=int, default=2, choices=[1, 2, 3, 4])
    ap.add_argument("--seeks", type=int, default=30)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(ap.parse_args()))
