"""Live view: a source's H.264 packets as fragmented MP4, muxed once, fanned out to viewers.

Nothing is decoded or encoded here. One :class:`LiveStream` per watched source subscribes
to the source's :class:`~ingest.packets.PacketRing` and, on the source's thread, turns
each packet into one ``moof``+``mdat`` fragment (one frame per fragment, so a frame
leaves as soon as it arrives) behind an init segment (``ftyp``+``moov``) built from the
stream's avcC, or from the SPS/PPS found in an Annex B stream without extradata. The
boxes are written here (:class:`FragmentMuxer` with :mod:`ingest.fmp4`, sans-I/O):
PyAV's mp4 muxer holds each fragment until the next packet arrives (one frame of
latency) and needs monotonic timestamps, which looping files and reconnecting cameras do
not give.

Viewers live on the event loop. Each fragment crosses to the loop once per stream
(``loop.call_soon_threadsafe``) and is offered to every :class:`Viewer`'s bounded
queue; a viewer whose queue holds too much or too old data skips to the next keyframe
(counted), and one that keeps skipping is dropped. A late joiner starts with the init
segment and the fragments since the newest keyframe. A stream exists while it has
viewers: the first viewer creates it (starting from ``packets.last_gop()``), the last
one leaving closes it, so an unwatched camera costs nothing here.

Exceptions::

    LiveError
     +-- UnsupportedCodec   the stream is not H.264 (the wall shows it as unsupported)
     +-- ViewerDropped      a viewer fell too far behind, or its stream closed
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from ingest.fmp4 import (
    DEFAULT_FRAME_TICKS,
    NAL_AUD,
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    TIMESCALE,
    _param_id,
    build_avcc,
    codec_string,
    init_segment,
    media_segment,
    parse_avcc,
    split_annexb,
    split_lengths,
    sps_dimensions,
)
from ingest.packets import StreamInfo, VideoPacket
from ingest.source import Source

log = logging.getLogger(__name__)

MAX_LAG_S = 2.0  # a viewer whose oldest queued fragment is older than this skips ahead
MAX_QUEUE_ITEMS = 300
MAX_QUEUE_BYTES = 16 << 20
MAX_SKIPS = 5  # skips within SKIP_WINDOW_S before a viewer is dropped
SKIP_WINDOW_S = 30.0
GOP_CACHE_BYTES = 16 << 20  # a longer GOP is not cached: late joiners wait for a keyframe
STALE_GOP_S = 5.0  # a ring whose newest packet is older than this is not replayed
HEALTH_POLL_S = 0.5


class LiveError(Exception):
    """The live view of a source cannot be produced or delivered."""


class UnsupportedCodec(LiveError):
    """The source's codec cannot be passed through to Media Source Extensions."""


class ViewerDropped(LiveError):
    """The viewer was disconnected (too slow, or its stream closed)."""


# --- the muxer (sans-I/O) -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InitSegment:
    """Start of a stream for the player: what to tell MSE, then the ``ftyp``+``moov``."""

    gen: int
    codec: str
    width: int
    height: int
    data: bytes


@dataclass(frozen=True, eq=False)
class Fragment:
    """One frame as ``moof``+``mdat``; ``seq`` grows by one per fragment of a muxer."""

    seq: int
    init: InitSegment
    keyframe: bool
    data: bytes
    wall: float  # time.time() when the source got the packet


@dataclass(frozen=True)
class Status:
    """The source's state as the wall shows it (online, offline, unsupported...)."""

    status: str
    reason: str | None = None


Item = InitSegment | Fragment | Status


