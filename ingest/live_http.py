"""The live view over WebSocket: ``WS /live/{source_id}?token=...`` and the source list.

Protocol, server to browser (the browser sends nothing but may ping):

* text ``{"type": "status", "status": "online"|"degraded"|"offline"|"unsupported",
  "reason": ...}`` first, then whenever the source's state changes;
* text ``{"type": "init", "codec": "avc1.64001f", "width": ..., "height": ...}``
  followed by one binary frame, the init segment (``ftyp``+``moov``): (re)create the
  ``SourceBuffer`` with ``video/mp4; codecs="<codec>"``; sent again when the stream
  changes (reconnect, new resolution);
* binary frames: one ``moof``+``mdat`` per video frame, starting on a keyframe.

Close codes: 4401 bad or missing token, 4403 role may not watch, 4404 unknown source,
1013 too slow (the viewer kept falling behind, or a send stalled), 1012 the stream was
replaced (reconnect at once). Muxing and fan-out are in :mod:`ingest.live`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Header, HTTPException, WebSocket, status
from starlette.websockets import WebSocketDisconnect, WebSocketState

from hub.auth import AuthError
from ingest.live import Fragment, InitSegment, LiveHub, Status, Viewer, ViewerDropped
from ingest.source import Source

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0  # a viewer that takes nothing for this long is dropped


class Viewing(Protocol):
    """What the router needs of a signed-in user (``hub.models.User`` fits)."""

    @property
    def username(self) -> str: ...
    @property
    def role(self) -> str: ...


def default_may_view(user: Viewing) -> bool:
    """Command-center roles watch live video; department and patrol accounts do not."""
    return user.role not in ("department", "patrol")


def make_live_router(
    *,
    verify_token: Callable[[str], Viewing],
    get_source: Callable[[str], Source | None],
    list_sources: Callable[[], list[str]],
    hub: LiveHub | None = None,
    may_view: Callable[[Viewing], bool] = default_may_view,
    send_timeout_s: float = SEND_TIMEOUT_S,
) -> APIRouter:
    """``WS /live/{source_id}`` and ``GET /api/live/sources``.

    ``verify_token`` raises :class:`hub.auth.AuthError` on a bad token
    (``Accounts.verify`` does); ``get_source`` gives the running source for an id or
    None. ``hub`` holds the streams; pass one to report it in ``/api/health``.
    """
    live = hub or LiveHub()
    router = APIRouter()

    def _user(authorization: str | None) -> Viewing:
        scheme, _, token = (authorization or "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token:
                raise AuthError("not authenticated: send a bearer token")
            return verify_token(token)
        except AuthError as err:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(err),
                                headers={"WWW-Authenticate": "Bearer"}) from err

    @router.get("/api/live/sources", tags=["live"])
    async def sources(
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[dict[str, Any]]:
        """Sources that can be watched live now, with their state and viewer counts."""
        user = _user(authorization)
        if not may_view(user):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {user.role} cannot watch")
        streams = live.streams()
        out: list[dict[str, Any]] = []
        for sid in list_sources():
            src = get_source(sid)
            if src is None:
                continue
            h = src.health
            out.append({
                "id": sid, "kind": src.kind, "status": h.status, "reason": h.reason,
                "codec": h.codec, "width": h.width, "height": h.height,
                "viewers": len(streams[sid].viewers) if sid in streams else 0,
            })
        return out

    @router.websocket("/live/{source_id}")
    async def watch(ws: WebSocket, source_id: str, token: str | None = None) -> None:
        """Live fMP4 of one source (see the module docstring for the protocol)."""
        # Accept, then close with a code: a browser never sees a refused handshake's
        # status, but it does see the close code and can say why.
        try:
            user = verify_token(token or "")
        except AuthError as err:
            log.info("live %s: refused, %s", source_id, err)
            await _refuse(ws, 4401, "not authenticated")
            return
        if not may_view(user):
            log.info("live %s: refused %s (role %s)", source_id, user.username, user.role)
            await _refuse(ws, 4403, f"role {user.role} cannot watch live video")
            return
        source = get_source(source_id)
        if source is None:
            log.info("live %s: refused %s, no such source", source_id, user.username)
            await _refuse(ws, 4404, "no such source")
            return
        await ws.accept()
        client = live.client_id(user.username)
        viewer = await live.watch(source, client)
        code, reason = 1000, ""
        try:
            code, reason = await _serve(ws, viewer, send_timeout_s)
        finally:
            await live.leave(viewer)
            if code != 1000 and ws.application_state != WebSocketState.DISCONNECTED:
                log.warning("live %s: closing viewer %s: %s", source_id, client, reason)
                with contextlib.suppress(RuntimeError, OSError, TimeoutError,
                                         WebSocketDisconnect):
                    async with asyncio.timeout(1.0):  # a stalled client takes no close frame
                        await ws.close(code=code, reason=reason)

    return router


async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
    await ws.accept()
    await ws.close(code=code, reason=reason)


async def _serve(ws: WebSocket, viewer: Viewer, send_timeout_s: float) -> tuple[int, str]:
    """Send the viewer's items until it goes away; the close code and reason to use."""
    sending: list[float | None] = [None]  # loop time the send in flight started at
    reader = asyncio.create_task(_drain(ws), name=f"live-read-{viewer.client}")
    sender = asyncio.create_task(_send(ws, viewer, sending), name=f"live-send-{viewer.client}")
    watchdog = asyncio.create_task(_watch(sending, send_timeout_s),
                                   name=f"live-watch-{viewer.client}")
    tasks = (reader, sender, watchdog)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    if not reader.cancelled():
        reader.exception()  # the client went away: retrieved, nothing to report
    if not watchdog.cancelled() and watchdog.exception() is None:
        return 1013, "too slow: send stalled"
    if sender.cancelled():
        return 1000, ""
    err = sender.exception()
    if err is None:
        return sender.result()
    if not isinstance(err, (WebSocketDisconnect, RuntimeError, OSError)):
        log.error("live %s: viewer %s failed", viewer.source_id, viewer.client, exc_info=err)
        return 1011, "internal error"
    return 1000, ""  # the client went away mid-send


async def _watch(sending: list[float | None], send_timeout_s: float) -> None:
    """Return when one send has been in flight for ``send_timeout_s`` (a stalled client).

    One check a second instead of a timeout around every send: sends are many (a frame
    each), and scheduling a timer for each is a large part of their cost."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(1.0, send_timeout_s / 2))
        started = sending[0]
        if started is not None and loop.time() - started > send_timeout_s:
            return


async def _drain(ws: WebSocket) -> None:
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return


async def _send(ws: WebSocket, viewer: Viewer, sending: list[float | None]) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await viewer.get()
            sending[0] = loop.time()
            if isinstance(item, Fragment):
                await ws.send_bytes(item.data)
            elif isinstance(item, InitSegment):
                await ws.send_text(json.dumps({
                    "type": "init", "codec": item.codec, "width": item.width,
                    "height": item.height}))
                await ws.send_bytes(item.data)
            elif isinstance(item, Status):
                await ws.send_text(json.dumps(
                    {"type": "status", "status": item.status, "reason": item.reason},
                    ensure_ascii=False))
            sending[0] = None
    except ViewerDropped as err:
        if str(err) == "stream closed":
            return 1012, "stream replaced; reconnect"
        return 1013, str(err)
