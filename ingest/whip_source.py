"""A patrol unit's video as a source: decoded frames to detection, one H.264 encode for all.

:class:`WhipSource` is fed by :mod:`ingest.webrtc` (the aiortc session) on the event loop.
It hands decoded frames to the detectors and encodes them once (libx264, ultrafast,
zerolatency, a keyframe every ~1.5 s) on its own thread into its :class:`PacketRing`, so
the live wall and the recorder treat a patrol unit like a camera.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import av

from ingest.frames import Frame, LatestFrame
from ingest.packets import PacketRing, StreamInfo, VideoPacket
from ingest.source import Source

log = logging.getLogger(__name__)

H264_TIME_BASE = Fraction(1, 90000)


class WhipSource(Source):
    """A patrol unit's video: decoded frames to ``slot``, one H.264 encode to ``packets``.

    ``feed()`` is called on the event loop for every decoded frame (cheap: no pixel
    conversion there). The encoder runs on its own thread behind a bounded queue; when
    it falls behind, frames are dropped and counted in ``encode_dropped``.
    """

    kind = "whip"

    def __init__(
        self,
        unit_id: str,
        slot: LatestFrame | None = None,
        packets: PacketRing | None = None,
        *,
        keyframe_interval_s: float = 1.5,
        queue_size: int = 4,
        max_kbps: int = 4000,
    ) -> None:
        super().__init__(unit_id, slot, packets)
        self.unit_id = unit_id
        self.keyframe_interval_s = keyframe_interval_s
        self.max_kbps = max_kbps
        self.encode_dropped = 0  # frames the encoder was too far behind to take
        self.encoded_frames = 0
        self.encode_seconds = 0.0  # time spent in libx264 (for benchmarks)
        self.first_frame_t: float | None = None  # time.monotonic() of the first frame
        self.last_frame_t: float | None = None
        self.input_codec: str | None = None
        self._queue: queue.Queue[tuple[av.VideoFrame, float] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._encode_loop, name=f"whip-enc-{unit_id}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def feed(self, vf: av.VideoFrame) -> None:
        """One decoded frame from the peer (event loop thread)."""
        now = time.monotonic()
        if self.first_frame_t is None:
            self.first_frame_t = now
        self.last_frame_t = now
        self.health.width, self.health.height = vf.width, vf.height
        self.emit(Frame(seq=self.next_seq(), t=now, wall=datetime.now(UTC), video=vf))
        self.set_status("online", None)
        try:
            self._queue.put_nowait((vf, now))
        except queue.Full:
            self.encode_dropped += 1

    # The encoder thread ------------------------------------------------------------

    def _encode_loop(self) -> None:
        enc: av.VideoCodecContext | None = None
        size: tuple[int, int] | None = None
        t0 = 0.0
        last_pts = -1
        last_key_t = -1e9
        while True:
            item = self._queue.get()
            if item is None or self._stop.is_set():
                return
            vf, t = item
            try:
                w, h = vf.width & ~1, vf.height & ~1
                if enc is None or size != (w, h):
                    enc, size, t0, last_pts, last_key_t = self._open(w, h), (w, h), t, -1, -1e9
                if vf.format.name != "yuv420p" or (vf.width, vf.height) != (w, h):
                    vf = vf.reformat(width=w, height=h, format="yuv420p")
                pts = max(last_pts + 1, round((t - t0) / H264_TIME_BASE))
                last_pts = pts
                key = t - last_key_t >= self.keyframe_interval_s
                if key:
                    last_key_t = t
                # aiortc's decoder hands each frame to us and to the detector slot; both
                # only read the pixels, so the encoder sets its own pts on the same frame.
                vf.pts, vf.time_base = pts, H264_TIME_BASE
                vf.pict_type = av.video.frame.PictureType.I if key else \
                    av.video.frame.PictureType.NONE
                started = time.perf_counter()
                packets = enc.encode(vf)
                self.encode_seconds += time.perf_counter() - started
                self.encoded_frames += 1
                self._put_packets(packets)
            except Exception:  # a bad frame or encoder error: reopen on the next frame
                log.exception("whip %s: H.264 encode failed; reopening the encoder",
                              self.unit_id)
                self.health.decode_errors += 1
                enc = None

    def _open(self, w: int, h: int) -> av.VideoCodecContext:
        enc = av.CodecContext.create("libx264", "w")
        assert isinstance(enc, av.VideoCodecContext)
        enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
        enc.time_base = H264_TIME_BASE
        enc.framerate = Fraction(30, 1)  # a rate-control hint; timestamps are real
        enc.gop_size = 600  # keyframes are forced by time (forced-idr), this is a backstop
        enc.max_b_frames = 0
        enc.options = {
            "preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1", "crf": "23",
            "maxrate": f"{self.max_kbps}k", "bufsize": f"{self.max_kbps}k",
            "x264-params": "scenecut=0:repeat-headers=1",
        }
        enc.open()
        self.packets.set_info(StreamInfo(codec="h264", width=w, height=h,
                                         time_base=H264_TIME_BASE, extradata=None))
        self.health.codec = "h264"
        log.info("whip %s: encoding H.264 %dx%d", self.unit_id, w, h)
        return enc

    def _put_packets(self, packets: list[av.Packet[Any]]) -> None:
        for pkt in packets:
            data = bytes(pkt)
            if not data:
                continue
            now = time.monotonic()
            self.packets.put(VideoPacket(
                data=data, pts=pkt.pts, dts=pkt.dts, keyframe=bool(pkt.is_keyframe), t=now,
                wall=time.time(), duration=pkt.duration,
            ))
            self.health.count_bytes(now, len(data))


