"""Recordings API: the index, segment files, recorder status, incident clips and locks.

* ``GET /api/recordings?camera=&from=&to=``: segments overlapping the window, oldest
  first, each with its evidence locks; ``gaps`` lists the missing time between them.
* ``GET /api/recordings/{id}/file``: the segment (fragmented MP4), with HTTP Range.
* ``GET /api/recordings/status``: per source recording/paused (and why), disk, quota.
* ``GET /api/incidents/{id}/clip``: the incident's clip (MP4, moov first), with Range; a
  bearer token or the signature from ``GET /api/incidents/{id}/clip/link`` (a ``<video>``
  element cannot send a bearer token: the URL is signed for the user, as the replay
  videos of ``hub.api_replay`` are, valid ``CLIP_URL_TTL_S``).
* ``GET /api/incidents/{id}/evidence/locks`` and ``POST .../evidence/unlock`` (reviewer:
  releases the incident's locks, with a reason in the timeline).

Who: any signed-in user, as for ``GET /api/cameras``; incident clips and locks only for
users who may see the incident. Range requests are Starlette's ``FileResponse``: 206 for
a satisfiable range, 416 (with ``Content-Range: bytes */size``) for one past the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from hub.api import Me, St, _act, _get_visible, _origin, bearer
from hub.app import HubState
from hub.auth import AuthError, load_secret
from hub.models import Incident, User
from hub.recordings import RecordingService

router = APIRouter()

GAP_TOLERANCE_S = 1.0  # less missing time than this between segments is not a gap
CLIP_URL_TTL_S = 6 * 3600  # a signed clip URL is valid this long (as replay URLs)


class RecordingOut(BaseModel):
    id: int
    camera: str
    start: datetime
    end: datetime
    size: int
    codec: str | None
    width: int | None
    height: int | None
    state: str = Field(description="recording, complete, repaired or damaged.")
    note: str | None = Field(None, description="What the start-up repair found.")
    locked_by: list[str] = Field(description="Incidents holding it as evidence.")
    url: str = Field(description="The segment file (fragmented MP4).")


class Gap(BaseModel):
    camera: str
    start: datetime
    end: datetime


class RecordingList(BaseModel):
    items: list[RecordingOut]
    gaps: list[Gap] = Field(description="Missing time between consecutive segments.")


class ClipLink(BaseModel):
    url: str = Field(description="The clip, signed for this user (no bearer token needed; "
                                 "Range).")
    expires_at: datetime = Field(description="When the signature expires.")


class UnlockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000,
                        description="Why the recordings need not be kept as evidence.")


def may_view_recordings(user: User) -> None:
    """Recorded video is as sensitive as live video: command-center roles (operator,
    dispatcher, reviewer, admin, grid staff...) watch it; department and patrol accounts
    do not (they see the clip of a case assigned to them, through the incident)."""
    if user.role in ("department", "patrol"):
        raise HTTPException(403, f"role {user.role} cannot view recordings")


def _service(state: HubState) -> RecordingService:
    svc = next((s for s in state.services if isinstance(s, RecordingService)), None)
    if svc is None:
        raise HTTPException(503, "recording is not running on this hub")
    return svc


@router.get("/api/recordings", response_model=RecordingList, tags=["recordings"])
async def list_recordings(
    state: St, user: Me,
    camera: Annotated[str | None, Query(description="Camera or patrol unit id.")] = None,
    from_: Annotated[datetime | None, Query(alias="from", description="ISO 8601.")] = None,
    to: Annotated[datetime | None, Query(description="ISO 8601.")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 2000,
) -> RecordingList:
    """Recorded segments overlapping ``[from, to]``, oldest first, and the gaps."""
    may_view_recordings(user)
    svc = _service(state)
    recs = await svc.index.query(camera=camera, since=from_.timestamp() if from_ else None,
                                 until=to.timestamp() if to else None)
    items, gaps = [], []
    last_end: dict[str, datetime] = {}
    for r in recs[:limit]:
        end = r.end
        live = svc.live.get(r.camera)
        if r.state == "recording" and live is not None and live.rel == r.path:
            end = datetime.fromtimestamp(live.end, r.start.tzinfo)
        prev = last_end.get(r.camera)
        if prev is not None and (r.start - prev).total_seconds() > GAP_TOLERANCE_S:
            gaps.append(Gap(camera=r.camera, start=prev, end=r.start))
        last_end[r.camera] = max(prev, end) if prev else end
        items.append(RecordingOut(
            id=r.id, camera=r.camera, start=r.start, end=end, size=r.size, codec=r.codec,
            width=r.width, height=r.height, state=r.state, note=r.note,
            locked_by=r.locked_by, url=f"/api/recordings/{r.id}/file"))
    return RecordingList(items=items, gaps=gaps)


@router.get("/api/recordings/status", tags=["recordings"])
async def recording_status(state: St, user: Me) -> dict[str, Any]:
    """Each source's recorder (recording, paused and why), free disk, quota."""
    may_view_recordings(user)
    return await _service(state).status_report()


@router.get("/api/recordings/{recording_id}/file", tags=["recordings"],
            response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "a range"},
                       416: {"description": "range not satisfiable"}})
