"""HTTP and WebSocket API (the stable contract; OpenAPI at ``/openapi.json``).

Every endpoint except ``/api/health`` and ``/api/auth/token`` needs a bearer token.
Errors are JSON ``{"detail": ...}``: 401 no/bad token, 403 role not allowed, 404
unknown incident, 409 illegal state change (naming the allowed actions), 413 body too
large, 422 invalid input (FastAPI lists each bad field).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    File,
    HTTPException,
    Query,
    Request,
    UploadFile,
    WebSocket,
    status,
)
from fastapi.responses import JSONResponse, Response
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub import schema as t
from hub.app import HubState, hub_state
from hub.auth import TOKEN_TTL_S, AuthError
from hub.cameras import CameraError, CameraExists, UnknownCamera
from hub.cap import incident_to_cap
from hub.config import CameraConfig, RtspSourceConfig, Severity
from hub.incidents import (
    ActionError,
    Forbidden,
    IllegalTransition,
    InvalidInput,
    NotAllowedNow,
    NotVisible,
    UnknownDepartment,
    can_see,
)
from hub.ledger import LEDGER_COLUMNS, STATS_COLUMNS, PeriodError, ledger, stats, to_csv
from hub.models import (
    CameraBody,
    CameraOut,
    CameraPatchBody,
    ChallengeOut,
    CommentBody,
    DepartmentOut,
    DismissBody,
    DispatchBody,
    FeedbackBody,
    Health,
    Incident,
    IncidentDetail,
    IncidentList,
    NoteBody,
    PhotoOut,
    ReasonBody,
    ReportBody,
    ReportOut,
    ResolveBody,
    SeverityBody,
    State,
    Token,
    User,
)
from hub.store import Conflict, NotFound
from hub.urls import mask_url

log = logging.getLogger(__name__)
router = APIRouter()
bearer = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)

St = Annotated[HubState, Depends(hub_state)]


async def current_user(state: St, token: Annotated[str | None, Depends(bearer)]) -> User:
    # async: no blocking work here, and a plain def would run in the thread pool
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "not authenticated: send a bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return state.accounts.verify(token)
    except AuthError as err:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(err), headers={"WWW-Authenticate": "Bearer"}
        ) from err


Me = Annotated[User, Depends(current_user)]


def _origin(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- health and auth ---------------------------------------------------------------


@router.get("/api/health", response_model=Health, tags=["system"])
async def health(state: St) -> Health:
    """Status of each component; no authentication."""
    store_ok = await state.store.ping()
    bus_ok = await state.bus.ping()
    components: dict[str, dict[str, object]] = {
        "store": {"status": "ok" if store_ok else "down", "where": state.store.where},
        "bus": {"status": "ok" if bus_ok else "down", "kind": state.bus.name,
                "dead_letters": state.bus.dead_letters},
        "incidents": {
            "status": "ok" if state.incidents.last_error is None else "degraded",
            "candidates_processed": state.incidents.candidates_seen,
            "error": state.incidents.last_error,
        },
        "notifications": _outbox_health(await state.notifier.counts()
                                        if state.notifier else {}),
        "websocket": {"status": "ok", "clients": len(state.clients),
                      "dropped_slow_clients": state.clients.dropped_clients},
    }
    for svc in state.services:
        report = getattr(svc, "report", None)
        if report is not None:
            components.update(report())
    cams = {c.id: state.cameras.get(c.id) for c in state.camera_registry.all() if c.enabled}
    components["cameras"] = {
        "status": "ok" if all(h and h.status == "online" for h in cams.values()) else "degraded",
        "online": sum(1 for h in cams.values() if h and h.status == "online"),
        "total": len(cams),
    }
    worst = "ok"
    for name, comp in components.items():
        if comp.get("status") == "down":
            worst = "down" if name in ("store", "bus") else "degraded"
            if worst == "down":
                break
        elif comp.get("status") != "ok":
            worst = "degraded"
    return Health(status=worst, components=components)


def _outbox_health(counts: dict[str, int]) -> dict[str, Any]:
    """Outbox rows by state; degraded while any notification is dead-lettered."""
    return {"status": "degraded" if counts.get("dead") else "ok", **counts}


@router.post("/api/auth/token", response_model=Token, tags=["auth"])
async def token(state: St, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    """Exchange a username and password (OAuth2 password form) for a bearer token."""
    try:
        user = await asyncio.to_thread(state.accounts.authenticate, form.username, form.password)
    except AuthError as err:
        log.warning("login failed for %r", form.username)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(err), headers={"WWW-Authenticate": "Bearer"}
        ) from err
    return Token(access_token=state.accounts.issue(user), expires_in=TOKEN_TTL_S)


@router.get("/api/me", response_model=User, tags=["auth"])
async def me(user: Me) -> User:
    """The signed-in user."""
    return user


# --- reference data -------------------------------------------------------------------


@router.get("/api/departments", response_model=list[DepartmentOut], tags=["reference"])
async def departments(state: St, user: Me) -> list[DepartmentOut]:
    """Departments that can receive dispatches, with the incident types they handle."""
    return [DepartmentOut(**d.model_dump()) for d in state.site.departments]


@router.get("/api/types", tags=["reference"])
async def incident_types(state: St, user: Me) -> list[dict[str, Any]]:
    """Incident types: id, Chinese and English names, source (detector or manual), and
    the departments suggested for them (without a grid)."""
    return [{**it.model_dump(), "departments": [d.id for d in state.site.departments
                                                if it.id in d.handles]}
            for it in state.site.site.incident_types]


def _camera_out(state: HubState, c: CameraConfig, admin: bool = True) -> CameraOut:
    h = state.cameras.get(c.id)
    src = c.source
    url = sub = None
    if isinstance(src, RtspSourceConfig) and admin:  # addresses are for admins only
        url = mask_url(src.url)
        sub = mask_url(src.sub_url) if src.sub_url else None
    health = h.model_dump(exclude={"v", "camera_id", "status", "reason"}) if h else {}
    return CameraOut(
        id=c.id, name=c.name, grid=c.grid, kind=src.type, url=url, sub_url=sub,
        enabled=c.enabled, position=c.position,
        zones=[z.model_dump(mode="json") for z in c.zones],
        status=h.status if h and c.enabled else ("unknown" if c.enabled else "offline"),
        reason=h.reason if h and c.enabled else (None if c.enabled else "disabled"),
        **health,
    )


def _require_admin(user: User) -> None:
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may change cameras")


def _camera_error(err: CameraError) -> HTTPException:
    if isinstance(err, UnknownCamera):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(err))
    if isinstance(err, CameraExists):
        return HTTPException(status.HTTP_409_CONFLICT, str(err))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err))


@router.get("/api/cameras", response_model=list[CameraOut], tags=["cameras"])
async def cameras(state: St, user: Me) -> list[CameraOut]:
    """Cameras with their live health (status, reason, fps, bitrate, reconnects...)."""
    admin = user.role == "admin"
    return [_camera_out(state, c, admin) for c in state.camera_registry.all()]


@router.get("/api/cameras/{camera_id}", response_model=CameraOut, tags=["cameras"])
async def camera(state: St, user: Me, camera_id: str) -> CameraOut:
    """One camera with its live health."""
    c = state.camera_registry.get(camera_id)
    if c is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no camera {camera_id!r}")
    return _camera_out(state, c, user.role == "admin")


@router.post("/api/cameras", response_model=CameraOut, status_code=201, tags=["cameras"])
async def add_camera(state: St, user: Me, body: CameraBody) -> CameraOut:
    """Add an RTSP camera while running (admin). It starts at once; an unreachable URL
    is accepted and shown offline with the reason. Stored: survives restarts."""
    _require_admin(user)
    data = body.model_dump(exclude={"url", "sub_url", "transport"})
    data["source"] = {"type": "rtsp", "url": body.url, "sub_url": body.sub_url,
                      "transport": body.transport}
    try:
        cam = await state.camera_registry.add(data)
    except CameraError as err:
        raise _camera_error(err) from err
    log.info("camera %s added by %s (%s)", cam.id, user.username, mask_url(body.url))
    return _camera_out(state, cam)


@router.patch("/api/cameras/{camera_id}", response_model=CameraOut, tags=["cameras"])
async def change_camera(
    state: St, user: Me, camera_id: str, body: CameraPatchBody
) -> CameraOut:
    """Change a camera while running (admin); its source restarts if the URL changed."""
    _require_admin(user)
    changes = body.model_dump(exclude_unset=True)
    try:
        cam = await state.camera_registry.update(camera_id, changes)
    except CameraError as err:
        raise _camera_error(err) from err
    log.info("camera %s changed by %s: %s", camera_id, user.username, sorted(body.model_fields_set))
    return _camera_out(state, cam)


@router.delete("/api/cameras/{camera_id}", status_code=204, tags=["cameras"])
async def remove_camera(state: St, user: Me, camera_id: str) -> Response:
    """Remove a camera while running (admin); its source stops."""
    _require_admin(user)
    try:
        await state.camera_registry.remove(camera_id)
    except CameraError as err:
        raise _camera_error(err) from err
    state.cameras.pop(camera_id, None)
    log.info("camera %s removed by %s", camera_id, user.username)
    return Response(status_code=204)


# --- incidents ------------------------------------------------------------------------


async def _get_visible(state: HubState, user: User, incident_id: str) -> Incident:
    try:
        inc = await state.store.get(incident_id)
    except NotFound as err:
        raise HTTPException(404, f"no incident {incident_id!r}") from err
    if not can_see(state.site, user, inc):
        raise HTTPException(404, f"no incident {incident_id!r}")
    return inc


@router.get("/api/incidents", response_model=IncidentList, tags=["incidents"])
async def list_incidents(
    state: St,
    user: Me,
    state_: Annotated[State | None, Query(alias="state")] = None,
    type: Annotated[str | None, Query(description="Incident type id.")] = None,
    severity: Severity | None = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Created at or before (ISO 8601).")
                     ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> IncidentList:
    """Incidents the user may see, newest first (``since`` and ``until`` bound a window:
    the replay page asks for the incidents of the minutes it shows)."""
    if type is not None and type not in state.site.incident_type_ids():
        raise HTTPException(
            422, f"unknown incident type {type!r}; known: "
            f"{', '.join(sorted(state.site.incident_type_ids()))}",
        )
    where = [] if until is None else [
        t.incidents.c.created_at <= until.astimezone(UTC).isoformat()]
    items = await state.store.query(
        state=state_, type=type, severity=severity, since=since, limit=limit, where=where
    )
    return IncidentList(items=[i for i in items if can_see(state.site, user, i)])


@router.get("/api/incidents/{incident_id}", response_model=IncidentDetail, tags=["incidents"])
async def get_incident(state: St, user: Me, incident_id: str) -> IncidentDetail:
    """One incident with its whole timeline."""
    inc = await _get_visible(state, user, incident_id)
    return IncidentDetail(**inc.model_dump(), timeline=await state.store.timeline(inc.id))


@router.get(
    "/api/incidents/{incident_id}/snapshot",
    responses={200: {"content": {"image/jpeg": {}}}},
    response_class=Response,
    tags=["incidents"],
)
async def snapshot(state: St, user: Me, incident_id: str) -> Response:
    """The incident's snapshot (JPEG, with the detection drawn)."""
    await _get_visible(state, user, incident_id)
    jpeg = await state.store.snapshot(incident_id)
    if jpeg is None:
        raise HTTPException(404, "this incident has no snapshot")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


