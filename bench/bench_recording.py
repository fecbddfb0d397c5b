"""Recording, clip and evidence export figures (stream copy: nothing is decoded or encoded).

    .venv/bin/python bench/bench_recording.py [--seconds 120] [--clip-s 60]
        [--live-seconds 60] [--scale-cameras 4] [--scale-seconds 30] [--repeats 1]

Prints, asserts nothing (about 3.5 minutes with the defaults, most of it the live runs):

* recorder CPU per 720p camera, fed: a 720p@15 H.264 stream at ~2 Mbit/s (1 s GOP, Annex
  B access units as the RTSP source puts them into its ring) is fed to a real
  :class:`ingest.recorder.Recorder` as fast as it takes it; the process CPU time spent
  per second of video (listener, queue, writer thread, file writes; no RTSP client). A
  lower bound: the writer takes the packets in batches, without a wake-up per packet
  (paced at 15 fps the same feed costs about 4 times as much; the live figure below);
* clip export: a ``--clip-s`` clip cut by :func:`ingest.segments.cut_clip` from the 60 s
  segments written above (median of 5, warm page cache);
* recorder CPU per camera, live: the real GStreamer RTSP server
  (``tests/peers/rtsp_server.py`` under Debian's ``/usr/bin/python3``) serves the same
  clip, looped at 15 fps; real :class:`ingest.rtsp.RtspSource` sessions (TCP, loopback)
  run for ``--live-seconds`` without a recorder, then with a :class:`Recorder` on each
  source's packet ring writing real 60 s segments (``--repeats`` > 1 alternates the
  order). Each source's main stream is record-only (as with a camera that has a
  ``sub_url``: nothing is decoded; decoding for detection is ``bench_rtsp.py``'s figure
  and would only bury this one in noise). Measured over the window only, after the
  connects and the first segment opened; the stop (last fragment, fsync) is not counted,
  a segment change inside the window (its fsync) is, as once a minute in service.
  Printed: this process's CPU time per second of wall time with and without, the
  difference ("recording cost", per camera), and the CPU time of the recorders' own
  writer threads (``rec-<camera>``, read with ``pthread_getcpuclockid``; CPython 3.11 does
  not name OS threads, so they are found by their ``threading`` name). The difference
  also holds the listener's queue put on the RTSP thread and everything else that
  differs between the two runs (other work on the machine, page cache, GC): it is noisy;
  the writer threads' share is the steadier figure. The server's CPU is shown, not
  counted. Then the same with ``--scale-cameras`` sessions at once for
  ``--scale-seconds`` (0: skip);
* evidence bundle: an incident with a 720p snapshot and frame is raised on a real hub
  (``build_app`` on uvicorn, in this process, SQLite store, in-memory bus, no worker) and
  the ``--clip-s`` clip above is put where the recording service puts incident clips
  (``<data>/clips/<incident>.mp4``); ``POST /api/incidents/{id}/export`` as a reviewer,
  timed from the request to the last byte received (median of 5; the timeline entry, the
  bundle written to the data folder, then streamed over loopback); the bundle writer
  (:func:`hub.evidence.write_bundle`) alone on the same members; then
  :func:`hub.evidence_verify.verify_bundle` on the bundle in this process (median of 5)
  and ``gridhub verify`` as a user runs it (a new process, median of 3).
"""

# ruff: noqa: T201

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.packets import StreamInfo, VideoPacket  # noqa: E402
from ingest.recorder import Recorder  # noqa: E402
from ingest.rtsp import RtspSource  # noqa: E402
from ingest.segments import cut_clip  # noqa: E402
from tests.recording_helpers import FedSource, RecordingSink  # noqa: E402

PEER = ROOT / "tests" / "peers" / "rtsp_server.py"
DEMO = ROOT / "configs" / "demo"
GRIDHUB = Path(sys.executable).with_name("gridhub")
W, H, FPS = 1280, 720, 15




def load_peer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rtsp_server_peer", PEER)
    assert spec and spec.loader
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    return peer


def wait_until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout} s")
        tick.wait(0.05)


def ms(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, "
            f"max {max(values) * 1000:.0f}, n={len(values)})")


# --- fed: packets into a Recorder as fast as it takes them ---------------------------------


