"""The source contract every ingest kind follows (file, demo scene, RTSP, WHIP).

A source owns one thread (or, for WebRTC, tasks on the event loop) and three outputs:

* ``slot``: the latest decoded frame, for detectors (older ones are dropped, counted);
* ``packets``: encoded packets in a :class:`PacketRing`, for the live wall, recording
  and clips (never re-encoded; sources that only have frames encode once);
* ``health``: figures for ``GET /api/cameras`` and the ``camera.health`` event.

A source never raises into its owner: it goes offline with a reason and retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from ingest.frames import Frame, LatestFrame
from ingest.packets import PacketRing

log = logging.getLogger(__name__)

Status = Literal["online", "degraded", "offline"]
RATE_WINDOW_S = 2.0


@dataclass
class SourceHealth:
    status: Status = "offline"
    reason: str | None = "starting"
    fps: float = 0.0
    bitrate_kbps: float = 0.0
    frames: int = 0
    dropped: int = 0  # frames replaced in the slot before a detector took them
    decode_errors: int = 0  # damaged packets/frames dropped
    last_frame_at: datetime | None = None
    reconnects: int = 0
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    _frame_times: deque[float] = field(default_factory=lambda: deque(maxlen=256), repr=False)
    _byte_times: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=1024), repr=False
    )

    def count_frame(self, now: float) -> None:
        self.frames += 1
        self.last_frame_at = datetime.now(UTC)
        w = self._frame_times
        w.append(now)
        while w and now - w[0] > RATE_WINDOW_S:
            w.popleft()
        self.fps = (len(w) - 1) / (w[-1] - w[0]) if len(w) > 1 and w[-1] > w[0] else 0.0

    def count_bytes(self, now: float, n: int) -> None:
        w = self._byte_times
        w.append((now, n))
        while w and now - w[0][0] > RATE_WINDOW_S:
            w.popleft()
        span = w[-1][0] - w[0][0] if len(w) > 1 else 0.0
        self.bitrate_kbps = sum(b for _, b in w) * 8 / 1000 / span if span > 0 else 0.0


class Source:
    """Base of every source: outputs, health and the status log."""

    kind = "source"

    def __init__(self, source_id: str, slot: LatestFrame | None = None,
                 packets: PacketRing | None = None) -> None:
        self.source_id = source_id
        self.slot = slot or LatestFrame()
        self.packets = packets or PacketRing()
        self.health = SourceHealth()
        self._stop = threading.Event()
        self._seq = 0

    # Subclasses implement start() and stop(); both return quickly.
    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def set_status(self, status: Status, reason: str | None) -> None:
        if (status, reason) != (self.health.status, self.health.reason):
            log.info("source %s: %s%s", self.source_id, status, f" ({reason})" if reason else "")
        self.health.status, self.health.reason = status, reason

    def emit(self, frame: Frame) -> None:
        """Hand a decoded frame to the detectors and count it."""
        self.slot.put(frame)
        self.health.count_frame(time.monotonic())
        self.health.dropped = self.slot.dropped

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq
