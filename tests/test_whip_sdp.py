"""The sans-I/O WHIP functions (ingest/whip.py): offer checks, answer munging, fuzzing."""

from __future__ import annotations

import random

import pytest

from ingest.webrtc import IceSettings
from ingest.whip import (
    MAX_OFFER_BYTES,
    BadOffer,
    BitrateHints,
    OfferTooLarge,
    UnsupportedMediaType,
    WhipError,
    check_content_type,
    check_offer,
    count_candidates,
    munge_answer,
)

FP = ":".join(["AB"] * 32)
SESSION = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
VIDEO = (
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
    "a=rtcp-mux\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\n"
    "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
    "a=rtpmap:102 H264/90000\r\n"
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
)
APP = (
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\na=sctp-port:5000\r\n"
)
OFFER = SESSION + VIDEO + APP
# Chromium's layout: ICE credentials and fingerprint at session level are also valid.
SESSION_LEVEL = (
    "v=0\no=- 1 2 IN IP4 127.0.0.1\ns=-\nt=0 0\na=ice-ufrag:abcd\n"
    f"a=ice-pwd:abcdefghijklmnopqrstuvwx\na=fingerprint:sha-256 {FP}\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 102\nc=IN IP4 0.0.0.0\na=rtpmap:102 h264/90000\n"
)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/sdp", True),
        ("application/SDP; charset=utf-8", True),
        (" application/sdp ", True),
        ("text/plain", False),
        ("application/json", False),
        ("application/sdpx", False),
        ("", False),
        (None, False),
    ],
)
def test_content_type(value: str | None, ok: bool) -> None:
    """Only application/sdp (any parameters) is accepted; anything else is 415."""
    if ok:
        check_content_type(value)
    else:
        with pytest.raises(UnsupportedMediaType) as exc:
            check_content_type(value)
        assert exc.value.status == 415


@pytest.mark.parametrize(
    ("body", "codecs", "data_channel", "candidates"),
    [
        (OFFER, ("VP8", "H264"), True, 1),
        (SESSION + VIDEO, ("VP8", "H264"), False, 1),
        (SESSION_LEVEL, ("H264",), False, 0),
        (OFFER.replace("a=sendonly", "a=sendrecv"), ("VP8", "H264"), True, 1),
        # A disabled first video section is skipped for the next one.
        (SESSION + VIDEO.replace("m=video 9", "m=video 0") + VIDEO, ("VP8", "H264"), False, 2),
        (SESSION + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n" + VIDEO,
         ("VP8", "H264"), False, 1),
    ],
)
def test_good_offers(body: str, codecs: tuple[str, ...], data_channel: bool,
                     candidates: int) -> None:
    """Offers with a sendable VP8/H.264 video section are summarised."""
    s = check_offer(body.encode())
    assert (s.video_codecs, s.data_channel, s.candidates) == (codecs, data_channel, candidates)
    assert "video" in s.media


