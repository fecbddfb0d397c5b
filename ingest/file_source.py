"""A video file played as a camera: real-time pacing, looping, reconnect-style retries.

The source runs on its own thread: it decodes with PyAV, paces frames to their
timestamps, puts each into a :class:`LatestFrame`, and keeps health figures. A file
that cannot be opened or decoded makes the source offline with the reason; it retries
with exponential backoff and jitter, as a camera reconnect would.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import av

from ingest.frames import Frame, LatestFrame

log = logging.getLogger(__name__)

Status = Literal["online", "degraded", "offline"]
BACKOFF_MAX_S = 30.0


@dataclass
class SourceHealth:
    status: Status = "offline"
    reason: str | None = "starting"
    fps: float = 0.0
    frames: int = 0
    dropped: int = 0
    last_frame_at: datetime | None = None
    restarts: int = 0


class FileSource:
    """Plays ``path`` into ``slot`` on a thread, as if it were a live camera."""

    def __init__(
        self,
        camera_id: str,
        path: Path | Callable[[], Path],
        slot: LatestFrame,
        *,
        loop: bool = True,
        realtime: bool = True,
    ) -> None:
        self.camera_id = camera_id
        self._path = path
        self.slot = slot
        self.loop = loop
        self.realtime = realtime
        self.health = SourceHealth()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"src-{camera_id}", daemon=True)
        self._seq = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _set(self, status: Status, reason: str | None) -> None:
        if (status, reason) != (self.health.status, self.health.reason):
            log.info("camera %s: %s%s", self.camera_id, status, f" ({reason})" if reason else "")
        self.health.status, self.health.reason = status, reason

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                path = self._path() if callable(self._path) else self._path
                finished = self._play(path)
                backoff = 1.0
                if finished and not self.loop:
                    self._set("offline", "end of file")
                    return
            except Exception as err:  # any decoder/IO failure: report and retry, never die
                self._set("offline", f"{type(err).__name__}: {err}")
                self.health.restarts += 1
                delay = min(BACKOFF_MAX_S, backoff) * random.uniform(0.8, 1.2)
                backoff *= 2
                self._stop.wait(delay)

    def _play(self, path: Path) -> bool:
        """Play the file once; True at a clean end of file."""
        with av.open(str(path), options={"probesize": "65536", "analyzeduration": "0"}) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            base = stream.time_base
            start_wall = time.monotonic()
            first_pts: float | None = None
            window: list[float] = []
            for packet in c.demux(stream):
                if self._stop.is_set():
                    return False
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self.health.dropped += 1  # a damaged packet: drop it, keep going
                    continue
                for vf in frames:
                    pts = float(vf.pts * base) if vf.pts is not None and base else 0.0
                    if first_pts is None:
                        first_pts = pts
                    if self.realtime:
                        due = start_wall + (pts - first_pts)
                        delay = due - time.monotonic()
                        if delay > 0 and self._stop.wait(delay):
                            return False
                    now = time.monotonic()
                    self._seq += 1
                    self.slot.put(
                        Frame(seq=self._seq, t=now, wall=datetime.now(UTC), video=vf)
                    )
                    self.health.frames += 1
                    self.health.last_frame_at = datetime.now(UTC)
                    window.append(now)
                    window = [w for w in window if now - w <= 2.0]
                    self.health.fps = (len(window) - 1) / (window[-1] - window[0]) if len(
                        window) > 1 and window[-1] > window[0] else 0.0
                    self._set("online", None)
            return True
