"""WHIP (RFC 9725) offers and answers as pure functions: no sockets, no aiortc.

The HTTP layer (:mod:`ingest.whip_http`) calls these before and after the peer
connection (:mod:`ingest.webrtc`) does its work:

* :func:`check_content_type` and :func:`check_offer` reject what the hub will not try to
  negotiate (not SDP, binary, huge, no sendable VP8/H.264 video, no ICE credentials or
  DTLS fingerprint) with a reason a client can show;
* :func:`munge_answer` adds bitrate hints to the answer's video section. aiortc only
  offers REMB feedback, and a browser with no hints starts its bandwidth estimate low
  and adapts the resolution down (Chromium publishes 640x360 from a 720p camera). Chromium
  honours ``b=AS`` (kbit/s) and ``b=TIAS`` (bit/s) of the remote description as the send
  ceiling, and the ``x-google-min-bitrate``/``x-google-start-bitrate``/
  ``x-google-max-bitrate`` fmtp parameters (kbit/s) of the negotiated codec as its
  bandwidth-estimator floor, start and ceiling (the same hints Janus and mediasoup add).

Errors (all carry the HTTP status a WHIP endpoint answers with)::

    WhipError                 400 base: the offer cannot be used
     +-- BadOffer             400 malformed, hostile or unsupported SDP
     +-- UnsupportedMediaType 415 Content-Type is not application/sdp
     +-- OfferTooLarge        413 body over the limit
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_OFFER_BYTES", "BadOffer", "BitrateHints", "OfferSummary", "OfferTooLarge",
    "UnsupportedMediaType", "WhipError", "check_content_type", "check_offer",
    "count_candidates", "munge_answer",
]

MAX_OFFER_BYTES = 64 * 1024
MAX_LINES = 2000
MAX_LINE_CHARS = 4096
MAX_MEDIA_SECTIONS = 16
MAX_CANDIDATES = 128
VIDEO_CODECS = ("VP8", "H264")  # what aiortc decodes and the hub accepts
_HINTED_CODECS = {"VP8", "VP9", "H264", "H265", "AV1"}  # never rtx, red, ulpfec, flexfec
_MEDIA_KINDS = {"audio", "video", "application", "text", "message"}
_LINE = re.compile(r"^[a-z]=")
_MLINE = re.compile(r"^m=(\S+) (\d{1,5})(?:/\d{1,5})? (\S+)((?: \S+)*)$")
_RTPMAP = re.compile(r"^a=rtpmap:(\d{1,3}) ([A-Za-z0-9_.-]{1,32})/(\d{1,6})(?:/\d{1,2})?$")
_FMTP = re.compile(r"^a=fmtp:(\d{1,3}) ?(.*)$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DIRECTIONS = {"sendrecv", "sendonly", "recvonly", "inactive"}


class WhipError(Exception):
    """The request cannot start a WHIP session; ``status`` is the HTTP answer."""

    status = 400


class BadOffer(WhipError):
    """Malformed, hostile or unsupported SDP offer."""

    status = 400


class UnsupportedMediaType(WhipError):
    """The body is not ``application/sdp``."""

    status = 415


class OfferTooLarge(WhipError):
    """The body is over the size limit."""

    status = 413


@dataclass(frozen=True)
class OfferSummary:
    """What the hub learnt from an offer it accepts."""

    video_codecs: tuple[str, ...]  # of the first sendable video section, offer order
    media: tuple[str, ...]  # every section's kind, in order
    data_channel: bool  # an application (SCTP) section the client may open "telemetry" on
    candidates: int  # ICE candidates in the offer (0: the client trickles, unsupported)


@dataclass(frozen=True)
class BitrateHints:
    """Bitrate hints for the answer's video section, in kbit/s."""

    min_kbps: int = 500
    start_kbps: int = 1500
    max_kbps: int = 2500

    def __post_init__(self) -> None:
        if not 0 < self.min_kbps <= self.start_kbps <= self.max_kbps <= 100_000:
            raise ValueError(f"bitrate hints need 0 < min <= start <= max <= 100000: {self}")