@pytest.mark.parametrize(
    ("body", "error", "reason"),
    [
        (b"", BadOffer, "empty"),
        (b"   \r\n", BadOffer, "empty"),
        (b"hello", BadOffer, "v=0"),
        (b"{\"sdp\": \"v=0\"}", BadOffer, "v=0"),
        (b"\xff\xfe\x00\x01" * 10, BadOffer, "UTF-8"),
        (OFFER.replace("s=-", "s=\x00").encode(), BadOffer, "control"),
        (OFFER.encode() + b"\x1b[31m", BadOffer, "control"),
        (SESSION.encode(), BadOffer, "no media"),
        ((SESSION + APP).encode(), BadOffer, "no video"),
        (OFFER.replace("o=- 1 2 IN IP4 127.0.0.1\r\n", "").encode(), BadOffer, "o="),
        (OFFER.replace("s=-\r\n", "").encode(), BadOffer, "s="),
        (OFFER.replace("t=0 0", "this is not sdp").encode(), BadOffer, "letter"),
        (OFFER.replace("m=video 9 UDP/TLS/RTP/SAVPF 96 97 102", "m=video").encode(),
         BadOffer, "m= line"),
        (OFFER.replace("m=video 9", "m=video 99999").encode(), BadOffer, "out of range"),
        (OFFER.replace("m=application", "m=hologram").encode(), BadOffer, "unknown media"),
        (OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP").encode(), BadOffer, "SAVPF"),
        (OFFER.replace("a=sendonly", "a=recvonly").encode(), BadOffer, "recvonly"),
        (OFFER.replace("a=sendonly", "a=inactive").encode(), BadOffer, "inactive"),
        (OFFER.replace("VP8/", "VP9/").replace("H264/", "AV1/").encode(), BadOffer,
         "neither VP8 nor H.264"),
        (OFFER.replace("m=video 9", "m=video 0").encode(), BadOffer, "disabled"),
        (OFFER.replace("a=ice-ufrag:abcd\r\n", "").encode(), BadOffer, "ice-ufrag"),
        (OFFER.replace("a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", "").encode(), BadOffer,
         "ice-pwd"),
        (OFFER.replace(f"a=fingerprint:sha-256 {FP}\r\n", "").encode(), BadOffer,
         "fingerprint"),
        ((OFFER + "a=x:" + "y" * 5000 + "\r\n").encode(), BadOffer, "over 4096"),
        ((OFFER + "a=x:y\r\n" * 2100).encode(), BadOffer, "line limit"),
        ((SESSION + VIDEO * 17).encode(), BadOffer, "media sections"),
        ((OFFER + "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n" * 128).encode(), BadOffer,
         "candidates"),
        (b"v=0\r\n" + b"a" * (MAX_OFFER_BYTES + 1), OfferTooLarge, "limit"),
    ],
)
def test_hostile_offers(body: bytes, error: type[WhipError], reason: str) -> None:
    """Bad offers raise the matching error with a reason a client can show."""
    with pytest.raises(error) as exc:
        check_offer(body)
    assert reason.lower() in str(exc.value).lower()
    assert exc.value.status == (413 if error is OfferTooLarge else 400)


def test_offer_size_limit_is_configurable() -> None:
    """The size limit is a parameter; the default is 64 KiB."""
    assert MAX_OFFER_BYTES == 64 * 1024
    with pytest.raises(OfferTooLarge):
        check_offer(OFFER.encode(), max_bytes=100)


ANSWER = (
    "v=0\r\no=- 3 3 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=video 4000 UDP/TLS/RTP/SAVPF 97 98 99\r\nc=IN IP4 127.0.0.1\r\na=recvonly\r\n"
    "a=mid:0\r\na=rtpmap:97 VP8/90000\r\na=rtcp-fb:97 goog-remb\r\n"
    "a=rtpmap:98 rtx/90000\r\na=fmtp:98 apt=97\r\n"
    "a=rtpmap:99 H264/90000\r\na=fmtp:99 packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=candidate:x 1 udp 2130706431 127.0.0.1 4000 typ host\r\na=end-of-candidates\r\n"
    "m=application 4000 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 127.0.0.1\r\n"
    "a=mid:1\r\na=sctp-port:5000\r\n"
    "a=candidate:x 1 udp 2130706431 127.0.0.1 4000 typ host\r\n"
)


def _section(sdp: str, kind: str) -> list[str]:
    lines = sdp.split("\r\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"m={kind} "))
    end = next((i for i, ln in enumerate(lines) if i > start and ln.startswith("m=")),
               len(lines))
    return lines[start:end]


def test_munge_answer_adds_bitrate_hints() -> None:
    """The video section gets b=AS/b=TIAS after c= and x-google bitrates on VP8 and H.264
    (a new fmtp for VP8, merged into H.264's), never on rtx; other sections are unchanged."""
    out = munge_answer(ANSWER, BitrateHints(min_kbps=400, start_kbps=1200, max_kbps=3000))
    video = _section(out, "video")
    assert video[1:4] == ["c=IN IP4 127.0.0.1", "b=AS:3000", "b=TIAS:3000000"]
    hints = "x-google-min-bitrate=400;x-google-start-bitrate=1200;x-google-max-bitrate=3000"
    assert f"a=fmtp:97 {hints}" in video
    assert video.index(f"a=fmtp:97 {hints}") == video.index("a=rtpmap:97 VP8/90000") + 1
    assert f"a=fmtp:99 packetization-mode=1;profile-level-id=42e01f;{hints}" in video
    assert "a=fmtp:98 apt=97" in video
    assert _section(out, "application") == _section(ANSWER, "application")
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    assert count_candidates(out) == count_candidates(ANSWER) == 2


def test_munge_answer_is_idempotent_and_replaces_old_values() -> None:
    """Munging twice, or an answer that already has hints, leaves one value of each."""
    once = munge_answer(ANSWER, BitrateHints())
    twice = munge_answer(once, BitrateHints(max_kbps=4000))
    video = _section(twice, "video")
    assert [ln for ln in video if ln.startswith("b=")] == ["b=AS:4000", "b=TIAS:4000000"]
    fmtp97 = next(ln for ln in video if ln.startswith("a=fmtp:97 "))
    assert fmtp97.count("x-google-max-bitrate") == 1 and "x-google-max-bitrate=4000" in fmtp97


def test_munge_answer_keeps_lf_line_ends_and_no_video() -> None:
    """LF-only SDP stays LF-only; an answer without video is returned unchanged."""
    lf = ANSWER.replace("\r\n", "\n")
    assert "\r" not in munge_answer(lf, BitrateHints())
    no_video = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    assert munge_answer(no_video, BitrateHints()) == no_video


@pytest.mark.parametrize(
    ("lo", "start", "hi", "ok"),
    [(500, 1500, 2500, True), (1, 1, 1, True), (0, 1, 2, False), (3, 2, 4, False),
     (1, 5, 4, False), (1, 2, 200_000, False)],
)
def test_bitrate_hints_validation(lo: int, start: int, hi: int, ok: bool) -> None:
    """Hints need 0 < min <= start <= max <= 100 Mbit/s."""
    if ok:
        BitrateHints(lo, start, hi)
    else:
        with pytest.raises(ValueError):
            BitrateHints(lo, start, hi)


@pytest.mark.parametrize(
    ("kw", "ok"),
    [
        ({}, True),
        ({"hosts": ("127.0.0.1", "::1")}, True),
        ({"port_min": 50000, "port_max": 50100}, True),
        ({"servers": ("stun:stun.example.org:3478", "turn:u:p@turn.example.org:3478")}, True),
        ({"hosts": ("localhost",)}, False),
        ({"port_min": 50000}, False),
        ({"port_min": 80, "port_max": 90}, False),
        ({"port_min": 50100, "port_max": 50000}, False),
        ({"servers": ("http://example.org",)}, False),
        ({"servers": ("stun:",)}, False),
    ],
)
def test_ice_settings_validation(kw: dict[str, object], ok: bool) -> None:
    """ICE settings reject bad addresses, half or inverted port ranges and non-ICE URLs."""
    if ok:
        conf = IceSettings(**kw).configuration()  # type: ignore[arg-type]
        assert conf.iceServers is not None  # never None: None means Google's STUN
        assert len(conf.iceServers) == len(kw.get("servers", ()))  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError):
            IceSettings(**kw)  # type: ignore[arg-type]


def test_turn_credentials_parsed() -> None:
    """turn:user:pass@host becomes an RTCIceServer with username and credential."""
    (server,) = IceSettings(servers=("turn:alice:s3cret@turn.example.org:3478",)) \
        .configuration().iceServers or []
    assert (server.urls, server.username, server.credential) == (
        "turn:turn.example.org:3478", "alice", "s3cret")


def _mutations(rng: random.Random, base: bytes) -> bytes:
    b = bytearray(base)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        pos = rng.randrange(len(b) + 1)
        if op < 0.3 and b:
            del b[pos:pos + rng.randint(1, 40)]
        elif op < 0.6:
            b[pos:pos] = rng.randbytes(rng.randint(1, 20))
        elif op < 0.8:
            b[pos:pos] = rng.choice([b"\r\n", b"m=video 9 UDP/TLS/RTP/SAVPF 96\r\n", b"a=",
                                     b"=", b"\x00", b"m=", b" ", b"a=rtpmap:96 H264/90000\r\n"])
        elif b:
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
    return bytes(b)


def test_fuzz_only_whip_errors() -> None:
    """Random bytes and mutated offers raise WhipError or pass; never anything else."""
    rng = random.Random(9725)
    outcomes = {"ok": 0, "rejected": 0}
    for i in range(3000):
        body = rng.randbytes(rng.randint(0, 300)) if i % 3 == 0 else _mutations(
            rng, OFFER.encode())
        try:
            summary = check_offer(body)
        except WhipError:
            outcomes["rejected"] += 1
            continue
        outcomes["ok"] += 1
        assert summary.video_codecs and set(summary.video_codecs) <= {"VP8", "H264"}
        munged = munge_answer(body.decode(), BitrateHints())
        assert isinstance(munged, str)
    assert outcomes["rejected"] > 0 and outcomes["ok"] > 0, outcomes
