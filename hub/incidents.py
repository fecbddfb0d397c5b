"""Incidents: candidates from detectors and reports from people become cases; people move
them through states; deadlines move them up the grid.

The service consumes :class:`IncidentCandidate` from the bus (durably: a candidate is
acked only after the store committed it), keeps one incident per real-world event
(``event_id``), takes manual reports (merged into an open case of the same type nearby),
and applies user actions through the state machine in :mod:`hub.states`, with the role
and grid-scope rules below. Every change is stored with a hash-chained timeline entry
(who, when, from where, what changed) in one transaction, then broadcast as an
:class:`IncidentEvent` for the consoles. :meth:`IncidentService.check_deadlines` warns
before a deadline, escalates on a breach and marks challenges overdue.

Who may do what (admins may do everything):

- operator, dispatcher: confirm, dismiss, dispatch, close, reopen, escalate, severity,
  challenge, comment, on cases whose queue is in their grid subtree (read-only, except
  comment and challenge, once a case has moved above their level);
- department: accept, en_route, on_scene, feedback, resolve, escalate, comment on cases
  assigned to the department; patrol: the same on cases assigned to its unit;
- staff (grid staff): report, comment; reviewer: comment, export (an evidence bundle),
  evidence_unlock (release the recordings locked as evidence).

Exceptions::

    ActionError
     +-- IllegalTransition   the action is not allowed in the incident's state (409)
     +-- NotAllowedNow       allowed in this state, but not yet / not here (409)
     +-- UnknownDepartment   dispatch to a department or unit the site does not have (422)
     +-- InvalidInput        a report of an unknown type, an unknown photo (422)
     +-- Forbidden           the user may not do this to this incident (403)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import uuid
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hub import schema as t
from hub.bus import Bus, BusError, IncidentCandidate, IncidentEvent
from hub.config import CameraConfig, Severity, Site
from hub.models import Incident, State, User, utcnow
from hub.routing import UnitPosition, distance_m, nearest_unit, route
from hub.severity import Facts, higher, severity_for
from hub.states import OPEN, allowed_from, next_state
from hub.store import Conflict, NotFound, Store
from hub.telemetry import GridIndex
from hub.workdays import WorkCalendar, parse_duration

log = logging.getLogger(__name__)

GROUP = "hub"
STALE_AFTER_S = 30.0  # a candidate unacked this long is taken over from a dead consumer
JUDGES = frozenset({"admin", "operator", "dispatcher"})
ASSIGNEE_ACTIONS = frozenset({"accept", "en_route", "on_scene", "feedback", "resolve"})
ROLES: dict[str, frozenset[str]] = {
    "confirm": JUDGES, "dismiss": JUDGES, "dispatch": JUDGES, "close": JUDGES,
    "reopen": JUDGES, "severity": JUDGES, "challenge": JUDGES,
    "escalate": JUDGES | {"department"},
    **{a: frozenset({"admin", "department", "patrol"}) for a in ASSIGNEE_ACTIONS},
    "comment": frozenset({"admin", "operator", "dispatcher", "department", "patrol",
                          "reviewer", "staff"}),
    "export": frozenset({"admin", "reviewer"}),
    "evidence_unlock": frozenset({"admin", "reviewer"}),
}
Notice = Literal["escalated", "merged", "deadline.warning", "deadline.breached",
                 "challenge.created", "challenge.overdue"]


class ActionError(Exception):
    """A user action cannot be applied."""


class IllegalTransition(ActionError):
    def __init__(self, action: str, state: str) -> None:
        self.allowed = sorted(allowed_from(state))
        super().__init__(
            f"cannot {action} an incident that is {state}; allowed now: "
            f"{', '.join(self.allowed) or 'nothing'}"
        )


class NotAllowedNow(ActionError):
    pass


class UnknownDepartment(ActionError):
    pass


class InvalidInput(ActionError):
    pass


class Forbidden(ActionError):
    pass


class NotVisible(Forbidden):
    """The user may not see this incident (answered as 404, like a missing one)."""


def new_incident_id(at: datetime) -> str:
    """Time-sortable, unique incident id."""
    return f"inc_{at.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:8]}"


def in_subtree(site: Site, grid_id: str | None, root: str | None) -> bool:
    """Whether ``grid_id`` lies in the subtree of ``root`` (None: the whole tree)."""
    if root is None:
        return True
    return grid_id is not None and root in site.grid_ancestors(grid_id)


def can_see(site: Site, user: User, inc: Incident) -> bool:
    """Whether ``user`` may see ``inc``: department users what is assigned to their
    department, patrol users what is assigned to their unit, everyone else the cases in
    their grid subtree (by place, or by the queue holding it)."""
    if user.role == "department":
        return user.department is not None and user.department in inc.departments
    if user.role == "patrol":
        return user.unit is not None and user.unit in inc.units
    if user.grid is None or user.role == "admin":
        return True
    return (in_subtree(site, inc.grid_id, user.grid)
            or in_subtree(site, inc.queue_grid, user.grid))


def events_of(entry: dict[str, Any] | None) -> list[str]:
    """The notification events a timeline entry stands for (webhooks and SMS are written
    to the outbox in the same transaction as the entry, so none is lost in a crash)."""
    if entry is None:
        return []
    action, detail = entry["action"], entry.get("detail") or {}
    if action == "created":
        return ["incident.created"]
    if action == "escalate":
        return ["incident.escalated"] + (["deadline.breached"] if detail.get("deadline")
                                         else [])
    return [{"warning": "deadline.warning", "breach": "deadline.breached",
             "challenge": "challenge.created",
             "challenge_overdue": "challenge.overdue"}.get(action, "incident.updated")]


class IncidentService:
    """Owns incident creation, updates, state changes and deadlines."""

    def __init__(
        self, site: Site, store: Store, bus: Bus,
        cameras: Callable[[str], CameraConfig | None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.site = site
        self.store = store
        store.alarm = self.alarm_at
        self.bus = bus
        self.camera = cameras or site.camera  # run-time camera list (hub.cameras)
        self.now = clock
        wf = site.rules.workflow
        self._grid_index = GridIndex(site.grids)
        self.calendar = WorkCalendar(site.site.timezone, tuple(wf.calendar.weekend),
                                     tuple(wf.calendar.holidays), tuple(wf.calendar.workdays))
        # Set once the unit service runs: where a patrol unit is (grid cell id), and every
        # unit's last position.
        self.unit_grid: Callable[[str], str | None] | None = None
        self.unit_positions: Callable[[], list[UnitPosition]] | None = None
        self.consumer = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.candidates_seen = 0
        self.last_error: str | None = None
        # One change at a time per incident (and per detector event, and per reported type
        # while merging); different incidents change concurrently and the store commits
        # their writes together. Across hubs, versions guard the same thing.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    def _area_keys(self, type_: str, position: tuple[float, float]) -> list[str]:
        """Lock keys for a report: the merge-radius squares around the position (sorted,
        so two reports take shared squares in the same order)."""
        step = max(self.site.rules.workflow.merge_radius_m, 1.0) / 111_000
        i, j = int(position[0] // step), int(position[1] // (step * 2))
        return sorted(f"report:{type_}:{a}:{b}" for a in (i - 1, i, i + 1)
                      for b in (j - 1, j, j + 1))

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # --- candidates from detectors ----------------------------------------------

    async def run(self) -> None:
        """Consume candidates until cancelled."""
        next_claim = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                batch = []
                if loop.time() >= next_claim:
                    batch = await self.bus.claim_stale(
                        IncidentCandidate, GROUP, self.consumer, min_idle_s=STALE_AFTER_S
                    )
                    next_claim = loop.time() + STALE_AFTER_S / 2
                batch += await self.bus.consume(IncidentCandidate, GROUP, self.consumer)
                for d in batch:
                    await self.handle_candidate(d.message)
                    await self.bus.ack(IncidentCandidate, GROUP, [d.id])
                    self.candidates_seen += 1
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except (BusError, OSError) as err:
                self.last_error = str(err)
                log.error("incidents: bus failure, retrying in 1 s: %s", err)
                await asyncio.sleep(1.0)

    def _facts(self, inc: Incident, c: IncidentCandidate | None = None) -> Facts:
        attrs = {**inc.attributes, **(c.attributes if c else {})}
        importance = "normal"
        cam = self.camera(inc.camera_id) if inc.camera_id else None
        if cam is not None:
            zone = next((z for z in cam.zones if z.id == inc.zone), None)
            importance = zone.importance if zone else "normal"
        last = c.at if c else inc.last_seen_at
        coverage = attrs.get("coverage")
        return Facts(
            confidence=max(inc.confidence, c.confidence if c else 0.0),
            duration_s=max(0.0, (last - inc.started_at).total_seconds()),
            coverage=float(coverage) if isinstance(coverage, int | float) else None,
            people=max(inc.people, int(attrs.get("people", 0) or 0)),
            zone_importance=importance, hint=attrs.get("severity_hint"),
        )

    async def handle_candidate(self, c: IncidentCandidate) -> Incident | None:
        """Create or update the incident for a candidate's event. Idempotent per event."""
        async with self._lock(f"event:{c.event_id}"):
            inc = await self._by_event(c.event_id)
            snap = (c.at, c.snapshot_jpeg) if c.snapshot_jpeg else None
            frame = ((c.frame_jpeg, c.detections, c.boxes[0] if c.boxes else None)
                     if c.frame_jpeg and snap else None)
            now = self.now()
            if inc is None:
                if c.phase == "end":
                    return None
                new = self._from_candidate(c, now)
                merged = await self._merge_target(new, manual_only=True)
                if merged is not None:  # a person reported it already: one case
                    return await self._merge_detection(merged, new, c, snap, frame, now)
                await self.store.insert(
                    new,
                    event_id=c.event_id,
                    entry={
                        "at": now,
                        "actor": f"detector:{c.camera_id}",
                        "action": "created",
                        "from_state": None,
                        "to_state": new.state,
                        "detail": {"confidence": round(c.confidence, 3), "track_id": c.track_id,
                                   "severity": new.severity, **c.attributes},
                    },
                    snapshot=snap,
                    frame=frame,
                )
                log.info("incident %s created (%s on %s)", new.id, new.type, new.camera_id)
                await self._announce("incident.created", new, "created")
                return new
            better = c.confidence > inc.confidence
            changes: dict[str, Any] = {
                "last_seen_at": max(inc.last_seen_at, c.at),
                "updated_at": now,
                "version": inc.version + 1,
                "attributes": {**inc.attributes, **{k: v for k, v in c.attributes.items()
                                                     if isinstance(v, int | float | str)}},
            }
            if inc.severity_reason is None:  # an operator's level stands
                changes["severity"] = higher(inc.severity, severity_for(
                    self.site, inc.type, self._facts(inc, c)))
            if better:
                changes.update(confidence=c.confidence, boxes=c.boxes, frame_size=c.frame_size)
            entry = None
            if c.phase == "end":
                changes["ended_at"] = c.at
                entry = {
                    "at": now, "actor": f"detector:{c.camera_id}", "action": "cleared",
                    "from_state": inc.state, "to_state": inc.state,
                    "detail": {"duration_s": round((c.at - inc.started_at).total_seconds(), 1)},
                }
            elif changes.get("severity", inc.severity) != inc.severity:
                entry = {
                    "at": now, "actor": f"detector:{c.camera_id}", "action": "severity",
                    "from_state": inc.state, "to_state": inc.state,
                    "detail": {"from": inc.severity, "to": changes["severity"],
                               "reason": "rules"},
                }
            new = inc.model_copy(update=changes)
            if entry is not None and new.severity != inc.severity:
                new = self._with_deadlines(new, now, resolve_from=new.resolve_from)
            try:
                await self.store.update(new, entry=entry, snapshot=snap if better else None,
                                        frame=frame if better else None,
                                        expect_version=inc.version)
            except Conflict:  # another hub changed it: the next update carries ours
                log.warning("incident %s changed under a detector update; skipped", inc.id)
                return inc
            await self._announce("incident.updated", new, "updated")
            return new

    async def _by_event(self, event_id: str) -> Incident | None:
        inc = await self.store.by_event(event_id)
        if inc is not None:
            return inc
        merged_into = await self.store.get_doc("events", event_id)
        if merged_into is None:
            return None
        try:
            return await self.store.get(merged_into["incident_id"])
        except NotFound:
            return None

    def _position(self, camera_id: str | None) -> tuple[float, float] | None:
        cam = self.camera(camera_id) if camera_id else None
        if cam is not None and cam.position is not None:
            lon, lat = cam.position  # cameras.yaml keeps (lon, lat)
            return (lat, lon)
        if camera_id and self.unit_positions is not None:
            for u in self.unit_positions():
                if u.unit_id == camera_id:
                    return (u.lat, u.lon)
        return None

    def _from_candidate(self, c: IncidentCandidate, now: datetime) -> Incident:
        cam = self.camera(c.camera_id)
        grid_id = cam.grid if cam else None
        source_name = cam.name if cam else c.camera_id
        unit = self.site.unit(c.camera_id) if cam is None else None
        if unit is not None:  # a patrol stream: where the unit is now, else its home grid
            source_name = unit.name
            grid_id = (self.unit_grid(unit.id) if self.unit_grid else None) or unit.grid
        iid = new_incident_id(now)
        inc = Incident(
            id=iid, type=c.type, state="new", severity="yellow", source="detector",
            camera_id=c.camera_id, camera_name=source_name, zone=c.zone,
            confidence=c.confidence, created_at=now, updated_at=now, started_at=c.started_at,
            last_seen_at=c.at, boxes=c.boxes, frame_size=c.frame_size, track_id=c.track_id,
            snapshot_url=f"/api/incidents/{iid}/snapshot" if c.snapshot_jpeg else None,
            clip_start=c.clip_start, clip_end=c.clip_end,
            position=self._position(c.camera_id),
            attributes={k: v for k, v in c.attributes.items()
                        if isinstance(v, int | float | str)},
        )
        inc = self._placed(inc, grid_id)
        inc = inc.model_copy(update={"severity": severity_for(self.site, c.type,
                                                              self._facts(inc, c))})
        return self._with_deadlines(inc, now, resolve_from=now)

    def _placed(self, inc: Incident, grid_id: str | None) -> Incident:
        """The incident in grid cell ``grid_id``, queued at that level, with suggestions."""
        grid = self.site.grid(grid_id) if grid_id else None
        deps, with_unit = route(self.site, inc.type, grid_id)
        return inc.model_copy(update={
            "grid_id": grid_id, "grid_name": grid.name if grid else None,
            "queue_grid": grid_id, "queue_grid_name": grid.name if grid else None,
            "suggested_departments": deps,
            "suggested_unit": self._nearest_unit(inc.position) if with_unit else None,
        })

    def _nearest_unit(self, position: tuple[float, float] | None) -> str | None:
        if self.unit_positions is None or position is None:
            return None
        return nearest_unit(self.unit_positions(), position, self._busy_units,
                            self.site.rules.workflow.unit_max_km)

    _busy_units: set[str] = set()  # units on an open case (refreshed by check_deadlines)

    def _with_deadlines(self, inc: Incident, now: datetime, *,
                        resolve_from: datetime | None) -> Incident:
        """Deadlines for the incident's severity: resolve from ``resolve_from``, acknowledge
        from the dispatch (while dispatched and not yet accepted)."""
        dl = self.site.rules.workflow.deadlines[inc.severity]
        start = resolve_from or inc.resolve_from or inc.created_at
        upd: dict[str, Any] = {
            "resolve_from": start,
            "resolve_due": self.calendar.add(start, parse_duration(dl.resolve)),
        }
        if inc.state == "dispatched" and inc.dispatched_at is not None:
            upd["ack_due"] = self.calendar.add(inc.dispatched_at,
                                               parse_duration(dl.acknowledge))
        return inc.model_copy(update=upd)

    # --- merging: many channels, one case -------------------------------------------

    async def _merge_target(self, inc: Incident, manual_only: bool = False
                            ) -> Incident | None:
        """An open case of the same type near ``inc`` and seen recently, if any. A detection
        joins only a case people reported (two people down in one view are two cases)."""
        if inc.position is None:
            return None
        wf = self.site.rules.workflow
        since = inc.created_at.timestamp() - wf.merge_window_s
        deg = wf.merge_radius_m / 111_000 * 2  # a loose box; the exact test is below
        rows = await self.store.near(
            inc.type, (inc.position[0] - deg, inc.position[0] + deg),
            (inc.position[1] - deg * 2, inc.position[1] + deg * 2))
        best: tuple[float, Incident] | None = None
        for other in rows:
            if other.position is None or other.last_seen_at.timestamp() < since:
                continue
            if manual_only and (other.source != "manual" or other.camera_id is not None):
                continue
            d = distance_m(inc.position, other.position)
            if d <= wf.merge_radius_m and (best is None or d < best[0]):
                best = (d, other)
        return best[1] if best else None

    async def _merge_detection(self, target: Incident, new: Incident, c: IncidentCandidate,
                               snap: tuple[datetime, bytes] | None, frame: Any,
                               now: datetime) -> Incident:
        """A detection of a case people reported: the detector's evidence joins it."""
        upd = target.model_copy(update={
            "updated_at": now, "version": target.version + 1, "reports": target.reports + 1,
            "camera_id": target.camera_id or new.camera_id,
            "camera_name": target.camera_name or new.camera_name,
            "confidence": max(target.confidence, new.confidence),
            "boxes": target.boxes or new.boxes, "frame_size": target.frame_size or
            new.frame_size, "snapshot_url": target.snapshot_url or (
                f"/api/incidents/{target.id}/snapshot" if snap else None),
            "last_seen_at": max(target.last_seen_at, new.last_seen_at),
            "severity": higher(target.severity, new.severity)
            if target.severity_reason is None else target.severity,
        })

        def remember(conn: Connection) -> None:
            self.store._upsert(conn, t.documents, {
                "scope": "events", "key": c.event_id, "updated_at": now.isoformat(),
                "doc": f'{{"incident_id": "{target.id}"}}'}, keys=("scope", "key"))

        await self.store.update(
            upd, entry={"at": now, "actor": f"detector:{c.camera_id}", "action": "merged",
                        "from_state": target.state, "to_state": target.state,
                        "detail": {"channel": "detector", "event_id": c.event_id,
                                   "confidence": round(c.confidence, 3)}},
            snapshot=snap if target.snapshot_url is None else None,
            frame=frame if target.snapshot_url is None else None,
            expect_version=target.version, also=remember)
        await self._announce("incident.updated", upd, "merged", notice="merged")
        return upd

    async def report(self, user: User, *, type_: str, description: str,
                     position: tuple[float, float], people: int, channel: str,
                     origin: str) -> tuple[Incident, bool]:
        """A problem reported by a person: a new case, or merged into an open case of the
        same type nearby. Returns (case, merged)."""
        if type_ not in self.site.incident_type_ids():
            raise InvalidInput(f"unknown incident type {type_!r}; known: "
                               f"{', '.join(sorted(self.site.incident_type_ids()))}")
        if user.role not in ("admin", "operator", "dispatcher", "staff", "patrol",
                             "department"):
            raise Forbidden(f"role {user.role} cannot report problems")
        grid = self._grid_index.cell_at(position[1], position[0])
        if grid is None:
            raise InvalidInput(f"position {position[0]:.6f}, {position[1]:.6f} is outside "
                               "every grid of this site")
        if user.grid and not in_subtree(self.site, grid.id, user.grid) and user.role != "admin":
            raise Forbidden(f"the position is outside your grid ({user.grid})")
        async with contextlib.AsyncExitStack() as held:
            for key in self._area_keys(type_, position):  # reports that could merge: in turn
                await held.enter_async_context(self._lock(key))
            now = self.now()
            iid = new_incident_id(now)
            inc = Incident(
                id=iid, type=type_, state="new", severity="yellow", source="manual",
                created_at=now, updated_at=now, started_at=now, last_seen_at=now,
                position=position, description=description, reporter=user.username,
                people=people, confidence=1.0,
            )
            inc = self._placed(inc, grid.id)
            target = await self._merge_target(inc)
            detail = {"channel": channel, "reporter": user.username,
                      "description": description, "position": list(position),
                      "people": people or None, "from": origin}
            if target is not None:
                async with self._lock(target.id):  # the case may be changing right now
                    target = await self.store.get(target.id)
                    if target.state in OPEN:
                        return await self._merge_report(target, user, people, description,
                                                        detail, now), True
            inc = inc.model_copy(update={"severity": severity_for(self.site, type_,
                                                                  self._facts(inc))})
            inc = self._with_deadlines(inc, now, resolve_from=now)
            await self.store.insert(
                inc, event_id=None,
                entry={"at": now, "actor": user.username, "action": "created",
                       "from_state": None, "to_state": "new",
                       "detail": {**{k: v for k, v in detail.items() if v is not None},
                                  "severity": inc.severity}})
            log.info("incident %s reported by %s (%s)", inc.id, user.username, type_)
        await self._announce("incident.created", inc, "created")
        return inc, False

    async def _merge_report(self, target: Incident, user: User, people: int,
                            description: str, detail: dict[str, Any], now: datetime
                            ) -> Incident:
        """A report joins an open case (called with the case's lock held)."""
        upd = target.model_copy(update={
            "updated_at": now, "version": target.version + 1,
            "reports": target.reports + 1, "last_seen_at": now,
            "people": max(target.people, people),
            "description": target.description or description,
        })
        if upd.severity_reason is None:
            upd = upd.model_copy(update={"severity": higher(
                upd.severity, severity_for(self.site, upd.type, self._facts(upd)))})
        await self.store.update(
            upd, entry={"at": now, "actor": user.username, "action": "merged",
                        "from_state": target.state, "to_state": target.state,
                        "detail": {k: v for k, v in detail.items() if v is not None}},
            expect_version=target.version)
        log.info("report by %s merged into %s", user.username, target.id)
        await self._announce("incident.updated", upd, "merged", notice="merged")
        return upd

    async def add_photo(self, incident_id: str, user: User, data: bytes, content_type: str,
                        origin: str) -> str:
        """Attach a photo (JPEG, PNG or WebP) to a case; returns its id."""
        async with self._lock(incident_id):
            inc = await self.store.get(incident_id)
            if not can_see(self.site, user, inc):
                raise Forbidden("you cannot see this incident")
            if user.role == "reviewer":
                raise Forbidden("reviewers cannot add photos")
            now = self.now()
            pid = uuid.uuid4().hex[:16]
            digest = hashlib.sha256(data).hexdigest()
            new = inc.model_copy(update={"photos": [*inc.photos, pid], "updated_at": now,
                                         "version": inc.version + 1})

            def put(conn: Connection) -> None:
                conn.execute(sa.insert(t.photos).values(
                    id=pid, incident_id=inc.id, at=now.isoformat(), by=user.username,
                    content_type=content_type, sha256=digest, data=data))

            await self.store.update(
                new, entry={"at": now, "actor": user.username, "action": "photo",
                            "from_state": inc.state, "to_state": inc.state,
                            "detail": {"photo": pid, "sha256": digest, "bytes": len(data),
                                       "from": origin}},
                expect_version=inc.version, also=put)
        await self._announce("incident.updated", new, "photo")
        return pid

    # --- user actions --------------------------------------------------------------

    def _check(self, user: User, action: str, inc: Incident) -> None:
        """Role and scope rules (module docstring); raises Forbidden (NotVisible for a
        case the user may not see at all, which the API answers like a missing one)."""
        if user.role == "admin":
            return
        if not can_see(self.site, user, inc):
            raise NotVisible(f"no incident {inc.id!r}")
        if user.role not in ROLES.get(action, frozenset()):
            raise Forbidden(f"role {user.role} cannot {action}")
        if action in ASSIGNEE_ACTIONS:
            mine = (user.role == "department" and user.department in inc.departments) or (
                user.role == "patrol" and user.unit in inc.units)
            if not mine:
                raise Forbidden(f"only an assigned department or unit can {action}")
            return
        if user.role in ("operator", "dispatcher") and action not in ("comment", "challenge"):
            if not in_subtree(self.site, inc.queue_grid, user.grid):
                where = inc.queue_grid_name or inc.queue_grid
                raise Forbidden(f"the case is in the queue of {where}, above your level; "
                                "comment or challenge")

    async def act(self, incident_id: str, user: User, action: str, origin: str,
                  **body: Any) -> Incident:
        """Apply ``action`` with its body fields; see the module docstring for who may."""
        handler = getattr(self, f"_do_{action}", None)
        if handler is None:
            raise InvalidInput(f"unknown action {action!r}")
        for attempt in range(3):
            try:
                return await self._apply(incident_id, user, action, origin, handler, body)
            except Conflict:  # another hub wrote first; recompute from the new version
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _apply(self, incident_id: str, user: User, action: str, origin: str,
                     handler: Any, body: dict[str, Any]) -> Incident:
        async with self._lock(incident_id):
            inc = await self.store.get(incident_id)
            self._check(user, action, inc)
            to: State | None = next_state(action, inc.state)
            if to is None:
                raise IllegalTransition(action, inc.state)
            now = self.now()
            step: Step = handler(inc, user, now, **body)
            changes: dict[str, Any] = {"state": to, "updated_at": now,
                                       "version": inc.version + 1, "last_action": action,
                                       **step.changes}
            new = inc.model_copy(update=changes)
            answered = self._answers_challenges(user, inc, action)
            if answered:
                new = new.model_copy(update={"open_challenges": 0})
            if step.deadlines:
                new = self._with_deadlines(new, now, resolve_from=step.resolve_from)
            detail = {**{k: v for k, v in step.detail.items() if v not in (None, [], "")},
                      "from": origin}

            def also(conn: Connection) -> None:
                if step.also is not None:
                    step.also(conn)
                if answered:
                    ch = t.challenges.c
                    conn.execute(sa.update(t.challenges).where(
                        ch.incident_id == inc.id, ch.state.in_(["open", "overdue"])).values(
                        state="answered", answered_at=now.isoformat(),
                        answered_by=user.username, answer=step.detail.get("note")
                        or step.detail.get("text") or action))

            await self.store.update(
                new,
                entry={"at": now, "actor": user.username, "action": action,
                       "from_state": inc.state, "to_state": to, "detail": detail},
                expect_state=inc.state, expect_version=inc.version,
                example=step.example(new, now) if step.example else None,
                assign=step.assign, also=also,
            )
            log.info("incident %s: %s by %s (%s -> %s)", inc.id, action, user.username,
                     inc.state, to)
        await self._announce("incident.updated", new, action, notice=step.notice)
        return new

    def _answers_challenges(self, user: User, inc: Incident, action: str) -> bool:
        """Any action on a challenged case by the level holding it answers the challenge."""
        if inc.open_challenges == 0 or action in ("challenge", "export"):
            return False
        return user.role == "admin" or (
            user.role in ("operator", "dispatcher")
            and in_subtree(self.site, inc.queue_grid, user.grid))

    # Each _do_<action> returns the Step: changes, timeline detail, extra writes.

    def _do_confirm(self, inc: Incident, user: User, now: datetime, note: str | None = None
                    ) -> Step:
        """A real event: its frame is kept as a positive example."""
        return Step(detail={"note": note}, example=lambda new, at: {
            "verdict": "confirmed", "label": new.type, "at": at, "by": user.username,
            "reason": note})

    def _do_dismiss(self, inc: Incident, user: User, now: datetime, reason: str,
                    label: str = "other") -> Step:
        """A false alarm, with a reason; the frame is kept as a negative example."""
        return Step(detail={"reason": reason, "label": label}, example=lambda new, at: {
            "verdict": "rejected", "label": label, "at": at, "by": user.username,
            "reason": reason})

    def _do_dispatch(self, inc: Incident, user: User, now: datetime, *,
                     departments: list[str] | None = None, lead: str | None = None,
                     units: list[str] | None = None, note: str | None = None) -> Step:
        deps, unit_ids = list(departments or []), list(units or [])
        suggested = not deps and not unit_ids
        if suggested:  # the one click: the suggestion as it stands
            deps = list(inc.suggested_departments)
            unit_ids = [inc.suggested_unit] if inc.suggested_unit else []
            if not deps and not unit_ids:
                raise InvalidInput("nothing to dispatch to: no department handles "
                                   f"{inc.type} here and no patrol unit is free; name one")
        for d in deps:
            if self.site.department(d) is None:
                known = ", ".join(x.id for x in self.site.departments)
                raise UnknownDepartment(f"unknown department {d!r} (known: {known})")
        for u in unit_ids:
            if self.site.unit(u) is None:
                raise UnknownDepartment(f"unknown patrol unit {u!r}")
        lead = lead or inc.lead_department or (deps[0] if deps else None)
        if lead is not None and lead not in {*deps, *inc.departments}:
            raise InvalidInput(f"the lead {lead!r} is not among the departments")
        return Step(
            changes={"departments": sorted({*inc.departments, *deps}), "lead_department": lead,
                     "units": sorted({*inc.units, *unit_ids}), "dispatched_at": now,
                     "accepted_at": None, "warned": [w for w in inc.warned
                                                     if not w.startswith("ack")]},
            detail={"departments": deps, "lead": lead, "units": unit_ids, "note": note,
                    "suggested": suggested or None,
                    # kept for consoles that read a single department
                    "department": deps[0] if deps else None},
            assign=[(d, d == lead) for d in deps] + [(f"unit:{u}", False) for u in unit_ids],
            deadlines=True)

    def _assignee(self, user: User) -> str | None:
        return user.department if user.role == "department" else (
            f"unit:{user.unit}" if user.role == "patrol" else None)

    def _do_accept(self, inc: Incident, user: User, now: datetime, note: str | None = None
                   ) -> Step:
        return Step(changes={"accepted_at": now, "ack_due": None},
                    detail={"department": user.department, "unit": user.unit, "note": note})

    def _do_en_route(self, inc: Incident, user: User, now: datetime, note: str | None = None
                     ) -> Step:
        return Step(detail={"by": self._assignee(user), "note": note})

    def _do_on_scene(self, inc: Incident, user: User, now: datetime, note: str | None = None
                     ) -> Step:
        return Step(changes={"accepted_at": inc.accepted_at or now, "ack_due": None},
                    detail={"by": self._assignee(user), "note": note})

    def _check_photos(self, inc: Incident, photos: list[str]) -> None:
        unknown = [p for p in photos if p not in inc.photos]
        if unknown:
            raise InvalidInput(f"unknown photo id(s) {', '.join(unknown)}: upload them first "
                               f"with POST /api/incidents/{inc.id}/photos")

    def _do_feedback(self, inc: Incident, user: User, now: datetime, text: str,
                     photos: list[str] | None = None) -> Step:
        self._check_photos(inc, photos or [])
        return Step(changes={"last_note": text},
                    detail={"by": self._assignee(user), "text": text, "photos": photos})

    def _do_resolve(self, inc: Incident, user: User, now: datetime, result: str,
                    photos: list[str] | None = None) -> Step:
        self._check_photos(inc, photos or [])
        return Step(changes={"resolved_at": now, "last_note": result, "ack_due": None},
                    detail={"by": self._assignee(user), "result": result, "photos": photos,
                            "on_time": inc.resolve_due is None or now <= inc.resolve_due})

    def _do_close(self, inc: Incident, user: User, now: datetime, note: str | None = None
                  ) -> Step:
        return Step(changes={"closed_at": now}, detail={"note": note})

    def _do_reopen(self, inc: Incident, user: User, now: datetime, reason: str) -> Step:
        return Step(changes={"resolved_at": None, "closed_at": None, "ack_due": None,
                             "warned": []},
                    detail={"reason": reason}, deadlines=True, resolve_from=now)

    def _do_escalate(self, inc: Incident, user: User, now: datetime, reason: str) -> Step:
        return self._escalation(inc, now, user.username, reason, auto=False)

    def _escalation(self, inc: Incident, now: datetime, by: str, reason: str, *,
                    auto: bool) -> Step:
        here = self.site.grid(inc.queue_grid) if inc.queue_grid else None
        parent = self.site.grid(here.parent) if here is not None and here.parent else None
        if parent is None:
            where = inc.queue_grid_name or inc.queue_grid or "no grid"
            raise NotAllowedNow(f"the case is at the top level ({where}); it cannot go higher")
        step = {"from": inc.queue_grid, "to": parent.id, "at": now.isoformat(), "by": by,
                "reason": reason, "auto": auto}
        return Step(changes={"queue_grid": parent.id, "queue_grid_name": parent.name,
                             "escalations": [*inc.escalations, step], "ack_due": None,
                             "warned": []},
                    detail={"reason": reason, "from_grid": inc.queue_grid,
                            "to_grid": parent.id, "auto": auto or None},
                    deadlines=True, resolve_from=now, notice="escalated")

    def _do_severity(self, inc: Incident, user: User, now: datetime, severity: Severity,
                     reason: str) -> Step:
        if severity == inc.severity:
            raise NotAllowedNow(f"the severity is already {severity}")
        return Step(changes={"severity": severity, "severity_reason": reason},
                    detail={"from": inc.severity, "to": severity, "reason": reason},
                    deadlines=True)

    def _do_comment(self, inc: Incident, user: User, now: datetime, text: str) -> Step:
        return Step(changes={"last_note": text}, detail={"text": text})

    def _do_export(self, inc: Incident, user: User, now: datetime, reason: str,
                   bundle: str | None = None, key: str | None = None) -> Step:
        """An evidence bundle is taken (hub.api_evidence): who, why, which bundle, signed
        with which key; recorded before the bundle is sent."""
        return Step(detail={"reason": reason, "bundle": bundle, "key": key})

    def _do_evidence_unlock(self, inc: Incident, user: User, now: datetime, reason: str
                            ) -> Step:
        """A reviewer releases the incident's evidence locks (hub.recordings): retention
        may delete its recordings again. Refused when nothing is locked."""
        def release(conn: Connection) -> None:
            lk = t.evidence_locks.c
            n = conn.execute(sa.update(t.evidence_locks).where(
                lk.incident_id == inc.id, lk.released_at.is_(None)).values(
                released_at=now.astimezone(UTC).isoformat(timespec="microseconds"),
                released_by=user.username, release_reason=reason)).rowcount
            if not n:
                raise NotAllowedNow("the incident's recordings are not locked")

        return Step(detail={"reason": reason}, also=release)

    def _do_challenge(self, inc: Incident, user: User, now: datetime, reason: str) -> Step:
        """A lower level asks the upper level about a case it escalated (质询)."""
        if not inc.escalations:
            raise NotAllowedNow("the case was never escalated")
        last = inc.escalations[-1]
        if user.role != "admin":
            lower = in_subtree(self.site, last["from"], user.grid)
            above = in_subtree(self.site, inc.queue_grid, user.grid)
            if not lower or above:
                raise Forbidden("only the level the case was escalated from may challenge")
        wf = self.site.rules.workflow
        since = datetime.fromisoformat(last["at"])
        allowed_at = self.calendar.add(since, parse_duration(wf.challenge_after))
        if now < allowed_at:
            raise NotAllowedNow(f"the upper level has until {allowed_at.isoformat()} "
                                f"({wf.challenge_after} after the escalation) to answer")
        due = self.calendar.add(now, parse_duration(wf.challenge_answer_within))
        cid = f"chl_{uuid.uuid4().hex[:12]}"

        def put(conn: Connection) -> None:
            conn.execute(sa.insert(t.challenges).values(
                id=cid, incident_id=inc.id, from_grid=last["from"], to_grid=inc.queue_grid,
                by=user.username, reason=reason, at=now.astimezone(UTC).isoformat(),
                due_at=due.astimezone(UTC).isoformat(),
                state="open"))

        return Step(changes={"open_challenges": inc.open_challenges + 1},
                    detail={"challenge": cid, "reason": reason, "to_grid": inc.queue_grid,
                            "due_at": due.isoformat()}, also=put, notice="challenge.created")

    # --- deadlines -----------------------------------------------------------------

    async def check_deadlines(self) -> int:
        """Warn before a deadline, escalate on a breach, mark overdue challenges. Returns
        how many incidents changed. Safe to run on several hubs at once: every change is
        conditional on the version it was computed from."""
        now = self.now()
        wf = self.site.rules.workflow
        changed = 0
        c = t.incidents.c
        cutoff = now.astimezone(UTC).isoformat()
        due = await self.store.query(state=OPEN, limit=None, oldest_first=True,
                                     where=[c.alarm_at <= cutoff])
        self._busy_units = set(await self.unit_cases())
        for inc in due:
            try:
                if await self._check_one(inc, now, wf.warn_at, wf.escalate_on_breach):
                    changed += 1
            except (Conflict, NotAllowedNow, IllegalTransition) as err:
                log.info("deadlines: %s skipped: %s", inc.id, err)
        changed += await self._overdue_challenges(now)
        return changed

    async def unit_cases(self) -> dict[str, list[str]]:
        """The open cases each patrol unit is assigned to (units with none left out)."""
        a, c = t.assignments.c, t.incidents.c
        rows = await self.store.read(lambda conn: conn.execute(
            sa.select(a.assignee, a.incident_id).join(t.incidents, c.id == a.incident_id)
            .where(a.assignee.like("unit:%"), c.state.in_(list(OPEN)))
            .order_by(a.assignee, a.at)).all())
        out: dict[str, list[str]] = {}
        for assignee, iid in rows:
            out.setdefault(assignee.removeprefix("unit:"), []).append(iid)
        return out

    def alarm_at(self, inc: Incident) -> datetime | None:
        """The next time the checker must look at ``inc``: its next warning point or
        deadline not yet handled at its level (None: closed, or nothing pending)."""
        if inc.state not in OPEN:
            return None
        warn_at = self.site.rules.workflow.warn_at
        level = inc.queue_grid or "-"
        times = []
        for kind, due, start, applies in (
            ("ack", inc.ack_due, inc.dispatched_at, inc.state == "dispatched"),
            ("resolve", inc.resolve_due, inc.resolve_from or inc.created_at, True),
        ):
            if due is None or start is None or not applies:
                continue
            if f"{kind}-warn@{level}" not in inc.warned:
                times.append(start + (due - start) * warn_at)
            if f"{kind}-breach@{level}" not in inc.warned:
                times.append(due)
        return min(times) if times else None

    async def _check_one(self, inc: Incident, now: datetime, warn_at: float,
                         escalate: bool) -> bool:
        for kind, due, start, applies in (
            ("ack", inc.ack_due, inc.dispatched_at, inc.state == "dispatched"),
            ("resolve", inc.resolve_due, inc.resolve_from or inc.created_at, True),
        ):
            if due is None or start is None or not applies:
                continue
            level = inc.queue_grid or "-"
            if now >= due and f"{kind}-breach@{level}" not in inc.warned:
                return await self._breach(inc, kind, due, now, escalate)
            warn_point = start + (due - start) * warn_at
            if now >= warn_point and f"{kind}-warn@{level}" not in inc.warned and now < due:
                await self._system_step(
                    inc, now, "warning", {"deadline": kind, "due": due.isoformat()},
                    warned=f"{kind}-warn@{level}", notice="deadline.warning")
                return True
        return False

    async def _breach(self, inc: Incident, kind: str, due: datetime, now: datetime,
                      escalate: bool) -> bool:
        reason = (f"{'acknowledge' if kind == 'ack' else 'resolve'} deadline "
                  f"{due.isoformat()} missed")
        here = self.site.grid(inc.queue_grid) if inc.queue_grid else None
        if escalate and here is not None and here.parent:
            async with self._lock(inc.id):
                fresh = await self.store.get(inc.id)
                if fresh.version != inc.version:
                    return False  # changed meanwhile; the next check sees the new state
                step = self._escalation(inc, now, "system:deadlines", reason, auto=True)
                new = inc.model_copy(update={"state": "escalated", "updated_at": now,
                                             "version": inc.version + 1,
                                             "last_action": "escalate", **step.changes})
                new = self._with_deadlines(new, now, resolve_from=now)
                await self.store.update(
                    new, entry={"at": now, "actor": "system:deadlines", "action": "escalate",
                                "from_state": inc.state, "to_state": "escalated",
                                "detail": {**step.detail, "deadline": kind}},
                    expect_version=inc.version)
            log.warning("incident %s: %s; escalated to %s", inc.id, reason, new.queue_grid)
            await self._announce("incident.updated", new, "escalate", notice="escalated")
            return True
        await self._system_step(inc, now, "breach", {"deadline": kind, "due": due.isoformat()},
                                warned=f"{kind}-breach@{inc.queue_grid or '-'}",
                                notice="deadline.breached")
        return True

    async def _system_step(self, inc: Incident, now: datetime, action: str,
                           detail: dict[str, Any], *, warned: str, notice: Notice) -> None:
        async with self._lock(inc.id):
            new = inc.model_copy(update={"warned": [*inc.warned, warned], "updated_at": now,
                                         "version": inc.version + 1})
            await self.store.update(
                new, entry={"at": now, "actor": "system:deadlines", "action": action,
                            "from_state": inc.state, "to_state": inc.state, "detail": detail},
                expect_version=inc.version)
        await self._announce("incident.updated", new, action, notice=notice)

    async def _overdue_challenges(self, now: datetime) -> int:
        ch = t.challenges.c
        cutoff = now.astimezone(UTC).isoformat()
        rows = await self.store.read(lambda conn: conn.execute(
            sa.select(ch.id, ch.incident_id).where(ch.state == "open",
                                                   ch.due_at <= cutoff)).all())
        for cid, iid in rows:
            async with self._lock(iid):
                inc = await self.store.get(iid)
                new = inc.model_copy(update={"updated_at": now, "version": inc.version + 1})

                def mark(conn: Connection, cid: str = cid) -> None:
                    if conn.execute(sa.update(t.challenges).where(
                            ch.id == cid, ch.state == "open").values(state="overdue")
                            ).rowcount != 1:
                        raise Conflict(f"challenge {cid} changed")

                try:
                    await self.store.update(
                        new, entry={"at": now, "actor": "system:deadlines",
                                    "action": "challenge_overdue", "from_state": inc.state,
                                    "to_state": inc.state, "detail": {"challenge": cid}},
                        expect_version=inc.version, also=mark)
                except Conflict:
                    continue
            await self._announce("incident.updated", new, "challenge_overdue",
                                 notice="challenge.overdue")
        return len(rows)

    async def run_deadlines(self) -> None:
        """Check deadlines every ``workflow.check_every_s`` until cancelled."""
        every = self.site.rules.workflow.check_every_s
        while True:
            try:
                await self.check_deadlines()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed round is logged; the next one runs
                log.exception("deadlines: check failed")
            await asyncio.sleep(every)

    async def challenges(self, user: User, state: str | None = None) -> list[dict[str, Any]]:
        """Challenges on cases the user can see."""
        ch = t.challenges.c
        stmt = sa.select(t.challenges).order_by(ch.at.desc())
        if state is not None:
            stmt = stmt.where(ch.state == state)
        rows = await self.store.read(lambda conn: [dict(r) for r in
                                                   conn.execute(stmt).mappings().all()])
        out = []
        for r in rows:
            try:
                inc = await self.store.get(r["incident_id"])
            except NotFound:
                continue
            if can_see(self.site, user, inc):
                out.append(r)
        return out

    async def _announce(
        self, kind: Literal["incident.created", "incident.updated"], inc: Incident,
        action: str | None = None, notice: Notice | None = None,
    ) -> None:
        try:
            ev = IncidentEvent(kind=kind, incident=inc.model_dump(mode="json"), action=action,
                               notice=notice)
            ev._model = inc
            await self.bus.broadcast(ev)
        except BusError as err:  # consoles re-fetch on reconnect; the store has it
            log.error("incident %s: broadcast failed: %s", inc.id, err)


class Step:
    """What an action changes: fields, timeline detail, extra writes in the transaction."""

    def __init__(self, *, changes: dict[str, Any] | None = None,
                 detail: dict[str, Any] | None = None, example: Any = None,
                 assign: Iterable[tuple[str, bool]] = (), deadlines: bool = False,
                 resolve_from: datetime | None = None,
                 also: Callable[[Connection], None] | None = None,
                 notice: Notice | None = None) -> None:
        self.changes = changes or {}
        self.detail = detail or {}
        self.example = example
        self.assign = list(assign)
        self.deadlines = deadlines
        self.resolve_from = resolve_from
        self.also = also
        self.notice = notice
