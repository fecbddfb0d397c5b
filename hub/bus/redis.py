"""Redis bus for the scaled set-up: Streams for durable messages, pub/sub for live fan-out.

Keys: ``{prefix}:stream:{topic}`` (stream, field ``m`` = message JSON),
``{prefix}:live:{topic}`` (pub/sub channel), ``{prefix}:dead:{topic}`` (list of raw
entries that could not be parsed).

A live message comes back through Redis to the hub that broadcast it too (that keeps one
order for every hub). The hub keeps what it broadcast in the last ``ECHO_KEEP`` messages,
keyed by the exact bytes sent, and hands its listeners the very message it sent, with
the sender's model (``IncidentEvent.sent_model``), instead of parsing it again; bytes
from other hubs are parsed as always.

A hub subscribes once per live topic, however many of its tasks listen to it (the
console fan-out and the recorder both follow incidents): each message is read from Redis
once and handed to every local listener's queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from hub.bus.base import LISTENER_QUEUE, Bus, BusError, Delivery, M
from hub.bus.messages import Message
from hub.tasks import cancel_and_wait

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000  # approximate cap per stream
ECHO_KEEP = 2048  # own live messages remembered until they come back


@dataclass(eq=False)
class _Topic:
    """A live topic's one subscription and this hub's listeners' queues."""

    pubsub: Any
    queues: set[asyncio.Queue[bytes | Exception]] = field(default_factory=set)
    reader: asyncio.Task[None] | None = None


