"""The incident rules (person_down, stranded_person, flooding) fed detections made up by
the test: one event per real-world event, raised after its threshold, held off after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from detectors.rules import Flooding, Obs, PersonDown, RuleEvent, Stranded, TrackHistory
from hub.config import FloodingRule, PersonDownRule, RulesFile, StrandedRule, with_params

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FRAME_H = 720.0
LYING = (100.0, 300.0, 400.0, 380.0)  # 300 x 80: lying seen from the side
STANDING = (500.0, 100.0, 560.0, 300.0)  # 60 x 200
SITTING = (500.0, 200.0, 590.0, 300.0)  # 90 x 100: crouching / sitting, not lying


class Rig:
    """A rule with the track history the pipeline keeps, fed (box, down, conf, track)."""

    def __init__(self, rule: PersonDown | Stranded) -> None:
        self.rule = rule
        self.hist = TrackHistory()

    def feed(self, t: float, *items: tuple[tuple[float, float, float, float], bool, float, int],
             water: np.ndarray | None = None) -> list[RuleEvent]:
        obs = [Obs(tid, box, down, conf) for box, down, conf, tid in items if tid >= 0]
        wall = T0 + timedelta(seconds=t)
        self.hist.update(t, wall, obs)
        if isinstance(self.rule, PersonDown):
            return self.rule.update(t, wall, self.hist, obs, FRAME_H)
        return self.rule.update(t, wall, self.hist, obs, water)

    def run(self, t0: float, t1: float, *items: tuple[tuple[float, float, float, float], bool,
                                                       float, int], fps: float = 2.0,
            water: np.ndarray | None = None) -> list[RuleEvent]:
        out: list[RuleEvent] = []
        for i in range(int(round((t1 - t0) * fps))):
            out += self.feed(t0 + i / fps, *items, water=water)
        return out


def pd(**kw: float) -> PersonDown:
    base = dict(min_s=3.0, min_confidence=0.4, clear_s=5.0, hold_off_s=30.0)
    base.update(kw)
    return PersonDown(PersonDownRule(**base))  # type: ignore[arg-type]


def starts(ev: list[RuleEvent]) -> list[RuleEvent]:
    return [e for e in ev if e.phase == "start"]


# --- person_down ------------------------------------------------------------------------------


def test_found_lying_is_raised_once_after_min_s() -> None:
    """A person found lying (not seen falling) for 3 s raises one start, dated at onset."""
    rig = Rig(pd())
    assert rig.run(0, 2.5, (LYING, True, 0.7, 1)) == []
    ev = rig.run(2.5, 4, (LYING, True, 0.7, 1))
    assert [e.phase for e in ev] == ["start"]
    assert ev[0].type == "person_down" and ev[0].started_wall == T0 and ev[0].t == 3.0
    assert ev[0].attributes["seen_falling"] is False


def test_seen_falling_is_raised_after_min_s_only() -> None:
    """Upright, then down and much shorter on the same track: a fall seen happening, raised
    after min_s (1 s), sooner than a person merely found lying (found_down_s, 3 s)."""
    rig = Rig(pd(min_s=1.0))
    assert rig.run(0, 3, (STANDING, False, 0.8, 1)) == []
    fallen = (440.0, 230.0, 640.0, 300.0)  # 200 x 70, where the person stood
    ev = rig.run(3, 4.5, (fallen, True, 0.7, 1))
    assert len(starts(ev)) == 1 and starts(ev)[0].t == 4.0
    assert starts(ev)[0].attributes["seen_falling"] is True


def test_fall_across_a_tracker_id_switch_is_still_seen() -> None:
    """The tracker gives the fallen person a new id: the new track inherits the upright past
    of the track that vanished where it appeared."""
    rig = Rig(pd(min_s=1.0))
    rig.run(0, 3, (STANDING, False, 0.8, 1))
    ev = rig.run(3, 4.5, ((440.0, 230.0, 640.0, 300.0), True, 0.7, 7))
    assert len(starts(ev)) == 1 and starts(ev)[0].attributes["seen_falling"] is True


def test_long_lying_is_one_event_with_sparse_updates() -> None:
    """Ten minutes lying is one event refreshed now and then, not hundreds."""
    rig = Rig(pd())
    ev = rig.run(0, 600, (LYING, True, 0.7, 1))
    assert [e.phase for e in ev].count("start") == 1
    assert len({e.event_id for e in ev}) == 1
    assert 50 <= len(ev) <= 61  # one update every 10 s


def test_standing_people_raise_nothing() -> None:
    rig = Rig(pd())
    assert rig.run(0, 60, (STANDING, False, 0.9, 1)) == []


def test_brief_fall_class_flicker_is_ignored() -> None:
    """A Fall label on alternate frames (bending, sitting) never adds up to min_s."""
    rig = Rig(pd(min_s=3.0))
    ev: list[RuleEvent] = []
    for i in range(40):
        down = (i // 2) % 3 == 0  # down for 1 s, up for 2 s
        ev += rig.feed(i * 0.5, (LYING, down, 0.7, 1))
    assert starts(ev) == []


def test_low_confidence_is_not_enough() -> None:
    rig = Rig(pd(min_confidence=0.5))
    assert rig.run(0, 10, (LYING, True, 0.42, 1)) == []


@pytest.mark.parametrize("why,box,step", [
    ("sitting: not wide enough to be lying", SITTING, (0.0, 0.0)),
    ("a lying-shaped thing that keeps moving (a dog)", (100.0, 300.0, 250.0, 380.0), (40.0, 0.0)),
    ("a person filling the frame, too close to judge", (200.0, 50.0, 1200.0, 700.0), (0.0, 0.0)),
])
def test_found_down_needs_lying_still_and_judgeable(
        why: str, box: tuple[float, float, float, float], step: tuple[float, float]) -> None:
    """Found down (no fall seen): the Fall class alone is not enough."""
    rig = Rig(pd(min_s=1.0))
    ev: list[RuleEvent] = []
    for i in range(30):
        dx, dy = step[0] * i / 2, step[1] * i / 2
        b = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
        ev += rig.feed(i * 0.5, (b, True, 0.8, 1))
    assert starts(ev) == [], why


def test_ends_after_clear_s_and_holds_off_same_spot() -> None:
    rig = Rig(pd(hold_off_s=30))
    ev = rig.run(0, 10, (LYING, True, 0.7, 1))
    ev += rig.run(10, 20)
    assert [e.phase for e in ev if e.phase != "update"] == ["start", "end"]
    assert ev[-1].t == 14.5  # last seen down at 9.5 s, + clear_s
    assert starts(rig.run(20, 30, (LYING, True, 0.7, 2))) == []  # held off
    later = starts(rig.run(60, 70, (LYING, True, 0.7, 3)))
    assert len(later) == 1 and later[0].event_id != ev[0].event_id


def test_track_switch_continues_the_event() -> None:
    rig = Rig(pd())
    ev = rig.run(0, 10, (LYING, True, 0.7, 1))
    ev += rig.run(10, 40, (LYING, True, 0.7, 9))
    assert [e.phase for e in ev].count("start") == 1
    assert ev[-1].track_id == 9


def test_two_people_down_are_two_events() -> None:
    other = (700.0, 400.0, 1000.0, 480.0)
    rig = Rig(pd())
    ev = starts(rig.run(0, 5, (LYING, True, 0.7, 1), (other, True, 0.6, 2)))
    assert len(ev) == 2 and ev[0].event_id != ev[1].event_id


def test_untracked_detections_are_ignored() -> None:
    rig = Rig(pd())
    assert rig.run(0, 10, (LYING, True, 0.9, -1)) == []


# --- stranded_person ------------------------------------------------------------------------


def st(**kw: float) -> Stranded:
    base = dict(dwell_s=20.0, radius=0.5, clear_s=10.0, hold_off_s=60.0)
    base.update(kw)
    return Stranded(StrandedRule(**base))  # type: ignore[arg-type]


def test_person_staying_put_is_stranded_once() -> None:
    """Standing in one place (swaying a little) for dwell_s raises one event, any posture."""
    rig = Rig(st())
    ev: list[RuleEvent] = []
    for i in range(120):
        sway = 15.0 * np.sin(i / 3)
        b = (STANDING[0] + sway, STANDING[1], STANDING[2] + sway, STANDING[3])
        ev += rig.feed(i * 0.5, (b, False, 0.8, 1))
    s = starts(ev)
    assert len(s) == 1 and s[0].type == "stranded_person" and 20.0 <= s[0].t <= 21.0
    assert s[0].attributes["lying"] is False and s[0].attributes["severity_hint"] is None


def test_walkers_and_brief_stops_are_not_stranded() -> None:
    rig = Rig(st())
    ev: list[RuleEvent] = []
    for i in range(120):  # walks 20 px per step, stops for 10 s in the middle
        x = 20.0 * min(i, 40) + 20.0 * max(0, i - 60)
        ev += rig.feed(i * 0.5, ((x, 100.0, x + 60, 300.0), False, 0.8, 1))
    assert starts(ev) == []


def test_lying_or_in_water_raises_the_severity_hint() -> None:
    water = np.zeros((720, 1280), bool)
    water[350:, :] = True  # the lower half of the frame is under water
    rig = Rig(st(dwell_s=5.0))
    ev = starts(rig.run(0, 8, (LYING, True, 0.7, 1), water=water))
    assert len(ev) == 1
    assert ev[0].attributes["lying"] is True and ev[0].attributes["in_water"] is True
    assert ev[0].attributes["severity_hint"] == "orange"
    dry = Rig(st(dwell_s=5.0))
    ev = starts(dry.run(0, 8, (STANDING, False, 0.7, 1), water=water))
    assert ev[0].attributes["in_water"] is False and ev[0].attributes["severity_hint"] is None


# --- flooding ------------------------------------------------------------------------------


def fl(**kw: float) -> Flooding:
    base = dict(min_coverage=0.2, min_s=3.0, smooth_s=2.0, clear_s=10.0, hold_off_s=60.0)
    base.update(kw)
    return Flooding(FloodingRule(**base))  # type: ignore[arg-type]


def feed_cov(rule: Flooding, t0: float, t1: float, cov: object, fps: float = 1.0
             ) -> list[RuleEvent]:
    out = []
    for i in range(int(round((t1 - t0) * fps))):
        t = t0 + i / fps
        c = cov(t) if callable(cov) else cov
        out += rule.update(t, T0 + timedelta(seconds=t), float(c))  # type: ignore[arg-type]
    return out


def test_flooding_from_the_first_frame_is_raised_after_min_s_with_coverage() -> None:
    """A clip that starts flooded (no dry reference) raises after min_s."""
    rule = fl()
    ev = feed_cov(rule, 0, 10, 0.55)
    s = starts(ev)
    assert len(s) == 1 and s[0].t == 3.0 and s[0].started_wall == T0
    assert s[0].attributes["coverage"] == pytest.approx(0.55) and s[0].box is None


def test_flooding_reports_a_rising_trend_and_is_one_event() -> None:
    rule = fl()
    ev = feed_cov(rule, 0, 120, lambda t: 0.1 + t / 150)
    assert len(starts(ev)) == 1
    last = [e for e in ev if e.phase == "update"][-1]
    assert last.attributes["trend_per_min"] == pytest.approx(0.4, abs=0.05)  # +0.4 a minute


def test_brief_glare_is_not_flooding_and_flood_clears() -> None:
    rule = fl()
    assert starts(feed_cov(rule, 0, 20, lambda t: 0.8 if 5 <= t < 6 else 0.0)) == []
    ev = feed_cov(rule, 20, 40, 0.6) + feed_cov(rule, 40, 60, 0.0)
    assert [e.phase for e in ev if e.phase != "update"] == ["start", "end"]


# --- zone settings ---------------------------------------------------------------------------


def test_zone_params_override_and_unknown_keys_are_refused() -> None:
    rules = with_params(RulesFile(), {"stranded_person.dwell_s": 60, "person_down.min_s": 1})
    assert rules.stranded_person.dwell_s == 60 and rules.person_down.min_s == 1
    with pytest.raises(ValueError, match="no numeric setting"):
        with_params(RulesFile(), {"person_down.min_seconds": 1})
    with pytest.raises(ValueError, match="expected <rule>.<setting>"):
        with_params(RulesFile(), {"loitering.dwell_s": 1})
    with pytest.raises(ValueError, match="flooding"):
        with_params(RulesFile(), {"flooding.min_coverage": 2})


