"""H.264 bitstream helpers and fragmented-MP4 boxes, sans I/O (used by :mod:`ingest.live`).

Annex B / length-prefixed NAL splitting, avcC parsing and building, the MSE codec string
and picture size from an SPS, and the ``ftyp``+``moov`` init segment and one-sample
``moof``+``mdat`` media segments of a single H.264 video track.
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


def init_segment(avcc: bytes, width: int, height: int) -> bytes:
    """``ftyp`` + ``moov`` for one H.264 video track (track 1, :data:`TIMESCALE`)."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso5iso6avc1mp41")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0),
                    struct.pack(">IH", 0x10000, 0x100), bytes(10), _MATRIX, bytes(24),
                    struct.pack(">I", 2))
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8),
                    struct.pack(">hhHH", 0, 0, 0, 0), _MATRIX,
                    struct.pack(">II", width << 16, height << 16))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, TIMESCALE, 0),
                    struct.pack(">HH", 0x55C4, 0))  # language "und"
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"GridHub live\x00")
    avc1 = box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16),
               struct.pack(">HHIIIH", width, height, 0x480000, 0x480000, 0, 1),
               bytes(32), struct.pack(">Hh", 0x18, -1), box(b"avcC", avcc))
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
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
