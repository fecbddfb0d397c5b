"""Live fan-out to console WebSockets.

One task listens to the bus and hands each event to every connected client that may
see it. Batch clients (``?batch=1``, the console pages) are grouped by audience: each
group's events of an interval become one frame, built once for all its members. Each
client has a bounded outbox drained by its own sender task; a client that falls
``MAX_QUEUE`` events behind, or takes no data for ``SEND_TIMEOUT_S``, is disconnected
(code 1013 when it can still be told) so it can never slow the others; its page
reconnects and re-fetches.

Clients may also send JSON messages ``{"type": ..., "data": ...}``; each type is handed
to the handler registered with :meth:`Clients.handle` (e.g. ``telemetry`` from a patrol
tablet). A message that is not JSON, too large, of an unknown type, or refused by its
handler (:class:`InboundError`) gets ``{"type": "error", "data": {...}}`` back through
the client's own outbox; the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from hub.models import User

log = logging.getLogger(__name__)

MAX_QUEUE = 256
# Batch clients get at most one frame per interval (an idle client gets an event at once;
# under load, the events of an interval share a frame). Department and patrol consoles
# act on what they receive (a dispatch): 25 ms. Command-center screens (operators,
# dispatchers, wall, reviewers) watch many cases: 100 ms, ten frames a second at most,
# below what a person notices. Every frame is a socket write per console, the largest
# cost of a hub with 200 consoles at full load.
BATCH_INTERVAL_S = 0.025
WATCH_INTERVAL_S = 0.1
ACTING_ROLES = frozenset({"department", "patrol"})
SEND_TIMEOUT_S = 10.0  # a client that accepts nothing for this long is dropped
MAX_INBOUND_BYTES = 16 * 1024  # larger client messages are refused unparsed

InboundHandler = Callable[[User, Any], Awaitable[None]]
"""Handles one client message type: gets the user and the message's ``data``."""


class InboundError(Exception):
    """A client message was refused; the client is told why and stays connected."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


def frame_interval(user: User) -> float:
    """The shortest time between two frames to a batch client of this user."""
    return BATCH_INTERVAL_S if user.role in ACTING_ROLES else WATCH_INTERVAL_S


def audience(user: User) -> tuple[str | None, ...]:
    """What an event's visibility may depend on: users alike in these see the same."""
    return (user.role, user.department, user.grid, user.unit)


@dataclass(eq=False)
class Client:
    id: int
    ws: WebSocket
    user: User
    batch: bool = False
    audience: tuple[str | None, ...] = ()
    # Frames ready to go, in order, and how many events they hold: more than MAX_QUEUE
    # events waiting means the client is too slow (it is dropped).
    outbox: list[str] = field(default_factory=list)
    backlog: int = 0
    overflowed: bool = False
    gone: bool = False  # the reader ended: the sender stops
    waiter: asyncio.Future[None] | None = None  # the sender waiting for frames
    sending_since: float | None = None  # loop time a send started (None: not sending)
    stalled: bool = False  # set by the watchdog before it cancels the sender
    task: asyncio.Task[Any] | None = None

    def push(self, frame: str, events: int = 1) -> None:
        """Hand the sender a frame (never blocks; a client too far behind overflows)."""
        if self.backlog + events > MAX_QUEUE:
            self.overflowed = True
        else:
            self.outbox.append(frame)
            self.backlog += events
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


@dataclass(eq=False)
class Group:
    """The batch clients of one audience: they see the same events at the same pace, so
    each interval's events become one frame, built once and handed to every member."""

    user: User  # any member (visibility depends only on the audience)
    interval: float
    clients: set[Client] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    last_flush: float = float("-inf")
    timer: asyncio.Handle | None = None


