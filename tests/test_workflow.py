"""The command workflow on the real store: the state machine (property-based), deadlines
and escalation on a controllable clock, working days, challenges, reports merged into one
case, routing, grid scope, and the actions over HTTP (409 naming the allowed actions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.bus import make_bus
from hub.config import Site, load_config
from hub.incidents import (
    Forbidden,
    IllegalTransition,
    IncidentService,
    InvalidInput,
    NotAllowedNow,
    events_of,
)
from hub.models import Incident, User
from hub.routing import UnitPosition
from hub.states import ACTIONS, DONE, STATES, TRANSITIONS, allowed_from, next_state
from hub.store import Store
from hub.workdays import Duration, WorkCalendar, parse_duration
from tests.conftest import DEMO

G01 = (34.7675, 113.6675)  # inside cell zz-jinshui-jingba-c1-g01
ADMIN = User(username="admin", name="a", role="admin")
OPERATOR = User(username="operator", name="o", role="operator")
STREET = User(username="street-op", name="s", role="operator", grid="zz-jinshui-jingba")
DISTRICT = User(username="district-op", name="d", role="operator", grid="zz-jinshui")
STAFF = User(username="staff-01", name="w", role="staff", grid="zz-jinshui-jingba-c1")
CIVIL = User(username="civil-affairs", name="c", role="department", department="civil-affairs")
PATROL = User(username="patrol-01", name="p", role="patrol", unit="patrol-01")


class Clock:
    """A clock the test moves by hand (a Monday morning, Asia/Shanghai)."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


@pytest.fixture(scope="module")
def site() -> Site:
    return load_config(DEMO)


@pytest.fixture
async def svc(site: Site, db_url: str) -> AsyncIterator[tuple[IncidentService, Clock,
                                                            list[tuple[str, str]]]]:
    """The incident service on each store (SQLite, the real PostgreSQL), with a clock the
    test moves and the notifications it sends."""
    store = Store(db_url)
    await store.open()
    bus = make_bus(None)
    await bus.start()
    clock = Clock()
    service = IncidentService(site, store, bus, clock=clock)
    sent: list[tuple[str, str]] = []

    def record(conn: object, inc: Incident, entry: dict[str, Any]) -> None:
        sent.extend((ev, inc.id) for ev in events_of(entry))

    store.on_incident_write = record
    yield service, clock, sent
    await bus.close()
    await store.close()


async def report(s: IncidentService, type_: str = "road_damage", pos: tuple[float, float] = G01,
                 user: User = STAFF, people: int = 0) -> tuple[Incident, bool]:
    return await s.report(user, type_=type_, description="路面塌陷", position=pos,
                          people=people, channel="staff", origin="test")


# --- the state machine -------------------------------------------------------------------


@given(st.sampled_from(STATES), st.sampled_from(ACTIONS))
def test_transition_table_is_consistent(state: str, action: str) -> None:
    """next_state agrees with allowed_from; done states are left only by reopen (or close,
    from resolved), comments, evidence exports and unlocks; closed is reached only from resolved."""
    to = next_state(action, state)
    assert (to is not None) == (action in allowed_from(state))
    if state in DONE and to is not None:
        assert action in ("reopen", "comment", "export", "evidence_unlock") or (
            state, action) == ("resolved", "close")
    if to == "closed" and state != "closed":
        assert state == "resolved"
    if to is not None and TRANSITIONS[action][1] is None:
        assert to == state


BODIES: dict[str, dict[str, Any]] = {
    "confirm": {}, "dismiss": {"reason": "a shadow", "label": "other"},
    "dispatch": {"departments": ["urban-management", "roads"], "lead": "roads"},
    "accept": {}, "en_route": {}, "on_scene": {}, "feedback": {"text": "on it"},
    "resolve": {"result": "fixed"}, "close": {}, "reopen": {"reason": "came back"},
    "escalate": {"reason": "needs the street level"}, "challenge": {"reason": "no answer"},
    "severity": {"severity": "red", "reason": "a school nearby"}, "comment": {"text": "note"},
    "export": {"reason": "a court asked for it"},
    "evidence_unlock": {"reason": "the case is closed, no appeal"},
}


