"""Encoded video packets shared by every consumer of a source, never re-encoded.

A source that receives encoded video (RTSP, a file) puts each packet into its
:class:`PacketRing`; a source that only has decoded frames (WebRTC) encodes once and
does the same. Consumers read from the ring instead of decoding or encoding again:

* the live wall muxes packets into fragmented MP4 for Media Source Extensions (one
  muxer per source, shared by every viewer);
* the recorder and incident clips cut from the packets (the ring is the pre-roll).

The ring keeps at least ``preroll_s`` seconds and always starts on a keyframe, so a
consumer that joins late can start decoding at once. Listeners are called on the
source's thread for every packet; they must be quick (hand off, never block) and must
not raise (a listener that raises is removed and logged).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamInfo:
    """What a decoder or muxer needs to know about an encoded video stream."""

    codec: str  # FFmpeg codec name: "h264", "hevc", ...
    width: int
    height: int
    time_base: Fraction
    # avcC (MP4 files) or Annex B SPS/PPS (RTSP: the SDP's sprop-parameter-sets); None
    # when the parameter sets only come in-band.
    extradata: bytes | None = None
    fps: float | None = None


@dataclass(frozen=True)
class VideoPacket:
    """One encoded access unit as the source received it."""

    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool
    t: float  # time.monotonic() when the source got it
    wall: float  # time.time() when the source got it
    duration: int | None = None  # in the stream's time_base


Listener = Callable[[StreamInfo, VideoPacket], None]


class PacketRing:
    """A bounded, keyframe-aligned buffer of recent packets plus live listeners."""

    def __init__(self, preroll_s: float = 10.0, max_bytes: int = 64 << 20) -> None:
        self.preroll_s = preroll_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._packets: deque[VideoPacket] = deque()
        self._key_times: deque[float] = deque()  # arrival of each keyframe in the ring
        self._bytes = 0
        self.overflows = 0  # times one GOP alone was over max_bytes and the ring emptied
        self._info: StreamInfo | None = None
        self._listeners: list[Listener] = []
        self.total_packets = 0
        self.total_bytes = 0

    @property
    def info(self) -> StreamInfo | None:
        return self._info

    def set_info(self, info: StreamInfo) -> None:
        """A new stream starts (first connect, reconnect, or changed parameters)."""
        with self._lock:
            if info != self._info:
                self._packets.clear()
                self._key_times.clear()
                self._bytes = 0
            self._info = info

    def put(self, pkt: VideoPacket) -> None:
        with self._lock:
            info = self._info
            if info is None:
                raise RuntimeError("set_info() before put()")
            if self._packets or pkt.keyframe:  # never start the ring mid-GOP
                self._packets.append(pkt)
                if pkt.keyframe:
                    self._key_times.append(pkt.t)
                self._bytes += len(pkt.data)
                self._trim(pkt.t)
            self.total_packets += 1
            self.total_bytes += len(pkt.data)
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(info, pkt)
            except Exception:
                log.exception("packet listener %r failed; removed", fn)
                self.unsubscribe(fn)

    def _trim(self, now: float) -> None:
        # Drop whole GOPs from the front while the rest still covers preroll_s (or while
        # over the byte budget), so the ring always starts on a keyframe. A single GOP over
        # the budget (a camera with no keyframes for a long time) empties the ring: it
        # starts again at the next keyframe.
        keys = self._key_times
        while len(keys) >= 2 and (
            self._bytes > self.max_bytes or now - keys[1] >= self.preroll_s
        ):
            keys.popleft()
            self._bytes -= len(self._packets.popleft().data)  # the old keyframe
            while self._packets and not self._packets[0].keyframe:
                self._bytes -= len(self._packets.popleft().data)
        if self._bytes > self.max_bytes:
            self._packets.clear()
            keys.clear()
            self._bytes = 0
            self.overflows += 1

    def snapshot(self, since_t: float | None = None) -> tuple[StreamInfo | None, list[VideoPacket]]:
        """The buffered packets (from a keyframe); with ``since_t``, from the last keyframe
        at or before that time."""
        with self._lock:
            pkts = list(self._packets)
            info = self._info
        if since_t is not None:
            start = 0
            for i, p in enumerate(pkts):
                if p.keyframe and p.t <= since_t:
                    start = i
            pkts = pkts[start:]
        return info, pkts

    def last_gop(self) -> tuple[StreamInfo | None, list[VideoPacket]]:
        """The packets from the newest keyframe on: what a late joiner starts with."""
        with self._lock:
            pkts = list(self._packets)
            info = self._info
        start = max((i for i, p in enumerate(pkts) if p.keyframe), default=0)
        return info, pkts[start:]

    def subscribe(self, fn: Listener) -> None:
        with self._lock:
            self._listeners.append(fn)

    def unsubscribe(self, fn: Listener) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def buffered_seconds(self) -> float:
        with self._lock:
            if len(self._packets) < 2:
                return 0.0
            return self._packets[-1].t - self._packets[0].t
