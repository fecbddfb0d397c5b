"""Stopping background tasks reliably.

A cancellation can be lost: a library that waits under its own timeout may turn a
``cancel()`` that lands as the timeout fires into an ordinary timeout and carry on
(redis-py issue #2551, seen here as a hub whose shutdown hung on a Redis pub/sub
listener). So a task still running is cancelled again until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
M = TypeVar("M")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | None], *,
                          repeat_s: float = 0.5, limit_s: float = 10.0) -> None:
    """Cancel every task and wait until all have ended, cancelling again every
    ``repeat_s`` those that did not; gives up (logging them) after ``limit_s``. A task
    that failed has its error logged, not raised."""
    given = [t for t in tasks if t is not None]
    pending = {t for t in given if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while pending and loop.time() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=repeat_s)
    for t in pending:
        log.error("task %s did not stop within %.0f s", t.get_name(), limit_s)
    for t in given:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.error("task %s had failed", t.get_name(), exc_info=t.exception())


async def listen_forever(bus: Any, cls: type[M], ready: asyncio.Event,
                         handle: Callable[[M], Awaitable[None]], name: str, *,
                         first_s: float = 0.5, max_s: float = 10.0) -> None:
    """Follow a live bus topic for good: ``ready`` is set once listening; a failed
    ``handle`` is logged and the next message goes on; a lost connection is listened to
    again after a growing pause (messages meanwhile are missed)."""
    backoff = first_s
    while True:
        try:
            async with bus.listen(cls) as messages:
                ready.set()
                backoff = first_s
                async for msg in messages:
                    try:
                        await handle(msg)
                    except Exception:  # one bad message never stops the listener
                        log.exception("%s: handling %s failed", name, cls.__name__)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("%s: listener failed (%s); retrying in %.1f s", name, err, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_s)
