"""RTSP street cameras: main-stream packets into the ring, frames for detection, health.

:class:`RtspSource` runs one thread per stream URL (PyAV/FFmpeg's RTSP client):

* the **main** stream (``url``) puts every encoded packet, unchanged, into
  ``self.packets`` (the live wall and the recorder use it) and counts the bitrate;
* the **sub** stream (``sub_url``, optional) is decoded for detection; without one the
  main thread decodes the main stream too. Decoded frames go to ``self.emit``.

What the ring gets (H.264/HEVC over RTSP):

* ``StreamInfo.extradata`` is what FFmpeg's RTSP demuxer gives: the parameter sets from
  the SDP's ``sprop-parameter-sets`` in **Annex B** form (``00 00 00 01 SPS 00 00 00 01
  PPS``), or ``None`` when the SDP has none (then they come in-band). Packets are Annex B
  access units as well, so a muxer that needs the parameter sets can put
  ``extradata + data`` for the first keyframe (MP4's movenc builds its avcC from that).
* ``keyframe`` is FFmpeg's flag, or'ed with a scan of the NAL unit types (IDR for
  H.264, IRAP for HEVC), so a parser quirk cannot start the ring mid-GOP.
* ``pts``/``dts`` are rebased onto one increasing timeline per source: a session starts
  where the last one stopped plus the real time in between, a missing timestamp gets
  one frame more than the last, and a repeated or backwards ``dts`` is nudged forward
  by one tick (muxers reject them). Everything else is as the camera sent it.
* Packets before a session's first keyframe (a camera that starts mid-GOP) are neither
  recorded nor decoded: nothing could use them, and the decoder would only conceal
  (counted in ``skipped_before_key``).
* FFmpeg's H.264 parser hands an access unit on when the next one begins: packets and
  frames come one frame interval late (67 ms at 15 fps); the first frame takes that
  plus the RTSP handshake (``bench/bench_rtsp.py`` measures it).

Frames carry the source's own clock: ``Frame.t`` is ``time.monotonic()`` and
``Frame.wall`` the UTC time when the packet arrived (not the camera's timestamps).
Damaged frames (FFmpeg flags them when error concealment had to step in, or the
decoder rejects the packet) are dropped and counted in ``health.decode_errors``.
Decoding is single-threaded: lowest latency, no frame-thread delay, the most streams
per core, and FFmpeg only flags concealed frames reliably that way.

Health (``self.health``):

* ``online``: the decoding stream delivers frames (or, main-only-for-recording, the
  main stream delivers packets) and nothing below applies;
* ``degraded``: one of main/sub is down while the other works; or decode errors in the
  last ``ERROR_WINDOW_S`` seconds; or, once a stream has run ``WARMUP_S``, frames
  arrive at less than ``LOW_FPS_RATIO`` of the stream's nominal rate;
* ``offline``: no stream works; the reason says why ("connection refused", "timeout
  opening (5 s)", "no packets for 5 s", "invalid data: ...", "unauthorized (401) ...",
  "stream ended by the server").

``bitrate_kbps`` is the main stream's; ``codec``/``width``/``height`` are the main
stream's; ``fps`` counts the decoded frames. Reconnects use exponential backoff with
jitter, back to ``backoff_initial_s`` after a connection that stayed up ``GOOD_RUN_S``.
A stall (no packet for ``stall_s``) ends the session and reconnects.

Errors: the constructor raises :class:`ValueError` for bad arguments. Nothing raises out
of the stream threads; every failure becomes ``offline`` with a reason and a retry.
Passwords in URLs never reach a log line or a reason (:func:`mask_url`).

``stop()`` returns within its ``timeout``; a thread blocked inside FFmpeg (opening, or
waiting for a packet) cannot be woken from outside and ends on its own within
``open_timeout_s`` or ``stall_s`` (the threads are daemons and touch nothing after stop).
A stopped source is not started again: make a new one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Literal

import av
import av.error
from av.video.stream import VideoStream

from hub.urls import mask_url, url_secrets
from ingest.frames import Frame, LatestFrame
from ingest.packets import PacketRing, StreamInfo, VideoPacket
from ingest.source import Source

log = logging.getLogger(__name__)

__all__ = ["Backoff", "RtspSource", "Timeline", "describe_error", "has_keyframe", "mask_url",
           "open_options"]

Transport = Literal["tcp", "udp"]
Role = Literal["main", "sub"]

GOOD_RUN_S = 5.0  # a connection up this long resets the backoff
ERROR_WINDOW_S = 10.0  # decode errors this recent make the camera degraded
WARMUP_S = 3.0  # a stream's fps is judged only after it has run this long
LOW_FPS_RATIO = 0.5  # fps below this share of the nominal rate: degraded
MAX_NOMINAL_FPS = 240  # a larger announced rate is a broken SPS/SDP: ignored
STATUS_EVERY_S = 0.5  # how often the stream threads re-evaluate the status
UDP_BUFFER_BYTES = 2 << 20  # socket receive buffer for RTP over UDP


def redact(text: str, url: str) -> str:
    """``text`` with ``url`` masked and its password, if any, replaced by ``***``."""
    text = text.replace(url, mask_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


def open_options(transport: Transport) -> dict[str, str]:
    """FFmpeg options for a fast start and low latency.

    ``probesize``/``analyzeduration`` keep stream probing to the first packet (the SDP
    usually has the parameter sets already). ``fflags=nobuffer`` is left out on
    purpose: it throws away the packets read while probing, which cut the first
    keyframe in half in our measurements; without it they are handed on, at no cost in
    latency. ``flags=low_delay`` is for the decoder. Only the video media is set up.
    """
    opts = {
        "rtsp_transport": transport,
        "probesize": "32",
        "analyzeduration": "0",
        "flags": "low_delay",
        "allowed_media_types": "video",
    }
    if transport == "udp":
        opts["buffer_size"] = str(UDP_BUFFER_BYTES)
    return opts


def describe_error(err: BaseException, *, opening: bool, elapsed: float,
                   open_timeout_s: float, stall_s: float, url: str) -> str:
    """A short reason for the camera's health, without credentials."""
    timed_out = opening and elapsed >= open_timeout_s * 0.95
    if isinstance(err, av.error.HTTPUnauthorizedError):
        return "unauthorized (401): check the credentials"
    if isinstance(err, av.error.HTTPForbiddenError):
        return "forbidden (403)"
    if isinstance(err, av.error.HTTPNotFoundError):
        return "not found (404): check the stream path"
    if isinstance(err, av.error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, av.error.ConnectionResetError):
        return "connection reset"
    if isinstance(err, av.error.ExitError | av.error.TimeoutError) or timed_out:
        # FFmpeg's RTSP client turns an interrupted open into "invalid data"; the time
        # it took tells the two apart.
        if opening:
            return f"timeout opening ({open_timeout_s:g} s)"
        return f"no packets for {stall_s:g} s"
    if isinstance(err, av.error.InvalidDataError):
        return f"invalid data: {err.strerror or 'not an RTSP/RTP answer'}"
    if isinstance(err, av.error.FFmpegError):
        return redact(f"{type(err).__name__}: {err.strerror}", url)
    return redact(f"{type(err).__name__}: {err}", url)