class FragmentMuxer:
    """H.264 packets in, init segments and one-frame fragments out; no I/O, no threads.

    Output timestamps follow the source's decode timestamps but never go back and never
    jump by two frames or more (a looping file, a reconnect, a stall): MSE would treat
    either as a discontinuity and drop frames until the next keyframe.
    """

    def __init__(self) -> None:
        self.init: InitSegment | None = None
        self._gen = 0
        self._seq = 0
        self._info: StreamInfo | None = None
        self._length_size = 4  # NAL length size of the input; 0 for Annex B input
        self._sps: dict[int, bytes] = {}  # Annex B parameter sets by id
        self._pps: dict[int, bytes] = {}
        self._params: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None
        self._need_key = True
        self._in_last: int | None = None  # last input dts, in ticks
        self._out_last: int | None = None  # last output dts
        self._last_dur = DEFAULT_FRAME_TICKS
        self.dropped = 0  # packets dropped while waiting for a keyframe or SPS/PPS

    def push(self, info: StreamInfo, pkt: VideoPacket) -> list[InitSegment | Fragment]:
        """Mux one packet; raises :class:`UnsupportedCodec` for anything but H.264."""
        out: list[InitSegment | Fragment] = []
        if info is not self._info and info != self._info:
            self._new_stream(info, out)
        if self._length_size:
            nals = split_lengths(pkt.data, self._length_size)
            body = pkt.data
        else:
            nals = split_annexb(pkt.data)
            body = b"".join(len(n).to_bytes(4, "big") + n for n in nals
                            if n[0] & 0x1F not in (NAL_SPS, NAL_PPS, NAL_AUD))
        keyframe = pkt.keyframe or any(n[0] & 0x1F == NAL_IDR for n in nals)
        if not self._length_size:
            self._learn_params(nals)
            if keyframe and self._sps and self._pps:
                params = (tuple(self._sps.values()), tuple(self._pps.values()))
                if params != self._params:  # first SPS/PPS, or new ones (resolution change)
                    self._params = params
                    self._emit_init(build_avcc(list(params[0]), list(params[1])), out)
        if self.init is None or (self._need_key and not keyframe) or not body:
            self.dropped += 1
            return out
        self._need_key = False
        out.append(self._fragment(info, pkt, keyframe, body))
        return out

    def _new_stream(self, info: StreamInfo, out: list[InitSegment | Fragment]) -> None:
        if info.codec != "h264":
            raise UnsupportedCodec(f"codec {info.codec} cannot be shown on the wall yet")
        self._info = info
        self._in_last = None
        self._sps.clear()
        self._pps.clear()
        self._params = None
        self.init = None
        ext = info.extradata
        if ext and ext[0] == 1:
            self._length_size = parse_avcc(ext)[2]
            self._emit_init(ext, out)
        else:  # Annex B: parameter sets from the extradata, if any, else from the packets
            self._length_size = 0
            self._learn_params(split_annexb(ext or b""))

    def _learn_params(self, nals: list[bytes]) -> None:
        for n in nals:
            kind = n[0] & 0x1F
            if kind == NAL_SPS and len(n) >= 4:
                self._sps[_param_id(n[4:])] = n
            elif kind == NAL_PPS and len(n) >= 2:
                self._pps[_param_id(n[1:])] = n

    def _emit_init(self, avcc: bytes, out: list[InitSegment | Fragment]) -> None:
        sps = parse_avcc(avcc)[0][0]
        try:
            width, height = sps_dimensions(sps)
        except ValueError:
            width, height = (self._info.width, self._info.height) if self._info else (0, 0)
        self._gen += 1
        self.init = InitSegment(self._gen, codec_string(sps), width, height,
                                init_segment(avcc, width, height))
        self._need_key = True
        out.append(self.init)

    def _fragment(self, info: StreamInfo, pkt: VideoPacket, keyframe: bool,
                  body: bytes) -> Fragment:
        assert self.init is not None
        tb = info.time_base or Fraction(1, TIMESCALE)
        ts = pkt.dts if pkt.dts is not None else pkt.pts
        in_dts = round(ts * tb * TIMESCALE) if ts is not None else round(pkt.t * TIMESCALE)
        gap = in_dts - self._in_last if self._in_last is not None else 0
        # This frame's duration: the packet's, else the last interval seen (cameras change
        # rate, at night for instance), else the nominal rate.
        dur = round(pkt.duration * tb * TIMESCALE) if pkt.duration else 0
        dur = (dur or (gap if 0 < gap <= TIMESCALE else 0)
               or (round(TIMESCALE / info.fps) if info.fps else 0) or self._last_dur)
        if self._out_last is None:
            out_dts = 0
        elif self._in_last is None:
            out_dts = self._out_last + self._last_dur  # a new stream continues the timeline
        else:
            # Back in time (a loop, a reconnect) or a jump: continue after the last frame.
            out_dts = self._out_last + (
                gap if 0 < gap < int(1.9 * self._last_dur) else self._last_dur)
        cto = 0
        if pkt.pts is not None and pkt.dts is not None:
            cto = round((pkt.pts - pkt.dts) * tb * TIMESCALE)
        self._in_last, self._out_last, self._last_dur = in_dts, out_dts, dur
        self._seq += 1
        return Fragment(self._seq, self.init, keyframe,
                        media_segment(self._seq, out_dts, dur, cto, keyframe, body), pkt.wall)