class RedisBus(Bus):
    """Bus on a Redis server (tested against the real one at 127.0.0.1:6379)."""

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "gridhub") -> None:
        self._url = url
        self._prefix = prefix
        self._r: aioredis.Redis | None = None
        self._groups: set[tuple[str, str]] = set()
        self._dead = 0
        self._echo: OrderedDict[bytes, Message] = OrderedDict()
        self._topics: dict[str, _Topic] = {}  # live subscriptions, one per topic
        self._sub_lock = asyncio.Lock()
        self.dropped_live = 0  # live messages a slow listener missed

    @property
    def redis(self) -> aioredis.Redis:
        if self._r is None:
            raise BusError("bus not started")
        return self._r

    def _stream(self, topic: str) -> str:
        return f"{self._prefix}:stream:{topic}"

    def _channel(self, topic: str) -> str:
        return f"{self._prefix}:live:{topic}"

    async def start(self) -> None:
        self._r = aioredis.from_url(self._url, decode_responses=False)
        if not await self.ping():
            raise BusError(f"cannot reach Redis at {self._url}")

    async def close(self) -> None:
        subs, self._topics = list(self._topics.values()), {}
        await cancel_and_wait([s.reader for s in subs])
        for sub in subs:
            await self._close_pubsub(sub.pubsub)
        if self._r is not None:
            await self._r.aclose()
            self._r = None

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def publish(self, msg: Message) -> str:
        try:
            mid = await self.redis.xadd(
                self._stream(msg.topic),
                {b"m": msg.model_dump_json().encode()},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        except (RedisError, OSError) as err:
            raise BusError(f"publish to {msg.topic} failed: {err}") from err
        return mid.decode() if isinstance(mid, bytes) else str(mid)

    async def _ensure_group(self, topic: str, group: str) -> None:
        if (topic, group) in self._groups:
            return
        try:
            await self.redis.xgroup_create(self._stream(topic), group, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise BusError(f"cannot create group {group} on {topic}: {err}") from err
        self._groups.add((topic, group))

    async def _parse(
        self, cls: type[M], group: str, entries: list[Any]
    ) -> list[Delivery[M]]:
        out: list[Delivery[M]] = []
        bad: list[str] = []
        for raw_id, fields in entries:
            mid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if fields is None:  # entry trimmed away while pending
                bad.append(mid)
                continue
            try:
                out.append(Delivery(mid, cls.model_validate_json(fields[b"m"])))
            except (KeyError, ValidationError, ValueError) as err:
                log.error("bus: dead-lettering %s on %s: %s", mid, cls.topic, err)
                await self.redis.rpush(
                    f"{self._prefix}:dead:{cls.topic}", repr(fields).encode()[:65536]
                )
                self._dead += 1
                bad.append(mid)
        if bad:
            await self.redis.xack(self._stream(cls.topic), group, *bad)
        return out

    async def consume(
        self, cls: type[M], group: str, consumer: str, *, count: int = 16, block_s: float = 1.0
    ) -> list[Delivery[M]]:
        await self._ensure_group(cls.topic, group)
        try:
            res = await self.redis.xreadgroup(
                group,
                consumer,
                {self._stream(cls.topic): ">"},
                count=count,
                block=max(1, int(block_s * 1000)) if block_s > 0 else None,
            )
        except (RedisError, OSError) as err:
            raise BusError(f"consume {cls.topic} failed: {err}") from err
        if not res:
            return []
        entries: list[Any] = res[0][1]  # type: ignore[index,assignment]
        return await self._parse(cls, group, entries)

    async def ack(self, cls: type[M], group: str, ids: list[str]) -> None:
        if ids:
            await self.redis.xack(self._stream(cls.topic), group, *ids)

    async def claim_stale(
        self, cls: type[M], group: str, consumer: str, *, min_idle_s: float, count: int = 16
    ) -> list[Delivery[M]]:
        await self._ensure_group(cls.topic, group)
        res = await self.redis.xautoclaim(
            self._stream(cls.topic),
            group,
            consumer,
            min_idle_time=int(min_idle_s * 1000),
            start_id="0-0",
            count=count,
        )
        entries: list[Any] = list(res[1]) if res else []  # (next id, entries, deleted ids)
        return await self._parse(cls, group, entries)

    async def broadcast(self, msg: Message) -> None:
        data = msg.model_dump_json().encode()
        self._echo[data] = msg
        if len(self._echo) > ECHO_KEEP:
            self._echo.popitem(last=False)
        try:
            await self.redis.publish(self._channel(msg.topic), data)
        except (RedisError, OSError) as err:
            self._echo.pop(data, None)
            raise BusError(f"broadcast {msg.topic} failed: {err}") from err

    async def _subscribe(self, topic: str) -> _Topic:
        """One subscription per topic, shared by this hub's listeners of it."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self._channel(topic))
            # Wait for the server's confirmation so nothing broadcast after this returns
            # is missed.
            async with asyncio.timeout(5):
                while True:
                    first = await pubsub.get_message(timeout=1.0)
                    if first is not None and first["type"] == "subscribe":
                        break
        except BaseException:
            await self._close_pubsub(pubsub)
            raise
        sub = _Topic(pubsub)
        sub.reader = asyncio.create_task(self._read(topic, sub), name=f"bus-live-{topic}")
        return sub

    async def _read(self, topic: str, sub: _Topic) -> None:
        """Hand each live message of the topic to every local listener (the oldest is
        dropped for a listener 256 behind); a failure ends every listener's iteration."""
        try:
            while True:
                item = await sub.pubsub.get_message(timeout=1.0)
                if item is None or item["type"] != "message":
                    continue
                for q in list(sub.queues):
                    if q.full():
                        q.get_nowait()
                        self.dropped_live += 1
                    q.put_nowait(item["data"])
        except Exception as err:  # the connection is gone: the listeners listen again
            if self._topics.get(topic) is sub:
                del self._topics[topic]
            for q in list(sub.queues):
                if q.full():
                    q.get_nowait()
                q.put_nowait(err)

    @staticmethod
    async def _close_pubsub(pubsub: Any) -> None:
        try:
            await pubsub.unsubscribe()
            await pubsub.aclose()
        except (RedisError, OSError):
            log.debug("bus: pubsub close failed", exc_info=True)

    @asynccontextmanager
    async def _listen(self, cls: type[M]) -> AsyncIterator[AsyncIterator[M]]:
        q: asyncio.Queue[bytes | Exception] = asyncio.Queue(LISTENER_QUEUE)
        async with self._sub_lock:
            sub = self._topics.get(cls.topic)
            if sub is None:
                sub = self._topics[cls.topic] = await self._subscribe(cls.topic)
            sub.queues.add(q)

        async def messages() -> AsyncIterator[M]:
            while True:
                data = await q.get()
                if isinstance(data, Exception):
                    raise BusError(f"listening to {cls.topic} failed: {data}") from data
                own = self._echo.get(data)
                if isinstance(own, cls):  # this hub's own message, back from Redis
                    yield own
                    continue
                try:
                    yield cls.model_validate_json(data)
                except ValidationError as err:
                    log.error("bus: bad live message on %s: %s", cls.topic, err)

        try:
            yield messages()
        finally:
            sub.queues.discard(q)
            async with self._sub_lock:
                if not sub.queues:  # the last listener of this subscription closes it
                    if self._topics.get(cls.topic) is sub:
                        del self._topics[cls.topic]
                    await cancel_and_wait([sub.reader])
                    await self._close_pubsub(sub.pubsub)

    def listen(self, cls: type[M]) -> Any:
        return self._listen(cls)

    @property
    def dead_letters(self) -> int:
        return self._dead