def _json(model: BaseModel, status: int = 200) -> Response:
    """The model as JSON, serialized once. A route's ``response_model`` still documents
    it; returning the model itself would have FastAPI dump it to a dict, validate that
    again and serialize it (a tenth of an action's CPU on the hot routes)."""
    return Response(model.model_dump_json(), status_code=status,
                    media_type="application/json")


def _action_error(err: ActionError) -> HTTPException:
    if isinstance(err, IllegalTransition):
        return HTTPException(409, {"message": str(err), "allowed": err.allowed})
    if isinstance(err, NotAllowedNow):
        return HTTPException(409, {"message": str(err), "allowed": []})
    if isinstance(err, NotVisible):
        return HTTPException(404, str(err))
    if isinstance(err, Forbidden):
        return HTTPException(403, str(err))
    if isinstance(err, UnknownDepartment | InvalidInput):
        return HTTPException(422, str(err))
    return HTTPException(400, str(err))


async def _act(state: HubState, user: User, incident_id: str, action: str, origin: str,
               **body: Any) -> Incident:
    """Run an incident action for a user who can see the incident; map its errors."""
    try:
        return await state.incidents.act(incident_id, user, action, origin, **body)
    except NotFound as err:
        raise HTTPException(404, f"no incident {incident_id!r}") from err
    except ActionError as err:
        raise _action_error(err) from err
    except Conflict as err:
        raise HTTPException(409, {"message": f"the incident kept changing: {err}; retry",
                                  "allowed": []}) from err