@pytest.fixture(scope="module")
def machine(site: Site, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[asyncio.AbstractEventLoop, IncidentService]]:
    loop = asyncio.new_event_loop()
    store = Store(tmp_path_factory.mktemp("sm") / "gridhub.sqlite3")
    loop.run_until_complete(store.open())
    bus = make_bus(None)
    loop.run_until_complete(bus.start())
    yield loop, IncidentService(site, store, bus)
    loop.run_until_complete(bus.close())
    loop.run_until_complete(store.close())
    loop.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12))
def test_random_action_sequences_follow_the_machine(
    machine: tuple[asyncio.AbstractEventLoop, IncidentService], actions: list[str]
) -> None:
    """Any sequence of actions on a real case: each applies exactly when the table allows
    it (else 409 naming the allowed actions), the stored state always matches the model,
    one timeline entry per applied action, and the hash chain stays intact."""
    loop, s = machine

    async def run() -> None:
        inc, _ = await report(s)  # a new case, or one an earlier example left open
        inc_state = inc.state
        applied = len(await s.store.timeline(inc.id))
        for action in actions:
            want = next_state(action, inc_state)
            try:
                got = await s.act(inc.id, ADMIN, action, "test", **BODIES[action])
            except IllegalTransition as err:
                assert want is None, f"{action} from {inc_state} was refused"
                assert err.allowed == sorted(allowed_from(inc_state))
                continue
            except NotAllowedNow:  # a precondition beyond the table (top level, too early)
                # (evidence_unlock: a report's case has no recordings locked)
                assert action in ("escalate", "challenge", "severity", "evidence_unlock")
                continue
            assert want is not None, f"{action} from {inc_state} was applied"
            assert got.state == want
            inc_state, applied = got.state, applied + 1
            if action == "severity":
                BODIES["severity"]["severity"] = "blue" if got.severity == "red" else "red"
        stored = await s.store.get(inc.id)
        assert stored.state == inc_state
        assert len(await s.store.timeline(inc.id)) == applied
        assert await asyncio.to_thread(s.store.verify_chain) == []

    loop.run_until_complete(run())


# --- working days ------------------------------------------------------------------------


