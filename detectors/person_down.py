"""The ``person_down`` rule: a tracked person lying or fallen for at least ``min_s``.

One real-world event gives one event id, from onset until the person has not been
seen down for ``clear_s``; it survives tracker id switches (a new track on the same
spot continues the event). After an event ends, a new one on the same spot is held
off for ``hold_off_s``. The rule is pure: feed it tracked detections with the time
of their frame, it returns what changed. Time is the frame's clock (media time in
evaluation, monotonic time live), so the rule behaves the same in both.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import supervision as sv

from hub.config import PersonDownRule

Box = tuple[float, float, float, float]
UPDATE_EVERY_S = 10.0  # an ongoing event is refreshed at most this often
SAME_PLACE_IOU = 0.3


def iou(a: Box, b: Box) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class RuleEvent:
    """What the rule reports: an event started, was refreshed, or ended."""

    phase: Literal["start", "update", "end"]
    event_id: str
    t: float
    wall: datetime
    started_wall: datetime
    confidence: float
    box: Box
    track_id: int


@dataclass
class _Track:
    first_down: float
    first_wall: datetime
    last_down: float
    box: Box
    confs: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=256))


@dataclass
class _Event:
    event_id: str
    track_id: int
    started_wall: datetime
    last_down: float
    last_emit: float
    box: Box
    confidence: float


class PersonDown:
    """State of the person_down rule for one camera zone."""

    def __init__(self, cfg: PersonDownRule) -> None:
        self.cfg = cfg
        self.gap_s = min(cfg.clear_s, 2.0)  # misses tolerated while a fall is confirmed
        self._tracks: dict[int, _Track] = {}
        self._events: list[_Event] = []
        self._ended: list[tuple[float, Box]] = []

    @property
    def active(self) -> int:
        return len(self._events)

    def update(self, t: float, wall: datetime, det: sv.Detections) -> list[RuleEvent]:
        """Feed one detection step; returns events started, refreshed or ended."""
        out: list[RuleEvent] = []
        meaning = det.data.get("meaning", np.array([], dtype=object))
        ids = det.tracker_id if det.tracker_id is not None else np.full(len(det), -1)
        conf = det.confidence if det.confidence is not None else np.ones(len(det))
        down: dict[int, tuple[Box, float]] = {}
        for i in range(len(det)):
            if meaning[i] == "person_down" and ids[i] >= 0:
                x1, y1, x2, y2 = (float(v) for v in det.xyxy[i])
                down[int(ids[i])] = ((x1, y1, x2, y2), float(conf[i]))

        for tid, (box, c) in down.items():
            tr = self._tracks.get(tid)
            if tr is None or t - tr.last_down > self.gap_s:
                tr = self._tracks[tid] = _Track(first_down=t, first_wall=wall, last_down=t, box=box)
            tr.last_down, tr.box = t, box
            tr.confs.append((t, c))
        for tid in [k for k, tr in self._tracks.items() if t - tr.last_down > self.gap_s]:
            del self._tracks[tid]

        # Ongoing events: continue on the same track or on a new track in the same place.
        claimed: set[int] = set()
        for ev in list(self._events):
            match = down.get(ev.track_id)
            tid = ev.track_id
            if match is None:
                best = max(
                    ((k, iou(ev.box, b)) for k, (b, _) in down.items() if k not in claimed),
                    key=lambda kv: kv[1], default=None,
                )
                if best is not None and best[1] >= SAME_PLACE_IOU:
                    tid, match = best[0], down[best[0]]
            if match is not None:
                claimed.add(tid)
                ev.track_id, ev.box, ev.last_down = tid, match[0], t
                rising = match[1] > ev.confidence + 0.05
                ev.confidence = max(ev.confidence, match[1])
                if t - ev.last_emit >= UPDATE_EVERY_S or (rising and t - ev.last_emit >= 2.0):
                    ev.last_emit = t
                    out.append(self._emit("update", ev, t, wall))
            elif t - ev.last_down >= self.cfg.clear_s:
                self._events.remove(ev)
                self._ended.append((t, ev.box))
                out.append(self._emit("end", ev, t, wall))

        self._ended = [(te, b) for te, b in self._ended if t - te < self.cfg.hold_off_s]
        for tid, tr in self._tracks.items():
            if tid in claimed or t - tr.first_down < self.cfg.min_s:
                continue
            window = [c for tc, c in tr.confs if tc >= tr.first_down]
            mean = float(np.mean(window)) if window else 0.0
            if mean < self.cfg.min_confidence:
                continue
            if any(iou(b, tr.box) >= SAME_PLACE_IOU for _, b in self._ended):
                continue  # same spot, still in hold-off
            if any(iou(e.box, tr.box) >= SAME_PLACE_IOU for e in self._events):
                continue
            ev = _Event(
                event_id=uuid.uuid4().hex, track_id=tid, started_wall=tr.first_wall,
                last_down=t, last_emit=t, box=tr.box, confidence=mean,
            )
            self._events.append(ev)
            out.append(self._emit("start", ev, t, wall))
        return out

    @staticmethod
    def _emit(phase: Literal["start", "update", "end"], ev: _Event, t: float,
              wall: datetime) -> RuleEvent:
        return RuleEvent(
            phase=phase, event_id=ev.event_id, t=t, wall=wall, started_wall=ev.started_wall,
            confidence=ev.confidence, box=ev.box, track_id=ev.track_id,
        )


def clip_window(started: datetime, pre_s: float = 10.0, post_s: float = 30.0
                ) -> tuple[datetime, datetime]:
    """The evidence clip window around an event's start."""
    return started - timedelta(seconds=pre_s), started + timedelta(seconds=post_s)