async def run_action(state: HubState, user: User, incident_id: str, action: str,
                     origin: str, body: BaseModel | None) -> Response:
    """One incident action with its validated body (the route's and :class:`HotRoutes`')."""
    fields = body.model_dump(exclude_none=False) if body is not None else {}
    if action == "dispatch" and fields.get("department"):
        fields["departments"] = [fields["department"], *fields.get("departments", [])]
    fields.pop("department", None)
    if action == "dispatch" and user.role not in ("admin", "operator", "dispatcher"):
        raise HTTPException(403, f"role {user.role} cannot dispatch")
    return _json(await _act(state, user, incident_id, action, origin, **fields))


# One route per action, each with its body schema in OpenAPI.
ACTION_DOCS: dict[str, tuple[type[BaseModel] | None, str]] = {
    "confirm": (NoteBody, "Confirm a new incident as real (operator, dispatcher). Its frame "
                "is kept as a labelled example for ``gridhub train``."),
    "dismiss": (DismissBody, "Dismiss a false alarm with a reason (operator, dispatcher). Its "
                "frame is kept as a labelled example: ``label`` says what it really was."),
    "dispatch": (DispatchBody, "Send the case to departments (one leads) and/or patrol units "
                 "(operator, dispatcher). An empty body takes the suggestion: one click."),
    "accept": (NoteBody, "Accept a dispatched case (its department or patrol unit)."),
    "en_route": (NoteBody, "On the way (the assigned department or unit)."),
    "on_scene": (NoteBody, "Arrived on scene (the assigned department or unit)."),
    "feedback": (FeedbackBody, "Report back with text and photos (assigned department/unit)."),
    "resolve": (ResolveBody, "Solved, with the result (the assigned department or unit)."),
    "close": (NoteBody, "Close a resolved case after checking it (operator, dispatcher)."),
    "reopen": (ReasonBody, "Reopen a resolved, closed or dismissed case (operator, "
               "dispatcher)."),
    "escalate": (ReasonBody, "Move the case to the parent grid level's queue, keeping its "
                 "history (operator, dispatcher, assigned department)."),
    "challenge": (ReasonBody, "Challenge (质询) the upper level about a case this level "
                  "escalated and that it has not answered within workflow.challenge_after."),
    "severity": (SeverityBody, "Change the severity with a reason (operator, dispatcher)."),
    "comment": (CommentBody, "Add a comment to the timeline (anyone who can see the case)."),
}
NO_BODY_OK = {"confirm", "accept", "en_route", "on_scene", "close", "dispatch"}


