"""Recording and clip figures (stream copy: nothing is decoded or encoded).

    .venv/bin/python bench/bench_recording.py [--seconds 120] [--clip-s 60]

Prints, asserts nothing:

* recorder CPU per 720p camera: a 720p@15 H.264 stream at ~2 Mbit/s (1 s GOP, Annex B
  access units as the RTSP source puts them into its ring) is fed to a real
  :class:`ingest.recorder.Recorder` as fast as it takes it; the process CPU time spent
  per second of video is the share of one core a live camera costs (listener, queue,
  writer thread, file writes; the RTSP client itself is not counted);
* clip export: a ``--clip-s`` clip cut by :func:`ingest.segments.cut_clip` from the 60 s
  segments written above (median of 5).
"""

# ruff: noqa: T201

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from ingest.packets import StreamInfo, VideoPacket
from ingest.recorder import Recorder, RecorderStatus, Segment
from ingest.segments import cut_clip
from ingest.source import Source

PEER = Path(__file__).resolve().parents[1] / "tests" / "peers" / "rtsp_server.py"
FPS = 15


class _Src(Source):
    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.closed: list[Segment] = []

    def segment_opened(self, seg: Segment) -> None:
        pass

    def segment_progress(self, seg: Segment) -> None:
        pass

    def segment_closed(self, seg: Segment) -> None:
        self.closed.append(seg)

    def status_changed(self, status: RecorderStatus) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120, help="video to record")
    ap.add_argument("--clip-s", type=float, default=60.0)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("peer", PEER)
    assert spec and spec.loader
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        clip = peer.make_clip(d / "720p.h264", width=1280, height=720, fps=FPS, seconds=10,
                              preset="veryfast", bitrate="2M")
        aus = peer.access_units(clip.read_bytes())
        n = args.seconds * FPS
        src, sink = _Src("cam"), _Sink()
        rec = Recorder(src, d / "data", sink, segment_s=60)
        rec.start()
        src.packets.set_info(StreamInfo("h264", 1280, 720, Fraction(1, 90000), None, FPS))
        t0 = time.time() - args.seconds - 5
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
        print(f"recorded {args.seconds} s of 720p@{FPS} ({size * 8 / args.seconds / 1e6:.1f} "
              f"Mbit/s) into {len(sink.closed)} segments in {wall:.2f} s wall")
        print(f"recorder CPU per camera: {cpu / args.seconds * 100:.2f} % of one core "
              f"({cpu * 1000 / n:.3f} ms per frame)")
        paths = [s.path for s in sink.closed]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            c = cut_clip(paths, t0 + 30.3, t0 + 30.3 + args.clip_s, d / "clip.mp4")
            times.append(time.perf_counter() - started)
        print(f"clip export ({c.duration_s:.1f} s, {c.size / 1e6:.1f} MB, stream copy): "
              f"median {statistics.median(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
