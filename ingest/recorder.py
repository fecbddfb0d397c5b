"""Continuous recording: a source's encoded packets into fragmented MP4 segments, copied.

Nothing is decoded or encoded. A :class:`Recorder` subscribes to one source's
:class:`~ingest.packets.PacketRing`; its listener only puts the packet on a bounded queue
(never blocks the source thread; a full queue drops and counts, and the writer then
restarts at the next keyframe). A writer thread turns the packets into samples
(:class:`Track`: Annex B to length-prefixed, parameter sets into the ``avcC``/``hvcC``) and
writes files ``<data>/recordings/<camera>/<YYYY-MM-DD>/<start UTC>.mp4``:

* ``ftyp``+``moov``, then one ``prft``+``moof``+``mdat`` per GOP (or per ``fragment_s``
  when GOPs are long); ``prft`` carries the wall-clock arrival time of the fragment's first
  packet, so the index, repair and clips know when every frame was seen. A crash leaves a
  file that is valid up to its last complete fragment (:mod:`ingest.segments` repairs it).
* A segment starts on a keyframe and a new one begins at the first keyframe after
  ``segment_s``; also on a new stream (reconnect with new parameters, new ``StreamInfo``,
  changed SPS/PPS), on a jump forward of more than ``MAX_GAP_S`` (missing time shows as
  a gap between segments), and after packets were lost. Media time starts at 0 in each
  segment and follows the source's timestamps inside it; a jump back (a looping file, a
  camera clock reset) carries on one frame after the last one.
* H.264 and HEVC (``hvc1``); anything else is reported as unsupported and not recorded.

Disk: before each segment and every ``SPACE_CHECK_S`` the free space is checked; below
``min_free_bytes``, or on any write error (ENOSPC...), the segment is cut back to its last
complete fragment and closed, and the recorder is *paused* (status with the reason, sink
told) until the free space is back above the threshold plus ``RESUME_MARGIN``; then it
resumes at the next keyframe.

The :class:`SegmentSink` hears about every segment (opened, each fragment, closed) and
status change, on the writer thread: it must only hand off.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol

from ingest.fmp4 import (
    HEVC_AUD,
    HEVC_PPS,
    HEVC_SPS,
    HEVC_VPS,
    NAL_AUD,
    NAL_PPS,
    NAL_SPS,
    TIMESCALE,
    HevcSps,
    _param_id,
    build_avcc,
    build_hvcc,
    fragment,
    hevc_type,
    init_segment,
    parse_avcc,
    parse_hvcc,
    prft,
    sample_entry_avc1,
    sample_entry_hvc1,
    split_annexb,
    sps_dimensions,
)
from ingest.packets import StreamInfo, VideoPacket
from ingest.source import Source

log = logging.getLogger(__name__)

QUEUE_PACKETS = 900  # ~30 s at 30 fps between the source and the writer
MAX_GAP_S = 5.0  # a longer jump in the source's timestamps starts a new segment
SPACE_CHECK_S = 5.0
RESUME_MARGIN = 16 << 20  # free bytes over min_free needed to resume after a pause
DEFAULT_FRAME_S = 1 / 25

State = Literal["starting", "recording", "paused", "unsupported", "stopped"]


class UnsupportedCodec(Exception):
    """The stream's codec cannot be recorded (only H.264 and HEVC are)."""


@dataclass
class Segment:
    """One segment file as the sink sees it (``end``/``size`` grow while recording)."""

    camera: str
    path: Path  # absolute
    rel: str  # relative to the data folder, with forward slashes
    start: float  # Unix time of its first packet's arrival
    end: float
    size: int
    codec: str
    width: int
    height: int
    fragments: int = 0
    # "empty": closed before any fragment was written; the file is gone, forget the row.
    state: Literal["recording", "complete", "empty"] = "recording"


@dataclass
class RecorderStatus:
    camera: str
    state: State = "starting"
    reason: str | None = None
    since: float = field(default_factory=time.time)
    segment: str | None = None  # relative path of the segment being written
    segments: int = 0
    bytes: int = 0
    dropped: int = 0  # packets not recorded (paused, before a keyframe, unsupported)
    queue_drops: int = 0  # packets the writer was too far behind to take


