"""The detection worker with several detection loops: every camera is served, by one loop
at a time, and both loops run the model."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
import supervision as sv
import yaml

from detectors.backends.base import Backend, empty_detections
from detectors.worker import Worker
from hub.bus import make_bus
from hub.config import load_config


def moving_clip(path: Path, seconds: float = 2.0, fps: int = 10) -> Path:
    """A small H.264 clip of a white square crossing a grey field (the gate sees motion)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((96, 160, 3), 90, np.uint8)
            x = (i * 7) % 130
            img[30:60, x : x + 30] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


class Recorder(Backend):
    """Records which thread ran which source's frames, and overlaps per source."""

    class_names = ["person"]

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: set[str] = set()
        self.calls = 0
        self.concurrent = 0
        self.max_concurrent = 0

    def detect(self, frame: np.ndarray) -> sv.Detections:
        return empty_detections()

    def detect_batch(self, frames: list[np.ndarray]) -> list[sv.Detections]:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.calls += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        time.sleep(0.05)
        with self.lock:
            self.concurrent -= 1
        return [empty_detections() for _ in frames]


async def test_two_detection_loops_share_the_cameras(demo_config: Path, tmp_path: Path) -> None:
    clip = moving_clip(tmp_path / "m.mp4")
    grid = yaml.safe_load((demo_config / "cameras.yaml").read_text())["cameras"][0]["grid"]
    (demo_config / "cameras.yaml").write_text(yaml.safe_dump({"cameras": [
        {"id": f"c{i}", "name": f"c{i}", "grid": grid,
         "source": {"type": "file", "path": str(clip)}} for i in range(4)]}))
    rules = yaml.safe_load((demo_config / "rules.yaml").read_text())
    rules.update(detect_workers=2, detect_batch=1, detect_fps=4)
    rules["flooding"] = {"enabled": False}
    (demo_config / "rules.yaml").write_text(yaml.safe_dump(rules))
    site = load_config(demo_config)
    bus = make_bus(None)
    await bus.start()
    rec = Recorder()
    worker = Worker(site, bus, tmp_path / "data", backend=rec)
    steps: dict[str, list[str]] = {}
    active: set[str] = set()
    overlap: list[str] = []
    await worker.start()
    try:
        for p in worker.pipelines:
            real = p.detection.step

            def step(*a: object, _real: object = real, _sid: str = p.source_id) -> object:
                if _sid in active:
                    overlap.append(_sid)
                active.add(_sid)
                try:
                    steps.setdefault(_sid, []).append(threading.current_thread().name)
                    return _real(*a)  # type: ignore[operator]
                finally:
                    active.discard(_sid)

            p.detection.step = step  # type: ignore[method-assign]
        await asyncio.sleep(3.0)
        report = worker.report()["detector"]
    finally:
        await worker.stop()
        await bus.close()
    assert report["status"] == "ok" and worker.errors == 0, worker.last_error
    assert sorted(steps) == ["c0", "c1", "c2", "c3"]
    # 4 Hz for about 3 s each; the model is called from both loops, and at once.
    assert all(len(v) >= 8 for v in steps.values()), {k: len(v) for k, v in steps.items()}
    assert rec.threads == {"inference-0", "inference-1"}
    assert rec.max_concurrent == 2
    assert overlap == []  # never two loops on one camera


async def test_claims_are_exclusive_and_most_overdue_first(demo_config: Path,
                                                           tmp_path: Path) -> None:
    """A camera claimed by one loop is not handed to another until released, however
    overdue; claims go most overdue first, at most detect_batch at a time."""
    from types import SimpleNamespace

    from detectors.worker import CameraPipeline
    from ingest.frames import Frame

    rules = yaml.safe_load((demo_config / "rules.yaml").read_text())
    rules.update(detect_batch=2)
    (demo_config / "rules.yaml").write_text(yaml.safe_dump(rules))
    site = load_config(demo_config)
    worker = Worker(site, make_bus(None), tmp_path / "d", backend=Recorder())

    class Always:
        def take(self) -> Frame:  # a source that always has a new frame
            return Frame(seq=0, t=0.0, wall=datetime.now(UTC),
                         array=np.zeros((8, 8, 3), np.uint8))

    now = time.monotonic()
    for i, overdue in enumerate([1.0, 5.0, 3.0, 0.5]):
        src = SimpleNamespace(source_id=f"c{i}", slot=Always())
        worker._pipelines[f"c{i}"] = CameraPipeline(
            f"c{i}", None, src, None, next_due=now - overdue)  # type: ignore[arg-type]
    first = [p.source_id for p, _ in worker._claim(0.5)]
    second = [p.source_id for p, _ in worker._claim(0.5)]
    assert first == ["c1", "c2"] and second == ["c0", "c3"]
    for p in worker.pipelines:  # all overdue again, but all held
        p.next_due = 0.0
    assert worker._claim(0.5) == []
    worker._claimed.discard("c2")
    assert [p.source_id for p, _ in worker._claim(0.5)] == ["c2"]
