"""WHIP (RFC 9725) over HTTP: ``POST /whip/{unit_id}`` publishes a patrol unit's video.

``make_whip_router`` returns a FastAPI router and the :class:`WhipSessions` it feeds (a
hub service: its ``stop()`` closes every session). Non-trickle: the answer carries every
candidate the hub will use (ICE gathering is complete before it is sent).

Endpoints::

    POST    /whip/{unit_id}               201 + Location + the SDP answer
    DELETE  /whip/{unit_id}/{session_id}  200: the session is over
    PATCH   /whip/{unit_id}/{session_id}  405: no trickle ICE or ICE restart (RFC 9725 4.3.1)
    OPTIONS on both                       204 with Allow, Accept-Post and CORS headers
    anything else                         405 with Allow
    GET     /patrol                       the patrol tablet page (when ``patrol_page`` given)

Errors are JSON ``{"detail": ...}``, checked in this order:

* 401 no bearer token, or a bad/expired one;
* 404 unknown unit (told only to an authenticated caller);
* 403 the account may not publish this unit: only role ``patrol`` with ``unit`` equal to
  the path's unit (and ``admin``, when ``allow_admin``, for testing);
* 415 Content-Type is not ``application/sdp``; 413 body over ``max_offer_bytes``;
* 400 the offer is not usable SDP (not SDP, binary, no sendable VP8/H.264 video, no ICE
  credentials or DTLS fingerprint, or aiortc rejected it), with the reason;
* 409 the unit already has a live session: one publisher per unit. A client that lost
  its session without DELETE (network gone) is free again once the hub ends the old one,
  ``timeout_s`` (20 s) after its last video frame; it should retry with backoff;
* 503 the hub's session limit is reached, or no ICE candidate could be bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from hub.auth import AuthError
from hub.models import User
from ingest.source import Source
from ingest.webrtc import IceSettings, WebRtcError, WhipSessions
from ingest.whip import (
    MAX_OFFER_BYTES,
    BitrateHints,
    OfferTooLarge,
    WhipError,
    check_content_type,
    check_offer,
)

log = logging.getLogger(__name__)

__all__ = ["make_whip_router"]

RESOURCE_ALLOW = "POST, OPTIONS"
SESSION_ALLOW = "DELETE, OPTIONS"
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Accept-Post",
}


def make_whip_router(
    *,
    verify_token: Callable[[str], User],
    units: Callable[[str], bool],
    on_source_started: Callable[[Source], None] | None = None,
    on_source_ended: Callable[[Source], None] | None = None,
    on_telemetry: Callable[[str, str], None] | None = None,
    ice_hosts: tuple[str, ...] = (),
    ice_port_min: int | None = None,
    ice_port_max: int | None = None,
    ice_servers: tuple[str, ...] = (),
    hints: BitrateHints | None = None,
    max_offer_bytes: int = MAX_OFFER_BYTES,
    max_sessions: int = 64,
    stall_s: float = 5.0,
    timeout_s: float = 20.0,
    allow_admin: bool = True,
    patrol_page: Path | None = None,
) -> tuple[APIRouter, WhipSessions]:
    """The WHIP endpoints and their session registry.

    ``verify_token`` maps a bearer token to its user or raises ``hub.auth.AuthError``;
    ``units`` says whether a unit id is configured; ``on_telemetry(unit_id, raw)`` gets
    each text message of the ``telemetry`` data channel as sent. The callbacks run on the
    event loop and must be quick. A source goes offline after ``stall_s`` without video;
    its session ends after ``timeout_s`` without video (which frees the unit).
    """
    sessions = WhipSessions(
        ice=IceSettings(hosts=tuple(ice_hosts), port_min=ice_port_min, port_max=ice_port_max,
                        servers=tuple(ice_servers)),
        hints=hints, on_source_started=on_source_started, on_source_ended=on_source_ended,
        on_telemetry=on_telemetry, max_sessions=max_sessions, stall_s=stall_s,
        timeout_s=timeout_s,
    )
    router = APIRouter(tags=["whip"])

    def error(status: int, detail: str, **headers: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers={**CORS, **headers})

    def authorize(request: Request, unit_id: str) -> User | JSONResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "not authenticated: send Authorization: Bearer <token>",
                         **{"WWW-Authenticate": "Bearer"})
        try:
            user = verify_token(token.strip())
        except AuthError as err:
            return error(401, str(err), **{"WWW-Authenticate": "Bearer"})
        if not units(unit_id):
            return error(404, f"unknown unit {unit_id[:64]!r}")
        if not ((user.role == "patrol" and user.unit == unit_id)
                or (allow_admin and user.role == "admin")):
            return error(403, f"{user.username} may not publish unit {unit_id}")
        return user

    @router.post("/whip/{unit_id}", status_code=201, response_class=Response,
                 responses={201: {"content": {"application/sdp": {}}}})
    async def publish(unit_id: str, request: Request) -> Response:
        """Publish the unit's video: an SDP offer in, the SDP answer out."""
        user = authorize(request, unit_id)
        if isinstance(user, JSONResponse):
            return user
        try:
            check_content_type(request.headers.get("content-type"))
            body = await _read_body(request, max_offer_bytes)
            check_offer(body, max_bytes=max_offer_bytes)
            session = await sessions.publish(unit_id, body.decode("utf-8"), user.username)
        except (WhipError, WebRtcError) as err:
            log.info("whip %s: %s refused (%d): %s", unit_id, user.username, err.status, err)
            return error(err.status, str(err))
        return Response(session.answer, status_code=201, media_type="application/sdp",
                        headers={**CORS, "Location": session.location})

    @router.delete("/whip/{unit_id}/{session_id}")
    async def stop(unit_id: str, session_id: str, request: Request) -> Response:
        """End the session (the client stops publishing)."""
        user = authorize(request, unit_id)
        if isinstance(user, JSONResponse):
            return user
        session = sessions.get(unit_id, session_id)
        if session is None:
            return error(404, "no such WHIP session (ended already?)")
        await sessions.end(session, f"DELETE by {user.username}")
        return Response(status_code=200, headers=CORS)

    @router.options("/whip/{unit_id}", include_in_schema=False)
    async def resource_options(unit_id: str) -> Response:
        return _preflight(RESOURCE_ALLOW, {"Accept-Post": "application/sdp"})

    @router.options("/whip/{unit_id}/{session_id}", include_in_schema=False)
    async def session_options(unit_id: str, session_id: str) -> Response:
        return _preflight(SESSION_ALLOW, {})

    @router.api_route("/whip/{unit_id}", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    async def resource_other(unit_id: str) -> Response:
        return error(405, "use POST with an SDP offer", Allow=RESOURCE_ALLOW)

    @router.api_route("/whip/{unit_id}/{session_id}", methods=["PATCH"],
                      include_in_schema=False)
    async def session_patch(unit_id: str, session_id: str) -> Response:
        return error(405, "trickle ICE and ICE restarts are not supported: send every "
                     "candidate in the offer", Allow=SESSION_ALLOW)

    @router.api_route("/whip/{unit_id}/{session_id}", methods=["GET", "HEAD", "POST", "PUT"],
                      include_in_schema=False)
    async def session_other(unit_id: str, session_id: str) -> Response:
        return error(405, "only DELETE ends a WHIP session", Allow=SESSION_ALLOW)

    if patrol_page is not None:
        page = patrol_page

        @router.get("/patrol", include_in_schema=False)
        async def patrol() -> FileResponse:
            return FileResponse(page, headers={"Cache-Control": "no-cache"})

    return router, sessions


def _preflight(allow: str, extra: dict[str, str]) -> Response:
    return Response(status_code=204, headers={
        **CORS, **extra, "Allow": allow,
        "Access-Control-Allow-Methods": allow,
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "600",
    })


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise OfferTooLarge(f"SDP offer is {length} bytes, over the {limit} byte limit")
    chunks: list[bytes] = []
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise OfferTooLarge(f"SDP offer is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
