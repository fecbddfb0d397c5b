"""Video wall benchmark: camera-to-screen latency and hub CPU for 1 vs 10 viewers of 16 feeds.

    .venv/bin/python bench/bench_wall.py [--seconds 20] [--size 640x360] [--skip-latency]

What runs where:

* the hub (API, /live router, 16 FileSources playing generated H.264 clips in real time,
  looped) in a child process of its own, so its CPU time (``/proc/<pid>/stat``, all
  threads) is measured alone; it includes the sources' demuxing and decoding (what a real
  camera source does for detection), the muxing and the fan-out;
* viewers: raw WebSocket clients (the ``websockets`` library, offering permessage-deflate
  as browsers do) in a second child process, reading every frame: 1 viewer = 16
  connections (one wall of 16 tiles), 10 viewers = 160 connections;
* latency: Debian chromium on /wall with 16 tiles. Each frame of the clips carries its
  frame number as a 12-bit barcode (a white/black box per bit, and the complement below
  it as a check). The page reads it back with requestVideoFrameCallback + canvas at the
  frame's expected display time; the hub records when each frame number entered the
  source's packet ring (the camera's arrival time). Latency = display time - arrival.

CPU figures are printed with uvicorn's permessage-deflate on (its default) and off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FPS = 15
BITS = 12
CLIP_S = 20  # the barcode repeats every CLIP_S seconds (frame numbers < FPS * CLIP_S)
N_FEEDS = 16
PATTERNS = ["testsrc", "testsrc2", "smptebars", "rgbtestsrc"]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--autoplay-policy=no-user-gesture-required",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


# --- clips -----------------------------------------------------------------------------------


def barcode_filter(width: int) -> str:
    """Frame number n as BITS boxes (white = 1) on a black bar, the complement below."""
    w = width // BITS
    parts = ["drawbox=x=0:y=0:w=iw:h=48:color=black:t=fill"]
    for k in range(BITS):
        bit = f"mod(floor(n/{2 ** k})\\,2)"
        parts.append(f"drawbox=x={k * w}:y=0:w={w}:h=24:color=white:t=fill:enable='eq({bit}\\,1)'")
        parts.append(f"drawbox=x={k * w}:y=24:w={w}:h=24:color=white:t=fill:enable='eq({bit}\\,0)'")
    return ",".join(parts)


def make_clips(out: Path, size: str) -> list[Path]:
    width = int(size.split("x")[0])
    clips = []
    for pat in PATTERNS:
        path = out / f"{pat}.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{pat}=size={size}:rate={FPS}",
             "-t", str(CLIP_S), "-vf", f"format=yuv420p,{barcode_filter(width)}",
             "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "0",
             "-g", str(2 * FPS), "-b:v", "600k", str(path)],
            check=True, timeout=600,
        )
        clips.append(path)
    return clips


def feed_ids() -> list[str]:
    return [f"cam-{i:02d}" for i in range(N_FEEDS)]


# --- the hub (child process) ---------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Child: the hub with the live router and 16 file sources; a /bench/frames endpoint."""
    import logging

    import uvicorn
    import yaml
    from fastapi import FastAPI

    from console.server import mount_console
    from hub.api_wall import mount_wall_api
    from hub.app import create_app
    from hub.config import load_config
    from hub.settings import Settings
    from ingest.file_source import FileSource
    from ingest.live import LiveHub
    from ingest.live_http import make_live_router
    from ingest.packets import StreamInfo, VideoPacket

    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    clips = sorted(Path(args.clips).glob("*.mp4"))
    config = work / "config"
    shutil.copytree(ROOT / "configs" / "demo", config, dirs_exist_ok=True)
    cams = [{"id": sid, "name": sid, "grid": "zz-jinshui-jingba-c1-g01",
             "source": {"type": "file", "path": str(clips[i % len(clips)])}}
            for i, sid in enumerate(feed_ids())]
    (config / "cameras.yaml").write_text(yaml.safe_dump({"cameras": cams}))
    sources = {c["id"]: FileSource(c["id"], Path(c["source"]["path"]), loop=True, realtime=True)
               for c in cams}
    arrivals: dict[str, deque[tuple[int, float]]] = {sid: deque(maxlen=4000) for sid in sources}

    def recorder(sid: str) -> Any:
        def on_packet(info: StreamInfo, pkt: VideoPacket) -> None:
            if pkt.pts is not None:
                n = round(float(pkt.pts * info.time_base) * FPS)
                arrivals[sid].append((n, pkt.wall))
        return on_packet

    for sid, src in sources.items():
        src.packets.subscribe(recorder(sid))
    live = LiveHub()

    def add_routes(app: FastAPI) -> None:
        app.include_router(make_live_router(
            verify_token=lambda tok: app.state.hub.accounts.verify(tok),
            get_source=sources.get, list_sources=lambda: list(sources), hub=live))

        @app.get("/bench/frames")
        async def frames() -> dict[str, list[tuple[int, float]]]:
            return {sid: list(d) for sid, d in arrivals.items()}

        @app.get("/bench/live")
        async def live_stats() -> dict[str, Any]:
            streams = live.streams()
            return {**live.report()["live"],
                    "mux_s": sum(s.mux_s for s in streams.values()),
                    "fragments": sum(s.fragments for s in streams.values())}

    settings = Settings(config_dir=config, data_dir=work / "data", port=args.port,
                        with_worker=False)
    app = create_app(settings, load_config(config), services=[lambda _s: live],
                     routers=[mount_console, mount_wall_api, add_routes])
    for src in sources.values():
        src.start()
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", ws=args.ws,
                    ws_per_message_deflate=args.deflate == "on")
    finally:
        for src in sources.values():
            src.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hub:
    def __init__(self, clips: Path, work: Path, deflate: bool, ws: str = "auto") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        self.log = (work / "hub.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", "--clips", str(clips), "--work", str(work),
             "--port", str(self.port), "--deflate", "on" if deflate else "off", "--ws", ws],
            stdout=self.log, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {(work / 'hub.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("hub did not start")
            time.sleep(0.2)
        self.token = self.get_token("operator")

    def get_token(self, user: str) -> str:
        import httpx

        r = httpx.post(f"{self.url}/api/auth/token", data={"username": user, "password": "demo"})
        r.raise_for_status()
        return str(r.json()["access_token"])

    def get(self, path: str) -> Any:
        import httpx

        return httpx.get(f"{self.url}{path}", timeout=10,
                         headers={"Authorization": f"Bearer {self.token}"}).json()

    def cpu_s(self) -> float:
        """User + system CPU seconds of the hub process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


# --- raw WebSocket viewers (child process) ---------------------------------------------------


def clients(args: argparse.Namespace) -> None:
    """Child: ``viewers`` x 16 connections reading everything until SIGTERM; counts to --out."""
    from websockets.asyncio.client import connect

    counts: dict[str, list[int]] = {}

    async def one(key: str, sid: str) -> None:
        url = f"ws://127.0.0.1:{args.port}/live/{sid}?token={args.token}"
        c = counts.setdefault(key, [0, 0, 0])  # messages, bytes, closes
        while True:
            try:
                async with connect(url, max_size=None, open_timeout=30) as ws:
                    async for msg in ws:
                        c[0] += 1
                        c[1] += len(msg)
            except OSError:
                pass
            except Exception as err:  # closed by the hub (too slow...): count, reconnect
                c[2] += 1
                print(f"{key}: {type(err).__name__}: {err}", file=sys.stderr)  # noqa: T201
            await asyncio.sleep(0.5)

    async def main() -> None:
        started = time.monotonic()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [asyncio.create_task(one(f"{v}/{sid}", sid))
                 for v in range(args.viewers) for sid in feed_ids()]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        report = json.dumps({"elapsed": time.monotonic() - started, "counts": counts})
        await asyncio.to_thread(Path(args.out).write_text, report)

    asyncio.run(main())


def measure_cpu(hub: Hub, viewers: int, seconds: float, work: Path) -> dict[str, Any]:
    out = work / f"clients-{viewers}.json"
    proc = subprocess.Popen(
        [sys.executable, __file__, "clients", "--port", str(hub.port), "--token", hub.token,
         "--viewers", str(viewers), "--out", str(out)])
    try:
        deadline = time.monotonic() + 60
        while hub.get("/bench/live")["viewers"] < viewers * N_FEEDS:
            if time.monotonic() > deadline:
                raise TimeoutError("viewers did not connect")
            time.sleep(0.2)
        time.sleep(3)  # settle: connection bursts (init + GOP) are not the steady state
        before_live = hub.get("/bench/live")
        c0, t0 = hub.cpu_s(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = hub.cpu_s(), time.monotonic()
        after_live = hub.get("/bench/live")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    report = json.loads(out.read_text())
    counts, elapsed = report["counts"], report["elapsed"]
    msgs = sum(v[0] for v in counts.values())
    return {
        "viewers": viewers, "connections": len(counts), "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        "mux_pct": 100 * (after_live["mux_s"] - before_live["mux_s"]) / (t1 - t0),
        "msgs_per_conn_s": msgs / len(counts) / elapsed,
        "skips": after_live["skips"], "dropped_viewers": after_live["dropped_viewers"],
        "closes": sum(v[2] for v in counts.values()),
    }


# --- latency in chromium -----------------------------------------------------------------------


PROBE_JS = """(bits) => {
  window.__lat = [];
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const watch = (tile) => {
    const video = tile.querySelector('video');
    const source = tile.dataset.source;
    const onFrame = (now, meta) => {
      if (meta.presentedFrames % 2 === 0 && video.videoWidth) {
        const w = video.videoWidth;
        canvas.width = w; canvas.height = 48;
        ctx.drawImage(video, 0, 0, w, 48, 0, 0, w, 48);
        const px = ctx.getImageData(0, 0, w, 48).data;
        const bw = Math.floor(w / bits);
        let n = 0, ok = true;
        for (let k = 0; k < bits; k++) {
          const x = k * bw + (bw >> 1);
          const top = px[(12 * w + x) * 4] > 128, bottom = px[(36 * w + x) * 4] > 128;
          if (top === bottom) { ok = false; break; }
          if (top) n |= 1 << k;
        }
        if (ok) window.__lat.push([source, n, performance.timeOrigin + meta.expectedDisplayTime]);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  };
  document.querySelectorAll('.tile').forEach(watch);
  return 'requestVideoFrameCallback' in HTMLVideoElement.prototype;
}"""


def measure_latency(hub: Hub, seconds: float) -> dict[str, Any]:
    import httpx
    from playwright.sync_api import sync_playwright

    ids = feed_ids()
    httpx.put(f"{hub.url}/api/me/wall-layout", json={"tiles": 16, "sources": ids},
              headers={"Authorization": f"Bearer {hub.token}"}).raise_for_status()
    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("Debian chromium is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.add_init_script(
                f"sessionStorage.setItem('gridhub.token', {json.dumps(hub.token)})")
            page.goto(f"{hub.url}/wall")
            page.wait_for_function(
                "window.gridhubWall && window.gridhubWall.tiles().length === 16 && "
                "window.gridhubWall.tiles().every(t => t.state === 'playing')", timeout=60_000)
            time.sleep(2)  # settle at the live edge
            assert page.evaluate(PROBE_JS, BITS), "no requestVideoFrameCallback"
            time.sleep(seconds)
            samples = page.evaluate("window.__lat")
            tiles = page.evaluate("window.gridhubWall.tiles()")
        finally:
            browser.close()
    arrivals = hub.get("/bench/frames")
    lat: list[float] = []
    per_feed: dict[str, list[float]] = {}
    for sid, n, shown_ms in samples:
        shown = shown_ms / 1000
        cands = [w for (m, w) in arrivals.get(sid, []) if m == n and w <= shown + 0.05]
        if cands:
            v = shown - max(cands)
            lat.append(v)
            per_feed.setdefault(sid, []).append(v)
    if not lat:
        raise SystemExit("no latency samples decoded")
    lat.sort()
    return {
        "samples": len(lat), "decoded_barcodes": len(samples),
        "median_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * len(lat))],
        "max_ms": 1000 * lat[-1],
        "worst_feed_median_ms": 1000 * max(statistics.median(v) for v in per_feed.values()),
        "feeds_measured": len(per_feed),
        "frames_dropped_by_page": sum(t["dropped"] or 0 for t in tiles),
        "frames_decoded_by_page": sum(t["frames"] or 0 for t in tiles),
    }


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    sv = sub.add_parser("serve")
    sv.add_argument("--clips", required=True)
    sv.add_argument("--work", required=True)
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--deflate", choices=["on", "off"], default="off")
    sv.add_argument("--ws", default="auto")
    cl = sub.add_parser("clients")
    cl.add_argument("--port", type=int, required=True)
    cl.add_argument("--token", required=True)
    cl.add_argument("--viewers", type=int, required=True)
    cl.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=20, help="CPU window per phase")
    ap.add_argument("--latency-seconds", type=float, default=15)
    ap.add_argument("--size", default="640x360", help="Clip size")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--deflate", choices=["off", "on", "both"], default="both",
                    help="uvicorn permessage-deflate for the CPU phases")
    ap.add_argument("--ws", default="auto", help="uvicorn WebSocket implementation")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
        return
    if args.cmd == "clients":
        clients(args)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-wall-"))
    try:
        t0 = time.monotonic()
        clips = work / "clips"
        clips.mkdir()
        make_clips(clips, args.size)
        print(f"clips: {len(PATTERNS)} x {CLIP_S}s {args.size} H.264 @ {FPS} fps, "  # noqa: T201
              f"{N_FEEDS} feeds ({time.monotonic() - t0:.0f}s to generate)")
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.deflate]
        for deflate in modes:
            hub = Hub(clips, work / f"hub-{'deflate' if deflate else 'plain'}", deflate, args.ws)
            try:
                if not args.skip_latency and not deflate:
                    r = measure_latency(hub, args.latency_seconds)
                    print(  # noqa: T201
                        f"latency, chromium /wall, 16 tiles: median {r['median_ms']:.0f} ms, "
                        f"p95 {r['p95_ms']:.0f} ms, max {r['max_ms']:.0f} ms, worst feed median "
                        f"{r['worst_feed_median_ms']:.0f} ms ({r['samples']} samples, "
                        f"{r['feeds_measured']} feeds; page decoded "
                        f"{r['frames_decoded_by_page']} frames, dropped "
                        f"{r['frames_dropped_by_page']})")
                one = measure_cpu(hub, 1, args.seconds, work)
                ten = measure_cpu(hub, 10, args.seconds, work)
            finally:
                hub.stop()
            label = "permessage-deflate ON " if deflate else "permessage-deflate off"
            for r in (one, ten):
                print(  # noqa: T201
                    f"cpu [{label}] {r['viewers']:>2} viewer(s) x 16 feeds "
                    f"({r['connections']} raw WS clients): hub {r['cpu_pct']:.1f}% of a core "
                    f"(muxing {r['mux_pct']:.2f}%), {r['msgs_per_conn_s']:.1f} msgs/s per "
                    f"connection, skips {r['skips']}, dropped {r['dropped_viewers']}, "
                    f"client-seen closes {r['closes']}")
            extra_msgs = (ten["msgs_per_conn_s"] * ten["connections"]
                          - one["msgs_per_conn_s"] * one["connections"])
            marginal_us = 1e4 * (ten["cpu_pct"] - one["cpu_pct"]) / extra_msgs
            print(f"cpu [{label}] ratio 10 viewers / 1 viewer: "  # noqa: T201
                  f"{ten['cpu_pct'] / one['cpu_pct']:.2f} (target < 1.3); marginal cost "
                  f"{marginal_us:.0f} us of hub CPU per message to an extra viewer")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
