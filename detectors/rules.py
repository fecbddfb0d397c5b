"""Incident rules: ``person_down``, ``stranded_person`` and ``flooding``, one set per zone.

Rules are pure: feed them what the model and tracker saw at a frame's time, they return
what changed (:class:`RuleEvent` start / update / end). Time is the frame's clock (media
time in evaluation, monotonic time live), so a rule behaves the same in both.

One real-world event is one event id (:class:`EventBook`): it is kept up to date while the
condition holds (sparse updates, not one per frame), survives tracker id switches (a new
track in the same place continues it), ends once the condition has been absent for
``clear_s``, and the same place is held off for ``hold_off_s`` after that.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import supervision as sv

from hub.config import FloodingRule, PersonDownRule, StrandedRule

Box = tuple[float, float, float, float]
Phase = Literal["start", "update", "end"]
UPDATE_EVERY_S = 10.0  # an ongoing event is refreshed at most this often
SAME_PLACE_IOU = 0.3
HISTORY_S = 30.0  # how much of a track's past the person rules keep
LOST_S = 3.0  # a track unseen for this long is forgotten (its successor may inherit it)


def iou(a: Box, b: Box) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def overlaps(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def center(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def foot(b: Box) -> tuple[float, float]:
    """Where a box stands on the ground: the middle of its bottom edge."""
    return (b[0] + b[2]) / 2, b[3]


def long_side(b: Box) -> float:
    return max(b[2] - b[0], b[3] - b[1])


def aspect(b: Box) -> float:
    """Width over height: under 1 upright, well over 1 lying seen from the side."""
    return (b[2] - b[0]) / max(1.0, b[3] - b[1])


@dataclass(frozen=True)
class Obs:
    """One tracked person in one frame."""

    track_id: int
    box: Box
    down: bool  # the model says lying / fallen
    conf: float


def observations(det: sv.Detections) -> list[Obs]:
    """Tracked persons of a detection step (untracked boxes are left out)."""
    meaning = det.data.get("meaning", np.array([], dtype=object))
    ids = det.tracker_id if det.tracker_id is not None else np.full(len(det), -1)
    conf = det.confidence if det.confidence is not None else np.ones(len(det))
    out = []
    for i in range(len(det)):
        if ids[i] < 0 or meaning[i] not in ("person", "person_down"):
            continue
        x1, y1, x2, y2 = (float(v) for v in det.xyxy[i])
        out.append(Obs(int(ids[i]), (x1, y1, x2, y2), meaning[i] == "person_down",
                       float(conf[i])))
    return out


@dataclass
class RuleEvent:
    """What a rule reports: an event started, was refreshed, or ended."""

    type: str
    phase: Phase
    event_id: str
    t: float
    wall: datetime
    started_wall: datetime
    confidence: float
    box: Box | None
    track_id: int | None
    zone: str = "frame"
    attributes: dict[str, Any] = field(default_factory=dict)
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)


@dataclass
class Candidate:
    """A condition that holds now (a person down for long enough, water over the road)."""

    key: int  # track id, or 0 for a zone-wide condition
    box: Box | None
    confidence: float
    since_t: float
    since_wall: datetime
    attributes: dict[str, Any] = field(default_factory=dict)
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)


@dataclass
class _Event:
    event_id: str
    key: int
    started_wall: datetime
    last_seen: float
    last_emit: float
    cand: Candidate
    confidence: float


class EventBook:
    """Turns the candidates of each step into one event per real-world occurrence."""

    def __init__(self, type_: str, zone: str, clear_s: float, hold_off_s: float,
                 *, per_place: bool = True) -> None:
        self.type = type_
        self.zone = zone
        self.clear_s = clear_s
        self.hold_off_s = hold_off_s
        self.per_place = per_place  # False: one event for the whole zone
        self.events: list[_Event] = []
        self._ended: list[tuple[float, Box | None]] = []

    def _same_place(self, a: Box | None, b: Box | None) -> bool:
        if not self.per_place or a is None or b is None:
            return True
        return iou(a, b) >= SAME_PLACE_IOU

    def step(self, t: float, wall: datetime, cands: list[Candidate]) -> list[RuleEvent]:
        out: list[RuleEvent] = []
        free = {c.key: c for c in cands}
        for ev in list(self.events):
            match = free.pop(ev.key, None)
            if match is None:  # the same place under another track id
                best = max(((k, iou(ev.cand.box, c.box) if ev.cand.box and c.box else 1.0)
                            for k, c in free.items() if self._same_place(ev.cand.box, c.box)),
                           key=lambda kv: kv[1], default=None)
                if best is not None:
                    match = free.pop(best[0])
            if match is not None:
                ev.key, ev.cand, ev.last_seen = match.key, match, t
                rising = match.confidence > ev.confidence + 0.05
                ev.confidence = max(ev.confidence, match.confidence)
                if t - ev.last_emit >= UPDATE_EVERY_S or (rising and t - ev.last_emit >= 2.0):
                    ev.last_emit = t
                    out.append(self._emit("update", ev, t, wall))
            elif t - ev.last_seen >= self.clear_s:
                self.events.remove(ev)
                self._ended.append((t, ev.cand.box))
                out.append(self._emit("end", ev, t, wall))
        self._ended = [(te, b) for te, b in self._ended if t - te < self.hold_off_s]
        for c in free.values():
            if any(self._same_place(b, c.box) for _, b in self._ended):
                continue  # same place, still held off
            if any(self._same_place(e.cand.box, c.box) for e in self.events):
                continue
            ev = _Event(uuid.uuid4().hex, c.key, c.since_wall, t, t, c, c.confidence)
            self.events.append(ev)
            out.append(self._emit("start", ev, t, wall))
        return out

    def _emit(self, phase: Phase, ev: _Event, t: float, wall: datetime) -> RuleEvent:
        c = ev.cand
        return RuleEvent(
            type=self.type, phase=phase, event_id=ev.event_id, t=t, wall=wall,
            started_wall=ev.started_wall, confidence=ev.confidence, box=c.box,
            track_id=c.key if self.per_place else None, zone=self.zone,
            attributes=dict(c.attributes), polygons=c.polygons,
        )


# --- person tracks ----------------------------------------------------------------------


@dataclass
class _Seen:
    t: float
    wall: datetime
    box: Box
    down: bool
    conf: float


@dataclass
class _TrackPast:
    seen: deque[_Seen] = field(default_factory=lambda: deque(maxlen=512))
    inherited: bool = False


class TrackHistory:
    """Each person track's recent past. A new track that appears where a track was just
    lost inherits that past (the tracker often switches ids when a person falls)."""

    def __init__(self) -> None:
        self.tracks: dict[int, _TrackPast] = {}

    def update(self, t: float, wall: datetime, obs: list[Obs]) -> None:
        present = {o.track_id for o in obs}
        for o in obs:
            past = self.tracks.get(o.track_id)
            if past is None:
                past = self.tracks[o.track_id] = _TrackPast()
                pred = self._predecessor(t, o.box, present)
                if pred is not None:
                    past.seen.extend(self.tracks[pred].seen)
                    past.inherited = True
            past.seen.append(_Seen(t, wall, o.box, o.down, o.conf))
            while past.seen and t - past.seen[0].t > HISTORY_S:
                past.seen.popleft()
        for tid in [k for k, p in self.tracks.items() if not p.seen or t - p.seen[-1].t > LOST_S]:
            del self.tracks[tid]

    def _predecessor(self, t: float, box: Box, present: set[int]) -> int | None:
        best, best_t = None, -math.inf
        for tid, past in self.tracks.items():
            if tid in present or not past.seen:
                continue
            last = past.seen[-1]
            if t - last.t <= 1.5 and overlaps(last.box, box) and last.t > best_t:
                best, best_t = tid, last.t
        return best


# --- person_down ---------------------------------------------------------------------------


class PersonDown:
    """A person lying or fallen for at least ``min_s``.

    The model's Fall class says "down" frame by frame; a track counts as down once it has
    been down (misses up to ``gap_s`` tolerated) for ``min_s`` and either
    * was seen falling: upright within ``fall_window_s`` before, and the down box is at
      most ``fall_height_ratio`` of the upright height (a fall makes a person shorter), or
    * was found already down: then it must also lie (box at least ``lying_aspect`` times
      wider than tall), stay still, and score at least ``found_down_confidence``, for at
      least ``found_down_s`` (a sitting dog, a crouching person or a car in water fools
      the Fall class for a moment, rarely for seconds, still and with high confidence).
    A box taller than ``max_height_frac`` of the frame is a person right at the lens, too
    close to judge posture (a seated person filling the view looks "fallen" to the model).
    """

    type = "person_down"

    def __init__(self, cfg: PersonDownRule, zone: str = "frame") -> None:
        self.cfg = cfg
        self.gap_s = min(cfg.clear_s, 2.0)
        self.book = EventBook(self.type, zone, cfg.clear_s, cfg.hold_off_s)

    @property
    def active(self) -> int:
        return len(self.book.events)

    def candidates(self, t: float, hist: TrackHistory, obs: list[Obs],
                   frame_h: float) -> list[Candidate]:
        out = []
        for o in obs:
            if not o.down or (o.box[3] - o.box[1]) > self.cfg.max_height_frac * frame_h:
                continue
            seen = list(hist.tracks[o.track_id].seen)
            # The current down run: back from now while down, misses up to gap_s.
            run: list[_Seen] = []
            for s in reversed(seen):
                if run and run[-1].t - s.t > self.gap_s:
                    break
                if s.down:
                    run.append(s)
                elif run and run[-1].t - s.t > self.gap_s / 2:
                    break
            if not run:
                continue
            run.reverse()
            start = run[0]
            dur = t - start.t
            mean_conf = float(np.mean([s.conf for s in run]))
            if dur < self.cfg.min_s or mean_conf < self.cfg.min_confidence:
                continue
            before = [s for s in seen if not s.down and start.t - self.cfg.fall_window_s
                      <= s.t < start.t]
            fell = False
            if before:
                up_h = max(s.box[3] - s.box[1] for s in before)
                down_h = float(np.median([s.box[3] - s.box[1] for s in run]))
                fell = down_h <= self.cfg.fall_height_ratio * up_h
            if not fell:
                if dur < max(self.cfg.min_s, self.cfg.found_down_s):
                    continue
                if mean_conf < self.cfg.found_down_confidence:
                    continue
                if float(np.median([aspect(s.box) for s in run])) < self.cfg.lying_aspect:
                    continue
                cx = [center(s.box) for s in run]
                spread = max(math.dist(cx[0], c) for c in cx)
                if spread > 0.5 * float(np.median([long_side(s.box) for s in run])):
                    continue
            out.append(Candidate(o.track_id, o.box, mean_conf, start.t, start.wall,
                                 {"seen_falling": fell, "down_s": round(dur, 1)}))
        return out

    def update(self, t: float, wall: datetime, hist: TrackHistory, obs: list[Obs],
               frame_h: float) -> list[RuleEvent]:
        return self.book.step(t, wall, self.candidates(t, hist, obs, frame_h))


# --- stranded_person ---------------------------------------------------------------------


class Stranded:
    """A person staying within a small radius (``radius`` times their own size) for at
    least ``dwell_s``, in any posture. Lying, or standing in water, is reported in the
    attributes (the hub raises the severity)."""

    type = "stranded_person"

    def __init__(self, cfg: StrandedRule, zone: str = "frame") -> None:
        self.cfg = cfg
        self.book = EventBook(self.type, zone, cfg.clear_s, cfg.hold_off_s)

    def candidates(self, t: float, hist: TrackHistory, obs: list[Obs],
                   water: np.ndarray | None = None) -> list[Candidate]:
        out = []
        for o in obs:
            seen = list(hist.tracks[o.track_id].seen)
            size = float(np.median([long_side(s.box) for s in seen[-20:]]))
            here = foot(o.box)
            since = seen[-1]
            for prev, s in zip(reversed(seen[:-1]), reversed(seen[1:]), strict=False):
                if s.t - prev.t > LOST_S or math.dist(foot(prev.box), here) > \
                        self.cfg.radius * size:
                    break
                since = prev
            dwell = t - since.t
            if dwell < self.cfg.dwell_s:
                continue
            recent = [s for s in seen if s.t >= t - 5.0]
            lying = sum(s.down for s in recent) > len(recent) / 2
            in_water = water is not None and _in_mask(water, here)
            conf = float(np.mean([s.conf for s in seen if s.t >= since.t]))
            out.append(Candidate(o.track_id, o.box, conf, since.t, since.wall, {
                "dwell_s": round(dwell, 1), "lying": lying, "in_water": in_water,
                "severity_hint": "orange" if (lying or in_water) else None,
            }))
        return out

    def update(self, t: float, wall: datetime, hist: TrackHistory, obs: list[Obs],
               water: np.ndarray | None = None) -> list[RuleEvent]:
        return self.book.step(t, wall, self.candidates(t, hist, obs, water))


def _in_mask(mask: np.ndarray, xy: tuple[float, float]) -> bool:
    """Whether a point (in the frame's pixels) falls on a mask given in the frame's size."""
    h, w = mask.shape[:2]
    x, y = int(min(max(xy[0], 0), w - 1)), int(min(max(xy[1] - 1, 0), h - 1))
    return bool(mask[y, x])


# --- flooding ------------------------------------------------------------------------------


class Flooding:
    """Standing water over at least ``min_coverage`` of the zone for ``min_s``, with the
    coverage and its trend (change per minute over the last ``trend_window_s``)."""

    type = "flooding"

    def __init__(self, cfg: FloodingRule, zone: str = "frame") -> None:
        self.cfg = cfg
        self.book = EventBook(self.type, zone, cfg.clear_s, cfg.hold_off_s, per_place=False)
        self.coverage: deque[tuple[float, float]] = deque()
        self._since: tuple[float, datetime] | None = None
        self._last_wet = -math.inf

    def trend_per_min(self) -> float:
        pts = list(self.coverage)
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < 2.0:
            return 0.0
        ts = np.array([p[0] for p in pts])
        cs = np.array([p[1] for p in pts])
        return float(np.polyfit(ts - ts[0], cs, 1)[0] * 60.0)

    def update(self, t: float, wall: datetime, coverage: float,
               polygons: list[list[tuple[float, float]]] | None = None,
               confidence: float | None = None) -> list[RuleEvent]:
        self.coverage.append((t, coverage))
        while self.coverage and t - self.coverage[0][0] > self.cfg.trend_window_s:
            self.coverage.popleft()
        # Smooth over the last few samples: one frame of glare or a passing bus does not
        # start or break the condition.
        recent = [c for tc, c in self.coverage if t - tc <= self.cfg.smooth_s]
        level = float(np.median(recent))
        cands: list[Candidate] = []
        if level >= self.cfg.min_coverage:
            if self._since is None or t - self._last_wet > self.cfg.smooth_s + 1.0:
                self._since = (t, wall)
            self._last_wet = t
            if t - self._since[0] >= self.cfg.min_s:
                conf = confidence if confidence is not None else min(
                    1.0, 0.5 + 0.5 * (level - self.cfg.min_coverage) / max(
                        1e-6, 1 - self.cfg.min_coverage))
                cands.append(Candidate(0, None, conf, self._since[0], self._since[1], {
                    "coverage": round(level, 3), "trend_per_min": round(self.trend_per_min(), 3),
                }, polygons or []))
        elif t - self._last_wet > self.cfg.smooth_s + 1.0:
            self._since = None
        return self.book.step(t, wall, cands)