def _action_route(action: str, body_model: type[BaseModel], doc: str) -> None:
    optional = action in NO_BODY_OK

    async def endpoint(state: St, user: Me, incident_id: str, request: Request,
                       body: Any = None) -> Response:
        return await run_action(state, user, incident_id, action, _origin(request), body)

    endpoint.__annotations__["body"] = (body_model | None) if optional else body_model
    if not optional:
        endpoint.__defaults__ = None
        endpoint.__kwdefaults__ = None
    endpoint.__name__ = f"incident_{action}"
    endpoint.__doc__ = doc
    router.add_api_route(
        f"/api/incidents/{{incident_id}}/{action}", endpoint, methods=["POST"],
        response_model=Incident, tags=["incident actions"], name=f"incident_{action}",
        responses={403: {"description": "not allowed for this user"},
                   404: {"description": "no such incident (or not visible)"},
                   409: {"description": "not allowed in the incident's state; names the "
                         "allowed actions"}},
    )


for _action, (_model, _doc) in ACTION_DOCS.items():
    assert _model is not None
    _action_route(_action, _model, _doc)


@router.post("/api/reports", response_model=ReportOut, status_code=201, tags=["incidents"])
async def report(state: St, user: Me, body: ReportBody, request: Request) -> Response:
    """A problem reported by a person (grid staff on /report, a hotline operator, a patrol
    crew): it becomes a case in the grid cell at its position, or joins an open case of
    the same type nearby (``merged``: true), so one problem flows once."""
    return await run_report(state, user, body, _origin(request))


