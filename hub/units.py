"""Patrol units live: telemetry in, positions tracked on every replica, events out to consoles.

Telemetry arrives on one hub replica (WHIP data channel via :meth:`UnitService.submit`, or
the console WebSocket fallback ``{"type": "telemetry", "data": {...}}`` from a patrol
account). That replica validates it (:mod:`hub.telemetry`), rate-limits it per unit,
updates its tracker, sends ``unit.telemetry`` to its consoles and broadcasts a
:class:`~hub.bus.UnitTelemetry` on the live bus. Every other replica applies the
broadcast to its own tracker and tells its own consoles, so ``GET /api/units`` is the
same wherever a request lands. Broadcasts are live (pub/sub): a replica that starts
later learns a unit's position from that unit's next fix.

Console events (``data`` is a :class:`UnitOut`): ``unit.telemetry`` for a new fix,
``unit.status`` when a unit goes offline (nothing from it for ``stale_s``) or comes back
with a repeat of its last fix. Department users get neither; patrol users only their own
unit's. A repeated fix (a parked car) moves nothing but keeps the unit online; replicas
share repeats at most every ``stale_s / 3`` per unit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from hub.bus import Bus, BusError, UnitTelemetry
from hub.config import GridLevel, Site
from hub.models import User
from hub.routing import UnitPosition
from hub.tasks import cancel_and_wait, listen_forever
from hub.telemetry import (
    RATE_BURST,
    RATE_HZ,
    STALE_S,
    TRAIL_POINTS,
    TRAIL_SECONDS,
    RateLimited,
    RateLimiter,
    Telemetry,
    TelemetryError,
    Tracker,
    UnitTrack,
    UnknownUnit,
    parse_telemetry,
)
from hub.ws import Clients, InboundError

if TYPE_CHECKING:
    from hub.app import HubState

log = logging.getLogger(__name__)

SUBMIT_QUEUE = 256  # fixes waiting to be ingested from sync callers (WHIP data channels)
SWEEP_S = 2.0  # how often units are checked for going offline
LOG_EVERY_S = 60.0  # one warning per unit and reason per minute; the rest at debug


# --- what the API and the consoles see -------------------------------------------------


class TelemetryOut(BaseModel):
    lat: float
    lon: float
    speed: float | None = Field(None, description="m/s.")
    heading: float | None = Field(None, description="Degrees clockwise from north.")
    accuracy: float | None = Field(None, description="Metres.")
    time: datetime = Field(description="Device time of the fix.")

    @classmethod
    def of(cls, t: Telemetry) -> TelemetryOut:
        return cls(lat=t.lat, lon=t.lon, speed=t.speed, heading=t.heading,
                   accuracy=t.accuracy, time=t.time)


class GridRef(BaseModel):
    id: str
    name: str
    level: GridLevel


class UnitOut(BaseModel):
    id: str
    name: str
    crew: str | None = None
    home_grid: str | None = Field(None, description="Grid the unit patrols (units.yaml).")
    telemetry: TelemetryOut | None = Field(None, description="Last fix; null before the first.")
    received_at: datetime | None = Field(None, description="Hub time the last fix arrived.")
    seen_at: datetime | None = Field(
        None, description="Hub time the unit last sent anything (a repeated fix included)."
    )
    grid: GridRef | None = Field(None, description="Deepest grid node containing the last fix.")
    online: bool = Field(description="The unit sent something within the last stale_s seconds.")
    trail_length: int = Field(description="Points in the trail (bounded).")
    cases: list[str] = Field(default_factory=list, description=(
        "Open cases the unit is assigned to (busy when not empty; a dispatch to it is "
        "still allowed)."))


class UnitDetail(UnitOut):
    trail: list[TelemetryOut] = Field(description="Recent fixes, oldest first.")


def may_see_units(user: User, unit_id: str) -> bool:
    """Department users see no units; patrol users only their own; the rest see all."""
    if user.role == "department":
        return False
    if user.role == "patrol":
        return user.unit == unit_id
    return True


# --- the service ------------------------------------------------------------------------


class UnitService:
    """Owns the unit tracker of this hub replica; start/stop with the app."""

    def __init__(
        self,
        site: Site,
        bus: Bus,
        clients: Clients,
        *,
        stale_s: float = STALE_S,
        rate_hz: float = RATE_HZ,
        burst: int = RATE_BURST,
        trail_points: int = TRAIL_POINTS,
        trail_seconds: float = TRAIL_SECONDS,
        sweep_s: float = SWEEP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.site = site
        self.bus = bus
        self.clients = clients
        self.origin = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.tracker = Tracker(
            site, trail_points=trail_points, trail_seconds=trail_seconds, stale_s=stale_s
        )
        self.limiter = RateLimiter(rate_hz, burst)
        self.sweep_s = sweep_s
        self._clock = clock  # monotonic seconds, for the rate limit
        self.accepted = 0  # fixes applied (local and from other replicas)
        self.ignored = 0  # not newer than the unit's last fix (repeats, out of order)
        self.rejected: Counter[str] = Counter()  # reason -> count
        self._queue: asyncio.Queue[tuple[str, str | bytes, datetime]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._online: dict[str, bool] = {}
        self._shared: dict[str, float] = {}  # unit -> clock() of its last broadcast
        self._logged: dict[tuple[str, str], float] = {}

    @classmethod
    def from_state(cls, state: HubState) -> UnitService:
        """Service factory for ``create_app(services=[...])``; incidents raised on a patrol
        stream are placed in the grid cell where the unit is."""
        svc = cls(state.site, state.bus, state.clients)
        state.incidents.unit_grid = svc.grid_of
        state.incidents.unit_positions = svc.positions
        return svc

    # --- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Listen to the bus (subscribed before this returns), accept submissions."""
        self._queue = asyncio.Queue(SUBMIT_QUEUE)
        ready = asyncio.Event()
        listener = asyncio.create_task(self._listen(ready), name="units-listen")
        self._tasks = [
            listener,
            asyncio.create_task(self._drain(self._queue), name="units-submit"),
            asyncio.create_task(self._sweep(), name="units-sweep"),
        ]
        waiter = asyncio.create_task(ready.wait())
        try:
            async with asyncio.timeout(15):
                await asyncio.wait({waiter, listener}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            await self.stop()
            raise BusError("units: could not subscribe to unit telemetry in 15 s") from None
        finally:
            waiter.cancel()
        if not ready.is_set():
            await self.stop()
            raise BusError("units: the telemetry listener stopped at start")
        self.clients.handle("telemetry", self._on_ws_telemetry)
        log.info("units: started (%d units, origin %s)", len(self.site.units), self.origin)

    async def stop(self) -> None:
        self.clients.handle("telemetry", None)
        self._queue = None
        await cancel_and_wait(self._tasks)
        self._tasks = []
        log.info("units: stopped")

    def grid_of(self, unit_id: str) -> str | None:
        """The grid cell the unit was last seen in (None when unknown or outside)."""
        if unit_id not in self.tracker:
            return None
        track = self.tracker.get(unit_id)
        return track.grid.id if track.grid is not None else None

    def positions(self) -> list[UnitPosition]:
        """Every unit's last position and whether it is online (for routing)."""
        now = datetime.now(UTC)
        return [UnitPosition(t.unit_id, t.last.lat, t.last.lon,
                             t.online(now, self.tracker.stale_s))
                for t in self.tracker if t.last is not None]

    def report(self) -> dict[str, dict[str, object]]:
        """Health component for /api/health."""
        now = datetime.now(UTC)
        online = sum(1 for t in self.tracker if t.online(now, self.tracker.stale_s))
        return {"units": {
            "status": "ok" if self._tasks else "down",
            "online": online, "total": len(self.site.units), "accepted": self.accepted,
            "ignored_not_newer": self.ignored, "rejected": dict(self.rejected),
        }}

    # --- telemetry in ---------------------------------------------------------------

    async def ingest(
        self,
        unit_id: str,
        raw: str | bytes | dict[str, Any],
        *,
        received_at: datetime | None = None,
    ) -> UnitTrack | None:
        """Validate and apply one fix of ``unit_id``; tell consoles and the other replicas.

        Returns the unit's track, or None when the fix is not newer than its last one
        (duplicate or out of order: ignored). Raises :class:`TelemetryError` (counted by
        reason) for an unknown unit, a bad message or a unit over its rate.
        """
        now = received_at or datetime.now(UTC)
        try:
            if unit_id not in self.tracker:
                raise UnknownUnit(unit_id)
            fix = parse_telemetry(raw, now=now)
            if not self.limiter.allow(unit_id, self._clock()):
                raise RateLimited(unit_id, self.limiter.rate_hz)
        except TelemetryError as err:
            self._rejected(unit_id, err)
            raise
        track = self._apply(unit_id, fix, now)
        mono = self._clock()
        if track is None and mono - self._shared.get(unit_id, -math.inf) < self.tracker.stale_s / 3:
            return None  # a repeat, and the other replicas heard from this unit lately
        self._shared[unit_id] = mono
        if track is None:
            # Share the unit's newest fix as its sign of life, not whatever old one came in.
            fix = self.tracker.get(unit_id).last or fix
        try:
            await self.bus.broadcast(UnitTelemetry(
                unit_id=unit_id, origin=self.origin, received_at=now, lat=fix.lat, lon=fix.lon,
                time=fix.time, speed=fix.speed, heading=fix.heading, accuracy=fix.accuracy,
            ))
        except BusError as err:
            # This replica's consoles have it; the others catch up with the next fix.
            log.warning("unit %s: telemetry not shared with other replicas: %s", unit_id, err)
        return track

    def submit(self, unit_id: str, raw: str | bytes) -> None:
        """Queue a fix for :meth:`ingest`; for sync callers on the event loop thread
        (the WHIP data channel's ``on_telemetry``). Drops (and counts) when the queue is
        full or the service is not running; never raises."""
        queue = self._queue
        if queue is None:
            self.rejected["not_running"] += 1
            log.debug("unit %s: telemetry dropped, service not running", unit_id[:64])
            return
        try:
            queue.put_nowait((unit_id, raw, datetime.now(UTC)))
        except asyncio.QueueFull:
            self.rejected["queue_full"] += 1
            self._log_throttled(unit_id, "queue_full", "telemetry queue full, fix dropped")

    async def _drain(self, queue: asyncio.Queue[tuple[str, str | bytes, datetime]]) -> None:
        while True:
            unit_id, raw, received_at = await queue.get()
            try:
                await self.ingest(unit_id, raw, received_at=received_at)
            except asyncio.CancelledError:
                raise
            except TelemetryError:
                pass  # counted and logged by ingest
            except Exception:
                log.exception("unit %s: ingesting telemetry failed", unit_id[:64])

    async def _on_ws_telemetry(self, user: User, data: Any) -> None:
        """The console WebSocket fallback: a patrol account reports its own unit."""
        if user.role != "patrol" or user.unit is None:
            raise InboundError(
                f"only patrol accounts send telemetry (you are {user.role})", "forbidden"
            )
        if not isinstance(data, dict):
            raise InboundError("telemetry data must be a JSON object", "bad_telemetry")
        claimed = data.get("unit")
        if claimed is not None and claimed != user.unit:
            self.rejected["wrong_unit"] += 1
            log.warning("unit %s: %s tried to report for %r", user.unit, user.username,
                        str(claimed)[:64])
            raise InboundError(
                f"{user.username} reports for unit {user.unit}, not {str(claimed)[:64]!r}",
                "forbidden",
            )
        try:
            await self.ingest(user.unit, data)
        except TelemetryError as err:
            raise InboundError(str(err), err.reason) from err

    # --- shared between replicas ----------------------------------------------------

    def _apply(self, unit_id: str, fix: Telemetry, received_at: datetime) -> UnitTrack | None:
        track = self.tracker.update(unit_id, fix, received_at)
        if track is None:
            self.ignored += 1
            log.debug("unit %s: fix at %s not newer than the last, ignored", unit_id,
                      fix.time.isoformat())
            # Still a sign of life: a unit that repeats its last fix is back online.
            seen = self.tracker.get(unit_id)
            if not self._online.get(unit_id, False) and seen.last is not None \
                    and seen.online(datetime.now(UTC), self.tracker.stale_s):
                self._online[unit_id] = True
                self._send("unit.status", seen)
            return None
        self.accepted += 1
        self._online[unit_id] = True
        self._send("unit.telemetry", track)
        return track

    def _send(self, event: str, track: UnitTrack, now: datetime | None = None) -> None:
        unit_id = track.unit_id

        def visible(user: User) -> bool:
            return may_see_units(user, unit_id)

        self.clients.send(event, self.unit_out(track, now).model_dump(mode="json"), visible)

    async def _listen(self, ready: asyncio.Event) -> None:
        async def remote(msg: UnitTelemetry) -> None:
            self._remote(msg)

        await listen_forever(self.bus, UnitTelemetry, ready, remote, "units: telemetry",
                             first_s=1.0, max_s=30.0)

    def _remote(self, msg: UnitTelemetry) -> None:
        if msg.origin == self.origin:
            return  # applied when it arrived here
        if msg.unit_id not in self.tracker:
            self.rejected["unknown_unit"] += 1
            self._log_throttled(msg.unit_id, "unknown_unit",
                                "telemetry from another replica for an unknown unit")
            return
        fix = Telemetry(lat=msg.lat, lon=msg.lon, time=msg.time, speed=msg.speed,
                        heading=msg.heading, accuracy=msg.accuracy)
        self._apply(msg.unit_id, fix, msg.received_at)

    async def _sweep(self) -> None:
        """Tell consoles when a unit goes offline."""
        while True:
            await asyncio.sleep(self.sweep_s)
            now = datetime.now(UTC)
            for track in self.tracker:
                online = track.online(now, self.tracker.stale_s)
                if self._online.get(track.unit_id, False) and not online:
                    log.info("unit %s: offline (no fix for %.0f s)", track.unit_id,
                             self.tracker.stale_s)
                    self._send("unit.status", track, now)
                self._online[track.unit_id] = online

    # --- views ----------------------------------------------------------------------

    def unit_out(self, track: UnitTrack, now: datetime | None = None) -> UnitOut:
        cfg = self.site.unit(track.unit_id)
        assert cfg is not None  # the tracker only holds configured units
        now = now or datetime.now(UTC)
        grid = track.grid
        return UnitOut(
            id=cfg.id, name=cfg.name, crew=cfg.crew, home_grid=cfg.grid,
            telemetry=TelemetryOut.of(track.last) if track.last else None,
            received_at=track.received_at, seen_at=track.seen_at,
            grid=GridRef(id=grid.id, name=grid.name, level=grid.level) if grid else None,
            online=track.online(now, self.tracker.stale_s), trail_length=len(track.trail),
        )

    def unit_detail(self, unit_id: str) -> UnitDetail:
        """Raises :class:`UnknownUnit`."""
        track = self.tracker.get(unit_id)
        return UnitDetail(**self.unit_out(track).model_dump(),
                          trail=[TelemetryOut.of(t) for t in track.trail])

    def units(self) -> list[UnitOut]:
        now = datetime.now(UTC)
        return [self.unit_out(t, now) for t in self.tracker]

    # --- logging --------------------------------------------------------------------

    def _rejected(self, unit_id: str, err: TelemetryError) -> None:
        self.rejected[err.reason] += 1
        self._log_throttled(unit_id, err.reason, f"telemetry rejected: {err}")

    def _log_throttled(self, unit_id: str, reason: str, text: str) -> None:
        # Unknown ids share one key so a client inventing ids cannot grow the table.
        key = (unit_id if unit_id in self.tracker else "?", reason)
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[key] = now
            log.warning("unit %s: %s", unit_id[:64], text)
        else:
            log.debug("unit %s: %s", unit_id[:64], text)


def find_unit_service(state: HubState) -> UnitService | None:
    """The running UnitService of an app, if it was started with one."""
    return next((s for s in state.services if isinstance(s, UnitService)), None)


def telemetry_sink(app: FastAPI) -> Callable[[str, str], None]:
    """An ``on_telemetry(unit_id, raw)`` for the WHIP data channel, made before the app
    starts: it finds the app's UnitService when called (event loop thread only)."""

    def on_telemetry(unit_id: str, raw: str) -> None:
        state = getattr(app.state, "hub", None)
        svc = find_unit_service(state) if state is not None else None
        if svc is None:
            log.debug("unit %s: telemetry dropped, no unit service", unit_id[:64])
            return
        svc.submit(unit_id, raw)

    return on_telemetry