def test_working_days_skip_weekends_and_holidays_and_count_make_up_days() -> None:
    """Friday + 2wd is Tuesday; holidays are skipped; a make-up Saturday counts."""
    cal = WorkCalendar("Asia/Shanghai", holidays=(date(2026, 10, 1), date(2026, 10, 2)),
                       workdays=(date(2026, 10, 10),))
    fri = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)  # Friday 10:00 Shanghai
    assert cal.add(fri, parse_duration("2wd")) == datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    wed = datetime(2026, 9, 30, 2, 0, tzinfo=UTC)  # before the National Day holidays
    assert cal.add(wed, Duration(workdays=1)).date() == date(2026, 10, 5)
    fri9 = datetime(2026, 10, 9, 2, 0, tzinfo=UTC)
    assert cal.add(fri9, Duration(workdays=1)).date() == date(2026, 10, 10)  # make-up Saturday
    assert cal.add(fri, parse_duration("30m")) == fri + timedelta(minutes=30)
    assert cal.workdays_between(fri, fri + timedelta(days=7)) == 5
    for bad in ("", "5", "2x", "-1h", "1.5wd", "0wd"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# --- deadlines and escalation ----------------------------------------------------------


async def test_deadlines_warn_then_escalate_up_the_grid(
        svc: tuple[IncidentService, Clock, list[tuple[str, str]]]) -> None:
    """An orange case dispatched and not accepted: a warning at 80 % of the 30 min
    acknowledge window, then on the breach it moves to the parent level's queue with its
    history, and again one level up when the new level misses its deadline."""
    s, clock, sent = svc
    inc, _ = await report(s, people=2)  # road damage with people involved: orange
    assert inc.severity == "orange" and inc.queue_grid == "zz-jinshui-jingba-c1-g01"
    inc = await s.act(inc.id, OPERATOR, "dispatch", "test")  # the suggestion: roads
    assert inc.departments == ["roads"] and inc.ack_due == clock.t + timedelta(minutes=30)
    clock.advance(minutes=20)
    assert await s.check_deadlines() == 0
    clock.advance(minutes=5)  # 25 of 30 minutes
    assert await s.check_deadlines() == 1
    assert await s.check_deadlines() == 0  # warned once
    tl = await s.store.timeline(inc.id)
    assert tl[-1].action == "warning" and tl[-1].detail["deadline"] == "ack"
    assert ("deadline.warning", inc.id) in sent
    clock.advance(minutes=6)
    assert await s.check_deadlines() == 1
    up = await s.store.get(inc.id)
    assert (up.state, up.queue_grid) == ("escalated", "zz-jinshui-jingba-c1")
    assert up.escalations[-1]["auto"] is True and up.escalations[-1]["by"] == "system:deadlines"
    assert up.departments == ["roads"]  # history kept
    assert ("incident.escalated", inc.id) in sent and ("deadline.breached", inc.id) in sent
    # The community level now has a fresh resolve window (1 day for orange).
    assert up.resolve_due == clock.t + timedelta(days=1)
    clock.advance(days=1, minutes=1)
    await s.check_deadlines()
    assert (await s.store.get(inc.id)).queue_grid == "zz-jinshui-jingba"
    actions = [e.action for e in await s.store.timeline(inc.id)]
    assert actions.count("escalate") == 2


async def test_accepting_in_time_stops_the_acknowledge_deadline(
        svc: tuple[IncidentService, Clock, list[tuple[str, str]]]) -> None:
    """A case accepted before its acknowledge deadline is not escalated for it."""
    s, clock, _ = svc
    inc, _ = await report(s, type_="illegal_construction")
    inc = await s.act(inc.id, OPERATOR, "dispatch", "test")
    assert inc.departments == ["urban-management"]
    clock.advance(hours=1)
    user = User(username="um", name="u", role="department", department="urban-management")
    inc = await s.act(inc.id, user, "accept", "test")
    assert inc.ack_due is None
    clock.advance(days=1)
    await s.check_deadlines()
    assert (await s.store.get(inc.id)).state == "accepted"


async def test_challenge_after_seven_working_days_and_its_own_deadline(
        svc: tuple[IncidentService, Clock, list[tuple[str, str]]]) -> None:
    """The street level escalates to the district; a challenge before 7 working days is
    refused; after them it is a tracked item; an answer by the district closes it, an
    unanswered one goes overdue after its 3 working days."""
    s, clock, sent = svc
    inc, _ = await report(s, type_="illegal_business")
    inc = await s.act(inc.id, ADMIN, "escalate", "test", reason="to the community")
    inc = await s.act(inc.id, ADMIN, "escalate", "test", reason="to the street")
    inc = await s.act(inc.id, STREET, "escalate", "test", reason="needs the district")
    assert inc.queue_grid == "zz-jinshui"
    with pytest.raises(Forbidden):  # above the street level now: read-only for it
        await s.act(inc.id, STREET, "dispatch", "test")
    await s.act(inc.id, STREET, "comment", "test", text="any news?")
    clock.advance(days=6)
    with pytest.raises(NotAllowedNow, match="has until"):
        await s.act(inc.id, STREET, "challenge", "test", reason="no answer")
    clock.advance(days=4)  # 10 calendar days: 8 working days
    with pytest.raises(Forbidden):  # the district cannot challenge itself
        await s.act(inc.id, DISTRICT, "challenge", "test", reason="x")
    inc = await s.act(inc.id, STREET, "challenge", "test", reason="no answer in 7 days")
    assert inc.open_challenges == 1 and ("challenge.created", inc.id) in sent
    [ch] = await s.challenges(STREET, "open")
    assert (ch["from_grid"], ch["to_grid"]) == ("zz-jinshui-jingba", "zz-jinshui")
    inc = await s.act(inc.id, DISTRICT, "comment", "test", text="assigned to urban management")
    assert inc.open_challenges == 0
    [ch] = await s.challenges(ADMIN)
    assert ch["state"] == "answered" and ch["answered_by"] == "district-op"
    # A second challenge nobody answers goes overdue.
    clock.advance(days=10)
    await s.act(inc.id, STREET, "challenge", "test", reason="still nothing")
    clock.advance(days=5)
    await s.check_deadlines()
    states = sorted(c["state"] for c in await s.challenges(ADMIN))
    assert states == ["answered", "overdue"] and ("challenge.overdue", inc.id) in sent


async def test_top_level_cannot_escalate(
        svc: tuple[IncidentService, Clock, list[tuple[str, str]]]) -> None:
    """Escalating a case already at the city level is refused, naming the level."""
    s, _, _ = svc
    inc, _ = await report(s, type_="other")
    for _ in range(4):
        inc = await s.act(inc.id, ADMIN, "escalate", "test", reason="up")
    assert inc.queue_grid == "zz"
    with pytest.raises(NotAllowedNow, match="top level"):
        await s.act(inc.id, ADMIN, "escalate", "test", reason="up")


# --- reports, merging, routing, scope ---------------------------------------------------


async def test_reports_merge_near_the_same_place_and_type(
        svc: tuple[IncidentService, Clock, list[tuple[str, str]]]) -> None:
    """A second report of the same type 30 m away joins the first case; another type or a
    place 500 m away is a new case; a position outside every grid is refused."""
    s, clock, _ = svc
    a, merged = await report(s)
    assert not merged and a.grid_id == "zz-jinshui-jingba-c1-g01" and a.source == "manual"
    assert a.suggested_departments == ["roads"]
    clock.advance(minutes=5)
    b, merged = await report(s, pos=(G01[0] + 0.00027, G01[1]))  # ~30 m north
    assert merged and b.id == a.id and b.reports == 2
    c, merged = await report(s, type_="other")
    assert not merged and c.id != a.id
    d, merged = await report(s, pos=(G01[0], G01[1] + 0.0055))  # ~500 m east, cell g02
    assert not merged and d.grid_id == "zz-jinshui-jingba-c1-g02"
    with pytest.raises(InvalidInput, match="outside every grid"):
        await report(s, pos=(10.0, 10.0), user=ADMIN)
    with pytest.raises(InvalidInput, match="unknown incident type"):
        await report(s, type_="fire")
    tl = await s.store.timeline(a.id)
    assert [e.action for e in tl] == ["created", "merged"]


async def test_one_click_dispatch_takes_joint_departments_and_nearest_free_unit(
        svc: tuple[IncidentService, Clock, list[tuple[str, str]]]) -> None:
    """person_down routes to civil affairs (lead) with emergency medical; the nearest
    online unit that is not busy is suggested; the empty dispatch sends all of them."""
    s, _, _ = svc
    units = [UnitPosition("patrol-01", G01[0] + 0.01, G01[1], True),
             UnitPosition("patrol-02", G01[0] + 0.001, G01[1], True)]
    s.unit_positions = lambda: units
    inc, _ = await report(s, type_="person_down", user=OPERATOR)
    assert inc.suggested_departments == ["civil-affairs", "emergency-medical"]
    assert inc.suggested_unit == "patrol-02"
    inc = await s.act(inc.id, OPERATOR, "dispatch", "test")
    assert inc.departments == ["civil-affairs", "emergency-medical"]
    assert inc.lead_department == "civil-affairs" and inc.units == ["patrol-02"]
    await s.check_deadlines()  # refreshes which units are busy
    other, _ = await report(s, type_="person_down", user=OPERATOR, pos=(G01[0], G01[1] + 0.004))
    assert other.suggested_unit == "patrol-01"  # patrol-02 is on the first case
    # The unit and the departments act; others cannot.
    with pytest.raises(Forbidden):
        await s.act(inc.id, PATROL, "accept", "test")
    p2 = User(username="patrol-02", name="p", role="patrol", unit="patrol-02")
    inc = await s.act(inc.id, p2, "on_scene", "test")
    inc = await s.act(inc.id, CIVIL, "feedback", "test", text="ambulance called")
    inc = await s.act(inc.id, CIVIL, "resolve", "test", result="taken to hospital")
    with pytest.raises(Forbidden):
        await s.act(inc.id, CIVIL, "close", "test")
    inc = await s.act(inc.id, OPERATOR, "close", "test")
    assert inc.state == "closed" and inc.closed_at is not None


async def test_operator_severity_change_needs_a_reason_and_holds(
        svc: tuple[IncidentService, Clock, list[tuple[str, str]]]) -> None:
    """An operator sets the level with a reason; the deadlines follow the new level."""
    s, clock, _ = svc
    inc, _ = await report(s, type_="illegal_construction")
    assert inc.severity == "blue"
    inc = await s.act(inc.id, OPERATOR, "severity", "test", severity="red",
                      reason="blocking a fire lane")
    assert inc.severity == "red" and inc.severity_reason == "blocking a fire lane"
    assert inc.resolve_due == inc.created_at + timedelta(hours=4)
    with pytest.raises(Forbidden):
        await s.act(inc.id, STAFF, "severity", "test", severity="blue", reason="x")