class Clients:
    """The connected console clients."""

    def __init__(self, send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self._clients: set[Client] = set()
        self._single: set[Client] = set()  # clients without batch: a frame per event
        self._groups: dict[tuple[str | None, ...], Group] = {}
        self._ids = itertools.count(1)
        self.send_timeout_s = send_timeout_s
        self.dropped_clients = 0
        self.inbound_errors = 0
        self._handlers: dict[str, InboundHandler] = {}
        self._watchdog: asyncio.Task[None] | None = None

    def handle(self, msg_type: str, handler: InboundHandler | None) -> None:
        """Route client messages of ``msg_type`` to ``handler`` (None removes it)."""
        if handler is None:
            self._handlers.pop(msg_type, None)
        else:
            self._handlers[msg_type] = handler

    def __len__(self) -> int:
        return len(self._clients)

    def send(self, event_type: str, data: dict[str, Any], visible: Callable[[User], bool],
             **extra: Any) -> None:
        """Queue an event for every client whose user passes ``visible``; ``extra`` keys
        (e.g. action, notice) go beside ``type`` and ``data``. ``visible`` may depend only
        on the user's :func:`audience` (it is asked once per audience, not per client)."""
        # ASCII (non-ASCII as \u escapes): the server encodes each frame to UTF-8 for
        # every console it goes to, and encoding an ASCII string is a plain copy, while
        # a string holding Chinese is re-encoded character by character (a tenth of
        # the hub's CPU at full load with 200 consoles). No spaces after separators:
        # the bytes go through one socket write per console.
        text = json.dumps({"type": event_type, "data": data,
                           **{k: v for k, v in extra.items() if v is not None}},
                          separators=(",", ":"), default=str)
        seen: dict[tuple[str | None, ...], bool] = {}
        for key, group in self._groups.items():
            ok = seen[key] = visible(group.user)
            if ok:
                group.events.append(text)
                if group.timer is None:
                    self._schedule(group)
        for c in self._single:
            shown = seen.get(c.audience)
            if shown is None:
                shown = seen[c.audience] = visible(c.user)
            if shown:
                c.push(text)

    # --- batch groups ------------------------------------------------------------------

    def _schedule(self, group: Group) -> None:
        """Flush at once if the group's last frame is an interval old, else when it is."""
        loop = asyncio.get_running_loop()
        wait = group.last_flush + group.interval - loop.time()
        group.timer = (loop.call_later(wait, self._flush, group) if wait > 0
                       else loop.call_soon(self._flush, group))

    def _flush(self, group: Group) -> None:
        group.timer = None
        events, group.events = group.events, []
        if not events:
            return
        group.last_flush = asyncio.get_running_loop().time()
        frame = events[0] if len(events) == 1 else \
            '{"type":"batch","data":[' + ",".join(events) + "]}"
        for c in group.clients:
            c.push(frame, len(events))

    def _join(self, client: Client) -> None:
        self._clients.add(client)
        if not client.batch:
            self._single.add(client)
            return
        group = self._groups.get(client.audience)
        if group is None:
            group = self._groups[client.audience] = Group(client.user,
                                                          frame_interval(client.user))
        group.clients.add(client)

    def _leave(self, client: Client) -> None:
        self._clients.discard(client)
        self._single.discard(client)
        group = self._groups.get(client.audience)
        if group is not None:
            group.clients.discard(client)
            if not group.clients:
                if group.timer is not None:
                    group.timer.cancel()
                del self._groups[client.audience]

    # --- one client --------------------------------------------------------------------

    async def serve(self, ws: WebSocket, user: User, batch: bool = False) -> None:
        """Run one client until it disconnects or falls too far behind. With ``batch``,
        an idle client gets an event at once and, under load, the events of an interval
        (:func:`frame_interval`) as one ``{"type": "batch", "data": [<event>, ...]}``
        frame; without, one frame per event."""
        client = Client(next(self._ids), ws, user, batch=batch, audience=audience(user),
                        task=asyncio.current_task())
        self._join(client)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="ws-watchdog")
        log.info("ws client %d (%s) connected", client.id, user.username)
        stalled = False
        loop = asyncio.get_running_loop()
        reader: asyncio.Task[None] | None = None
        try:
            await ws.send_text(
                json.dumps({"type": "hello", "data": {"user": user.model_dump(),
                                                      "batch": batch}}, ensure_ascii=False)
            )
            reader = asyncio.create_task(self._read(client))
            reader.add_done_callback(lambda _: self._gone(client))
            while not client.gone and not client.overflowed:
                if not client.outbox:
                    client.waiter = loop.create_future()
                    try:
                        await client.waiter
                    finally:
                        client.waiter = None
                    continue
                frames, client.outbox, client.backlog = client.outbox, [], 0
                for frame in frames:
                    if client.gone or client.overflowed:
                        break
                    # No timeout object per send (that cost more than the send): the
                    # watchdog cancels a send that has not returned within send_timeout_s.
                    client.sending_since = loop.time()
                    await ws.send_text(frame)
                    client.sending_since = None
        except asyncio.CancelledError:
            if not client.stalled:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            stalled = True
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            client.sending_since = None  # a send that raised is not stalled
            self._leave(client)
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect,
                                         RuntimeError):
                    await reader
            if client.overflowed or stalled:
                self.dropped_clients += 1
                log.warning("ws client %d (%s) too slow (%s), disconnecting", client.id,
                            user.username, "stalled" if stalled else "queue full")
            if ws.application_state != WebSocketState.DISCONNECTED:
                # A stalled client cannot take a close frame either: do not wait for it.
                with contextlib.suppress(RuntimeError, OSError, TimeoutError, WebSocketDisconnect):
                    async with asyncio.timeout(1.0):
                        await ws.close(code=1013 if client.overflowed or stalled else 1000,
                                       reason="too slow; reconnect and re-fetch"
                                       if client.overflowed or stalled else "")
            log.info("ws client %d (%s) gone", client.id, user.username)

    async def _watch(self) -> None:
        """Cancel the sends that have not returned within ``send_timeout_s``; ends when
        no client is left (the next one starts it again)."""
        loop = asyncio.get_running_loop()
        while self._clients:
            await asyncio.sleep(min(1.0, self.send_timeout_s / 4))
            now = loop.time()
            for c in list(self._clients):
                since = c.sending_since
                if since is not None and now - since > self.send_timeout_s and not c.stalled:
                    c.stalled = True
                    if c.task is not None:
                        c.task.cancel()

    async def _read(self, client: Client) -> None:
        """Consume client frames until the client goes away; dispatch its messages."""
        while True:
            msg = await client.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            frame = msg.get("text")
            if frame is None:
                frame = msg.get("bytes") or b""
            await self._dispatch(client, frame)

    async def _dispatch(self, client: Client, frame: str | bytes) -> None:
        msg_type = "?"
        try:
            if len(frame) > MAX_INBOUND_BYTES:
                raise InboundError(f"message over {MAX_INBOUND_BYTES} bytes", "too_large")
            try:
                msg = json.loads(frame)
            except (ValueError, RecursionError) as err:
                raise InboundError("message is not JSON", "bad_json") from err
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise InboundError('expected {"type": ..., "data": ...}', "bad_message")
            msg_type = msg["type"][:64]
            handler = self._handlers.get(msg_type)
            if handler is None:
                raise InboundError(f"unknown message type {msg_type!r}", "unknown_type")
            await handler(client.user, msg.get("data"))
        except asyncio.CancelledError:
            raise
        except InboundError as err:
            self.inbound_errors += 1
            log.debug("ws client %d (%s): refused %s: %s", client.id, client.user.username,
                      msg_type, err)
            self._reply(client, "error", {"for": msg_type, "code": err.code, "message": str(err)})
        except Exception:
            self.inbound_errors += 1
            log.exception("ws client %d (%s): handling %s failed", client.id,
                          client.user.username, msg_type)
            self._reply(client, "error", {"for": msg_type, "code": "internal",
                                          "message": "the hub could not handle this message"})

    @staticmethod
    def _gone(client: Client) -> None:
        client.gone = True
        client.wake()

    @staticmethod
    def _reply(client: Client, event_type: str, data: dict[str, Any]) -> None:
        # ASCII: the data may echo client text, which can hold lone surrogates.
        client.push(json.dumps({"type": event_type, "data": data}))
