"""Recorded segment files: scan, repair after a crash, and cut clips by stream copy.

The files are those :mod:`ingest.recorder` writes: ``ftyp``+``moov`` (one video track,
empty sample tables, ``mvex``), then ``prft``+``moof``+``mdat`` fragments. Nothing here
decodes or encodes.

* :func:`scan` reads the boxes: the sample entry, every complete fragment (its wall-clock
  time from ``prft``, its samples from ``tfdt``/``trun``) and where the last complete
  fragment ends. A box cut short by a crash or a full disk ends the scan there.
* :func:`repair` cuts a file back to its last complete fragment and says when its media
  ends; a file without a usable fragment is reported damaged (and left in place).
* :func:`cut_clip` copies the samples of a wall-clock window (from the keyframe at or
  before its start) out of one or more segments into one plain MP4 with ``moov`` before
  ``mdat`` (a browser can start playing it at once), timestamps made continuous.

Exceptions::

    SegmentError      a file that is not a readable recording (no ftyp/moov, bad boxes)
     +-- NoMedia      nothing of the requested window is in the segments
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from ingest.fmp4 import box, full_box, ntp_to_unix

_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


class SegmentError(Exception):
    """Not a readable recording."""


class NoMedia(SegmentError):
    """No media of the requested window in the given segments."""


@dataclass
class Fragment:
    wall: float | None  # Unix time of its first sample (prft), if it has one
    media_time: int  # tfdt: decode time of its first sample, in timescale ticks
    # per sample: (duration, size, keyframe, cto)
    samples: list[tuple[int, int, bool, int]]
    data_offset: int  # file offset of the first sample's bytes
    end: int  # file offset just after its mdat


@dataclass
class Scan:
    """What a segment file holds."""

    path: Path
    size: int  # bytes in the file
    good_end: int  # bytes up to the end of the last complete fragment (or of the moov)
    timescale: int
    entry: bytes  # the stsd sample entry (avc1/hvc1 with its config), as stored
    codec: str
    width: int
    height: int
    fragments: list[Fragment] = field(default_factory=list)

    @property
    def start(self) -> float | None:
        f = next((f for f in self.fragments if f.wall is not None), None)
        return f.wall if f else None

    @property
    def end(self) -> float | None:
        f = next((f for f in reversed(self.fragments) if f.wall is not None), None)
        if f is None or f.wall is None:
            return None
        return f.wall + sum(s[0] for s in f.samples) / self.timescale

    @property
    def duration_s(self) -> float:
        return sum(s[0] for f in self.fragments for s in f.samples) / self.timescale


# --- boxes --------------------------------------------------------------------------------


def _children(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, bytes]:
    """Child boxes of a box body by type (the first of each type)."""
    out: dict[bytes, bytes] = {}
    i, end = start, len(data) if end is None else end
    while i + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, i)
        hdr = 8
        if size == 1:
            size, hdr = struct.unpack_from(">Q", data, i + 8)[0], 16
        elif size == 0:
            size = end - i
        if size < hdr or i + size > end:
            raise SegmentError(f"bad box {kind!r} at {i}")
        out.setdefault(kind, data[i + hdr:i + size])
        i += size
    return out


def _parse_moov(moov: bytes) -> tuple[int, bytes, str, int, int]:
    trak = _children(_children(moov)[b"trak"])
    tkhd = trak[b"tkhd"]
    width, height = (v >> 16 for v in struct.unpack_from(">II", tkhd, len(tkhd) - 8))
    mdia = _children(trak[b"mdia"])
    mdhd = mdia[b"mdhd"]
    timescale = struct.unpack_from(">I", mdhd, 12 if mdhd[0] == 0 else 20)[0]
    stbl = _children(_children(mdia[b"minf"])[b"stbl"])
    stsd = stbl[b"stsd"]
    size, kind = struct.unpack_from(">I4s", stsd, 8)
    entry = stsd[8:8 + size]
    return timescale, entry, {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc",
                              b"hev1": "hevc"}.get(kind, kind.decode("latin-1")), width, height


def _parse_moof(moof: bytes, moof_offset: int) -> tuple[int, list[tuple[int, int, bool, int]],
                                                       int]:
    """(base decode time, samples, file offset of the first sample's data) of a moof."""
    traf_body = _children(moof)[b"traf"]
    traf = _children(traf_body)
    tfhd = traf[b"tfhd"]
    flags = int.from_bytes(tfhd[1:4], "big")
    i = 8
    base = moof_offset  # default-base-is-moof (what the recorder writes)
    if flags & 0x1:
        base = struct.unpack_from(">Q", tfhd, i)[0]
        i += 8
    if flags & 0x2:
        i += 4
    d_dur = d_size = d_flags = 0
    if flags & 0x8:
        d_dur = struct.unpack_from(">I", tfhd, i)[0]
        i += 4
    if flags & 0x10:
        d_size = struct.unpack_from(">I", tfhd, i)[0]
        i += 4
    if flags & 0x20:
        d_flags = struct.unpack_from(">I", tfhd, i)[0]
    tfdt = traf.get(b"tfdt")
    media_time = 0
    if tfdt is not None:
        media_time = (struct.unpack_from(">Q", tfdt, 4)[0] if tfdt[0] == 1
                      else struct.unpack_from(">I", tfdt, 4)[0])
    trun = traf[b"trun"]
    version, tflags = trun[0], int.from_bytes(trun[1:4], "big")
    count = struct.unpack_from(">I", trun, 4)[0]
    j = 8
    offset = 0
    if tflags & 0x1:
        offset = struct.unpack_from(">i", trun, j)[0]
        j += 4
    first_flags = None
    if tflags & 0x4:
        first_flags = struct.unpack_from(">I", trun, j)[0]
        j += 4
    samples = []
    for n in range(count):
        dur, size, sflags, cto = d_dur, d_size, d_flags, 0
        if tflags & 0x100:
            dur = struct.unpack_from(">I", trun, j)[0]
            j += 4
        if tflags & 0x200:
            size = struct.unpack_from(">I", trun, j)[0]
            j += 4
        if tflags & 0x400:
            sflags = struct.unpack_from(">I", trun, j)[0]
            j += 4
        elif n == 0 and first_flags is not None:
            sflags = first_flags
        if tflags & 0x800:
            cto = struct.unpack_from(">i" if version else ">I", trun, j)[0]
            j += 4
        key = not (sflags >> 16) & 1  # sample_is_non_sync_sample
        samples.append((dur, size, key, cto))
    return media_time, samples, base + offset


def scan(path: Path) -> Scan:
    """The fragments of a segment file, up to the first incomplete or unreadable box."""
    size = path.stat().st_size
    with path.open("rb") as f:
        init: dict[bytes, bytes] = {}
        pos = 0
        while b"moov" not in init:
            kind, body_at, box_end = _header(f, pos, size)
            if kind is None or box_end > size or box_end - body_at > 64 << 20:
                raise SegmentError(f"{path.name}: no complete moov")
            f.seek(body_at)
            init[kind] = f.read(box_end - body_at)
            pos = box_end
        if b"ftyp" not in init:
            raise SegmentError(f"{path.name}: no ftyp")
        try:
            timescale, entry, codec, width, height = _parse_moov(init[b"moov"])
        except (KeyError, struct.error) as err:
            raise SegmentError(f"{path.name}: unreadable moov ({err})") from err
        out = Scan(path, size, pos, timescale, entry, codec, width, height)
        wall: float | None = None
        while True:
            kind, body_at, box_end = _header(f, pos, size)
            if kind is None or box_end > size:
                break
            if kind == b"prft":
                f.seek(body_at)
                body = f.read(box_end - body_at)
                if len(body) >= 16:
                    ntp = struct.unpack_from(">Q", body, 8)[0]
                    wall = ntp_to_unix(ntp)
                pos = box_end
                continue
            if kind != b"moof":
                if kind == b"mdat":  # an mdat without its moof: cannot be used
                    break
                pos = box_end  # another box (free, skip...): step over
                continue
            f.seek(body_at)
            moof = f.read(box_end - body_at)
            kind2, mdat_body, mdat_end = _header(f, box_end, size)
            if kind2 != b"mdat" or mdat_end > size:
                break
            try:
                media_time, samples, data_at = _parse_moof(moof, pos)
            except (KeyError, struct.error, SegmentError):
                break
            if not samples or data_at < mdat_body or data_at + sum(s[1] for s in samples) \
                    > mdat_end:
                break
            out.fragments.append(Fragment(wall, media_time, samples, data_at, mdat_end))
            out.good_end = pos = mdat_end
            wall = None
    return out


def _header(f: BinaryIO, pos: int, size: int) -> tuple[bytes | None, int, int]:
    """(type, offset of the body, offset of the end) of the box at ``pos``."""
    if pos + 8 > size:
        return None, pos, pos
    f.seek(pos)
    hdr = f.read(16)
    n, kind = struct.unpack_from(">I4s", hdr)
    body = pos + 8
    if n == 1:
        if len(hdr) < 16:
            return None, pos, pos
        n = struct.unpack_from(">Q", hdr, 8)[0]
        body = pos + 16
    elif n == 0:
        n = size - pos
    if n < body - pos:
        return None, pos, pos
    return kind, body, pos + n


# --- repair -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    state: Literal["complete", "repaired", "damaged"]
    size: int
    start: float | None
    end: float | None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    cut_bytes: int = 0  # bytes of incomplete fragments removed
    reason: str | None = None


def repair(path: Path) -> Repair:
    """Cut ``path`` back to its last complete fragment. ``complete``: nothing to cut;
    ``repaired``: cut; ``damaged``: no usable fragment (the file is left as it is)."""
    try:
        s = scan(path)
    except FileNotFoundError:
        return Repair("damaged", 0, None, None, reason="file missing")
    except (SegmentError, OSError) as err:
        size = path.stat().st_size if path.exists() else 0
        return Repair("damaged", size, None, None, reason=str(err))
    if not s.fragments:
        return Repair("damaged", s.size, None, None, s.codec, s.width, s.height,
                      reason="no complete fragment")
    cut = s.size - s.good_end
    if cut:
        with path.open("r+b") as f:
            f.truncate(s.good_end)
            os.fsync(f.fileno())
    return Repair("repaired" if cut else "complete", s.good_end, s.start, s.end, s.codec,
                  s.width, s.height, cut)


# --- clips --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    path: Path
    start: float  # wall-clock time of its first frame
    end: float  # ... and of the end of its last frame
    duration_s: float
    size: int
    samples: int


@dataclass
class _Sample:
    src: int  # index of its scan
    offset: int
    size: int
    duration: int
    key: bool
    cto: int
    wall: float


def scan_all(paths: list[Path]) -> list[Scan]:
    """The scans of ``paths`` that can be read; a damaged segment is a gap, not a failure."""
    scans = []
    for p in paths:
        try:
            scans.append(scan(p))
        except (SegmentError, OSError):
            continue
    return scans


def cut_clip(paths: list[Path], start: float, end: float, out: Path,
             scans: list[Scan] | None = None) -> Clip:
    """Copy the frames of ``[start, end]`` (wall clock), from the keyframe at or before
    ``start``, out of the segments ``paths`` (oldest first) into one MP4 at ``out``.

    ``scans``: the segments already scanned (``scan_all(paths)``), so that a caller that
    also reads them (the replay map) sees the very same fragments while a segment is still
    being written."""
    if scans is None:
        scans = scan_all(paths)
    samples: list[_Sample] = []
    entry: bytes | None = None
    timescale = 0
    width = height = 0
    for i, s in enumerate(scans):
        if s.end is None or s.end < start or (s.start is not None and s.start > end):
            continue
        if entry is None:
            entry, timescale, width, height = s.entry, s.timescale, s.width, s.height
        elif (s.entry, s.timescale) != (entry, timescale):
            continue  # another stream (new parameters): one sample entry per clip
        for f in s.fragments:
            if f.wall is None:
                continue
            off, t = f.data_offset, f.wall
            for dur, size, key, cto in f.samples:
                samples.append(_Sample(i, off, size, dur, key, cto, t))
                off += size
                t += dur / timescale
    if entry is None or not samples:
        raise NoMedia("no recording covers the window")
    first = next((k for k in range(len(samples) - 1, -1, -1)
                  if samples[k].key and samples[k].wall <= start), None)
    if first is None:
        first = next((k for k, smp in enumerate(samples) if smp.key), None)
    if first is None:
        raise NoMedia("no keyframe in the window")
    last = max((k for k in range(first, len(samples)) if samples[k].wall < end), default=first)
    chosen = samples[first:last + 1]
    data = _progressive_mp4(chosen, entry, timescale, width, height)
    tmp = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {i: scans[i].path.open("rb") for i in {smp.src for smp in chosen}}
    try:
        with tmp.open("wb") as w:
            w.write(data)
            for run in _runs(chosen):
                src = files[run[0].src]
                src.seek(run[0].offset)
                w.write(src.read(sum(smp.size for smp in run)))
            w.flush()
            os.fsync(w.fileno())
    finally:
        for src in files.values():
            src.close()
    tmp.replace(out)
    total = sum(smp.duration for smp in chosen)
    return Clip(out, chosen[0].wall, chosen[-1].wall + chosen[-1].duration / timescale,
                total / timescale, out.stat().st_size, len(chosen))


def _runs(samples: list[_Sample]) -> list[list[_Sample]]:
    """Samples grouped into runs contiguous in one file (each becomes one chunk)."""
    runs: list[list[_Sample]] = []
    for smp in samples:
        if runs and runs[-1][-1].src == smp.src \
                and runs[-1][-1].offset + runs[-1][-1].size == smp.offset:
            runs[-1].append(smp)
        else:
            runs.append([smp])
    return runs


def _progressive_mp4(samples: list[_Sample], entry: bytes, timescale: int, width: int,
                     height: int) -> bytes:
    """``ftyp`` + ``moov`` + the ``mdat`` header for ``samples`` laid out in order."""
    runs = _runs(samples)
    total = sum(s.duration for s in samples)
    ms = round(total * 1000 / timescale)
    stts: list[list[int]] = []
    for s in samples:
        if stts and stts[-1][1] == s.duration:
            stts[-1][0] += 1
        else:
            stts.append([1, s.duration])
    ctts: list[list[int]] = []
    for s in samples:
        if ctts and ctts[-1][1] == s.cto:
            ctts[-1][0] += 1
        else:
            ctts.append([1, s.cto])
    stsc: list[tuple[int, int]] = []
    for n, run in enumerate(runs, 1):
        if not stsc or stsc[-1][1] != len(run):
            stsc.append((n, len(run)))
    sync = [n for n, s in enumerate(samples, 1) if s.key]
    dts, first_cts = 0, None  # the earliest composition time (B-frames: > 0)
    for s in samples:
        first_cts = dts + s.cto if first_cts is None else min(first_cts, dts + s.cto)
        dts += s.duration
    first_cts = max(0, first_cts or 0)

    def build(chunk_base: int) -> bytes:
        offsets, pos = [], chunk_base
        for run in runs:
            offsets.append(pos)
            pos += sum(s.size for s in run)
        tables = [
            full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
            full_box(b"stts", 0, 0, struct.pack(">I", len(stts)),
                     b"".join(struct.pack(">II", c, d) for c, d in stts)),
        ]
        if any(c for _, c in ctts):
            tables.append(full_box(b"ctts", 1, 0, struct.pack(">I", len(ctts)),
                                   b"".join(struct.pack(">Ii", n, c) for n, c in ctts)))
        tables += [
            full_box(b"stss", 0, 0, struct.pack(">I", len(sync)),
                     b"".join(struct.pack(">I", n) for n in sync)),
            full_box(b"stsc", 0, 0, struct.pack(">I", len(stsc)),
                     b"".join(struct.pack(">III", f, n, 1) for f, n in stsc)),
            full_box(b"stsz", 0, 0, struct.pack(">II", 0, len(samples)),
                     b"".join(struct.pack(">I", s.size) for s in samples)),
            full_box(b"co64", 0, 0, struct.pack(">I", len(offsets)),
                     b"".join(struct.pack(">Q", o) for o in offsets)),
        ]
        mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, ms),
                        struct.pack(">IH", 0x10000, 0x100), bytes(10), _MATRIX, bytes(24),
                        struct.pack(">I", 2))
        tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, ms), bytes(8),
                        struct.pack(">hhHH", 0, 0, 0, 0), _MATRIX,
                        struct.pack(">II", width << 16, height << 16))
        edts = box(b"edts", full_box(b"elst", 0, 0, struct.pack(">IIiHH", 1, ms, first_cts,
                                                                   1, 0))) if first_cts else b""
        mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, total),
                        struct.pack(">HH", 0x55C4, 0))
        hdlr = full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"GridHub clip\x00")
        dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1),
                                     full_box(b"url ", 0, 1)))
        minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), dinf, box(b"stbl", *tables))
        trak = box(b"trak", tkhd, edts, box(b"mdia", mdhd, hdlr, minf))
        return box(b"moov", mvhd, trak)

    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    payload = sum(s.size for s in samples)
    large = payload + 8 > 0xFFFFFFFF
    mdat_hdr = (struct.pack(">I4sQ", 1, b"mdat", payload + 16) if large
                else struct.pack(">I4s", payload + 8, b"mdat"))
    moov = build(0)  # same size whatever the offsets (co64): build twice
    moov = build(len(ftyp) + len(moov) + len(mdat_hdr))
    return ftyp + moov + mdat_hdr
