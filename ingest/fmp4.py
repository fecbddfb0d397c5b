"""H.264/HEVC bitstream helpers and fragmented-MP4 boxes, sans I/O (used by
:mod:`ingest.live` and :mod:`ingest.recorder`).

Annex B / length-prefixed NAL splitting, avcC parsing and building, hvcC building from
HEVC VPS/SPS/PPS, the MSE codec string and picture size from an SPS, and the
``ftyp``+``moov`` init segment and ``moof``+``mdat`` media segments (one sample for the
live wall, a GOP for recordings, each then preceded by a ``prft`` box giving the
wall-clock time of its first sample) of a single video track.
"""

from __future__ import annotations

import struct

TIMESCALE = 90_000  # ticks per second of the output track
DEFAULT_FRAME_TICKS = TIMESCALE // 25


# --- H.264 bitstream ---------------------------------------------------------------------

NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 5, 6, 7, 8, 9


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (``00 00 01`` / ``00 00 00 01`` start codes)."""
    nals: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        nal = data[start:end].rstrip(b"\x00") if nxt >= 0 else data[start:end]
        if nal:
            nals.append(nal)
        i = nxt
    return nals


def split_lengths(data: bytes, length_size: int = 4) -> list[bytes]:
    """NAL units of a length-prefixed (AVCC) access unit."""
    nals, i = [], 0
    while i + length_size <= len(data):
        n = int.from_bytes(data[i:i + length_size], "big")
        i += length_size
        if n == 0 or i + n > len(data):
            break
        nals.append(data[i:i + n])
        i += n
    return nals


def is_annexb(data: bytes) -> bool:
    return data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")


def parse_avcc(avcc: bytes) -> tuple[list[bytes], list[bytes], int]:
    """(SPS list, PPS list, NAL length size) of an AVCDecoderConfigurationRecord."""
    if len(avcc) < 7 or avcc[0] != 1:
        raise ValueError("not an avcC record")
    length_size = (avcc[4] & 3) + 1
    i, sps, pps = 6, [], []
    for _ in range(avcc[5] & 0x1F):
        n = int.from_bytes(avcc[i:i + 2], "big")
        sps.append(avcc[i + 2:i + 2 + n])
        i += 2 + n
    count = avcc[i]
    i += 1
    for _ in range(count):
        n = int.from_bytes(avcc[i:i + 2], "big")
        pps.append(avcc[i + 2:i + 2 + n])
        i += 2 + n
    if not sps or not pps or any(len(s) < 4 for s in sps):
        raise ValueError("avcC without SPS/PPS")
    return sps, pps, length_size


def build_avcc(sps: list[bytes], pps: list[bytes]) -> bytes:
    """An avcC record (4-byte NAL lengths) from SPS and PPS NAL units."""
    out = bytearray([1, sps[0][1], sps[0][2], sps[0][3], 0xFF, 0xE0 | len(sps)])
    for s in sps:
        out += len(s).to_bytes(2, "big") + s
    out.append(len(pps))
    for p in pps:
        out += len(p).to_bytes(2, "big") + p
    return bytes(out)


def codec_string(sps: bytes) -> str:
    """The RFC 6381 codec string MSE wants, ``avc1.PPCCLL``, from an SPS NAL unit."""
    return f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.v = int.from_bytes(data, "big")
        self.n = len(data) * 8
        self.pos = 0

    def u(self, k: int) -> int:
        if self.pos + k > self.n:
            raise ValueError("SPS truncated")
        self.pos += k
        return (self.v >> (self.n - self.pos)) & ((1 << k) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def sps_dimensions(sps: bytes) -> tuple[int, int]:
    """Coded picture (width, height) after cropping, from an SPS NAL unit."""
    b = _Bits(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    b.ue()  # seq_parameter_set_id
    chroma, separate = 1, 0
    if profile in HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            separate = b.u(1)
        b.ue(), b.ue(), b.u(1)  # bit depths, qpprime_y_zero_transform_bypass
        if b.u(1):  # seq_scaling_matrix_present
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + b.se() + 256) % 256
                        last = nxt or last
    b.ue()  # log2_max_frame_num_minus4
    poc = b.ue()
    if poc == 0:
        b.ue()
    elif poc == 1:
        b.u(1), b.se(), b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue(), b.u(1)  # max_num_ref_frames, gaps_in_frame_num_allowed
    w_mbs, h_units = b.ue() + 1, b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)
    b.u(1)  # direct_8x8_inference
    crop = (0, 0, 0, 0)
    if b.u(1):
        crop = (b.ue(), b.ue(), b.ue(), b.ue())
    if chroma == 0 or separate:
        cx, cy = 1, 2 - frame_mbs_only
    else:
        cx, cy = (1 if chroma == 3 else 2), (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
    width = w_mbs * 16 - cx * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * h_units * 16 - cy * (crop[2] + crop[3])
    return width, height


# --- ISO BMFF boxes ------------------------------------------------------------------------


def box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def sample_entry_avc1(avcc: bytes, width: int, height: int) -> bytes:
    """The ``avc1`` sample entry (with its ``avcC``) of an H.264 track."""
    return _visual_entry(b"avc1", width, height, box(b"avcC", avcc))


def sample_entry_hvc1(hvcc: bytes, width: int, height: int) -> bytes:
    """The ``hvc1`` sample entry (parameter sets only in its ``hvcC``) of an HEVC track."""
    return _visual_entry(b"hvc1", width, height, box(b"hvcC", hvcc))


def _visual_entry(kind: bytes, width: int, height: int, config: bytes) -> bytes:
    return box(kind, bytes(6), struct.pack(">H", 1), bytes(16),
               struct.pack(">HHIIIH", width, height, 0x480000, 0x480000, 0, 1),
               bytes(32), struct.pack(">Hh", 0x18, -1), config)


def init_segment(avcc: bytes, width: int, height: int, *, entry: bytes | None = None,
                 name: bytes = b"GridHub live") -> bytes:
    """``ftyp`` + ``moov`` for one video track (track 1, :data:`TIMESCALE`): H.264 from
    ``avcc``, or any codec's ready-made sample ``entry``."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso5iso6avc1mp41")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0),
                    struct.pack(">IH", 0x10000, 0x100), bytes(10), _MATRIX, bytes(24),
                    struct.pack(">I", 2))
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8),
                    struct.pack(">hhHH", 0, 0, 0, 0), _MATRIX,
                    struct.pack(">II", width << 16, height << 16))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, TIMESCALE, 0),
                    struct.pack(">HH", 0x55C4, 0))  # language "und"
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), name + b"\x00")
    sample = entry if entry is not None else sample_entry_avc1(avcc, width, height)
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample),
               full_box(b"stts", 0, 0, bytes(4)), full_box(b"stsc", 0, 0, bytes(4)),
               full_box(b"stsz", 0, 0, bytes(8)), full_box(b"stco", 0, 0, bytes(4)))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1),
                                 full_box(b"url ", 0, 1)))
    minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    return ftyp + box(b"moov", mvhd, trak, mvex)


