"""Live fan-out to console WebSockets.

One task listens to the bus and hands each event to every connected client that may
see it. Each client has a bounded queue drained by its own sender task; a client that
falls ``MAX_QUEUE`` messages behind, or takes no data for ``SEND_TIMEOUT_S``, is
disconnected (code 1013 when it can still be told) so it can never slow the others; its
page reconnects and re-fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from hub.models import User

log = logging.getLogger(__name__)

MAX_QUEUE = 256
SEND_TIMEOUT_S = 10.0  # a client that accepts nothing for this long is dropped


@dataclass(eq=False)
class Client:
    id: int
    ws: WebSocket
    user: User
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUE))
    overflowed: bool = False


class Clients:
    """The connected console clients."""

    def __init__(self, send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self._clients: set[Client] = set()
        self._ids = itertools.count(1)
        self.send_timeout_s = send_timeout_s
        self.dropped_clients = 0

    def __len__(self) -> int:
        return len(self._clients)

    def send(self, event_type: str, data: dict[str, Any], visible: Callable[[User], bool]) -> None:
        """Queue an event for every client whose user passes ``visible``."""
        text = json.dumps({"type": event_type, "data": data}, ensure_ascii=False, default=str)
        for c in list(self._clients):
            if not visible(c.user):
                continue
            try:
                c.queue.put_nowait(text)
            except asyncio.QueueFull:
                # The queue is only full while the sender is stuck in a slow send; it sees
                # the flag when that send returns and disconnects the client.
                c.overflowed = True

    async def serve(self, ws: WebSocket, user: User) -> None:
        """Run one client until it disconnects or falls too far behind."""
        client = Client(next(self._ids), ws, user)
        self._clients.add(client)
        log.info("ws client %d (%s) connected", client.id, user.username)
        await ws.send_text(
            json.dumps({"type": "hello", "data": {"user": user.model_dump()}}, ensure_ascii=False)
        )
        reader = asyncio.create_task(self._read(ws))
        stalled = False
        try:
            while not reader.done():
                getter = asyncio.create_task(client.queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                if client.overflowed:
                    break
                try:
                    async with asyncio.timeout(self.send_timeout_s):
                        await ws.send_text(getter.result())
                except TimeoutError:
                    stalled = True
                    break
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await reader
            self._clients.discard(client)
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

    @staticmethod
    async def _read(ws: WebSocket) -> None:
        """Consume client frames (pings, future commands) until the client goes away."""
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