# --- fan-out ------------------------------------------------------------------------------


@dataclass
class Limits:
    """When a viewer skips ahead and when it is dropped."""

    max_lag_s: float = MAX_LAG_S
    max_items: int = MAX_QUEUE_ITEMS
    max_bytes: int = MAX_QUEUE_BYTES
    max_skips: int = MAX_SKIPS
    skip_window_s: float = SKIP_WINDOW_S


class Viewer:
    """One client watching one stream: a bounded queue filled on the event loop."""

    def __init__(self, source_id: str, client: str, limits: Limits,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.source_id = source_id
        self.client = client
        self.limits = limits
        self._loop = loop
        self._q: deque[tuple[float, Item]] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._waiting_key = True
        self._last_seq = 0
        self._queued_init: InitSegment | None = None
        self._sent_init: InitSegment | None = None
        self._skip_times: deque[float] = deque()
        self.dropped_reason: str | None = None
        self.skips = 0  # times this viewer jumped ahead to a keyframe
        self.skipped = 0  # fragments it never got because of that

    def offer(self, item: Item) -> None:
        """Queue an item (event loop only); skip ahead or drop when too far behind."""
        if self.dropped_reason is not None:
            return
        if isinstance(item, Status):  # only the latest one matters: no pile-up
            if any(isinstance(it, Status) for _, it in self._q):
                self._q = deque((t, it) for t, it in self._q if not isinstance(it, Status))
            self._put(item, 0)
            return
        if isinstance(item, InitSegment):
            return  # sent ahead of the first fragment that needs it
        if item.seq <= self._last_seq:
            return  # already had it from the GOP cache
        self._last_seq = item.seq
        now = self._loop.time()
        lim = self.limits
        if self._q and (len(self._q) >= lim.max_items
                        or self._bytes + len(item.data) > lim.max_bytes
                        or now - self._q[0][0] > lim.max_lag_s):
            self._skip_ahead(now)
        if self._waiting_key:
            if not item.keyframe:
                self.skipped += 1
                return
            self._waiting_key = False
        if item.init is not self._queued_init:
            self._queued_init = item.init
            self._put(item.init, len(item.init.data))
        self._put(item, len(item.data))

    def _put(self, item: Item, size: int) -> None:
        self._q.append((self._loop.time(), item))
        self._bytes += size
        self._wake.set()

    def _skip_ahead(self, now: float) -> None:
        statuses = [it for _, it in self._q if isinstance(it, Status)]
        self.skipped += sum(isinstance(it, Fragment) for _, it in self._q)
        self._q.clear()
        self._bytes = 0
        self._waiting_key = True
        self._queued_init = self._sent_init
        self.skips += 1
        self._skip_times.append(now)
        while self._skip_times and now - self._skip_times[0] > self.limits.skip_window_s:
            self._skip_times.popleft()
        log.info("live %s: viewer %s behind, skipping to the next keyframe (%d skips)",
                 self.source_id, self.client, self.skips)
        if len(self._skip_times) > self.limits.max_skips:
            self.drop("too slow: kept falling behind")
            return
        for st in statuses[-1:]:
            self._put(st, 0)

    def drop(self, reason: str) -> None:
        if self.dropped_reason is None:
            self.dropped_reason = reason
            self._q.clear()
            self._bytes = 0
            self._wake.set()

    async def get(self) -> Item:
        """The next item to send; raises :class:`ViewerDropped` once dropped."""
        while True:
            if self.dropped_reason is not None:
                raise ViewerDropped(self.dropped_reason)
            if self._q:
                _, item = self._q.popleft()
                if isinstance(item, InitSegment):
                    self._sent_init = item
                    self._bytes -= len(item.data)
                elif isinstance(item, Fragment):
                    self._bytes -= len(item.data)
                return item
            self._wake.clear()
            await self._wake.wait()

    def queued(self) -> int:
        return len(self._q)


def source_status(source: Source) -> Status:
    h = source.health
    return Status(h.status, h.reason)


class LiveStream:
    """One source muxed once for all its viewers (created by :class:`LiveHub`)."""

    def __init__(self, source: Source, loop: asyncio.AbstractEventLoop,
                 gop_cache_bytes: int = GOP_CACHE_BYTES) -> None:
        self.source = source
        self.source_id = source.source_id
        self._loop = loop
        self._lock = threading.Lock()
        self._mux = FragmentMuxer()
        self._gop: list[Fragment] = []
        self._gop_bytes = 0
        self._gop_cache_bytes = gop_cache_bytes
        self._boot: set[int] = set()
        self._boot_refs: list[VideoPacket] = []
        self._status: Status | None = None  # set when the codec is unsupported
        self._closed = False
        self.viewers: set[Viewer] = set()
        self.fragments = 0
        self.bytes_out = 0
        self.mux_s = 0.0  # thread time spent muxing, for the benchmark

    # source thread (and the bootstrap's worker thread) --------------------------------

    def open(self) -> None:
        """Subscribe and mux the newest GOP for early viewers (blocking: run in a thread)."""
        with self._lock:
            if self._closed:
                return
            self.source.packets.subscribe(self._on_packet)
            info, pkts = self.source.packets.last_gop()
            if info is None or not pkts or time.monotonic() - pkts[-1].t > STALE_GOP_S:
                return
            self._boot = {id(p) for p in pkts}
            self._boot_refs = pkts
            for p in pkts:
                self._ingest(info, p)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._gop.clear()
        self.source.packets.unsubscribe(self._on_packet)

    def _on_packet(self, info: StreamInfo, pkt: VideoPacket) -> None:
        with self._lock:
            if self._closed:
                return
            if self._boot:
                if id(pkt) in self._boot:
                    return  # already muxed from last_gop()
                self._boot.clear()
                self._boot_refs = []
            self._ingest(info, pkt)

    def _ingest(self, info: StreamInfo, pkt: VideoPacket) -> None:
        t0 = time.thread_time()
        try:
            items = self._mux.push(info, pkt)
        except UnsupportedCodec as err:
            if self._status is None or self._status.reason != str(err):
                self._status = Status("unsupported", str(err))
                log.warning("live %s: %s", self.source_id, err)
                self._post(self._status)
            return
        except Exception as err:  # a damaged packet or parameter set (ValueError,
            # struct.error on absurd SPS sizes, ...): drop it; never lose the listener
            log.warning("live %s: packet dropped: %s: %s", self.source_id,
                        type(err).__name__, err)
            return
        if self._status is not None:  # H.264 again after an unsupported stream
            self._status = None
            self._post(source_status(self.source))
        for it in items:
            if isinstance(it, InitSegment):
                self._gop.clear()
                self._gop_bytes = 0
                log.info("live %s: stream %s %dx%d", self.source_id, it.codec, it.width,
                         it.height)
                continue
            if it.keyframe:
                self._gop.clear()
                self._gop_bytes = 0
            if self._gop or it.keyframe:
                self._gop_bytes += len(it.data)
                if self._gop_bytes <= self._gop_cache_bytes:
                    self._gop.append(it)
            self.fragments += 1
            self.bytes_out += len(it.data)
            self._post(it)
        self.mux_s += time.thread_time() - t0

    def _post(self, item: Item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us: shutting down
            self._loop.call_soon_threadsafe(self.deliver, item)

    # event loop -------------------------------------------------------------------------

    def deliver(self, item: Item) -> None:
        for v in list(self.viewers):
            v.offer(item)

    def add(self, viewer: Viewer) -> None:
        """Register a viewer and queue its start: status, init and the cached GOP."""
        with self._lock:
            gop = list(self._gop)
            status = self._status
        viewer.offer(status or source_status(self.source))
        for frag in gop:
            viewer.offer(frag)
        self.viewers.add(viewer)


class LiveHub:
    """Live streams by source id, created for the first viewer, closed after the last.

    Also a hub service: ``start``/``stop`` and ``report`` for ``/api/health``.
    """

    def __init__(self, limits: Limits | None = None,
                 resolve: Callable[[str], Source | None] | None = None) -> None:
        """``resolve(source_id)`` gives the current source for an id: when a source is
        replaced (a camera reconfigured, a patrol unit publishing again) the old stream
        is closed, so its viewers reconnect to the new one."""
        self.limits = limits or Limits()
        self.resolve = resolve
        self._streams: dict[str, LiveStream] = {}
        self._health_tasks: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._clients = itertools.count(1)
        self.dropped_viewers = 0
        self.total_skips = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for sid in list(self._streams):
            await self._close_stream(sid)

    def client_id(self, user: str) -> str:
        return f"{user}#{next(self._clients)}"

    async def watch(self, source: Source, client: str) -> Viewer:
        """A new viewer of ``source`` (the stream is created and opened if needed)."""
        loop = asyncio.get_running_loop()
        sid = source.source_id
        stream = self._streams.get(sid)
        if stream is not None and stream.source is not source:
            await self._close_stream(sid)  # the source was replaced (restart, reconfigure)
            stream = None
        viewer = Viewer(sid, client, self.limits, loop)
        if stream is None:
            stream = LiveStream(source, loop)
            self._streams[sid] = stream
            stream.add(viewer)
            self._health_tasks[sid] = asyncio.create_task(
                self._follow_health(stream), name=f"live-health-{sid}")
            log.info("live %s: stream opened for %s", sid, client)
            try:
                await asyncio.to_thread(stream.open)
            except BaseException:  # cancelled (shutting down) or failed: leave, then raise
                await self.leave(viewer)
                raise
        else:
            stream.add(viewer)
        log.info("live %s: viewer %s joined (%d watching)", sid, client, len(stream.viewers))
        return viewer

    async def leave(self, viewer: Viewer) -> None:
        sid = viewer.source_id
        stream = self._streams.get(sid)
        self.total_skips += viewer.skips
        if viewer.dropped_reason is not None and viewer.dropped_reason != "stream closed":
            self.dropped_viewers += 1
        if stream is None:
            return
        stream.viewers.discard(viewer)
        log.info("live %s: viewer %s left (%d skips, %d fragments skipped; %d watching)",
                 sid, viewer.client, viewer.skips, viewer.skipped, len(stream.viewers))
        if not stream.viewers:
            await self._close_stream(sid)

    async def _close_if_current(self, sid: str, stream: LiveStream) -> None:
        if self._streams.get(sid) is stream:  # not already replaced by watch()
            await self._close_stream(sid)

    async def _close_stream(self, sid: str) -> None:
        stream = self._streams.pop(sid, None)
        task = self._health_tasks.pop(sid, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if stream is not None:
            stream.close()
            for v in list(stream.viewers):
                v.drop("stream closed")
            log.info("live %s: stream closed (%d fragments, %.1f MB)", sid,
                     stream.fragments, stream.bytes_out / 1e6)

    async def _follow_health(self, stream: LiveStream) -> None:
        """Tell viewers when the source goes offline or comes back."""
        last = source_status(stream.source)
        sid = stream.source.source_id
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            if self.resolve is not None and self.resolve(sid) is not stream.source:
                # Replaced (viewers reconnect to the new source) or gone (removed, disabled,
                # session ended: the reconnect is told 4404 and the tile says so).
                log.info("live %s: source replaced or gone, closing the stream", sid)
                # Not awaited here: closing cancels this very task.
                closing = asyncio.create_task(self._close_if_current(sid, stream),
                                              name=f"live-close-{sid}")
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
                return
            now = source_status(stream.source)
            if now != last:
                last = now
                stream.deliver(now)

    def streams(self) -> dict[str, LiveStream]:
        return dict(self._streams)

    def report(self) -> dict[str, dict[str, object]]:
        viewers = sum(len(s.viewers) for s in self._streams.values())
        return {"live": {
            "status": "ok", "streams": len(self._streams), "viewers": viewers,
            "skips": self.total_skips + sum(v.skips for s in self._streams.values()
                                            for v in s.viewers),
            "dropped_viewers": self.dropped_viewers,
        }}

