"""A video file played as a camera: real-time pacing, looping, reconnect-style retries.

The source runs on its own thread: it demuxes with PyAV, puts every encoded packet into
its :class:`PacketRing` (so the wall and recorder see it as they would a camera),
decodes, paces frames to their timestamps and keeps health figures. A file that cannot
be opened or decoded makes the source offline with the reason; it retries with
exponential backoff and jitter, as a camera reconnect would.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av

from ingest.frames import Frame, LatestFrame
from ingest.packets import StreamInfo, VideoPacket
from ingest.source import Source, SourceHealth, Status

log = logging.getLogger(__name__)

__all__ = ["FileSource", "SourceHealth", "Status"]

BACKOFF_MAX_S = 30.0


class FileSource(Source):
    """Plays ``path`` into ``slot`` on a thread, as if it were a live camera."""

    kind = "file"

    def __init__(
        self,
        camera_id: str,
        path: Path | Callable[[], Path],
        slot: LatestFrame | None = None,
        *,
        loop: bool = True,
        realtime: bool = True,
    ) -> None:
        super().__init__(camera_id, slot)
        self.camera_id = camera_id
        self._path = path
        self.loop = loop
        self.realtime = realtime
        self._thread = threading.Thread(target=self._run, name=f"src-{camera_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                path = self._path() if callable(self._path) else self._path
                finished = self._play(path)
                backoff = 1.0
                if finished and not self.loop:
                    self.set_status("offline", "end of file")
                    return
            except Exception as err:  # any decoder/IO failure: report and retry, never die
                self.set_status("offline", f"{type(err).__name__}: {err}")
                self.health.reconnects += 1
                delay = min(BACKOFF_MAX_S, backoff) * random.uniform(0.8, 1.2)
                backoff *= 2
                self._stop.wait(delay)

    def _play(self, path: Path) -> bool:
        """Play the file once; True at a clean end of file."""
        with av.open(str(path), options={"probesize": "65536", "analyzeduration": "0"}) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            base = stream.time_base or Fraction(1, 90000)
            cc = stream.codec_context
            rate = stream.average_rate
            self.packets.set_info(StreamInfo(
                codec=cc.name, width=cc.width, height=cc.height, time_base=Fraction(base),
                extradata=bytes(cc.extradata) if cc.extradata else None,
                fps=float(rate) if rate else None,
            ))
            self.health.codec, self.health.width, self.health.height = cc.name, cc.width, cc.height
            start_wall = time.monotonic()
            first_pts: float | None = None
            # Paced per packet on its decode timestamp (monotonic, unlike pts with B-frames).
            for packet in c.demux(stream):
                if self._stop.is_set():
                    return False
                if packet.size == 0:
                    continue
                ts = packet.dts if packet.dts is not None else packet.pts
                pts = float(ts * base) if ts is not None else None
                if pts is not None:
                    if first_pts is None:
                        first_pts = pts
                    if self.realtime:
                        delay = start_wall + (pts - first_pts) - time.monotonic()
                        if delay > 0 and self._stop.wait(delay):
                            return False
                now = time.monotonic()
                self.packets.put(VideoPacket(
                    data=bytes(packet), pts=packet.pts, dts=packet.dts,
                    keyframe=bool(packet.is_keyframe), t=now, wall=time.time(),
                    duration=packet.duration,
                ))
                self.health.count_bytes(now, packet.size)
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self.health.decode_errors += 1  # a damaged packet: drop it, keep going
                    continue
                for vf in frames:
                    self.emit(Frame(seq=self.next_seq(), t=time.monotonic(),
                                    wall=datetime.now(UTC), video=vf))
                    self.set_status("online", None)
            return True