SAMPLE_KEY = 0x02000000  # sample_depends_on = 2 (an I-frame)
SAMPLE_DELTA = 0x01010000  # depends on others, non-sync


def media_segment(seq: int, dts: int, duration: int, cto: int, keyframe: bool,
                  data: bytes) -> bytes:
    """``moof`` + ``mdat`` carrying one sample (tfdt in :data:`TIMESCALE` ticks)."""
    trun_flags = 0x1 | 0x100 | 0x200 | 0x400 | 0x800  # offset, duration, size, flags, cto
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", seq & 0xFFFFFFFF))
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))  # default-base-is-moof
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", dts))
    # moof(8) + mfhd(16) + traf(8) + tfhd(16) + tfdt(20) + trun(12 + 4 + 4 + 16) = 104
    moof_size = 8 + len(mfhd) + 8 + len(tfhd) + len(tfdt) + 36
    trun = full_box(b"trun", 1, trun_flags, struct.pack(
        ">IiIIIi", 1, moof_size + 8, duration, len(data),
        SAMPLE_KEY if keyframe else SAMPLE_DELTA, cto))
    return (box(b"moof", mfhd, box(b"traf", tfhd, tfdt, trun))
            + struct.pack(">I", 8 + len(data)) + b"mdat" + data)


def _param_id(rbsp_tail: bytes) -> int:
    """seq/pic_parameter_set_id: the exp-Golomb number a parameter set's payload starts
    with (after the header, and for an SPS after profile, constraints and level)."""
    try:
        return _Bits(rbsp_tail[:8].replace(b"\x00\x00\x03", b"\x00\x00")).ue()
    except ValueError:
        return 0


# --- recordings: GOP fragments with their wall-clock time ---------------------------------

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


def prft(wall: float, media_time: int) -> bytes:
    """``prft`` (producer reference time, version 1): ``wall`` (Unix seconds) as an NTP
    timestamp for media time ``media_time`` (track 1, :data:`TIMESCALE` ticks)."""
    secs = wall + NTP_UNIX_OFFSET
    ntp = (int(secs) << 32) | int((secs % 1) * (1 << 32))
    return full_box(b"prft", 1, 0, struct.pack(">IQQ", 1, ntp, media_time))