def has_keyframe(codec: str, data: bytes) -> bool:
    """Whether an Annex B access unit holds a random access point (H.264 IDR, HEVC IRAP)."""
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        head = data[i + 3]
        if codec == "h264" and head & 0x1F == 5:
            return True
        if codec == "hevc" and 16 <= (head >> 1) & 0x3F <= 21:
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


class Backoff:
    """Exponential backoff with jitter: ``initial``, twice that, ... up to ``maximum``."""

    def __init__(self, initial: float, maximum: float, jitter: float = 0.2) -> None:
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self._next = initial

    def next(self) -> float:
        base = self._next
        self._next = min(self.maximum, self._next * 2)
        return min(self.maximum, base * random.uniform(1 - self.jitter, 1 + self.jitter))

    def reset(self) -> None:
        self._next = self.initial


class Timeline:
    """Rebases each session's timestamps onto one increasing timeline per source."""

    def __init__(self) -> None:
        self.time_base: Fraction | None = None
        self.last: int | None = None  # the last dts handed out
        self.last_t = 0.0
        self._step = 1
        self._offset: int | None = None
        self._session_start = True

    def new_session(self, time_base: Fraction, fps: float | None) -> None:
        if time_base != self.time_base:
            self.last = None  # other units: a new timeline
        self.time_base = time_base
        self._step = max(1, round(1 / ((fps or 25.0) * time_base)))
        self._offset = None
        self._session_start = True

    def _next_slot(self, now: float) -> int:
        if self.last is None or self.time_base is None:
            return 0
        if self._session_start:  # keep the real gap since the last packet
            return self.last + max(self._step, round((now - self.last_t) / self.time_base))
        return self.last + self._step

    def map(self, pts: int | None, dts: int | None, now: float) -> tuple[int, int]:
        """(pts, dts) on the source's timeline for a packet that arrived at ``now``."""
        raw = dts if dts is not None else pts
        if raw is None:
            out_dts = out_pts = self._next_slot(now)
        else:
            if self._offset is None:
                self._offset = self._next_slot(now) - raw
            out_dts = raw + self._offset
            out_pts = (pts if pts is not None else raw) + self._offset
        if self.last is not None and out_dts <= self.last:
            bump = self.last + 1 - out_dts
            out_dts, out_pts = out_dts + bump, out_pts + bump
        self.last, self.last_t, self._session_start = out_dts, now, False
        return out_pts, out_dts