async def run_report(state: HubState, user: User, body: ReportBody, origin: str) -> Response:
    """A report with its validated body (the route's and :class:`HotRoutes`')."""
    try:
        inc, merged = await state.incidents.report(
            user, type_=body.type, description=body.description,
            position=(body.position.lat, body.position.lon), people=body.people,
            channel=body.channel, origin=origin)
    except ActionError as err:
        raise _action_error(err) from err
    except Conflict as err:  # the case it joins changed on another hub meanwhile
        raise HTTPException(409, {"message": f"{err}; send the report again",
                                  "allowed": []}) from err
    return _json(ReportOut(merged=merged, incident=inc), 201)


PHOTO_TYPES = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n",
               "image/webp": b"RIFF"}
MAX_PHOTO_BYTES = 8 << 20


@router.post("/api/incidents/{incident_id}/photos", response_model=PhotoOut, status_code=201,
             tags=["incidents"])
async def add_photo(state: St, user: Me, incident_id: str, request: Request,
                    photo: Annotated[UploadFile, File(description="JPEG, PNG or WebP.")]
                    ) -> PhotoOut:
    """Attach a photo (multipart field ``photo``; JPEG, PNG or WebP, at most 8 MB)."""
    await _get_visible(state, user, incident_id)
    data = await photo.read(MAX_PHOTO_BYTES + 1)
    if len(data) > MAX_PHOTO_BYTES:
        raise HTTPException(413, f"photo larger than {MAX_PHOTO_BYTES >> 20} MB")
    kind = next((k for k, magic in PHOTO_TYPES.items() if data.startswith(magic)), None)
    if kind is None or (kind == "image/webp" and data[8:12] != b"WEBP"):
        raise HTTPException(415, "not a JPEG, PNG or WebP image")
    try:
        pid = await state.incidents.add_photo(incident_id, user, data, kind, _origin(request))
    except ActionError as err:
        raise _action_error(err) from err
    import hashlib

    return PhotoOut(id=pid, url=f"/api/incidents/{incident_id}/photos/{pid}",
                    sha256=hashlib.sha256(data).hexdigest(), content_type=kind)


