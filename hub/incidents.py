"""Incidents: candidates from detectors become incidents; people move them through states.

The service consumes :class:`IncidentCandidate` from the bus (durably: a candidate is
acked only after the store committed it), keeps one incident per real-world event
(``event_id``), and applies user actions through the state machine in
:mod:`hub.states`. Every change is stored with a timeline entry, then broadcast as an
:class:`IncidentEvent` for the consoles.

Exceptions::

    ActionError
     +-- IllegalTransition   the action is not allowed in the incident's state (409)
     +-- UnknownDepartment   dispatch to a department the site does not have (422)
     +-- Forbidden           the user may not do this to this incident (403)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from hub.bus import Bus, BusError, IncidentCandidate, IncidentEvent
from hub.config import SEVERITIES, CameraConfig, Severity, Site
from hub.models import Incident, State, User, utcnow
from hub.routing import suggest_departments
from hub.states import allowed_from, next_state
from hub.store import Conflict, Store

log = logging.getLogger(__name__)

GROUP = "hub"
STALE_AFTER_S = 30.0  # a candidate unacked this long is taken over from a dead consumer


class ActionError(Exception):
    """A user action cannot be applied."""


class IllegalTransition(ActionError):
    def __init__(self, action: str, state: str) -> None:
        self.allowed = sorted(allowed_from(state))
        super().__init__(
            f"cannot {action} an incident that is {state}; allowed now: "
            f"{', '.join(self.allowed) or 'nothing'}"
        )


class UnknownDepartment(ActionError):
    pass


class Forbidden(ActionError):
    pass


def new_incident_id(at: datetime) -> str:
    """Time-sortable, unique incident id."""
    return f"inc_{at.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:8]}"


def severity_for(site: Site, type_: str, confidence: float, hint: Any = None) -> Severity:
    """The configured severity of a type, raised by confidence, and by the detector's hint
    (a stranded person lying or standing in water) when it names a higher level."""
    sev: Severity = "yellow"
    for rule in site.rules.severity:
        if rule.type == type_:
            sev = rule.severity
            if rule.raise_to and confidence >= rule.raise_above_confidence:
                sev = max(rule.severity, rule.raise_to, key=SEVERITIES.index)
            break
    if hint in SEVERITIES:
        sev = max(sev, hint, key=SEVERITIES.index)
    return sev


def can_see(site: Site, user: User, inc: Incident) -> bool:
    """Whether ``user`` may see ``inc`` (department users see what is assigned to them)."""
    if user.role == "department":
        return user.department is not None and user.department in inc.departments
    if user.role == "patrol":
        return False
    if user.grid is None or user.role == "admin":
        return True
    return inc.grid_id is not None and user.grid in site.grid_ancestors(inc.grid_id)


class IncidentService:
    """Owns incident creation, updates and state changes."""

    def __init__(
        self, site: Site, store: Store, bus: Bus,
        cameras: Callable[[str], CameraConfig | None] | None = None,
    ) -> None:
        self.site = site
        self.store = store
        self.bus = bus
        self.camera = cameras or site.camera  # run-time camera list (hub.cameras)
        # Where a patrol unit is now (grid cell id), set once the unit service runs.
        self.unit_grid: Callable[[str], str | None] | None = None
        self.consumer = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.candidates_seen = 0
        self.last_error: str | None = None
        self._lock = asyncio.Lock()  # one writer at a time: candidates and actions interleave

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

    async def handle_candidate(self, c: IncidentCandidate) -> Incident | None:
        """Create or update the incident for a candidate's event. Idempotent per event."""
        async with self._lock:
            inc = await self.store.by_event(c.event_id)
            snap = (c.at, c.snapshot_jpeg) if c.snapshot_jpeg else None
            frame = ((c.frame_jpeg, c.detections, c.boxes[0] if c.boxes else None)
                     if c.frame_jpeg and snap else None)
            now = utcnow()
            if inc is None:
                if c.phase == "end":
                    return None
                inc = self._from_candidate(c, now)
                await self.store.insert(
                    inc,
                    event_id=c.event_id,
                    entry={
                        "at": now,
                        "actor": f"detector:{c.camera_id}",
                        "action": "created",
                        "from_state": None,
                        "to_state": inc.state,
                        "detail": {"confidence": round(c.confidence, 3), "track_id": c.track_id,
                                   **c.attributes},
                    },
                    snapshot=snap,
                    frame=frame,
                )
                log.info("incident %s created (%s on %s)", inc.id, inc.type, inc.camera_id)
                await self._announce("incident.created", inc)
                return inc
            better = c.confidence > inc.confidence
            changes: dict[str, Any] = {
                "last_seen_at": max(inc.last_seen_at, c.at),
                "updated_at": now,
            }
            # Severity only rises on its own (a stranded person who lies down, deeper water).
            changes["severity"] = max(
                inc.severity, severity_for(self.site, c.type, c.confidence,
                                           c.attributes.get("severity_hint")),
                key=SEVERITIES.index,
            )
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
            inc = inc.model_copy(update=changes)
            await self.store.update(inc, entry=entry, snapshot=snap if better else None,
                                    frame=frame if better else None)
            await self._announce("incident.updated", inc)
            return inc

    def _from_candidate(self, c: IncidentCandidate, now: datetime) -> Incident:
        cam = self.camera(c.camera_id)
        grid_id = cam.grid if cam else None
        source_name = cam.name if cam else c.camera_id
        unit = self.site.unit(c.camera_id) if cam is None else None
        if unit is not None:  # a patrol stream: where the unit is now, else its home grid
            source_name = unit.name
            grid_id = (self.unit_grid(unit.id) if self.unit_grid else None) or unit.grid
        grid = self.site.grid(grid_id) if grid_id else None
        iid = new_incident_id(now)
        return Incident(
            id=iid,
            type=c.type,
            state="new",
            severity=severity_for(self.site, c.type, c.confidence,
                                  c.attributes.get("severity_hint")),
            source="detector",
            camera_id=c.camera_id,
            camera_name=source_name,
            grid_id=grid_id,
            grid_name=grid.name if grid else None,
            zone=c.zone,
            confidence=c.confidence,
            created_at=now,
            updated_at=now,
            started_at=c.started_at,
            last_seen_at=c.at,
            boxes=c.boxes,
            frame_size=c.frame_size,
            track_id=c.track_id,
            snapshot_url=f"/api/incidents/{iid}/snapshot" if c.snapshot_jpeg else None,
            clip_start=c.clip_start,
            clip_end=c.clip_end,
            suggested_departments=suggest_departments(self.site, c.type, grid_id),
        )

    # --- user actions --------------------------------------------------------------

    async def dispatch(
        self, incident_id: str, user: User, department: str, note: str | None, origin: str
    ) -> Incident:
        if user.role not in ("admin", "operator", "dispatcher"):
            raise Forbidden(f"role {user.role} cannot dispatch")
        if self.site.department(department) is None:
            known = ", ".join(d.id for d in self.site.departments)
            raise UnknownDepartment(f"unknown department {department!r} (known: {known})")
        return await self._transition(
            incident_id, user, "dispatch", origin,
            detail={"department": department, "note": note},
            update=lambda inc: {
                "departments": sorted({*inc.departments, department}),
                "lead_department": inc.lead_department or department,
            },
        )

    async def accept(self, incident_id: str, user: User, note: str | None, origin: str) -> Incident:
        def check(inc: Incident) -> None:
            if user.role == "admin":
                return
            if user.role != "department" or user.department not in inc.departments:
                raise Forbidden("only a department the incident was dispatched to can accept it")

        return await self._transition(
            incident_id, user, "accept", origin,
            detail={"department": user.department, "note": note}, check=check,
        )

    async def confirm(self, incident_id: str, user: User, note: str | None,
                      origin: str) -> Incident:
        """A real event: the state moves on and the frame is kept as a positive example."""
        self._may_judge(user)
        return await self._transition(
            incident_id, user, "confirm", origin, detail={"note": note},
            example=lambda inc, at: {"verdict": "confirmed", "label": inc.type, "at": at,
                                     "by": user.username, "reason": note},
        )

    async def dismiss(self, incident_id: str, user: User, reason: str, label: str,
                      origin: str) -> Incident:
        """A false alarm: dismissed with a reason; the frame is kept as a negative example
        with what the detection really was (``label``)."""
        self._may_judge(user)
        return await self._transition(
            incident_id, user, "dismiss", origin, detail={"reason": reason, "label": label},
            example=lambda inc, at: {"verdict": "rejected", "label": label, "at": at,
                                     "by": user.username, "reason": reason},
        )

    @staticmethod
    def _may_judge(user: User) -> None:
        if user.role not in ("admin", "operator", "dispatcher"):
            raise Forbidden(f"role {user.role} cannot confirm or dismiss incidents")

    async def _transition(
        self,
        incident_id: str,
        user: User,
        action: str,
        origin: str,
        *,
        detail: dict[str, Any],
        update: Any = None,
        check: Any = None,
        example: Any = None,
    ) -> Incident:
        async with self._lock:
            inc = await self.store.get(incident_id)
            if not can_see(self.site, user, inc) and user.role != "department":
                raise Forbidden("outside your grid")
            if check is not None:
                check(inc)
            to: State | None = next_state(action, inc.state)
            if to is None:
                raise IllegalTransition(action, inc.state)
            now = utcnow()
            changes: dict[str, Any] = {"state": to, "updated_at": now}
            if update is not None:
                changes.update(update(inc))
            new = inc.model_copy(update=changes)
            try:
                await self.store.update(
                    new,
                    entry={
                        "at": now, "actor": user.username, "action": action,
                        "from_state": inc.state, "to_state": to,
                        "detail": {**{k: v for k, v in detail.items() if v is not None},
                                   "from": origin},
                    },
                    expect_state=inc.state,
                    example=example(new, now) if example is not None else None,
                )
            except Conflict as err:
                raise IllegalTransition(action, (await self.store.get(incident_id)).state) from err
            log.info("incident %s: %s by %s (%s -> %s)", inc.id, action, user.username,
                     inc.state, to)
        await self._announce("incident.updated", new)
        return new

    async def _announce(
        self, kind: Literal["incident.created", "incident.updated"], inc: Incident
    ) -> None:
        try:
            await self.bus.broadcast(
                IncidentEvent(kind=kind, incident=inc.model_dump(mode="json"))
            )
        except BusError as err:  # consoles re-fetch on reconnect; the store has it
            log.error("incident %s: broadcast failed: %s", inc.id, err)