def check_content_type(value: str | None) -> None:
    """Accept ``application/sdp`` (with or without parameters); else 415."""
    mime = (value or "").split(";", 1)[0].strip().lower()
    if mime != "application/sdp":
        shown = (value or "none")[:80]
        raise UnsupportedMediaType(f"Content-Type must be application/sdp, got {shown!r}")


def check_offer(body: bytes, *, max_bytes: int = MAX_OFFER_BYTES) -> OfferSummary:
    """Validate a WHIP offer and summarise it; raise a :class:`WhipError` naming the problem."""
    if len(body) > max_bytes:
        raise OfferTooLarge(f"SDP offer is {len(body)} bytes, over the {max_bytes} byte limit")
    if not body.strip():
        raise BadOffer("empty body: expected an SDP offer")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadOffer(f"SDP offer is not UTF-8 text (byte {err.start})") from err
    if _CONTROL.search(text):
        raise BadOffer("SDP offer contains binary/control characters")
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    if len(lines) > MAX_LINES:
        raise BadOffer(f"SDP offer has {len(lines)} lines, over the {MAX_LINES} line limit")
    if not lines or lines[0].strip() != "v=0":
        raise BadOffer("not SDP: the first line must be v=0")
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise BadOffer(f"SDP line {n} is over {MAX_LINE_CHARS} characters")
        if not _LINE.match(line):
            raise BadOffer(f"SDP line {n} is not <letter>=<value>: {line[:40]!r}")

    session, sections = _split(lines)
    if not any(ln.startswith("o=") for ln in session):
        raise BadOffer("SDP offer has no o= line")
    if not any(ln.startswith("s=") for ln in session):
        raise BadOffer("SDP offer has no s= line")
    if not sections:
        raise BadOffer("SDP offer has no media section (m= line)")
    if len(sections) > MAX_MEDIA_SECTIONS:
        raise BadOffer(f"SDP offer has {len(sections)} media sections, over {MAX_MEDIA_SECTIONS}")

    media: list[str] = []
    video_codecs: tuple[str, ...] | None = None
    seen_video = False
    candidates = 0
    for sec in sections:
        kind, port, proto, fmts = _parse_mline(sec[0])
        media.append(kind)
        candidates += sum(1 for ln in sec if ln.startswith("a=candidate:"))
        if kind != "video":
            continue
        seen_video = True
        if port == 0 or video_codecs is not None:
            continue
        if "SAVPF" not in proto.upper():
            raise BadOffer(f"video section uses {proto}; WebRTC needs UDP/TLS/RTP/SAVPF")
        direction = _attr_value(sec, _DIRECTIONS) or _attr_value(session, _DIRECTIONS)
        if direction in ("recvonly", "inactive"):
            raise BadOffer(f"video section is {direction}: a WHIP client must send video")
        codecs = _video_codecs(sec, fmts)
        if not codecs:
            raise BadOffer("the video section offers neither VP8 nor H.264")
        for attr, what in (("ice-ufrag", "ICE username fragment (a=ice-ufrag)"),
                           ("ice-pwd", "ICE password (a=ice-pwd)"),
                           ("fingerprint", "DTLS fingerprint (a=fingerprint)")):
            if not _has_attr(sec, attr) and not _has_attr(session, attr):
                raise BadOffer(f"the video section has no {what}")
        video_codecs = codecs
    if not seen_video:
        raise BadOffer("SDP offer has no video section (m=video)")
    if video_codecs is None:
        raise BadOffer("every video section is disabled (port 0)")
    if candidates > MAX_CANDIDATES:
        raise BadOffer(f"SDP offer has {candidates} ICE candidates, over {MAX_CANDIDATES}")
    return OfferSummary(
        video_codecs=video_codecs, media=tuple(media),
        data_channel="application" in media, candidates=candidates,
    )


def count_candidates(sdp: str) -> int:
    """ICE candidates in an SDP (an answer without any cannot connect)."""
    return sum(1 for ln in sdp.splitlines() if ln.startswith("a=candidate:"))