def fed(peer: ModuleType, clip: Path, d: Path, seconds: int) -> tuple[list[Path], float]:
    """(segment paths, wall time of the first packet) after recording ``seconds``."""
    aus = peer.access_units(clip.read_bytes())
    n = seconds * FPS
    src, sink = FedSource("cam"), RecordingSink()
    rec = Recorder(src, d / "data", sink, segment_s=60)
    rec.start()
    src.packets.set_info(StreamInfo("h264", W, H, Fraction(1, 90000), None, FPS))
    t0 = time.time() - seconds - 5
    packets = [VideoPacket(aus[i % len(aus)], i * 90000 // FPS, i * 90000 // FPS,
                           peer.is_idr(aus[i % len(aus)]), time.monotonic(), t0 + i / FPS)
               for i in range(n)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, p in enumerate(packets):
        src.packets.put(p)
        if i % 64 == 0:  # let the writer keep up (the queue holds 900 packets)
            while rec._q.qsize() > 600:
                time.sleep(0.001)
    rec.stop(timeout=60)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    size = sum(s.size for s in sink.closed)
    print(f"fed: recorded {seconds} s of {H}p@{FPS} ({size * 8 / seconds / 1e6:.1f} Mbit/s) "
          f"into {len(sink.closed)} segments in {wall:.2f} s wall")
    print(f"fed: recorder CPU per camera: {cpu / seconds * 100:.2f} % of one core "
          f"({cpu * 1000 / n:.3f} ms per frame; no RTSP client, no real-time pacing)")
    return [s.path for s in sink.closed], t0


# --- live: real RTSP sessions, with and without a recorder ---------------------------------


def thread_cpu(name: str) -> float:
    """CPU seconds of this process's thread called ``name`` (threading's name)."""
    th = next(t for t in threading.enumerate() if t.name == name)
    assert th.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(th.ident))


def pid_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Live:
    cameras: int
    recording: bool
    wall: float
    process: float  # CPU seconds of this process in the window
    rtsp: float  # ... of the RTSP stream threads
    writers: float  # ... of the recorders' writer threads
    server: float  # ... of the RTSP server process
    packets: int  # received, all cameras
    written: int  # bytes the recorders wrote in the window
    queue_drops: int
    segments: int

    def share(self, cpu: float) -> float:
        """% of one core per camera."""
        return cpu / self.wall / self.cameras * 100


def live_run(server: Any, n: int, seconds: float, data: Path | None) -> Live:
    """``n`` record-only RTSP sessions for ``seconds``; with recorders when ``data``."""
    srcs = [RtspSource(f"cam{i}", server.url()) for i in range(n)]
    for s in srcs:
        # Record-only main stream, as for a camera with a sub_url: nothing is decoded.
        s._legs[0].decode = False
    recs = [Recorder(s, data, RecordingSink(), segment_s=60) for s in srcs] if data else []
    for r in recs:
        r.start()
    for s in srcs:
        s.start()
    try:
        wait_until(lambda: all(s.packets.total_packets >= 2 * FPS for s in srcs), 30)
        wait_until(lambda: all(r.status.state == "recording" for r in recs), 10)
        rtsp_names = [f"rtsp-{s.source_id}-main" for s in srcs]
        rec_names = [f"rec-{s.source_id}" for s in srcs] if recs else []

        def sample() -> tuple[float, ...]:
            return (time.monotonic(), time.process_time(),
                    sum(thread_cpu(t) for t in rtsp_names),
                    sum(thread_cpu(t) for t in rec_names), pid_cpu(server.proc.pid),
                    sum(s.packets.total_packets for s in srcs),
                    sum(r.status.bytes for r in recs))

        a = sample()
        threading.Event().wait(seconds)  # the measuring window
        b = sample()
        d = [y - x for x, y in zip(a, b, strict=True)]
        return Live(n, bool(recs), d[0], d[1], d[2], d[3], d[4], int(d[5]), int(d[6]),
                    sum(r.status.queue_drops for r in recs),
                    sum(r.status.segments for r in recs))
    finally:
        for s in srcs:
            s.stop()
        for r in recs:
            r.stop(timeout=30)
        if data:
            shutil.rmtree(data, ignore_errors=True)


