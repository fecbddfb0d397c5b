"""One source's detection pipeline: motion gate -> model -> tracker -> zones -> rules.

The same object runs live (the worker feeds it sampled frames from a camera or a patrol
stream) and in evaluation (``gridhub eval`` feeds it a clip's frames at the same rate), so
what is measured is what runs.

Motion gate: a frame that hardly differs from the last one the model saw is not run
through the model; the last detections stand for it (nothing moved, so they are still
right) and the tracker and rules go on at the detection rate. The model still looks at a
static scene every ``recheck_s`` so a slow change (a person who stopped moving and then
slumped) is seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import cv2
import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from detectors.backends import Backend
from detectors.backends.base import empty_detections
from detectors.rules import (
    Flooding,
    PersonDown,
    RuleEvent,
    Stranded,
    TrackHistory,
    foot,
    observations,
)
from detectors.water import WaterSegmenter, mask_polygons
from hub.config import CameraConfig, RulesFile, ZoneConfig, with_params

GATE_W = 96  # the motion gate compares frames this wide
GATE_PIXEL_DELTA = 14  # grey levels a pixel must change by to count as moved
GATE_MIN_MOVED = 0.003  # fraction of moved pixels that counts as motion
RECHECK_S = 4.0  # a static scene is still looked at this often


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


class MotionGate:
    """Says whether a frame differs enough from the last one the model looked at."""

    def __init__(self, recheck_s: float = RECHECK_S) -> None:
        self.recheck_s = recheck_s
        self._ref: np.ndarray | None = None
        self._ref_t = -1e9
        self.skipped = 0
        self.passed = 0

    def _small(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        g = cv2.cvtColor(cv2.resize(img, (GATE_W, max(1, round(h * GATE_W / w))),
                                    interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(g, (3, 3), 0)

    def moved(self, img: np.ndarray, t: float) -> bool:
        small = self._small(img)
        ref = self._ref
        if ref is None or ref.shape != small.shape or t - self._ref_t >= self.recheck_s:
            go = True
        else:
            moved = np.count_nonzero(cv2.absdiff(small, ref) > GATE_PIXEL_DELTA)
            go = bool(moved / small.size >= GATE_MIN_MOVED)
        if go:
            self._ref, self._ref_t = small, t
            self.passed += 1
        else:
            self.skipped += 1
        return go


@dataclass
class Zone:
    """A camera zone with its own rules (the whole frame when a camera defines none)."""

    id: str
    polygon: list[tuple[float, float]] | None  # fractions of the frame; None: whole frame
    types: set[str]
    person_down: PersonDown | None
    stranded: Stranded | None
    flooding: Flooding | None
    _mask: np.ndarray | None = field(default=None, repr=False)

    def mask(self, w: int, h: int) -> np.ndarray:
        if self._mask is None or self._mask.shape != (h, w):
            m = np.zeros((h, w), np.uint8)
            if self.polygon is None:
                m[:] = 1
            else:
                pts = np.array([[x * w, y * h] for x, y in self.polygon], np.int32)
                cv2.fillPoly(m, [pts], 1)
            self._mask = m.astype(bool)
        return self._mask

    def holds(self, xy: tuple[float, float], w: int, h: int) -> bool:
        if self.polygon is None:
            return True
        m = self.mask(w, h)
        x, y = int(min(max(xy[0], 0), w - 1)), int(min(max(xy[1] - 1, 0), h - 1))
        return bool(m[y, x])


def make_zones(rules: RulesFile, zones: list[ZoneConfig]) -> list[Zone]:
    out = []
    specs: list[tuple[str, list[tuple[float, float]] | None, list[str], dict[str, float]]] = (
        [(z.id, z.polygon, z.rules, z.params) for z in zones] or [("frame", None, [], {})])
    for zid, poly, types, params in specs:
        r = with_params(rules, params)
        want = set(types) or {"person_down", "stranded_person", "flooding"}
        out.append(Zone(
            id=zid, polygon=poly, types=want,
            person_down=PersonDown(r.person_down, zid)
            if "person_down" in want and r.person_down.enabled else None,
            stranded=Stranded(r.stranded_person, zid)
            if "stranded_person" in want and r.stranded_person.enabled else None,
            flooding=Flooding(r.flooding, zid)
            if "flooding" in want and r.flooding.enabled else None,
        ))
    return out


@dataclass
class StepResult:
    events: list[RuleEvent]
    detections: sv.Detections  # tracked
    water: np.ndarray | None  # the newest water mask, when the flooding rule looked
    inferred: bool


class DetectionPipeline:
    """Per-source detection state: gate, tracker, track history, zones and their rules."""

    def __init__(self, source_id: str, rules: RulesFile, backend: Backend,
                 camera: CameraConfig | None = None, water: WaterSegmenter | None = None,
                 gate: bool = True) -> None:
        self.source_id = source_id
        self.rules = rules
        self.backend = backend
        self.water_model = water
        self.tracker = make_tracker(rules.detect_fps)
        self.history = TrackHistory()
        self.zones = make_zones(rules, camera.zones if camera else [])
        self.gate = MotionGate() if gate else None
        self._last_det = empty_detections()
        self._water: np.ndarray | None = None
        self._water_conf: float | None = None
        self._water_t = -1e9
        self.inferences = 0
        self.infer_ms: list[float] = []
        self.water_ms: list[float] = []

    def reconfigure(self, camera: CameraConfig | None) -> None:
        """New zones or thresholds: rules start afresh (open events are not carried over)."""
        self.zones = make_zones(self.rules, camera.zones if camera else [])

    @property
    def active_events(self) -> int:
        return sum(len(r.book.events) for z in self.zones
                   for r in (z.person_down, z.stranded, z.flooding) if r is not None)

    @property
    def last_detections(self) -> sv.Detections:
        """What the model saw last (stands for frames the motion gate let pass)."""
        return self._last_det

    def note_inference(self, det: sv.Detections, ms: float) -> None:
        """Detections the caller made for this source (batched across sources)."""
        self.infer_ms = (self.infer_ms + [ms])[-50:]
        self.inferences += 1
        self._last_det = det

    def detect(self, img: np.ndarray, t: float) -> tuple[sv.Detections, bool]:
        """Model detections for a frame, or the last ones when the gate says nothing moved."""
        if self.gate is not None and not self.gate.moved(img, t):
            return self._last_det, False
        t0 = time.perf_counter()
        det = self.backend.detect(img)
        self.note_inference(det, (time.perf_counter() - t0) * 1000)
        return det, True

    def step(self, img: np.ndarray, t: float, wall: datetime,
             det: sv.Detections | None = None) -> StepResult:
        """One sampled frame. ``det``: detections already made for it (batched inference);
        else the pipeline runs the gate and the model itself."""
        inferred = det is not None
        if det is None:
            det, inferred = self.detect(img, t)
        tracked = self.tracker.update(det, timestamp=t) if len(det) else self.tracker.update(
            empty_detections(), timestamp=t)
        if "meaning" not in tracked.data:
            tracked.data["meaning"] = np.array([], dtype=np.object_)
        obs = observations(tracked)
        self.history.update(t, wall, obs)
        h, w = img.shape[:2]
        water = self._water_mask(img, t)
        events: list[RuleEvent] = []
        for z in self.zones:
            zobs = [o for o in obs if z.holds(foot(o.box), w, h)]
            if z.person_down is not None:
                events += z.person_down.update(t, wall, self.history, zobs, float(h))
            if z.stranded is not None:
                events += z.stranded.update(t, wall, self.history, zobs, water)
            if z.flooding is not None and water is not None and self._water_t == t:
                zm = z.mask(w, h)
                cov = np.count_nonzero(water & zm) / max(1, int(np.count_nonzero(zm)))
                polys = mask_polygons(water & zm)
                events += z.flooding.update(t, wall, cov, polys, self._water_conf)
        return StepResult(events, tracked, water, inferred)

    def _water_mask(self, img: np.ndarray, t: float) -> np.ndarray | None:
        if self.water_model is None or not any(z.flooding for z in self.zones):
            return None
        every = min(z.flooding.cfg.every_s for z in self.zones if z.flooding)
        if t - self._water_t >= every - 1e-6:
            t0 = time.perf_counter()
            self._water, self._water_conf = self.water_model.segment(img)
            self.water_ms = (self.water_ms + [(time.perf_counter() - t0) * 1000])[-50:]
            self._water_t = t
        return self._water