@router.get("/api/incidents/{incident_id}/photos/{photo_id}", tags=["incidents"],
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def get_photo(state: St, user: Me, incident_id: str, photo_id: str) -> Response:
    """One photo of a case."""
    await _get_visible(state, user, incident_id)
    got = await state.store.photo(incident_id, photo_id)
    if got is None:
        raise HTTPException(404, "no such photo on this incident")
    return Response(got[1], media_type=got[0], headers={"Cache-Control": "private"})


@router.get("/api/incidents/{incident_id}/cap", tags=["incidents"], response_class=Response,
            responses={200: {"content": {"application/cap+xml": {}}}})
async def cap(state: St, user: Me, incident_id: str) -> Response:
    """The incident as a CAP 1.2 (OASIS Common Alerting Protocol) alert: Alert when new,
    Update after a change, Cancel when dismissed."""
    inc = await _get_visible(state, user, incident_id)
    kind: Literal["Alert", "Update", "Cancel"] = (
        "Cancel" if inc.state == "dismissed" else "Alert" if inc.version == 1 else "Update")
    xml = incident_to_cap(inc, state.site, sender=f"gridhub@{state.site.site.name}".replace(
        " ", "_").replace(",", "_").replace("<", "_").replace("&", "_"), msg_type=kind)
    return Response(xml, media_type="application/cap+xml")


def _csv_or_json(data: Any, rows: list[dict[str, Any]], columns: list[str], fmt: str,
                 name: str) -> Any:
    if fmt == "csv":
        return Response(to_csv(rows, columns), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    return data


def _check_filters(state: HubState, grid: str | None, department: str | None,
                   type_: str | None) -> None:
    if grid is not None and state.site.grid(grid) is None:
        raise HTTPException(422, f"unknown grid {grid!r}")
    if department is not None and state.site.department(department) is None:
        raise HTTPException(422, f"unknown department {department!r}")
    if type_ is not None and type_ not in state.site.incident_type_ids():
        raise HTTPException(422, f"unknown incident type {type_!r}")


@router.get("/api/ledger", tags=["statistics"],
            responses={200: {"content": {"application/json": {}, "text/csv": {}}}})
async def get_ledger(
    state: St, user: Me, grid: str | None = None, department: str | None = None,
    type: str | None = None,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> Any:
    """The daily ledger (日清台账): every open case the user may see, oldest first, with
    its level, departments, age, deadlines and the reason it is still open."""
    _check_filters(state, grid, department, type)
    data = await ledger(state.store, state.site, user, state.incidents.now(), grid=grid,
                        department=department, type_=type)
    return _csv_or_json(data, data["items"], LEDGER_COLUMNS, format, "ledger")


@router.get("/api/stats", tags=["statistics"],
            responses={200: {"content": {"application/json": {}, "text/csv": {}}}})
async def get_stats(
    state: St, user: Me,
    period: Annotated[str, Query(description="today, 7d, 30d, YYYY-MM or "
                                 "YYYY-MM-DD/YYYY-MM-DD (site time zone)")] = "30d",
    grid: str | None = None, department: str | None = None, type: str | None = None,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> Any:
    """Received, dispatched, escalated, resolved, closed, closure rate (办结率) and on-time
    rate for a period, with a daily series for charts."""
    _check_filters(state, grid, department, type)
    try:
        data = await stats(state.store, state.site, user, state.incidents.now(),
                           period=period, grid=grid, department=department, type_=type)
    except PeriodError as err:
        raise HTTPException(422, str(err)) from err
    rows = [{**{k: data[k] for k in STATS_COLUMNS}}]
    return _csv_or_json(data, rows, STATS_COLUMNS, format, "stats")


@router.get("/api/notifications/dead", tags=["notifications"])
async def dead_letters(state: St, user: Me) -> list[dict[str, Any]]:
    """Notifications that could not be delivered after every retry (admin)."""
    if user.role != "admin":
        raise HTTPException(403, "only an admin may read the dead letters")
    assert state.notifier is not None
    return await state.notifier.dead_letters()


@router.post("/api/notifications/{outbox_id}/redeliver", tags=["notifications"])
async def redeliver(state: St, user: Me, outbox_id: int) -> dict[str, Any]:
    """Send a dead-lettered notification again (admin)."""
    if user.role != "admin":
        raise HTTPException(403, "only an admin may redeliver notifications")
    assert state.notifier is not None
    if not await state.notifier.redeliver(outbox_id):
        raise HTTPException(404, f"no dead notification {outbox_id}")
    return {"id": outbox_id, "state": "pending"}


@router.get("/api/challenges", response_model=list[ChallengeOut], tags=["incidents"])
async def challenges(state: St, user: Me,
                     state_: Annotated[Literal["open", "answered", "overdue"] | None,
                                       Query(alias="state")] = None) -> list[ChallengeOut]:
    """Challenges (质询) on the cases the user can see, newest first."""
    return [ChallengeOut(**r) for r in await state.incidents.challenges(user, state_)]


@router.get("/api/examples", tags=["incidents"])
async def examples(state: St, user: Me, type: str | None = None) -> list[dict[str, Any]]:
    """Labelled examples (confirmed and dismissed detections), for reviewers and training."""
    if user.role not in ("admin", "reviewer", "operator"):
        raise HTTPException(403, f"role {user.role} cannot read labelled examples")
    rows = []
    for r in await state.store.examples(type):
        try:
            inc = await state.store.get(r["incident_id"])
        except NotFound:
            continue
        if can_see(state.site, user, inc):  # a grid-scoped user sees their subtree only
            r["image_url"] = f"/api/examples/{r['incident_id']}/image"
            rows.append(r)
    return rows


@router.get("/api/examples/{incident_id}/image", tags=["incidents"],
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def example_image(state: St, user: Me, incident_id: str) -> Response:
    """The example's frame, without overlay (JPEG)."""
    if user.role not in ("admin", "reviewer", "operator"):
        raise HTTPException(403, f"role {user.role} cannot read labelled examples")
    await _get_visible(state, user, incident_id)
    jpeg = await state.store.example_jpeg(incident_id)
    if jpeg is None:
        raise HTTPException(404, "no labelled example for this incident")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private"})


# --- live events ------------------------------------------------------------------------


@router.websocket("/ws")
async def ws(websocket: WebSocket, token: str | None = None, batch: bool = False) -> None:
    """Live events: ``{"type": "incident.created" | "incident.updated" | ..., "data": ...,
    "action"?, "notice"?}``; with ``?batch=1``, events that queue up while a send is in
    flight arrive together as ``{"type": "batch", "data": [<event>, ...]}``."""
    state: HubState = websocket.app.state.hub
    try:
        user = state.accounts.verify(token or "")
    except AuthError:
        await websocket.close(code=4401, reason="not authenticated")
        return
    await websocket.accept()
    await state.clients.serve(websocket, user, batch=batch)




# --- the hot routes' lean path -------------------------------------------------------------


class HotRoutes:
    """ASGI middleware: the workflow's hot routes (``POST /api/reports`` and
    ``POST /api/incidents/{id}/{action}``, hundreds a second at peak) without FastAPI's
    routing and dependency solving, which cost several times the action itself (a linear
    route match, then the dependency graph, per request).

    It takes only the plain case: a valid bearer token and a JSON body that validates
    against the route's model (or no body where the route allows none). Then it runs the
    same code as the route (:func:`run_report`, :func:`run_action`) and answers an
    ``HTTPException`` as FastAPI does. Anything else (no or bad token, a body that is not
    JSON or does not validate, another content type, a client gone before the end of its
    body) goes on to the FastAPI route with its body intact, so every error answer still
    comes from one place, and the routes stay the OpenAPI contract."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.served = 0  # hot requests answered here
        self.passed = 0  # hot requests handed on to their FastAPI route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        action, incident_id = route
        auth = ctype = None
        for name, value in scope["headers"]:  # the first of each, as Starlette reads them
            if name == b"authorization" and auth is None:
                auth = value
            elif name == b"content-type" and ctype is None:
                ctype = value
        state: HubState = scope["app"].state.hub
        scheme, _, token = (auth or b"").decode("latin-1").partition(" ")
        try:
            user = state.accounts.verify(token) if scheme.lower() == "bearer" else None
        except AuthError:
            user = None
        taken: list[Message] = []
        body = b""
        more = user is not None
        while more:  # read the whole body, keeping the messages to hand on if need be
            msg = await receive()
            taken.append(msg)
            body += msg.get("body", b"")
            more = msg["type"] == "http.request" and msg.get("more_body", False)
            if msg["type"] != "http.request":  # the client went away: FastAPI's case
                user = None
        model = ReportBody if action is None else ACTION_DOCS[action][0]
        value = None if user is None else self._validate(model, body, ctype)
        if user is None or value is None and (action not in NO_BODY_OK or body):
            self.passed += 1
            await self.app(scope, _replay(taken, receive), send)
            return
        self.served += 1
        origin = scope["client"][0] if scope.get("client") else "unknown"
        try:
            if action is None:
                assert isinstance(value, ReportBody)
                response = await run_report(state, user, value, origin)
            else:
                response = await run_action(state, user, incident_id, action, origin, value)
        except HTTPException as exc:  # as FastAPI's handler answers it
            response = JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
        await response(scope, receive, send)

    @staticmethod
    def _route(scope: Scope) -> tuple[str | None, str] | None:
        """(action, incident id) for an action, (None, "") for a report, else None."""
        if scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if path == "/api/reports":
            return None, ""
        parts = path.split("/")
        if len(parts) == 5 and parts[1:3] == ["api", "incidents"] and parts[3] \
                and parts[4] in ACTION_DOCS:
            return parts[4], parts[3]
        return None

    @staticmethod
    def _validate(model: type[BaseModel] | None, body: bytes, ctype: bytes | None
                  ) -> BaseModel | None:
        """The body as ``model``, or None (none sent, or one for FastAPI to refuse)."""
        if not body or model is None:
            return None
        if ctype is not None and ctype.split(b";")[0].strip().lower() != b"application/json":
            return None
        try:  # parsed then validated, as FastAPI does
            return model.model_validate(json.loads(body))
        except (ValueError, RecursionError):  # not JSON (or too deep), or not valid
            return None


def _replay(taken: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands back the messages already read."""
    pending = list(taken)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
