"""The bus: typed messages between ingest/detectors and the hub, and out to consoles.

In memory by default (one process); Redis when ``GRIDHUB_REDIS_URL`` is set.
"""

from hub.bus.base import Bus, BusError, Delivery
from hub.bus.messages import (
    CameraHealth,
    IncidentCandidate,
    IncidentEvent,
    Message,
    UnitTelemetry,
)

__all__ = [
    "Bus",
    "BusError",
    "CameraHealth",
    "Delivery",
    "IncidentCandidate",
    "IncidentEvent",
    "Message",
    "UnitTelemetry",
    "make_bus",
]


def make_bus(redis_url: str | None, *, prefix: str = "gridhub") -> Bus:
    """The Redis bus when a URL is given, else the in-memory bus."""
    if redis_url:
        from hub.bus.redis import RedisBus

        return RedisBus(redis_url, prefix=prefix)
    from hub.bus.memory import MemoryBus

    return MemoryBus()