def munge_answer(sdp: str, hints: BitrateHints) -> str:
    """The answer with ``b=AS``/``b=TIAS`` on each video section and x-google bitrate
    fmtp parameters on its video codecs (existing values replaced, line ends kept)."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.replace("\r\n", "\n").split("\n")
    trailing = lines[-1] == ""
    if trailing:
        lines.pop()
    session, sections = _split(lines)
    out = list(session)
    for sec in sections:
        out += _hint_video(sec, hints) if sec[0].startswith("m=video ") else sec
    return eol.join(out) + (eol if trailing else "")


# --- helpers ------------------------------------------------------------------------


def _split(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _parse_mline(line: str) -> tuple[str, int, str, list[str]]:
    m = _MLINE.match(line.rstrip())
    if m is None:
        raise BadOffer(f"malformed m= line: {line[:60]!r}")
    kind, port, proto, fmts = m.group(1), int(m.group(2)), m.group(3), m.group(4).split()
    if kind not in _MEDIA_KINDS:
        raise BadOffer(f"unknown media kind {kind[:20]!r} in m= line")
    if port > 65535:
        raise BadOffer(f"m= line port {port} is out of range")
    return kind, port, proto, fmts


def _has_attr(lines: list[str], name: str) -> bool:
    return any(ln.startswith(f"a={name}:") and len(ln) > len(name) + 3 for ln in lines)


def _attr_value(lines: list[str], flags: set[str]) -> str | None:
    for ln in lines:
        if ln.startswith("a=") and ln[2:].strip() in flags:
            return ln[2:].strip()
    return None


def _video_codecs(sec: list[str], fmts: list[str]) -> tuple[str, ...]:
    names: dict[str, str] = {}
    for ln in sec:
        m = _RTPMAP.match(ln.rstrip())
        if m:
            names[m.group(1)] = m.group(2).upper()
    out: list[str] = []
    for pt in fmts:
        name = names.get(pt)
        if name in VIDEO_CODECS and name not in out:
            out.append(name)
    return tuple(out)


def _hint_video(sec: list[str], hints: BitrateHints) -> list[str]:
    codec_pts = []
    for ln in sec:
        m = _RTPMAP.match(ln.rstrip())
        if m and m.group(2).upper() in _HINTED_CODECS and m.group(1) not in codec_pts:
            codec_pts.append(m.group(1))
    params = {
        "x-google-min-bitrate": str(hints.min_kbps),
        "x-google-start-bitrate": str(hints.start_kbps),
        "x-google-max-bitrate": str(hints.max_kbps),
    }
    body = [ln for ln in sec[1:] if not ln.startswith("b=")]
    # RFC 8866 order: m, i, c, b, k, a. Bandwidth lines go after the last i=/c= line.
    at = 0
    for i, ln in enumerate(body):
        if ln.startswith(("i=", "c=")):
            at = i + 1
    bw = [f"b=AS:{hints.max_kbps}", f"b=TIAS:{hints.max_kbps * 1000}"]
    body = body[:at] + bw + body[at:]
    has_fmtp: set[str] = set()
    for i, ln in enumerate(body):
        m = _FMTP.match(ln.rstrip())
        if m and m.group(1) in codec_pts:
            has_fmtp.add(m.group(1))
            kept = [p for p in m.group(2).split(";")
                    if p.strip() and p.split("=", 1)[0].strip() not in params]
            merged = kept + [f"{k}={v}" for k, v in params.items()]
            body[i] = f"a=fmtp:{m.group(1)} " + ";".join(merged)
    for pt in codec_pts:
        if pt in has_fmtp:
            continue
        # A codec without fmtp (VP8 usually): add one right after its rtpmap.
        idx = next(i for i, ln in enumerate(body) if ln.startswith(f"a=rtpmap:{pt} "))
        body.insert(idx + 1, f"a=fmtp:{pt} " + ";".join(f"{k}={v}" for k, v in params.items()))
    return [sec[0], *body]
