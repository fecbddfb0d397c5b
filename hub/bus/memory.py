"""In-process bus for the embedded mode: same contract as Redis, no service needed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from hub.bus.base import LISTENER_QUEUE, Bus, Delivery, M
from hub.bus.messages import Message

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    consumer: str
    delivered_at: float
    message: Message


@dataclass
class _Group:
    next_index: int = 0
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    log: list[tuple[str, Message]] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class MemoryBus(Bus):
    """Durable streams and live fan-out inside one event loop.

    "Durable" here means: kept until acked for the life of the process. Anything that
    must survive a crash is written to the store by its consumer before it acks.
    """

    name = "memory"

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = defaultdict(_Stream)
        self._listeners: dict[str, set[asyncio.Queue[Message]]] = defaultdict(set)
        self._ids = itertools.count(1)
        self.dropped_live = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._listeners.clear()

    async def ping(self) -> bool:
        return True

    async def publish(self, msg: Message) -> str:
        stream = self._streams[msg.topic]
        mid = f"{int(time.time() * 1000)}-{next(self._ids)}"
        async with stream.changed:
            stream.log.append((mid, msg))
            stream.changed.notify_all()
        return mid

    async def consume(
        self, cls: type[M], group: str, consumer: str, *, count: int = 16, block_s: float = 1.0
    ) -> list[Delivery[M]]:
        stream = self._streams[cls.topic]
        g = stream.groups.setdefault(group, _Group())
        async with stream.changed:
            if g.next_index >= len(stream.log) and block_s > 0:
                try:
                    async with asyncio.timeout(block_s):
                        await stream.changed.wait_for(lambda: g.next_index < len(stream.log))
                except TimeoutError:
                    return []
            batch = stream.log[g.next_index : g.next_index + count]
            g.next_index += len(batch)
        now = time.monotonic()
        out: list[Delivery[M]] = []
        for mid, msg in batch:
            g.pending[mid] = _Pending(consumer, now, msg)
            out.append(Delivery(mid, cast(M, msg)))
        return out

    async def ack(self, cls: type[M], group: str, ids: list[str]) -> None:
        g = self._streams[cls.topic].groups.get(group)
        if g is None:
            return
        for mid in ids:
            g.pending.pop(mid, None)
        self._trim(cls.topic)

    async def claim_stale(
        self, cls: type[M], group: str, consumer: str, *, min_idle_s: float, count: int = 16
    ) -> list[Delivery[M]]:
        g = self._streams[cls.topic].groups.setdefault(group, _Group())
        now = time.monotonic()
        out: list[Delivery[M]] = []
        for mid, p in g.pending.items():
            if len(out) >= count:
                break
            if now - p.delivered_at >= min_idle_s:
                p.consumer, p.delivered_at = consumer, now
                out.append(Delivery(mid, cast(M, p.message)))
        return out

    def _trim(self, topic: str) -> None:
        """Drop log entries every group has read and acked (keeps memory bounded)."""
        stream = self._streams[topic]
        if not stream.groups:
            return
        pending_ids = {mid for g in stream.groups.values() for mid in g.pending}
        done = min(g.next_index for g in stream.groups.values())
        cut = 0
        while cut < done and stream.log[cut][0] not in pending_ids:
            cut += 1
        if cut:
            del stream.log[:cut]
            for g in stream.groups.values():
                g.next_index -= cut

    async def broadcast(self, msg: Message) -> None:
        for q in list(self._listeners[msg.topic]):
            if q.full():
                q.get_nowait()
                self.dropped_live += 1
            q.put_nowait(msg)

    @asynccontextmanager
    async def _listen(self, cls: type[M]) -> AsyncIterator[AsyncIterator[M]]:
        q: asyncio.Queue[Message] = asyncio.Queue(LISTENER_QUEUE)
        self._listeners[cls.topic].add(q)

        async def messages() -> AsyncIterator[M]:
            while True:
                yield cast(M, await q.get())

        try:
            yield messages()
        finally:
            self._listeners[cls.topic].discard(q)

    def listen(self, cls: type[M]) -> Any:
        return self._listen(cls)
