"""The detection worker: sources -> sampled frames -> model -> tracker -> rules -> bus.

One inference thread serves every camera round-robin at ``detect_fps`` per camera
(inference never runs on the event loop). Rule events become
:class:`IncidentCandidate` messages with a snapshot, published durably; camera health
is broadcast every two seconds. In ``gridhub run`` the worker shares the process with
the hub; ``gridhub worker`` (scaled set-up) runs it alone against Redis.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import supervision as sv
from pydantic import ValidationError

from detectors.backends import Backend, make_backend
from detectors.pipeline import DetectionPipeline
from detectors.rules import RuleEvent
from detectors.water import WaterSegmenter, make_water
from hub.bus import Bus, BusError, CameraHealth, IncidentCandidate
from hub.bus.messages import CameraChanged
from hub.config import CameraConfig, Site
from hub.tasks import cancel_and_wait, listen_forever
from ingest import Frame, Source, make_source

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 2.0
STALE_FRAME_S = 5.0


def clip_window(started: datetime, pre_s: float = 10.0, post_s: float = 30.0
                ) -> tuple[datetime, datetime]:
    """The evidence clip window around an event's start."""
    return started - timedelta(seconds=pre_s), started + timedelta(seconds=post_s)


def draw_snapshot(frame: np.ndarray, det: sv.Detections, ev: RuleEvent,
                  water: np.ndarray | None = None) -> bytes:
    """JPEG of the frame with every person box, the water (flooding) and the event drawn."""
    img = frame.copy()
    if ev.type == "flooding" and water is not None and water.shape[:2] == img.shape[:2]:
        tint = img.copy()
        tint[water] = (0.5 * tint[water] + (128, 64, 0)).astype(np.uint8)
        img = tint
    for poly in ev.polygons:
        cv2.polylines(img, [np.array(poly, np.int32)], True, (255, 128, 0), 2)
    meaning = det.data.get("meaning", np.array([], dtype=object))
    for i in range(len(det)):
        x1, y1, x2, y2 = (int(v) for v in det.xyxy[i])
        colour = (0, 0, 255) if meaning[i] == "person_down" else (80, 200, 80)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
    x1, y1 = 8, 40
    if ev.box is not None:
        x1, y1, x2, y2 = (int(v) for v in ev.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 255), 4)
    text = f"{ev.type} {ev.confidence:.2f}"
    if "coverage" in ev.attributes:
        text += f" {100 * ev.attributes['coverage']:.0f}%"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.8, 2)
    y1 = max(th + 10, y1)
    cv2.rectangle(img, (x1, y1 - th - 10), (x1 + tw + 8, y1), (0, 0, 255), -1)
    cv2.putText(img, text, (x1 + 4, y1 - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                (255, 255, 255), 2, cv2.LINE_AA)
    return encode_jpeg(img)


def encode_jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())


def detection_list(det: sv.Detections, class_names: list[str]) -> list[dict[str, object]]:
    """Every detection of a frame as plain data (kept with the frame as a labelled example)."""
    meaning = det.data.get("meaning", np.array([None] * len(det), dtype=object))
    out: list[dict[str, object]] = []
    for i in range(len(det)):
        cid = int(det.class_id[i]) if det.class_id is not None else -1
        out.append({
            "box": [round(float(v), 1) for v in det.xyxy[i]],
            "class": class_names[cid] if 0 <= cid < len(class_names) else None,
            "meaning": meaning[i],
            "confidence": round(float(det.confidence[i]), 3)
            if det.confidence is not None else None,
        })
    return out


@dataclass
class CameraPipeline:
    """Per-source detection state: sampling, tracker, rules (a camera or a patrol unit)."""

    source_id: str
    camera: CameraConfig | None  # None for a patrol unit's stream
    source: Source
    detection: DetectionPipeline
    next_due: float = 0.0