class _Stalled(Exception):
    """No packet for ``stall_s`` (FFmpeg handed back what it had buffered, then waited)."""


class _NoVideo(Exception):
    """The server answered, but its session has no video stream."""


@dataclass
class _Leg:
    """One stream URL of the camera and its state."""

    role: Role
    url: str
    record: bool  # packets into the ring
    decode: bool  # frames to the detectors
    up: bool = False
    reason: str = "starting"
    up_since: float = 0.0
    nominal_fps: float | None = None
    opening: bool = True
    errors: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    thread: threading.Thread | None = None


class RtspSource(Source):
    """An RTSP camera: main stream for recording and the wall, sub stream for detection."""

    kind = "rtsp"

    def __init__(
        self,
        source_id: str,
        url: str,
        *,
        sub_url: str | None = None,
        transport: Transport = "tcp",
        open_timeout_s: float = 5.0,
        stall_s: float = 5.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 2.0,
        slot: LatestFrame | None = None,
        packets: PacketRing | None = None,
    ) -> None:
        for name, value in (("url", url), ("sub_url", sub_url)):
            if value is not None and not value.lower().startswith(("rtsp://", "rtsps://")):
                raise ValueError(f"camera {source_id}: {name} must start with rtsp:// or "
                                 f"rtsps://, got {mask_url(value)!r}")
        if transport not in ("tcp", "udp"):
            raise ValueError(f"camera {source_id}: transport must be 'tcp' or 'udp', "
                             f"got {transport!r}")
        for name, v in (("open_timeout_s", open_timeout_s), ("stall_s", stall_s),
                        ("backoff_initial_s", backoff_initial_s),
                        ("backoff_max_s", backoff_max_s)):
            if not v > 0:
                raise ValueError(f"camera {source_id}: {name} must be > 0, got {v!r}")
        super().__init__(source_id, slot, packets)
        self.url, self.sub_url, self.transport = url, sub_url, transport
        self.open_timeout_s, self.stall_s = open_timeout_s, stall_s
        # The first retry waits at most the longest wait.
        self.backoff_initial_s = min(backoff_initial_s, backoff_max_s)
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._timeline = Timeline()
        self._legs = [_Leg("main", url, record=True, decode=sub_url is None)]
        if sub_url is not None:
            self._legs.append(_Leg("sub", sub_url, record=False, decode=True))
        self._started = False
        self.skipped_before_key = 0  # packets dropped because a session began mid-GOP

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for leg in self._legs:
            leg.thread = threading.Thread(target=self._run, args=(leg,), daemon=True,
                                          name=f"rtsp-{self.source_id}-{leg.role}")
            leg.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for leg in self._legs:
            if leg.thread is not None:
                leg.thread.join(max(0.0, deadline - time.monotonic()))
        busy = [leg.role for leg in self._legs if leg.thread and leg.thread.is_alive()]
        if busy:
            log.info("source %s: %s thread still inside FFmpeg; it ends within %.1f s",
                     self.source_id, "/".join(busy), max(self.open_timeout_s, self.stall_s))
        with self._lock:
            self.set_status("offline", "stopped")

    def threads_alive(self) -> bool:
        """Whether any stream thread is still running."""
        return any(leg.thread is not None and leg.thread.is_alive() for leg in self._legs)

    # -- the stream threads ----------------------------------------------------------

    def _run(self, leg: _Leg) -> None:
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        first = True
        while not self._stop.is_set():
            if not first:
                self.health.reconnects += 1
            first = False
            started = time.monotonic()
            try:
                self._session(leg)
                reason = "stream ended by the server"
            except _Stalled:
                reason = f"no packets for {self.stall_s:g} s"
            except _NoVideo:
                reason = "no video stream in the session"
            except Exception as err:  # any failure: report and retry, never die
                reason = describe_error(
                    err, opening=leg.opening, elapsed=time.monotonic() - started,
                    open_timeout_s=self.open_timeout_s, stall_s=self.stall_s, url=leg.url)
                if not isinstance(err, av.error.FFmpegError):
                    log.warning("source %s: %s stream failed: %s", self.source_id, leg.role,
                                reason, exc_info=True)
            if self._stop.is_set():
                return
            good_run = leg.up and time.monotonic() - leg.up_since >= GOOD_RUN_S
            self._leg_down(leg, reason)
            if good_run:
                backoff.reset()
            delay = backoff.next()
            log.info("source %s: %s stream down (%s); retry in %.2f s", self.source_id,
                     leg.role, reason, delay)
            self._stop.wait(delay)

    def _session(self, leg: _Leg) -> None:
        """One connection: open, then demux (and decode) until it ends or stalls."""
        leg.opening = True
        log.info("source %s: connecting %s stream %s over %s", self.source_id, leg.role,
                 mask_url(leg.url), self.transport)
        with av.open(leg.url, options=open_options(self.transport),
                     timeout=(self.open_timeout_s, self.stall_s)) as container:
            if self._stop.is_set():
                return
            if not container.streams.video:
                raise _NoVideo
            vs = container.streams.video[0]
            cc = vs.codec_context
            if leg.decode:
                cc.thread_type = "NONE"
                cc.thread_count = 1
            rate = vs.average_rate or vs.guessed_rate  # the SDP's, else the SPS timing's
            leg.nominal_fps = float(rate) if rate and 0 < rate <= MAX_NOMINAL_FPS else None
            codec = cc.name
            if leg.record:
                tb = Fraction(vs.time_base) if vs.time_base else Fraction(1, 90000)
                self.packets.set_info(StreamInfo(
                    codec=codec, width=cc.width, height=cc.height, time_base=tb,
                    extradata=bytes(cc.extradata) if cc.extradata else None,
                    fps=leg.nominal_fps,
                ))
                self._timeline.new_session(tb, leg.nominal_fps)
                self.health.codec, self.health.width, self.health.height = (
                    codec, cc.width, cc.height)
            leg.opening = False
            seen_key = False
            last = last_status = time.monotonic()
            for packet in container.demux(vs):
                now, wall = time.monotonic(), time.time()
                if self._stop.is_set():
                    return
                if now - last >= self.stall_s:
                    raise _Stalled
                last = now
                if packet.size == 0:
                    continue
                if not seen_key:  # joined mid-GOP: nothing is usable before a keyframe
                    seen_key = bool(packet.is_keyframe) or has_keyframe(codec, bytes(packet))
                    if not seen_key:
                        self.skipped_before_key += 1
                        continue
                if leg.record:
                    data = bytes(packet)
                    key = bool(packet.is_keyframe) or has_keyframe(codec, data)
                    self.health.count_bytes(now, len(data))
                    pts, dts = self._timeline.map(packet.pts, packet.dts, now)
                    self.packets.put(VideoPacket(
                        data=data, pts=pts, dts=dts, keyframe=key, t=now, wall=wall,
                        duration=packet.duration))
                    if not leg.decode and not leg.up:
                        self._leg_up(leg, now)
                if leg.decode:
                    self._decode(leg, packet, now, wall)
                if now - last_status >= STATUS_EVERY_S:
                    last_status = now
                    self._refresh_status(now)

    def _decode(self, leg: _Leg, packet: av.Packet[VideoStream], arrived: float,
                wall_ts: float) -> None:
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            self._decode_error(leg, arrived)  # a damaged packet: drop it, go on
            return
        wall = datetime.fromtimestamp(wall_ts, UTC)
        for vf in frames:
            if not isinstance(vf, av.VideoFrame):
                continue
            if vf.is_corrupt:  # concealed damage: drop the frame
                self._decode_error(leg, arrived)
                continue
            self.emit(Frame(seq=self.next_seq(), t=arrived, wall=wall, video=vf))
            if not leg.up:
                self._leg_up(leg, arrived)

    # -- health ----------------------------------------------------------------------

    def _decode_error(self, leg: _Leg, now: float) -> None:
        self.health.decode_errors += 1
        leg.errors.append(now)

    def _leg_up(self, leg: _Leg, now: float) -> None:
        with self._lock:
            leg.up, leg.up_since, leg.reason = True, now, ""
        log.info("source %s: %s stream up", self.source_id, leg.role)
        self._refresh_status(now)

    def _leg_down(self, leg: _Leg, reason: str) -> None:
        with self._lock:
            leg.up, leg.reason = False, reason
            if leg.decode:
                self.health.fps = 0.0
            if leg.record:
                self.health.bitrate_kbps = 0.0
        self._refresh_status(time.monotonic())

    def _refresh_status(self, now: float) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            main = self._legs[0]
            sub = self._legs[1] if len(self._legs) > 1 else None
            if not main.up and (sub is None or not sub.up):
                reason = main.reason
                if sub is not None and sub.reason != main.reason:
                    reason = f"main: {main.reason}; sub: {sub.reason}"
                self.set_status("offline", reason)
                return
            if sub is not None and not sub.up:
                self.set_status("degraded", f"sub stream: {sub.reason}")
                return
            if not main.up:
                self.set_status("degraded", f"main stream: {main.reason}")
                return
            dec = sub if sub is not None else main
            if any(now - t <= ERROR_WINDOW_S for t in dec.errors):
                self.set_status("degraded", f"decode errors in the last {ERROR_WINDOW_S:g} s")
                return
            nominal = dec.nominal_fps
            if (nominal and now - dec.up_since >= WARMUP_S
                    and self.health.fps < LOW_FPS_RATIO * nominal):
                self.set_status("degraded", f"frame rate below {LOW_FPS_RATIO:.0%} of "
                                            f"{nominal:g} fps")
                return
            self.set_status("online", None)