def ntp_to_unix(ntp: int) -> float:
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def fragment(seq: int, base_dts: int, samples: list[tuple[int, int, bool, int]],
             data: bytes) -> bytes:
    """``moof`` + ``mdat`` carrying ``samples`` (duration, size, keyframe, cto; ticks and
    bytes) whose bytes are ``data``, in order; ``tfdt`` is ``base_dts``."""
    flags = 0x1 | 0x100 | 0x200 | 0x400 | 0x800  # offset, duration, size, flags, cto
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", seq & 0xFFFFFFFF))
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))  # default-base-is-moof
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_dts))
    n = len(samples)
    moof_size = 8 + len(mfhd) + 8 + len(tfhd) + len(tfdt) + 20 + 16 * n
    entries = b"".join(
        struct.pack(">IIIi", dur, size, SAMPLE_KEY if key else SAMPLE_DELTA, cto)
        for dur, size, key, cto in samples)
    trun = full_box(b"trun", 1, flags, struct.pack(">Ii", n, moof_size + 8), entries)
    return (box(b"moof", mfhd, box(b"traf", tfhd, tfdt, trun))
            + struct.pack(">I", 8 + len(data)) + b"mdat" + data)


# --- HEVC ---------------------------------------------------------------------------------

HEVC_VPS, HEVC_SPS, HEVC_PPS, HEVC_AUD = 32, 33, 34, 35


def hevc_type(nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F


def _rbsp(nal: bytes, header: int) -> bytes:
    return nal[header:].replace(b"\x00\x00\x03", b"\x00\x00")


class HevcSps:
    """What an ``hvcC`` record and a sample entry need from an HEVC SPS."""

    def __init__(self, sps: bytes) -> None:
        rbsp = _rbsp(sps, 2)
        if len(rbsp) < 13:
            raise ValueError("HEVC SPS truncated")
        b = _Bits(rbsp)
        b.u(4)  # sps_video_parameter_set_id
        self.max_sub_layers = b.u(3) + 1
        self.temporal_id_nested = b.u(1)
        self.ptl = rbsp[1:13]  # general profile/tier/level: 12 bytes
        b.u(96)
        present = [(b.u(1), b.u(1)) for _ in range(self.max_sub_layers - 1)]
        if self.max_sub_layers > 1:
            for _ in range(self.max_sub_layers - 1, 8):
                b.u(2)
        for prof, lev in present:
            if prof:
                b.u(32), b.u(32), b.u(24)  # 88 bits
            if lev:
                b.u(8)
        b.ue()  # sps_seq_parameter_set_id
        self.chroma = b.ue()
        if self.chroma == 3:
            b.u(1)
        width, height = b.ue(), b.ue()
        if b.u(1):  # conformance window
            sub_w = 2 if self.chroma in (1, 2) else 1
            sub_h = 2 if self.chroma == 1 else 1
            left, right, top, bottom = b.ue(), b.ue(), b.ue(), b.ue()
            width -= sub_w * (left + right)
            height -= sub_h * (top + bottom)
        self.width, self.height = width, height
        self.depth_luma = b.ue()
        self.depth_chroma = b.ue()


def build_hvcc(vps: list[bytes], sps: list[bytes], pps: list[bytes]) -> bytes:
    """An ``hvcC`` record (4-byte NAL lengths) from HEVC VPS, SPS and PPS NAL units."""
    info = HevcSps(sps[0])
    out = bytearray([1]) + info.ptl
    out += struct.pack(">HBBBBH", 0xF000, 0xFC, 0xFC | info.chroma, 0xF8 | info.depth_luma,
                       0xF8 | info.depth_chroma, 0)
    out.append((min(info.max_sub_layers, 7) << 3) | (info.temporal_id_nested << 2) | 3)
    arrays = [(HEVC_VPS, vps), (HEVC_SPS, sps), (HEVC_PPS, pps)]
    out.append(len(arrays))
    for kind, nals in arrays:
        out += struct.pack(">BH", 0x80 | kind, len(nals))
        for n in nals:
            out += struct.pack(">H", len(n)) + n
    return bytes(out)


def parse_hvcc(hvcc: bytes) -> tuple[dict[int, list[bytes]], int]:
    """(NAL units by type, NAL length size) of an ``hvcC`` record."""
    if len(hvcc) < 23 or hvcc[0] != 1:
        raise ValueError("not an hvcC record")
    length_size = (hvcc[21] & 3) + 1
    i, out = 23, dict[int, list[bytes]]()
    for _ in range(hvcc[22]):
        kind, count = hvcc[i] & 0x3F, int.from_bytes(hvcc[i + 1:i + 3], "big")
        i += 3
        for _ in range(count):
            n = int.from_bytes(hvcc[i:i + 2], "big")
            out.setdefault(kind, []).append(hvcc[i + 2:i + 2 + n])
            i += 2 + n
    return out, length_size
