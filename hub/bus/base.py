"""The bus contract both implementations satisfy (tests/test_bus_contract.py).

Two kinds of delivery:

* ``publish``/``consume``/``ack``/``claim_stale``: durable, at-least-once, per consumer
  group (Redis Streams). Used for what must not be lost: detector candidates.
* ``broadcast``/``listen``: live fan-out to whoever listens now, at-most-once, bounded
  (Redis pub/sub). Used for console updates and health.

Exceptions::

    BusError            the bus cannot do what was asked (e.g. Redis unreachable)
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, TypeVar

from hub.bus.messages import Message

M = TypeVar("M", bound=Message)

LISTENER_QUEUE = 256  # live messages kept per listener before the oldest are dropped


class BusError(Exception):
    """The bus failed to deliver or store a message."""


@dataclass(frozen=True)
class Delivery(Generic[M]):
    """A durable message handed to a consumer; ack ``id`` once it is processed."""

    id: str
    message: M


class Bus(abc.ABC):
    """Message bus: durable streams plus live fan-out."""

    name: str = "bus"

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the bus can take messages."""

    @abc.abstractmethod
    async def publish(self, msg: Message) -> str:
        """Append a durable message; returns its id once it is stored."""

    @abc.abstractmethod
    async def consume(
        self, cls: type[M], group: str, consumer: str, *, count: int = 16, block_s: float = 1.0
    ) -> list[Delivery[M]]:
        """New messages for ``group`` (each goes to one consumer of the group)."""

    @abc.abstractmethod
    async def ack(self, cls: type[M], group: str, ids: list[str]) -> None:
        """Mark deliveries processed; they are never delivered again."""

    @abc.abstractmethod
    async def claim_stale(
        self, cls: type[M], group: str, consumer: str, *, min_idle_s: float, count: int = 16
    ) -> list[Delivery[M]]:
        """Take over deliveries left unacked for ``min_idle_s`` (a consumer died)."""

    @abc.abstractmethod
    async def broadcast(self, msg: Message) -> None:
        """Send to every current listener of the topic; never blocks on slow listeners."""

    @abc.abstractmethod
    def listen(self, cls: type[M]) -> AbstractAsyncContextManager[AsyncIterator[M]]:
        """Listen to live messages of a topic for as long as the context is open."""

    @property
    def dead_letters(self) -> int:
        """Messages that could not be parsed and were set aside."""
        return 0
