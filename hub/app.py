"""The hub's FastAPI application: one explicit start order and one stop order.

Start: store -> bus -> incident service -> live fan-out -> extra services (the
detection worker in the embedded mode). Stop: the reverse. ``create_app`` is a
factory; nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.auth import Accounts, load_secret
from hub.bus import Bus, CameraHealth, IncidentEvent, make_bus
from hub.cameras import CameraRegistry
from hub.config import ConfigError, ConfigIssue, Site, resolve_passwords
from hub.incidents import IncidentService, can_see, events_of
from hub.models import Incident, User
from hub.notify import Notifier, NotifyConfigError
from hub.settings import Settings, store_location
from hub.store import Store
from hub.tasks import cancel_and_wait
from hub.ws import Clients

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class HubState:
    """Everything a request handler may need, built once per app."""

    settings: Settings
    site: Site
    store: Store
    bus: Bus
    accounts: Accounts
    incidents: IncidentService
    clients: Clients
    camera_registry: CameraRegistry
    notifier: Notifier | None = None
    cameras: dict[str, CameraHealth] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    services: list[Any] = field(default_factory=list)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)


def wire_notifications(store: Store, notifier: Notifier) -> None:
    """Every timeline entry's notifications go into the outbox in the entry's own
    transaction; the delivery loop wakes after each commit."""

    queued = False

    def rows(conn: Any, inc: Incident, entry: dict[str, Any]) -> None:
        nonlocal queued
        for event in events_of(entry):
            out = notifier.rows_for(event, inc, {"action": entry["action"],
                                                 "actor": entry["actor"]})
            if out:
                Notifier.insert_rows(conn, out)
                queued = True

    def committed() -> None:
        nonlocal queued
        if queued:  # only then: an idle outbox costs no transaction per commit
            queued = False
            notifier.wake()

    if notifier.config.webhooks or notifier.config.sms is not None:
        store.on_incident_write = rows
        store.on_commit = committed


async def _fan_out(state: HubState) -> None:
    """Bus live events -> console clients (each filtered by what its user may see)."""

    async def incidents() -> None:
        async with state.bus.listen(IncidentEvent) as events:
            async for ev in events:
                # The memory bus hands over the sender's model; from Redis, rebuild it.
                inc = ev.sent_model if ev.sent_model is not None else \
                    Incident.model_validate(ev.incident)

                def visible(user: User, inc: Incident = inc) -> bool:
                    return can_see(state.site, user, inc)

                state.clients.send(ev.kind, ev.incident, visible, action=ev.action,
                                   notice=ev.notice)

    async def cameras() -> None:
        async with state.bus.listen(CameraHealth) as events:
            async for ev in events:
                if state.camera_registry.get(ev.camera_id) is None:
                    continue  # removed meanwhile (a late health report)
                state.cameras[ev.camera_id] = ev
                state.clients.send(
                    "camera.health", ev.model_dump(mode="json"),
                    lambda u: u.role not in ("department", "patrol"),
                )

    await asyncio.gather(incidents(), cameras())


class BodyLimit:
    """Reject request bodies over ``limit`` bytes with 413 before reading them."""

    # Photo uploads (multipart) may be larger than other bodies.
    UPLOAD_LIMIT = (9 << 20)

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if scope.get("path", "").endswith("/photos") and scope.get("method") == "POST":
            limit = max(limit, self.UPLOAD_LIMIT)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            resp = JSONResponse(
                {"detail": f"request body over {limit} bytes"}, status_code=413
            )
            await resp(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            resp = JSONResponse(
                {"detail": f"request body over {limit} bytes"}, status_code=413
            )
            await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


def _settle_gc() -> None:
    """Move what start-up made (modules, config, the grid index) out of the collector's
    way, and collect the young generation less often: a busy hub makes many short-lived
    objects and few cycles, and full collections over the start-up heap were a visible
    share of its CPU under load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def create_app(
    settings: Settings,
    site: Site,
    *,
    services: list[Callable[[HubState], Service]] | None = None,
    routers: list[Callable[[FastAPI], None]] | None = None,
) -> FastAPI:
    """Build the hub app. ``services`` are started after the hub, stopped before it."""
    from hub.api import HotRoutes
    from hub.api import router as api_router

    passwords = resolve_passwords(site)  # raises ConfigError on weak passwords

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(store_location(settings))
        await store.open()
        try:
            notifier = Notifier(site.rules.notifications, store, site=site)
        except NotifyConfigError as err:
            await store.close()
            raise ConfigError([ConfigIssue("rules.yaml", "notifications", str(err))]) from err
        bus = make_bus(settings.redis_url, prefix=settings.redis_prefix)
        await bus.start()
        accounts = await asyncio.to_thread(
            Accounts, site, passwords, load_secret(settings.data_dir)
        )
        camera_registry = CameraRegistry(site, store, bus)
        await camera_registry.load()
        state = HubState(
            settings=settings, site=site, store=store, bus=bus, accounts=accounts,
            incidents=IncidentService(site, store, bus, cameras=camera_registry.get),
            clients=Clients(), camera_registry=camera_registry,
        )
        app.state.hub = state
        state.tasks["incidents"] = asyncio.create_task(state.incidents.run(), name="incidents")
        state.tasks["fan-out"] = asyncio.create_task(_fan_out(state), name="fan-out")
        state.tasks["deadlines"] = asyncio.create_task(state.incidents.run_deadlines(),
                                                       name="deadlines")
        state.notifier = notifier
        wire_notifications(store, notifier)
        state.tasks["notify"] = asyncio.create_task(notifier.run(), name="notify")
        try:
            for make in services or []:
                svc = make(state)
                await svc.start()
                state.services.append(svc)
            log.info("hub: started (%s bus, %s)", bus.name, settings.data_dir)
            _settle_gc()
            yield
        finally:
            for svc in reversed(state.services):
                try:
                    await svc.stop()
                except Exception:
                    log.exception("hub: stopping %s failed", type(svc).__name__)
            await cancel_and_wait(list(state.tasks.values()))
            await bus.close()
            await store.close()
            log.info("hub: stopped")

    app = FastAPI(
        title="GridHub",
        version="0.1.0",
        summary="Command-center hub for city grid management",
        lifespan=lifespan,
    )
    app.add_middleware(HotRoutes)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # the outer one
    app.include_router(api_router)
    for add in routers or []:
        add(app)
    return app


async def hub_state(request: Request) -> HubState:
    # async: a plain def dependency would cost a thread hop on every request
    state: HubState = request.app.state.hub
    return state