async def recording_file(state: St, user: Me, recording_id: int) -> FileResponse:
    """One segment file (fragmented MP4); Range requests are answered with 206."""
    may_view_recordings(user)
    svc = _service(state)
    recs = await svc.index.query(ids=[recording_id])
    if not recs:
        raise HTTPException(404, f"no recording {recording_id}")
    path = svc.data_dir / recs[0].path
    if not path.is_file():
        raise HTTPException(404, f"recording {recording_id}: the file is gone")
    return FileResponse(path, media_type="video/mp4", filename=path.name,
                        content_disposition_type="inline")


# --- signed clip URLs (the mechanism of hub.api_replay) ------------------------------------


def _clip_url_key(request: Request, state: HubState) -> bytes:
    """Derived from the token signing key (shared by hubs), apart from the replay URLs' key:
    a replay signature is no clip signature."""
    key: bytes | None = getattr(request.app.state, "clip_url_key", None)
    if key is None:
        secret = load_secret(state.settings.data_dir)
        key = hashlib.sha256(b"gridhub clip url\0" + secret.encode()).digest()
        request.app.state.clip_url_key = key
    return key


def sign_clip(key: bytes, user: str, incident_id: str, exp: int) -> str:
    """The signature of ``user``'s URL of the incident's clip, valid until ``exp``."""
    msg = f"clip\n{user}\n{incident_id}\n{exp}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


async def _clip_viewer(state: St, request: Request, incident_id: str,
                       token: Annotated[str | None, Depends(bearer)],
                       u: Annotated[str | None, Query(description="Signed URL: the user.")] = None,
                       exp: Annotated[int | None, Query(description="Signed URL: expiry.")] = None,
                       sig: Annotated[str | None, Query(description="Signed URL: HMAC.")] = None,
                       ) -> User:
    """The user: from the bearer token, or from a URL signed by ``/clip/link``."""
    if token:
        try:
            return state.accounts.verify(token)
        except AuthError as err:
            raise HTTPException(401, str(err), headers={"WWW-Authenticate": "Bearer"}) from err
    if u and exp is not None and sig:
        found = state.accounts.user(u)
        want = sign_clip(_clip_url_key(request, state), u, incident_id, exp)
        if found is not None and exp >= time.time() and hmac.compare_digest(sig, want):
            return found  # what the account may see now is checked by the caller
        raise HTTPException(401, "the clip link is invalid or has expired")
    raise HTTPException(401, "not authenticated: send a bearer token",
                        headers={"WWW-Authenticate": "Bearer"})


async def _clip_path(state: HubState, inc: Incident) -> Path:
    svc = _service(state)
    row = await svc.index.clip(inc.id)
    if row is None:
        raise HTTPException(404, "this incident has no clip (yet)")
    path: Path = svc.data_dir / str(row["path"])
    if not await asyncio.to_thread(path.is_file):
        raise HTTPException(404, "this incident has no clip (yet)")
    return path


@router.get("/api/incidents/{incident_id}/clip", tags=["recordings"],
            response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "a range"},
                       401: {"description": "no token, or a bad or expired signature"},
                       404: {"description": "no such incident, or no clip yet"},
                       416: {"description": "range not satisfiable"}})
async def incident_clip(state: St, incident_id: str,
                        viewer: Annotated[User, Depends(_clip_viewer)]) -> FileResponse:
    """The incident's video clip (plain MP4, moov first: plays while it downloads), with a
    bearer token or the signature from ``/clip/link``."""
    inc = await _get_visible(state, viewer, incident_id)
    path = await _clip_path(state, inc)
    return FileResponse(path, media_type="video/mp4", filename=f"{inc.id}.mp4",
                        content_disposition_type="inline")


@router.get("/api/incidents/{incident_id}/clip/link", response_model=ClipLink,
            tags=["recordings"],
            responses={404: {"description": "no such incident, or no clip yet"}})
async def incident_clip_link(state: St, user: Me, request: Request,
                             incident_id: str) -> ClipLink:
    """The clip's URL signed for this user, for a ``<video>`` element (which cannot send
    a bearer token); valid 6 hours. Who may fetch it is checked again at each request."""
    inc = await _get_visible(state, user, incident_id)
    await _clip_path(state, inc)
    exp = int(time.time()) + CLIP_URL_TTL_S
    sig = sign_clip(_clip_url_key(request, state), user.username, inc.id, exp)
    query = urlencode({"u": user.username, "exp": exp, "sig": sig})
    return ClipLink(url=f"/api/incidents/{quote(inc.id, safe='')}/clip?{query}",
                    expires_at=datetime.fromtimestamp(exp, UTC))


@router.get("/api/incidents/{incident_id}/evidence/locks", tags=["recordings"])
async def evidence_locks(state: St, user: Me, incident_id: str) -> list[dict[str, Any]]:
    """The incident's evidence locks (camera, window, released by whom and why)."""
    inc = await _get_visible(state, user, incident_id)
    return await _service(state).index.locks(inc.id)


@router.post("/api/incidents/{incident_id}/evidence/unlock", response_model=Incident,
             tags=["recordings"],
             responses={403: {"description": "only a reviewer (or admin) may unlock"},
                        409: {"description": "nothing is locked"}})
async def evidence_unlock(state: St, user: Me, incident_id: str, body: UnlockBody,
                          request: Request) -> Incident:
    """Release the incident's evidence locks (reviewer): retention may then delete its
    recordings. Recorded in the timeline with who and why."""
    return await _act(state, user, incident_id, "evidence_unlock", _origin(request),
                      reason=body.reason)


def mount_recordings(app: FastAPI) -> None:
    """Add the recordings endpoints (a ``routers`` entry of ``create_app``)."""
    app.include_router(router)
