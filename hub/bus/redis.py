"""Redis bus for the scaled set-up: Streams for durable messages, pub/sub for live fan-out.

Keys: ``{prefix}:stream:{topic}`` (stream, field ``m`` = message JSON),
``{prefix}:live:{topic}`` (pub/sub channel), ``{prefix}:dead:{topic}`` (list of raw
entries that could not be parsed).

A live message comes back through Redis to the hub that broadcast it too (that keeps one
order for every hub). The hub keeps what it broadcast in the last ``ECHO_KEEP`` messages,
keyed by the exact bytes sent, and hands its listeners the very message it sent, with
the sender's model (``IncidentEvent.sent_model``), instead of parsing it again; bytes
from other hubs are parsed as always.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from hub.bus.base import Bus, BusError, Delivery, M
from hub.bus.messages import Message

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000  # approximate cap per stream
ECHO_KEEP = 2048  # own live messages remembered until they come back


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

    @asynccontextmanager
    async def _listen(self, cls: type[M]) -> AsyncIterator[AsyncIterator[M]]:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self._channel(cls.topic))
        # Wait for the server's confirmation so nothing broadcast after this returns is missed.
        async with asyncio.timeout(5):
            while True:
                first = await pubsub.get_message(timeout=1.0)
                if first is not None and first["type"] == "subscribe":
                    break

        async def messages() -> AsyncIterator[M]:
            while True:
                item = await pubsub.get_message(timeout=1.0)
                if item is None or item["type"] != "message":
                    continue
                own = self._echo.get(item["data"])
                if isinstance(own, cls):  # this hub's own message, back from Redis
                    yield own
                    continue
                try:
                    yield cls.model_validate_json(item["data"])
                except ValidationError as err:
                    log.error("bus: bad live message on %s: %s", cls.topic, err)

        try:
            yield messages()
        finally:
            try:
                await pubsub.unsubscribe()
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            except (RedisError, OSError):
                log.debug("bus: pubsub close failed", exc_info=True)

    def listen(self, cls: type[M]) -> Any:
        return self._listen(cls)

    @property
    def dead_letters(self) -> int:
        return self._dead