def live(server: Any, d: Path, n: int, seconds: float, repeats: int) -> None:
    for rep in range(repeats):
        order = (False, True) if rep % 2 == 0 else (True, False)
        runs = {rec: live_run(server, n, seconds, d / "live" if rec else None)
                for rec in order}
        off, on = runs[False], runs[True]
        head = f"live, {n} camera{'s' if n > 1 else ''}, {seconds:.0f} s each"
        if repeats > 1:
            head += f", run {rep + 1} of {repeats} ({'without' if order[0] is False else 'with'}"
            head += " first)"
        print(head + ":")
        for r in (off, on):
            extra = ""
            if r.recording:
                extra = (f", writer thread{'s' if n > 1 else ''} {r.share(r.writers):.2f} %, "
                         f"{r.written * 8 / r.wall / n / 1e6:.2f} Mbit/s written per camera, "
                         f"{r.segments} segment(s), {r.queue_drops} queue drops")
            print(f"  {'with' if r.recording else 'without'} recorder: process "
                  f"{r.share(r.process):.2f} % of one core per camera (RTSP threads "
                  f"{r.share(r.rtsp):.2f} %{extra}); {r.packets / r.wall / n:.1f} packets/s "
                  f"per camera; server {r.share(r.server):.1f} % per camera (not counted)")
        print(f"  recording cost = with - without = "
              f"{on.share(on.process) - off.share(off.process):+.2f} % of one core per camera "
              f"(noisy); the recorder's writer thread alone: {on.share(on.writers):.2f} % "
              f"per camera")


# --- evidence: a bundle through the real API ------------------------------------------------


def jpegs(clip: Path) -> tuple[bytes, bytes]:
    """(snapshot with a box drawn, frame without): JPEGs of a 720p frame of ``clip``."""
    import av
    import cv2

    with av.open(str(clip)) as c:
        img = next(c.decode(video=0)).to_ndarray(format="bgr24")
    frame = bytes(cv2.imencode(".jpg", img)[1])
    cv2.rectangle(img, (500, 200), (780, 620), (0, 0, 255), 3)
    cv2.putText(img, "person_down 0.82", (500, 190), cv2.FONT_HERSHEY_SIMPLEX, 1.0,
                (0, 0, 255), 2)
    return bytes(cv2.imencode(".jpg", img)[1]), frame


@dataclass
class Exported:
    bundle: Path
    api: list[float]
    members: list[Any]
    manifest: dict[str, Any]
    key: Any


async def export_via_api(clip: Path, d: Path, n: int) -> Exported:
    import httpx

    from hub.bus import IncidentCandidate
    from hub.evidence import find_evidence, incident_members, timeline_rows
    from tests.conftest import running_hub

    config, data = d / "config", d / "hub-data"
    await asyncio.to_thread(shutil.copytree, DEMO, config)
    snapshot, frame = await asyncio.to_thread(jpegs, clip)
    bundle = d / "bundle.zip"
    async with running_hub(config, data) as hub, httpx.AsyncClient(
            base_url=hub.url, timeout=60) as c:
        async def login(user: str) -> dict[str, str]:
            r = await c.post("/api/auth/token", data={"username": user, "password": "demo"})
            r.raise_for_status()
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        reviewer = await login("reviewer")
        now = datetime.now(UTC)
        await hub.state.bus.publish(IncidentCandidate(  # type: ignore[attr-defined]
            event_id="bench-evidence", phase="start", type="person_down",
            camera_id="cam-jingba-01", at=now, started_at=now, confidence=0.82,
            boxes=[(500, 200, 780, 620)], frame_size=(W, H), track_id=1,
            snapshot_jpeg=snapshot, frame_jpeg=frame, clip_start=now, clip_end=now))
        iid = None
        async with asyncio.timeout(15):
            while iid is None:
                r = await c.get("/api/incidents", headers=reviewer)
                r.raise_for_status()
                iid = next((i["id"] for i in r.json()["items"]), None)
                await asyncio.sleep(0.05)
        # Where the recording service puts an incident's clip, and its evidence hook finds it.
        await asyncio.to_thread((data / "clips").mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, clip, data / "clips" / f"{iid}.mp4")
        times = []
        for i in range(n):
            started = time.perf_counter()
            async with c.stream("POST", f"/api/incidents/{iid}/export", headers=reviewer,
                                json={"reason": f"bench export {i + 1}"}) as r:
                r.raise_for_status()
                body = [chunk async for chunk in r.aiter_bytes()]
            times.append(time.perf_counter() - started)
        await asyncio.to_thread(bundle.write_bytes, b"".join(body))
        # The same members for the bundle writer alone.
        state = hub.state  # type: ignore[attr-defined]
        svc = find_evidence(state)
        assert svc is not None
        inc = await state.store.get(iid)
        timeline = await timeline_rows(state.store, iid)
        clips = await asyncio.to_thread(svc.clip_files, inc)
        members = await incident_members(state.store, inc, timeline, clips)
        manifest = {"format": "gridhub-evidence/1", "incident_id": iid,
                    "exported_at": timeline[-1]["at"], "reason": "bench"}
        return Exported(bundle, times, members, manifest, svc.key)


