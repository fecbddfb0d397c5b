"""RTSP source figures against the real GStreamer RTSP server (tests/peers/rtsp_server.py).

    .venv/bin/python bench/bench_rtsp.py [--connects 10] [--streams 4] [--seconds 10]

Prints, asserts nothing:

* time to first decoded frame: ``RtspSource.start()`` to the first frame in its slot,
  median of N fresh connects (TCP and UDP), 720p@15 H.264 with a 1 s GOP; also joining
  a shared pipeline mid-GOP (waits for the next keyframe);
* recovery: the server is SIGKILLed and started again on the same port; time from the
  restart to new frames (and from the server being ready), right away and after a
  longer outage (the backoff has grown by then);
* decoding capacity, 720p@15 streams per core: PyAV's own decode-only ceiling on the
  clip (single-threaded, CPU time per frame) next to N RtspSources decoding live
  streams (this process's CPU time over wall time; the server's CPU is not counted).
"""

# A bench script prints its figures (T201 is for the application code).
# ruff: noqa: T201

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402

from ingest.rtsp import RtspSource  # noqa: E402

W, H, FPS = 1280, 720, 15


def load_peer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rtsp_server_peer", ROOT / "tests" / "peers" / "rtsp_server.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def wait_until(pred: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    tick = threading.Event()
    while not pred():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met in {timeout} s")
        tick.wait(0.002)
    return time.monotonic() - start


def first_frame_shared(peer: ModuleType, clip: Path, d: Path, n: int) -> list[float]:
    """First frames when joining a running shared pipeline (mid-GOP, as many cameras)."""
    server = peer.ServerProcess(["--h264", str(clip), "--fps", str(FPS), "--shared"],
                                d / "shared.log")
    server.start()
    anchor = RtspSource("anchor", server.url())
    anchor.start()
    try:
        wait_until(lambda: anchor.health.frames >= 1, 10)
        out = []
        for _ in range(n):
            # Join at a random point of the 1 s GOP (back-to-back joins would all land
            # just after a keyframe).
            threading.Event().wait(random.uniform(0, 1))
            out.append(first_frame(server.url(), "tcp"))
        return out
    finally:
        anchor.stop()
        server.kill()


def first_frame(url: str, transport: str) -> float:
    src = RtspSource("bench", url, transport=transport)  # type: ignore[arg-type]
    t0 = time.monotonic()
    src.start()
    try:
        wait_until(lambda: src.health.frames >= 1, 10)
        return time.monotonic() - t0
    finally:
        src.stop()


def recovery(server: object, outage_s: float) -> tuple[float, float]:
    src = RtspSource("bench", server.url())  # type: ignore[attr-defined]  # default backoff
    src.start()
    try:
        wait_until(lambda: src.health.status == "online", 10)
        server.kill()  # type: ignore[attr-defined]
        wait_until(lambda: src.health.status == "offline", 10)
        threading.Event().wait(outage_s)  # the outage being measured, not a wait for state
        frames = src.health.frames
        t0 = time.monotonic()
        server.start()  # type: ignore[attr-defined]
        ready = time.monotonic()
        wait_until(lambda: src.health.status == "online" and src.health.frames > frames, 30)
        done = time.monotonic()
        return done - t0, done - ready
    finally:
        src.stop()


def decode_ceiling(clip: Path) -> float:
    """Frames per CPU-second decoding the clip with PyAV alone, one thread."""
    frames = 0
    cpu = 0.0
    for _ in range(3):
        with av.open(str(clip)) as c:
            vs = c.streams.video[0]
            vs.codec_context.thread_type = "NONE"
            vs.codec_context.thread_count = 1
            t0 = time.thread_time()
            for pkt in c.demux(vs):
                frames += len(pkt.decode())
            cpu += time.thread_time() - t0
    return frames / cpu


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live_capacity(server: object, n: int, seconds: float) -> tuple[float, float, float]:
    """(CPU share per stream, mean fps per stream, server CPU share per stream)."""
    url = server.url()  # type: ignore[attr-defined]
    srcs = [RtspSource(f"bench{i}", url) for i in range(n)]
    for s in srcs:
        s.start()
    try:
        wait_until(lambda: all(s.health.frames >= 5 for s in srcs), 20)
        f0 = [s.health.frames for s in srcs]
        pid = server.proc.pid  # type: ignore[attr-defined]
        c0, s0, w0 = time.process_time(), cpu_seconds(pid), time.monotonic()
        threading.Event().wait(seconds)  # the measuring window
        c1, s1, w1 = time.process_time(), cpu_seconds(pid), time.monotonic()
        fps = statistics.mean(
            (s.health.frames - a) / (w1 - w0) for s, a in zip(srcs, f0, strict=True))
        return (c1 - c0) / (w1 - w0) / n, fps, (s1 - s0) / (w1 - w0) / n
    finally:
        for s in srcs:
            s.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--connects", type=int, default=10)
    ap.add_argument("--recoveries", type=int, default=3)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    peer = load_peer()
    with tempfile.TemporaryDirectory(prefix="bench-rtsp-") as tmp:
        d = Path(tmp)
        clip = peer.make_clip(d / "720p.h264", width=W, height=H, fps=FPS, seconds=10,
                              preset="veryfast", bitrate="2M")
        server = peer.ServerProcess(["--h264", str(clip), "--fps", str(FPS)], d / "server.log")
        server.start()
        try:
            print(f"RTSP source bench: {W}x{H}@{FPS} H.264 (x264 veryfast, 2 Mbit/s, "
                  f"1 s GOP), GStreamer RTSP server on 127.0.0.1, {os.cpu_count()} CPUs")
            for transport in ("tcp", "udp"):
                t = [first_frame(server.url(), transport) for _ in range(args.connects)]
                print(f"time to first decoded frame, {transport}: median "
                      f"{statistics.median(t) * 1000:.0f} ms (min {min(t) * 1000:.0f}, "
                      f"max {max(t) * 1000:.0f}, n={len(t)})")
            t = first_frame_shared(peer, clip, d, args.connects)
            print(f"time to first decoded frame, tcp, joining a shared stream mid-GOP: median "
                  f"{statistics.median(t) * 1000:.0f} ms (min {min(t) * 1000:.0f}, "
                  f"max {max(t) * 1000:.0f}, n={len(t)})")
            for outage in (0.0, 5.0):
                r = [recovery(server, outage) for _ in range(args.recoveries)]
                print(f"recovery after SIGKILL + restart on the same port, outage "
                      f"{outage:.0f} s: "
                      f"median {statistics.median(x for x, _ in r):.2f} s from restart, "
                      f"{statistics.median(y for _, y in r):.2f} s from server ready "
                      f"(max {max(x for x, _ in r):.2f} s, n={len(r)})")
            ceiling = decode_ceiling(clip)
            print(f"PyAV decode-only ceiling: {ceiling:.0f} frames per CPU-second = "
                  f"{ceiling / FPS:.1f} streams of {H}p@{FPS} per core")
            share, fps, server_share = live_capacity(server, args.streams, args.seconds)
            print(f"RtspSource, {args.streams} live streams for {args.seconds:.0f} s: "
                  f"{share * 100:.1f}% of a core per stream at {fps:.1f} fps = "
                  f"{1 / share:.1f} streams of {H}p@{FPS} per core "
                  f"(server: {server_share * 100:.1f}% of a core per stream)")
        finally:
            server.kill()


if __name__ == "__main__":
    main()
