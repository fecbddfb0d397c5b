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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import supervision as sv
from pydantic import ValidationError
from trackers import ByteTrackTracker

from detectors.backends import Backend, make_backend
from detectors.person_down import PersonDown, RuleEvent, clip_window
from hub.bus import Bus, BusError, CameraHealth, IncidentCandidate
from hub.bus.messages import CameraChanged
from hub.config import CameraConfig, Site
from ingest import Frame, Source, make_source

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 2.0
STALE_FRAME_S = 5.0


def make_tracker(detect_fps: float) -> ByteTrackTracker:
    return ByteTrackTracker(
        frame_rate=detect_fps,
        # ByteTrack keeps a lost track for int(frame_rate / 30 * lost_track_buffer) updates,
        # so 120 keeps it for about 4 s whatever the detection rate.
        lost_track_buffer=120,
        track_activation_threshold=0.4,
        high_conf_det_threshold=0.5,
        minimum_consecutive_frames=1,
    )


def draw_snapshot(frame: np.ndarray, det: sv.Detections, ev: RuleEvent, label: str) -> bytes:
    """JPEG of the frame with every person box and the event's box drawn."""
    img = frame.copy()
    meaning = det.data.get("meaning", np.array([], dtype=object))
    for i in range(len(det)):
        x1, y1, x2, y2 = (int(v) for v in det.xyxy[i])
        colour = (0, 0, 255) if meaning[i] == "person_down" else (80, 200, 80)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
    x1, y1, x2, y2 = (int(v) for v in ev.box)
    cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 255), 4)
    text = f"{label} {ev.confidence:.2f}"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.8, 2)
    cv2.rectangle(img, (x1, max(0, y1 - th - 10)), (x1 + tw + 8, y1), (0, 0, 255), -1)
    cv2.putText(img, text, (x1 + 4, max(th, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                (255, 255, 255), 2, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class CameraPipeline:
    """Per-source detection state: sampling, tracker, rules (a camera or a patrol unit)."""

    source_id: str
    camera: CameraConfig | None  # None for a patrol unit's stream
    source: Source
    tracker: ByteTrackTracker
    person_down: PersonDown
    next_due: float = 0.0
    last_seq: int = 0
    inferences: int = 0
    infer_ms: list[float] = field(default_factory=list)


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
        self._initial_cameras = cameras or (lambda: list(site.cameras))
        self._pipelines: dict[str, CameraPipeline] = {}
        self._plock = threading.Lock()
        self._changes_task: asyncio.Task[None] | None = None
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health_task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------

    def load_model(self) -> None:
        """Load the backend now (raises ModelError naming the file)."""
        if self.backend is None:
            self.backend = make_backend(self.site.rules.detector, self.site.root)

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
        pipe = CameraPipeline(
            source.source_id, camera, source, make_tracker(self.site.rules.detect_fps),
            PersonDown(self.site.rules.person_down),
        )
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
        self._thread = threading.Thread(target=self._infer_loop, name="inference", daemon=True)
        self._thread.start()
        self._health_task = asyncio.create_task(self._health_loop(), name="camera-health")
        log.info("worker: %d camera(s), detection at %.1f Hz", len(self._pipelines),
                 self.site.rules.detect_fps)

    async def _follow_changes(self, ready: asyncio.Event) -> None:
        backoff = 0.5
        while True:
            try:
                async with self.bus.listen(CameraChanged) as changes:
                    ready.set()
                    backoff = 0.5
                    async for change in changes:
                        try:
                            await self.apply(change)
                        except Exception:  # one bad change never stops the worker
                            log.exception("camera %s: applying change failed", change.camera_id)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the bus went away: listen again (changes meanwhile
                # are missed until the worker restarts; they are stored by the hub)
                log.warning("worker: camera change listener failed (%s); retrying", err)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._health_task, self._changes_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # already failed: its error was logged; stop the rest
                    log.exception("worker: background task failed")
        # Stop every source at once: one stuck in a slow connect must not hold up the rest.
        await asyncio.gather(*(asyncio.to_thread(p.source.stop) for p in self.pipelines))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

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
        ms = sorted(m for p in self.pipelines for m in p.infer_ms)
        alive = self._thread is not None and self._thread.is_alive()
        return {
            "detector": {
                "status": "ok" if alive and self.backend is not None else "down",
                "model": str(getattr(self.backend, "path", "")) or None,
                "detect_fps": self.site.rules.detect_fps,
                "inferences": sum(p.inferences for p in self.pipelines),
                "infer_ms_p50": round(ms[len(ms) // 2], 1) if ms else None,
                "errors": self.errors,
                "last_error": self.last_error,
                "active_person_down_events": sum(p.person_down.active for p in self.pipelines),
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

    def _infer_loop(self) -> None:
        period = 1.0 / self.site.rules.detect_fps
        while not self._stop.is_set():
            worked = False
            for p in self.pipelines:  # a copy: sources come and go meanwhile
                now = time.monotonic()
                if now < p.next_due:
                    continue
                frame = p.source.slot.take()
                if frame is None:
                    continue
                p.next_due = max(p.next_due + period, now)
                worked = True
                try:
                    self._step(p, frame)
                except Exception as err:  # one bad frame or camera never stops the others
                    self.errors += 1
                    self.last_error = f"{p.source_id}: {type(err).__name__}: {err}"
                    log.exception("source %s: detection step failed", p.source_id)
            if not worked:
                self._stop.wait(0.01)

    def _step(self, p: CameraPipeline, frame: Frame) -> None:
        assert self.backend is not None
        img = frame.image()
        t0 = time.perf_counter()
        det = self.backend.detect(img)
        p.infer_ms = (p.infer_ms + [(time.perf_counter() - t0) * 1000])[-50:]
        p.inferences += 1
        det = p.tracker.update(det, timestamp=frame.t)
        for ev in p.person_down.update(frame.t, frame.wall, det):
            self._publish(p, img, det, ev, frame.wall)

    def _publish(self, p: CameraPipeline, img: np.ndarray, det: sv.Detections, ev: RuleEvent,
                 wall: datetime) -> None:
        snapshot = draw_snapshot(img, det, ev, "person_down") if ev.phase != "end" else None
        start, end = clip_window(ev.started_wall)
        msg = IncidentCandidate(
            event_id=ev.event_id, phase=ev.phase, type="person_down", camera_id=p.source_id,
            at=wall, started_at=ev.started_wall, confidence=round(ev.confidence, 4),
            boxes=[ev.box], frame_size=(img.shape[1], img.shape[0]), track_id=ev.track_id,
            snapshot_jpeg=snapshot, clip_start=start, clip_end=end,
        )
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.bus.publish(msg), self._loop)
        fut.result(timeout=30)
        log.info("source %s: person_down %s %s (conf %.2f, track %d)", p.source_id, ev.phase,
                 ev.event_id[:8], ev.confidence, ev.track_id)