def evidence(clip: Path, d: Path, n: int) -> None:
    from hub.evidence import write_bundle
    from hub.evidence_verify import verify_bundle

    ex = asyncio.run(export_via_api(clip, d, n))
    size = ex.bundle.stat().st_size
    kinds = ", ".join(f"{m.path} {(m.file.stat().st_size if m.file else len(m.data)) / 1e3:.0f} kB"
                      for m in ex.members)
    print(f"evidence bundle: {size / 1e6:.1f} MB ({kinds})")
    print(f"evidence export, POST /api/incidents/{{id}}/export to the last byte received: "
          f"{ms(ex.api)}")
    writes = []
    for _ in range(n):
        with tempfile.TemporaryFile(dir=d) as out:
            started = time.perf_counter()
            write_bundle(out, ex.members, ex.manifest, ex.key)
            writes.append(time.perf_counter() - started)
    print(f"evidence bundle writer alone (hub.evidence.write_bundle, same members): {ms(writes)}")
    checks, ok = [], True
    for _ in range(n):
        started = time.perf_counter()
        ok = verify_bundle(ex.bundle).ok and ok
        checks.append(time.perf_counter() - started)
    print(f"verify_bundle in this process ({'OK' if ok else 'FAILED'}): {ms(checks)}")
    runs, codes = [], set()
    for _ in range(3):
        started = time.perf_counter()
        p = subprocess.run([str(GRIDHUB), "verify", str(ex.bundle)], capture_output=True,
                           timeout=120, check=False)
        runs.append(time.perf_counter() - started)
        codes.add(p.returncode)
    print(f"`gridhub verify` as a new process (exit {'/'.join(map(str, sorted(codes)))}): "
          f"{ms(runs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=120, help="video to record, fed")
    ap.add_argument("--clip-s", type=float, default=60.0)
    ap.add_argument("--live-seconds", type=float, default=60.0,
                    help="each live run with one camera (0: skip the live runs)")
    ap.add_argument("--scale-cameras", type=int, default=4)
    ap.add_argument("--scale-seconds", type=float, default=30.0,
                    help="each live run with --scale-cameras cameras (0: skip)")
    ap.add_argument("--repeats", type=int, default=1, help="live pairs of runs")
    ap.add_argument("--exports", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    peer = load_peer()
    print(f"recording bench: {W}x{H}@{FPS} H.264 (x264 veryfast, 2 Mbit/s, 1 s GOP), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        d = Path(tmp)
        src = peer.make_clip(d / "720p.h264", width=W, height=H, fps=FPS, seconds=10,
                             preset="veryfast", bitrate="2M")
        paths, t0 = fed(peer, src, d, args.seconds)
        times = []
        clip_path = d / "clip.mp4"
        for _ in range(5):
            started = time.perf_counter()
            clip = cut_clip(paths, t0 + 30.3, t0 + 30.3 + args.clip_s, clip_path)
            times.append(time.perf_counter() - started)
        print(f"clip export ({clip.duration_s:.1f} s, {clip.size / 1e6:.1f} MB, stream copy): "
              f"{ms(times)}")

        if args.live_seconds > 0:
            server = peer.ServerProcess(["--h264", str(src), "--fps", str(FPS)],
                                        d / "server.log")
            server.start()
            try:
                live(server, d, 1, args.live_seconds, args.repeats)
                if args.scale_cameras > 1 and args.scale_seconds > 0:
                    live(server, d, args.scale_cameras, args.scale_seconds, args.repeats)
            finally:
                server.kill()
            print(f"({os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.2f}: the "
                  f"with - without difference is noisy where other work shares the cores; "
                  f"the writer thread's share is the steadier figure)")

        evidence(clip_path, d, args.exports)


if __name__ == "__main__":
    main()
