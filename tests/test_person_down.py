"""The person_down rule: one event per real-world fall, raised after min_s, held off after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import supervision as sv

from detectors.person_down import PersonDown, RuleEvent
from hub.config import PersonDownRule

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LYING = (100.0, 300.0, 400.0, 380.0)
STANDING = (500.0, 100.0, 560.0, 300.0)


def dets(*items: tuple[tuple[float, float, float, float], str, float, int]) -> sv.Detections:
    if not items:
        d = sv.Detections.empty()
        d.data["meaning"] = np.array([], dtype=object)
        return d
    d = sv.Detections(
        xyxy=np.array([i[0] for i in items], dtype=np.float32),
        confidence=np.array([i[2] for i in items], dtype=np.float32),
        class_id=np.zeros(len(items), dtype=int),
        tracker_id=np.array([i[3] for i in items], dtype=int),
    )
    d.data["meaning"] = np.array([i[1] for i in items], dtype=object)
    return d


def run(rule: PersonDown, frames: list[tuple[float, sv.Detections]]) -> list[RuleEvent]:
    out: list[RuleEvent] = []
    for t, d in frames:
        out += rule.update(t, T0 + timedelta(seconds=t), d)
    return out


def cfg(**kw: float) -> PersonDownRule:
    base = dict(min_s=3.0, min_confidence=0.4, clear_s=5.0, hold_off_s=30.0)
    base.update(kw)
    return PersonDownRule(**base)  # type: ignore[arg-type]


def steps(
    t0: float, t1: float, d: sv.Detections, fps: float = 2.0
) -> list[tuple[float, sv.Detections]]:
    n = int(round((t1 - t0) * fps))
    return [(t0 + i / fps, d) for i in range(n)]


def test_raised_once_after_min_s() -> None:
    """A person down for 3 s raises one start, with the start time of the fall."""
    rule = PersonDown(cfg())
    ev = run(rule, steps(0, 2.5, dets((LYING, "person_down", 0.7, 1))))
    assert ev == []
    ev = run(rule, steps(2.5, 4, dets((LYING, "person_down", 0.7, 1))))
    assert [e.phase for e in ev] == ["start"]
    assert ev[0].started_wall == T0
    assert ev[0].t == 3.0


def test_long_lying_is_one_event_with_sparse_updates() -> None:
    """Ten minutes lying is one event refreshed now and then, not hundreds."""
    rule = PersonDown(cfg())
    ev = run(rule, steps(0, 600, dets((LYING, "person_down", 0.7, 1))))
    assert [e.phase for e in ev].count("start") == 1
    assert len({e.event_id for e in ev}) == 1
    assert 50 <= len(ev) <= 61  # one update every 10 s


def test_standing_people_raise_nothing() -> None:
    """Upright people never raise person_down, however long they stay."""
    rule = PersonDown(cfg())
    assert run(rule, steps(0, 60, dets((STANDING, "person", 0.9, 1)))) == []


def test_brief_fall_class_flicker_is_ignored() -> None:
    """A Fall label on alternate frames (bending, sitting) never adds up to min_s."""
    rule = PersonDown(cfg(min_s=3.0))
    frames = []
    for i in range(40):
        t = i * 0.5
        down = (i // 2) % 3 == 0  # down for 1 s, up for 2 s
        frames.append((t, dets((LYING, "person_down" if down else "person", 0.7, 1))))
    # each 2.5 s gap exceeds the tolerated miss (2 s), so the onset restarts every time
    assert [e for e in run(rule, frames) if e.phase == "start"] == []


def test_low_confidence_is_not_enough() -> None:
    """A fall seen only with low confidence does not raise an incident."""
    rule = PersonDown(cfg(min_confidence=0.5))
    assert run(rule, steps(0, 10, dets((LYING, "person_down", 0.42, 1)))) == []


def test_ends_after_clear_s_and_holds_off_same_spot() -> None:
    """The event ends clear_s after the person is gone; the same spot is held off after."""
    rule = PersonDown(cfg(hold_off_s=30))
    ev = run(rule, steps(0, 10, dets((LYING, "person_down", 0.7, 1))))
    ev += run(rule, steps(10, 20, dets()))
    assert [e.phase for e in ev if e.phase != "update"] == ["start", "end"]
    assert ev[-1].t == 14.5  # last seen down at 9.5 s, + clear_s
    # the same spot again within the hold-off: nothing new
    again = run(rule, steps(20, 30, dets((LYING, "person_down", 0.7, 2))))
    assert [e for e in again if e.phase == "start"] == []
    # after the hold-off: a new event with a new id
    later = run(rule, steps(60, 70, dets((LYING, "person_down", 0.7, 3))))
    starts = [e for e in later if e.phase == "start"]
    assert len(starts) == 1 and starts[0].event_id != ev[0].event_id


def test_track_switch_continues_the_event() -> None:
    """A new tracker id on the same spot continues the event instead of raising a second."""
    rule = PersonDown(cfg())
    ev = run(rule, steps(0, 10, dets((LYING, "person_down", 0.7, 1))))
    ev += run(rule, steps(10, 40, dets((LYING, "person_down", 0.7, 9))))
    assert [e.phase for e in ev].count("start") == 1
    assert ev[-1].track_id == 9


def test_two_people_down_are_two_events() -> None:
    """Two people down in different places are two events."""
    other = (700.0, 400.0, 1000.0, 480.0)
    rule = PersonDown(cfg())
    both = dets((LYING, "person_down", 0.7, 1), (other, "person_down", 0.6, 2))
    ev = run(rule, steps(0, 5, both))
    starts = [e for e in ev if e.phase == "start"]
    assert len(starts) == 2 and starts[0].event_id != starts[1].event_id


def test_untracked_detections_are_ignored() -> None:
    """Detections the tracker has not confirmed (id -1) do not count."""
    rule = PersonDown(cfg())
    assert run(rule, steps(0, 10, dets((LYING, "person_down", 0.9, -1)))) == []