class SegmentSink(Protocol):
    """Told about segments and status, on the writer thread (hand off, never block)."""

    def segment_opened(self, seg: Segment) -> None: ...
    def segment_progress(self, seg: Segment) -> None: ...
    def segment_closed(self, seg: Segment) -> None: ...
    def status_changed(self, status: RecorderStatus) -> None: ...


def safe_name(camera: str) -> str:
    """A camera id as a folder name (anything but letters, digits, ``_.-`` becomes ``_``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", camera).strip(".")
    return name or "_"


def segment_rel_path(camera: str, start: float) -> str:
    t = datetime.fromtimestamp(start, UTC)
    return (f"recordings/{safe_name(camera)}/{t:%Y-%m-%d}/"
            f"{t:%Y-%m-%dT%H-%M-%S}.{t.microsecond // 1000:03d}Z.mp4")


# --- packets to samples (sans I/O) ------------------------------------------------------


class Track:
    """Packets of one stream in, MP4 samples (length-prefixed NAL units) out, and the sample
    entry (``avc1``/``hvc1``) once the parameter sets are known."""

    def __init__(self, info: StreamInfo) -> None:
        if info.codec not in ("h264", "hevc"):
            raise UnsupportedCodec(f"codec {info.codec} cannot be recorded")
        self.info = info
        self.hevc = info.codec == "hevc"
        self.entry: bytes | None = None
        self.width, self.height = info.width, info.height
        self._length_size = 0  # 0: Annex B input
        self._params: dict[int, dict[int, bytes]] = {}  # NAL type -> id -> unit
        self._used: tuple[tuple[bytes, ...], ...] | None = None
        ext = info.extradata
        if ext and ext[0] == 1:  # avcC / hvcC: packets are length-prefixed already
            if self.hevc:
                nals, self._length_size = parse_hvcc(ext)
                sps = nals.get(HEVC_SPS, [])
                if sps:
                    with contextlib.suppress(ValueError, IndexError):
                        s = HevcSps(sps[0])
                        self.width, self.height = s.width, s.height
                self.entry = sample_entry_hvc1(ext, self.width, self.height)
            else:
                sps_list, _, self._length_size = parse_avcc(ext)
                with contextlib.suppress(ValueError):
                    self.width, self.height = sps_dimensions(sps_list[0])
                self.entry = sample_entry_avc1(ext, self.width, self.height)
        elif ext:
            self._learn(split_annexb(ext))

    def _kind(self, nal: bytes) -> int:
        return hevc_type(nal) if self.hevc else nal[0] & 0x1F

    def _learn(self, nals: list[bytes]) -> None:
        for n in nals:
            kind = self._kind(n)
            if self.hevc and kind in (HEVC_VPS, HEVC_SPS, HEVC_PPS) and len(n) > 3:
                # The id is not needed to tell sets apart here: one of each per stream.
                self._params.setdefault(kind, {})[0] = n
            elif not self.hevc and kind == NAL_SPS and len(n) >= 4:
                self._params.setdefault(kind, {})[_param_id(n[4:])] = n
            elif not self.hevc and kind == NAL_PPS and len(n) >= 2:
                self._params.setdefault(kind, {})[_param_id(n[1:])] = n

    def sample(self, pkt: VideoPacket) -> tuple[bytes, bool]:
        """(sample bytes, whether the sample entry changed: a new segment must begin).
        Empty bytes: nothing usable yet (no parameter sets)."""
        if self._length_size:
            return pkt.data, False
        nals = split_annexb(pkt.data)
        self._learn(nals)
        changed = False
        if pkt.keyframe:
            changed = self._update_entry()
        skip = ((HEVC_VPS, HEVC_SPS, HEVC_PPS, HEVC_AUD) if self.hevc
                else (NAL_SPS, NAL_PPS, NAL_AUD))
        body = b"".join(len(n).to_bytes(4, "big") + n for n in nals
                        if self._kind(n) not in skip)
        return (body if self.entry is not None else b""), changed

    def _update_entry(self) -> bool:
        kinds = (HEVC_VPS, HEVC_SPS, HEVC_PPS) if self.hevc else (NAL_SPS, NAL_PPS)
        sets = tuple(tuple(self._params.get(k, {}).values()) for k in kinds)
        if not all(sets) or sets == self._used:
            return False
        self._used = sets
        try:
            if self.hevc:
                s = HevcSps(sets[1][0])
                self.width, self.height = s.width, s.height
                self.entry = sample_entry_hvc1(build_hvcc(*map(list, sets)), s.width, s.height)
            else:
                with contextlib.suppress(ValueError):
                    self.width, self.height = sps_dimensions(sets[0][0])
                self.entry = sample_entry_avc1(build_avcc(list(sets[0]), list(sets[1])),
                                               self.width, self.height)
        except (ValueError, IndexError) as err:
            log.warning("recorder: unreadable parameter sets (%s); waiting for others", err)
            return False
        return True


# --- the writer -------------------------------------------------------------------------


@dataclass
class _Pending:
    """Samples of the fragment being gathered: (dts, size, keyframe, cto) and bytes."""

    wall: float = 0.0
    dts: list[int] = field(default_factory=list)
    meta: list[tuple[int, bool, int]] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)


class Recorder:
    """Records one source; ``start()``/``stop()`` return quickly / within ``timeout``."""

    def __init__(self, source: Source, data_dir: Path, sink: SegmentSink, *,
                 segment_s: float = 60.0, fragment_s: float = 2.0, min_free_bytes: int = 0,
                 free_bytes: Callable[[Path], int] | None = None) -> None:
        self.source = source
        self.camera = source.source_id
        self.data_dir = data_dir
        self.sink = sink
        self.segment_s = segment_s
        self.fragment_s = fragment_s
        self.min_free_bytes = min_free_bytes
        self._free = free_bytes or (lambda p: shutil.disk_usage(p).free)
        self.status = RecorderStatus(self.camera)
        self._q: queue.Queue[tuple[int, StreamInfo, VideoPacket] | None] = queue.Queue(
            QUEUE_PACKETS)
        self._in_seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"rec-{self.camera}")
        # writer-thread state
        self._track: Track | None = None
        self._info: StreamInfo | None = None
        self._seg: Segment | None = None
        self._fd: int | None = None
        self._good = 0  # bytes of the segment file known complete
        self._frag_seq = 0
        self._pending = _Pending()
        self._base_in: int | None = None  # first input dts of the segment, ticks
        self._last_in: int | None = None
        self._shift = 0  # added to the input's timestamps to keep them going forward
        self._last_dur = round(DEFAULT_FRAME_S * TIMESCALE)
        self._last_seq = 0
        self._need_key = True
        self._next_space_check = 0.0

    # -- lifecycle (owner's thread) ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self.source.packets.subscribe(self._on_packet)

    def stop(self, timeout: float = 5.0) -> None:
        self.source.packets.unsubscribe(self._on_packet)
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _on_packet(self, info: StreamInfo, pkt: VideoPacket) -> None:
        """The ring's listener, on the source's thread: hand off, never block."""
        self._in_seq += 1
        try:
            self._q.put_nowait((self._in_seq, info, pkt))
        except queue.Full:
            self.status.queue_drops += 1

    # -- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._q.get(timeout=1.0)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    self._idle()
                    continue
                if item is None:
                    break
                try:
                    self._packet(*item)
                except Exception:  # never die: drop this segment and start again
                    log.exception("recorder %s: failed; starting a new segment", self.camera)
                    self._close()
                    self._need_key = True
        finally:
            self._close()
            self._set_state("stopped", None)

    def _set_state(self, state: State, reason: str | None) -> None:
        st = self.status
        if (st.state, st.reason) == (state, reason):
            return
        if state != st.state:
            log.info("recorder %s: %s%s", self.camera, state, f" ({reason})" if reason else "")
        st.state, st.reason, st.since = state, reason, time.time()
        self.sink.status_changed(replace(st))

    def _idle(self) -> None:
        if self.status.state == "paused":
            self._room(time.time())

    def _packet(self, seq: int, info: StreamInfo, pkt: VideoPacket) -> None:
        lost = seq != self._last_seq + 1 and self._last_seq != 0
        self._last_seq = seq
        if info is not self._info and info != self._info:
            self._close()
            self._info = info
            self._last_in, self._shift = None, 0
            self._need_key = True
            try:
                self._track = Track(info)
            except UnsupportedCodec as err:
                self._track = None
                self._set_state("unsupported", str(err))
        if self._track is None:
            self.status.dropped += 1
            return
        if lost:  # the queue overflowed: what follows needs a keyframe
            log.warning("recorder %s: packets lost (writer behind); new segment at the next "
                        "keyframe", self.camera)
            self._close()
            self._need_key = True
        data, changed = self._track.sample(pkt)
        tb = info.time_base or Fraction(1, TIMESCALE)
        ts = pkt.dts if pkt.dts is not None else pkt.pts
        raw = round(ts * tb * TIMESCALE) if ts is not None else round(pkt.wall * TIMESCALE)
        in_dts = raw + self._shift
        gap = in_dts - self._last_in if self._last_in is not None else None
        if gap is not None and self._last_in is not None and gap <= 0:
            # Repeated or slightly back: nudge by a tick. Far back (a looping file, a camera
            # whose clock was reset): carry on one frame after the last one.
            step = 1 if gap > -TIMESCALE // 2 else self._last_dur
            self._shift += self._last_in + step - in_dts
            in_dts, gap = self._last_in + step, step
        self._last_in = in_dts
        if gap is not None and 0 < gap <= TIMESCALE:
            self._last_dur = gap
        jumped = gap is not None and gap > MAX_GAP_S * TIMESCALE
        if self._seg is not None and (changed or jumped):
            self._close()
            self._need_key = True
        if self.status.state == "paused" and not self._room(pkt.wall):
            self.status.dropped += 1
            return
        if not data or (self._need_key and not pkt.keyframe):
            self.status.dropped += 1
            return
        if (self._seg is not None and pkt.keyframe
                and pkt.wall - self._seg.start >= self.segment_s):
            self._close()
        if self._seg is None:
            if not pkt.keyframe or not self._room(pkt.wall, force=True) or not self._open(pkt):
                self.status.dropped += 1
                self._need_key = True
                return
            self._base_in = in_dts
        elif not self._room(pkt.wall):
            self.status.dropped += 1
            return
        self._need_key = False
        assert self._base_in is not None and self._seg is not None
        dts = in_dts - self._base_in
        p = self._pending
        if p.dts and (pkt.keyframe or (dts - p.dts[0]) >= self.fragment_s * TIMESCALE):
            self._flush(dts)
            if self._seg is None:  # the write failed: paused
                self.status.dropped += 1
                return
            p = self._pending
        cto = 0
        if pkt.pts is not None and pkt.dts is not None:
            cto = round((pkt.pts - pkt.dts) * tb * TIMESCALE)
        if not p.dts:
            p.wall = pkt.wall
        p.dts.append(dts)
        p.meta.append((len(data), pkt.keyframe, cto))
        p.data.append(data)

    def _room(self, now: float, force: bool = False) -> bool:
        """Whether there is room to record (checked every ``SPACE_CHECK_S``, or now with
        ``force``); pauses when there is not, resumes when there is again."""
        paused = self.status.state == "paused"
        if not force and now < self._next_space_check:
            return not paused
        self._next_space_check = now + SPACE_CHECK_S
        need = self.min_free_bytes + (RESUME_MARGIN if paused else 0)
        if need <= 0:
            return True
        try:
            free = self._free(self.data_dir)
        except OSError as err:
            log.warning("recorder %s: cannot check free space: %s", self.camera, err)
            free = 0
        if free >= need:
            if paused:
                self._set_state("recording", None)
            return True
        if not paused:
            self._pause(f"disk space low: {free / 1e9:.2f} GB free, recording needs "
                        f"{self.min_free_bytes / 1e9:.2f} GB (min_free_gb)")
        return False

    def _pause(self, reason: str) -> None:
        self._close()
        self._need_key = True
        self._set_state("paused", reason)

    def _open(self, pkt: VideoPacket) -> bool:
        track = self._track
        assert track is not None and track.entry is not None and self._info is not None
        rel = segment_rel_path(self.camera, pkt.wall)
        path = self.data_dir / rel
        init = init_segment(b"", track.width, track.height, entry=track.entry,
                            name=b"GridHub recording")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as err:
            self._pause(_describe(err))
            return False
        self._fd, self._good, self._frag_seq = fd, 0, 0
        self._pending = _Pending()
        self._seg = Segment(self.camera, path, rel, pkt.wall, pkt.wall, 0,
                            self._info.codec, track.width, track.height)
        self.sink.segment_opened(replace(self._seg))
        if not self._write(init):
            return False
        self.status.segment = rel
        self.status.segments += 1
        if self.status.state != "recording":
            self._set_state("recording", None)
        return True

    def _write(self, data: bytes) -> bool:
        """Append to the segment; on failure cut it back to its last complete fragment,
        close it and pause."""
        assert self._fd is not None and self._seg is not None
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._good)
            self._pause(_describe(err))
            return False
        self._good += len(data)
        self._seg.size = self._good
        self.status.bytes += len(data)
        return True

    def _flush(self, next_dts: int | None) -> None:
        """Write the gathered samples as one fragment; the last one lasts until
        ``next_dts`` (None: its own duration, or the last interval seen)."""
        p, seg = self._pending, self._seg
        if not p.dts or seg is None:
            return
        self._pending = _Pending()
        ends = [*p.dts[1:], next_dts if next_dts is not None and next_dts > p.dts[-1]
                else p.dts[-1] + self._last_dur]
        samples = [(max(1, e - d), size, key, cto)
                   for d, e, (size, key, cto) in zip(p.dts, ends, p.meta, strict=True)]
        self._frag_seq += 1
        data = prft(p.wall, p.dts[0]) + fragment(self._frag_seq, p.dts[0], samples,
                                                 b"".join(p.data))
        if not self._write(data):
            return
        seg.fragments += 1
        seg.end = max(seg.end, p.wall + (ends[-1] - p.dts[0]) / TIMESCALE)
        self.sink.segment_progress(replace(seg))

    def _close(self) -> None:
        """Finish the segment being written (its last fragment, then the file)."""
        if self._seg is None:
            return
        self._flush(None)
        seg, fd = self._seg, self._fd
        self._seg, self._fd = None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._good)
                os.fsync(fd)
            os.close(fd)
        if seg is None:
            return
        seg.size = self._good
        seg.state = "complete" if seg.fragments else "empty"
        self.status.segment = None
        if not seg.fragments:  # nothing playable was written (a failed start): no file
            with contextlib.suppress(OSError):
                seg.path.unlink()
        self.sink.segment_closed(replace(seg))


def _describe(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {err.strerror}"
    return f"cannot write: {err.strerror or err}"


# --- one recorder per source --------------------------------------------------------------


class RecorderPool:
    """Keeps one :class:`Recorder` per running source, following sources as they come, go
    or are replaced (a camera changed at run time gets a new source and a new recorder)."""

    def __init__(self, data_dir: Path, *, sources: Callable[[], list[Source]],
                 segment_s: float = 60.0, min_free_bytes: int = 0,
                 fragment_s: float = 2.0) -> None:
        self.data_dir = data_dir
        self.sources = sources
        self.segment_s = segment_s
        self.fragment_s = fragment_s
        self.min_free_bytes = min_free_bytes
        self.sink: SegmentSink | None = None
        self.recorders: dict[str, Recorder] = {}
        self._lock = threading.Lock()

    def sync(self) -> None:
        """Start recorders for new sources, stop those of sources that went away."""
        if self.sink is None:
            raise RuntimeError("RecorderPool.sync() before a sink was set")
        current = {s.source_id: s for s in self.sources()}
        with self._lock:
            for cam, rec in list(self.recorders.items()):
                if current.get(cam) is not rec.source:
                    del self.recorders[cam]
                    rec.stop()
            for cam, src in current.items():
                if cam not in self.recorders:
                    rec = Recorder(src, self.data_dir, self.sink, segment_s=self.segment_s,
                                   fragment_s=self.fragment_s,
                                   min_free_bytes=self.min_free_bytes)
                    self.recorders[cam] = rec
                    rec.start()

    def stop_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            recs, self.recorders = list(self.recorders.values()), {}
        for rec in recs:
            rec.stop(timeout)

    def statuses(self) -> list[RecorderStatus]:
        with self._lock:
            return [replace(r.status) for r in self.recorders.values()]