class Worker:
    """Runs the sources and the detection loop of a site's cameras and patrol units.

    Cameras come from ``cameras()`` at start and follow :class:`CameraChanged` messages
    afterwards (added, changed: source restarted, removed: source stopped). Other sources
    (patrol streams) are attached and detached by whoever owns them.
    """

    def __init__(
        self, site: Site, bus: Bus, data_dir: Path, backend: Backend | None = None,
        cameras: Callable[[], list[CameraConfig]] | None = None,
    ) -> None:
        self.site = site
        self.bus = bus
        self.data_dir = data_dir
        self.backend = backend
        self.water: WaterSegmenter | None = None
        self._initial_cameras = cameras or (lambda: list(site.cameras))
        self._pipelines: dict[str, CameraPipeline] = {}
        self._plock = threading.Lock()
        self._changes_task: asyncio.Task[None] | None = None
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claim_lock = threading.Lock()
        self._claimed: set[str] = set()
        self._own_backend = False
        self._frame_conf: dict[str, float] = {}  # event id -> confidence of the frame sent
        self._err_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health_task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------

    def load_model(self) -> None:
        """Load the backend now (raises ModelError naming the file)."""
        if self.backend is None:
            self.backend = make_backend(self.site.rules.detector, self.site.root)
            self._own_backend = True
        if self.water is None and self.site.rules.flooding.enabled:
            self.water = make_water(self.site.rules.flooding.water, self.site.root)

    @property
    def pipelines(self) -> list[CameraPipeline]:
        with self._plock:
            return list(self._pipelines.values())

    def source(self, source_id: str) -> Source | None:
        """A running source by camera or unit id (for the live wall)."""
        with self._plock:
            p = self._pipelines.get(source_id)
        return p.source if p else None

    def source_ids(self) -> list[str]:
        with self._plock:
            return list(self._pipelines)

    def attach(self, source: Source, camera: CameraConfig | None = None) -> None:
        """Run detection on a started source, replacing one with the same id (whose owner
        stops it)."""
        assert self.backend is not None, "load_model() first"
        pipe = CameraPipeline(source.source_id, camera, source, DetectionPipeline(
            source.source_id, self.site.rules, self.backend, camera, self.water))
        with self._plock:
            old = self._pipelines.get(source.source_id)
            self._pipelines[source.source_id] = pipe
        if old is not None and old.source is not source:
            log.warning("worker: source %s replaced while still attached", source.source_id)
        log.info("worker: source %s attached (%s)", source.source_id, source.kind)

    def detach(self, source_id: str) -> Source | None:
        """Stop detecting on a source (the caller stops the source, if it owns it)."""
        with self._plock:
            p = self._pipelines.pop(source_id, None)
        if p is not None:
            log.info("worker: source %s detached", source_id)
        return p.source if p else None

    def _start_camera(self, cam: CameraConfig) -> None:
        src = make_source(cam, self.site.root, self.data_dir)
        src.start()
        self.attach(src, cam)

    async def apply(self, change: CameraChanged) -> None:
        """Follow a run-time camera change: start, restart or stop its source. A change
        that leaves the source as it was (name, zones, position) keeps it running."""
        cam: CameraConfig | None = None
        if change.camera is not None:
            try:
                cam = CameraConfig.model_validate(change.camera)
            except ValidationError as err:
                log.error("camera %s: change ignored, invalid: %s", change.camera_id, err)
                return
        with self._plock:
            current = self._pipelines.get(change.camera_id)
            if (cam is not None and cam.enabled and current is not None
                    and current.camera is not None and current.camera.source == cam.source):
                if current.camera.zones != cam.zones:
                    current.detection.reconfigure(cam)
                current.camera = cam
                log.info("camera %s: settings changed, stream kept", cam.id)
                return
        old = self.detach(change.camera_id)
        if old is not None:
            await asyncio.to_thread(old.stop)
        if cam is not None and cam.enabled and not self._stop.is_set():
            await asyncio.to_thread(self._start_camera, cam)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.load_model)
        # Listen before starting cameras so no change made meanwhile is missed.
        ready = asyncio.Event()
        self._changes_task = asyncio.create_task(self._follow_changes(ready), name="cam-changes")
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, self._changes_task}, timeout=10)
        waiter.cancel()
        if not ready.is_set():
            log.warning("worker: not yet listening for camera changes (bus down?); retrying")
        for cam in self._initial_cameras():
            if not cam.enabled:
                continue
            self._start_camera(cam)
        n = self.site.rules.detect_workers
        self._threads = [threading.Thread(target=self._infer_loop, name=f"inference-{i}",
                                          daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()
        self._health_task = asyncio.create_task(self._health_loop(), name="camera-health")
        log.info("worker: %d camera(s), detection at %.1f Hz", len(self._pipelines),
                 self.site.rules.detect_fps)

    async def _follow_changes(self, ready: asyncio.Event) -> None:
        """Camera changes from the bus (changes made while the bus is away are missed until
        the worker restarts; the hub stores them)."""
        await listen_forever(self.bus, CameraChanged, ready, self.apply, "worker: camera changes")

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait([self._health_task, self._changes_task])
        # Stop every source at once: one stuck in a slow connect must not hold up the rest.
        await asyncio.gather(*(asyncio.to_thread(p.source.stop) for p in self.pipelines))
        for t in self._threads:
            await asyncio.to_thread(t.join, 10)
        if self._own_backend and self.backend is not None:
            self.backend.close()

    # --- health -------------------------------------------------------------------------

    def health(self) -> list[CameraHealth]:
        out = []
        now = time.time()
        for p in self.pipelines:
            if p.camera is None:
                continue  # patrol streams report through their own service
            h = p.source.health
            status, reason = h.status, h.reason
            if status == "online" and h.last_frame_at is not None and (
                now - h.last_frame_at.timestamp() > STALE_FRAME_S
            ):
                status, reason = "degraded", "no frame for over 5 s"
            out.append(
                CameraHealth(
                    camera_id=p.camera.id, status=status, reason=reason, fps=round(h.fps, 1),
                    bitrate_kbps=round(h.bitrate_kbps, 1), frames=h.frames, dropped=h.dropped,
                    decode_errors=h.decode_errors, reconnects=h.reconnects,
                    last_frame_at=h.last_frame_at, codec=h.codec, width=h.width,
                    height=h.height,
                )
            )
        return out

    def report(self) -> dict[str, dict[str, object]]:
        """Detector figures for /api/health."""
        ms = sorted(m for p in self.pipelines for m in p.detection.infer_ms)
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads)
        return {
            "detector": {
                "status": "ok" if alive and self.backend is not None else "down",
                "model": str(getattr(self.backend, "path", "")) or None,
                "detect_fps": self.site.rules.detect_fps,
                "inferences": sum(p.detection.inferences for p in self.pipelines),
                "frames_skipped_static": sum(p.detection.gate.skipped for p in self.pipelines
                                             if p.detection.gate is not None),
                "infer_ms_p50": round(ms[len(ms) // 2], 1) if ms else None,
                "errors": self.errors,
                "last_error": self.last_error,
                "active_events": sum(p.detection.active_events for p in self.pipelines),
            }
        }

    async def _health_loop(self) -> None:
        while True:
            for msg in self.health():
                try:
                    await self.bus.broadcast(msg)
                except (BusError, OSError) as err:
                    log.warning("worker: health broadcast failed: %s", err)
            await asyncio.sleep(HEALTH_EVERY_S)

    # --- detection ----------------------------------------------------------------------

    def _claim(self, period: float) -> list[tuple[CameraPipeline, Frame]]:
        """The due sources no other loop holds, most overdue first, with their newest
        frames; they stay this loop's until released (one loop per source at a time)."""
        now = time.monotonic()
        out: list[tuple[CameraPipeline, Frame]] = []
        with self._claim_lock:
            due = sorted((p for p in self.pipelines  # a copy: sources come and go meanwhile
                          if p.source_id not in self._claimed and now >= p.next_due),
                         key=lambda p: p.next_due)
            for p in due:
                if len(out) >= self.site.rules.detect_batch:
                    break
                frame = p.source.slot.take()
                if frame is None:
                    continue
                p.next_due = max(p.next_due + period, now)
                self._claimed.add(p.source_id)
                out.append((p, frame))
        return out

    def _infer_loop(self) -> None:
        """Take the sources that are due; their frames that pass the motion gate go through
        the model together (one batch), then each source's tracker and rules run on its own.
        Several such loops may run (``detect_workers``), each on different sources."""
        period = 1.0 / self.site.rules.detect_fps
        while not self._stop.is_set():
            claimed = self._claim(period)
            if not claimed:
                self._stop.wait(0.01)
                continue
            try:
                self._detect(claimed)
            finally:
                with self._claim_lock:
                    self._claimed.difference_update(p.source_id for p, _ in claimed)

    def _detect(self, claimed: list[tuple[CameraPipeline, Frame]]) -> None:
        ready: list[tuple[CameraPipeline, Frame, np.ndarray]] = []
        for p, frame in claimed:
            try:
                ready.append((p, frame, frame.image()))
            except Exception as err:  # an undecodable frame: counted, the rest go on
                self._failed(p, err)
        need = [(p, f, img) for p, f, img in ready
                if p.detection.gate is None or p.detection.gate.moved(img, f.t)]
        dets: dict[str, sv.Detections] = {}
        if need:
            try:
                assert self.backend is not None
                t0 = time.perf_counter()
                found = self.backend.detect_batch([img for _, _, img in need])
                ms = (time.perf_counter() - t0) * 1000 / len(need)
                for (p, _, _), d in zip(need, found, strict=True):
                    p.detection.note_inference(d, ms)
                    dets[p.source_id] = d
            except Exception as err:
                for p, _, _ in need:
                    self._failed(p, err)
                return
        for p, frame, img in ready:
            det = dets.get(p.source_id, p.detection.last_detections)
            try:
                out = p.detection.step(img, frame.t, frame.wall, det)
                for ev in out.events:
                    self._publish(p, img, out.detections, ev, out.water)
            except Exception as err:  # one bad frame or camera never stops the others
                self._failed(p, err)

    def _failed(self, p: CameraPipeline, err: Exception) -> None:
        with self._err_lock:  # several detection loops
            self.errors += 1
            self.last_error = f"{p.source_id}: {type(err).__name__}: {err}"
        log.error("source %s: detection step failed", p.source_id, exc_info=err)

    def _publish(self, p: CameraPipeline, img: np.ndarray, det: sv.Detections, ev: RuleEvent,
                 water: np.ndarray | None) -> None:
        snapshot = frame = None
        if ev.phase != "end":
            snapshot = draw_snapshot(img, det, ev, water)
            # The plain frame only when the hub may keep it (the event's best so far): it
            # is large, and the bus holds many messages.
            if ev.confidence > self._frame_conf.get(ev.event_id, -1.0):
                self._frame_conf[ev.event_id] = ev.confidence
                frame = encode_jpeg(img, 92)
        else:
            self._frame_conf.pop(ev.event_id, None)
        start, end = clip_window(ev.started_wall)
        msg = IncidentCandidate(
            event_id=ev.event_id, phase=ev.phase, type=ev.type, camera_id=p.source_id,
            zone=ev.zone, at=ev.wall, started_at=ev.started_wall,
            confidence=round(min(1.0, max(0.0, ev.confidence)), 4),
            boxes=[ev.box] if ev.box is not None else [], polygons=ev.polygons,
            attributes=ev.attributes, frame_size=(img.shape[1], img.shape[0]),
            track_id=ev.track_id, snapshot_jpeg=snapshot, frame_jpeg=frame,
            detections=detection_list(det, self.backend.class_names if self.backend else [])
            if frame is not None else [],
            clip_start=start, clip_end=end,
        )
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.bus.publish(msg), self._loop)
        fut.result(timeout=30)
        log.info("source %s: %s %s %s zone %s (conf %.2f, track %s)", p.source_id, ev.type,
                 ev.phase, ev.event_id[:8], ev.zone, ev.confidence, ev.track_id)
