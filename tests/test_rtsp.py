"""RtspSource against a real GStreamer RTSP server (tests/peers/rtsp_server.py, run by
Debian's Python) and against real misbehaving TCP servers on loopback."""

from __future__ import annotations

import importlib.util
import logging
import random
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import av
import pytest

from ingest.packets import StreamInfo, VideoPacket
from ingest.rtsp import Backoff, RtspSource, Timeline, has_keyframe, mask_url, redact

log = logging.getLogger(__name__)

PEER = Path(__file__).parent / "peers" / "rtsp_server.py"
WIDTH, HEIGHT, FPS = 640, 360, 15


def _load_peer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rtsp_server_peer", PEER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


peer = _load_peer()


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``pred`` (checked every 20 ms) up to ``timeout``; the time it took."""
    start = time.monotonic()
    tick = threading.Event()
    while not pred():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.02)
    return time.monotonic() - start


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """H.264 clips made with ffmpeg: 640x360 and 320x180 at 15 fps, and a damaged copy."""
    d = tmp_path_factory.mktemp("clips")
    main = peer.make_clip(d / "main.h264", width=WIDTH, height=HEIGHT, fps=FPS, seconds=6)
    sub = peer.make_clip(d / "sub.h264", width=320, height=180, fps=FPS, seconds=6)
    bad = d / "damaged.h264"
    # P-frames 40-44 and the IDR at 60 (of 90) get their slice data overwritten.
    idrs = peer.damage_clip(main, bad, {40, 41, 42, 43, 44, 60})
    assert idrs == [60]
    return {"main": main, "sub": sub, "damaged": bad}


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Factory: a started GStreamer RTSP server with the given arguments; killed after."""
    made: list[object] = []

    def make(*args: str) -> object:
        server = peer.ServerProcess(list(args), tmp_path / f"rtsp-server-{len(made)}.log")
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.kill()  # type: ignore[attr-defined]


@pytest.fixture
def sources() -> Iterator[Callable[..., RtspSource]]:
    """Factory: a started RtspSource; stopped after, even when the test fails."""
    made: list[RtspSource] = []

    def make(url: str, **kw: object) -> RtspSource:
        kw.setdefault("source_id", f"cam{len(made) + 1}")
        src = RtspSource(url=url, **kw)  # type: ignore[arg-type]
        made.append(src)
        src.start()
        return src

    yield make
    for src in made:
        src.stop(timeout=10)


class TcpPeer:
    """A real TCP server on 127.0.0.1 that misbehaves: answers junk, or never answers."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        if mode != "refuse":  # bound, not listening: the kernel refuses connections
            self.sock.listen(16)
            self.thread = threading.Thread(target=self._serve, daemon=True)
            self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "junk":
                try:
                    conn.recv(4096)
                    conn.sendall(b"\x16\x03\x01 this is not RTSP \xff\xfe\r\n\r\n" * 20)
                except OSError:
                    pass
                conn.close()
            else:  # silent: keep the connection, say nothing
                self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def tcp_peer() -> Iterator[Callable[[str], TcpPeer]]:
    made: list[TcpPeer] = []

    def make(mode: str) -> TcpPeer:
        p = TcpPeer(mode)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def remux_and_decode(info: StreamInfo, pkts: list[VideoPacket], path: Path) -> list[av.VideoFrame]:
    """Mux the packets into MP4 unchanged (no encoder involved), then decode the file."""
    base = pkts[0].dts if pkts[0].dts is not None else 0
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_mux_stream(info.codec, rate=Fraction(info.fps or FPS).limit_denominator(),
                                width=info.width, height=info.height)
        st.time_base = info.time_base
        for i, p in enumerate(pkts):
            # Annex B extradata in front of the first keyframe: movenc builds avcC from it.
            data = (info.extradata or b"") + p.data if i == 0 else p.data
            pkt = av.Packet(data)
            pkt.pts = None if p.pts is None else p.pts - base
            pkt.dts = None if p.dts is None else p.dts - base
            pkt.time_base = info.time_base
            pkt.is_keyframe = p.keyframe
            pkt.stream = st
            out.mux(pkt)
    with av.open(str(path)) as c:
        return [f for f in c.decode(video=0)]


# -- pure functions --------------------------------------------------------------------


@pytest.mark.parametrize(("url", "masked"), [
    ("rtsp://admin:s3cret@10.0.0.5:554/Streaming/101", "rtsp://admin:***@10.0.0.5:554/Streaming/101"),
    ("rtsp://admin:p@ss:w/rd@cam.local/live", "rtsp://admin:***@cam.local/live"),
    ("rtsps://u:pw@[::1]:322/s", "rtsps://u:***@[::1]:322/s"),
    ("rtsp://admin@10.0.0.5/live", "rtsp://admin@10.0.0.5/live"),
    ("rtsp://10.0.0.5:554/live", "rtsp://10.0.0.5:554/live"),
    ("not a url", "not a url"),
])
def test_mask_url(url: str, masked: str) -> None:
    """Passwords are replaced by *** and everything else in the URL is kept."""
    assert mask_url(url) == masked


def test_mask_url_fuzz() -> None:
    """For 2000 random URLs (passwords with @ : / and other symbols) the password never
    survives masking and the host and path always do."""
    rnd = random.Random(1)
    pw_chars = string.ascii_uppercase + "@:/!#$%&*+=?"
    plain = string.ascii_lowercase + string.digits
    for _ in range(2000):
        pw = "PW" + "".join(rnd.choice(pw_chars) for _ in range(rnd.randrange(1, 12)))
        user = "".join(rnd.choice(plain) for _ in range(rnd.randrange(0, 6)))
        rest = "".join(rnd.choice(plain) for _ in range(rnd.randrange(1, 10))) + ":554/" + (
            "".join(rnd.choice(plain + "/.") for _ in range(rnd.randrange(0, 12))))
        masked = mask_url(f"rtsp://{user}:{pw}@{rest}")
        assert pw not in masked and masked == f"rtsp://{user}:***@{rest}"


def test_has_keyframe_fuzz() -> None:
    """Random bytes, truncated start codes and empty data never raise."""
    rnd = random.Random(2)
    for _ in range(2000):
        data = bytes(rnd.choice((0, 0, 1, 5, 0x65, 0x26, 255)) for _ in range(rnd.randrange(12)))
        for codec in ("h264", "hevc", "mjpeg"):
            assert has_keyframe(codec, data) in (True, False)


def test_redact_hides_password_anywhere() -> None:
    """An error text quoting the URL or the bare password comes out without it."""
    url = "rtsp://admin:hunter2@10.0.0.5/live"
    text = redact(f"[Errno 111] Connection refused: '{url}' (pw hunter2)", url)
    assert "hunter2" not in text and "admin:***@10.0.0.5" in text


@pytest.mark.parametrize(("codec", "data", "key"), [
    ("h264", b"\x00\x00\x00\x01\x09\x10\x00\x00\x00\x01\x67\x42\x00\x00\x01\x65\x88", True),
    ("h264", b"\x00\x00\x00\x01\x09\x30\x00\x00\x01\x41\x9a", False),
    ("hevc", b"\x00\x00\x00\x01\x40\x01\x00\x00\x01\x26\x01\xaf", True),  # IDR_W_RADL
    ("hevc", b"\x00\x00\x00\x01\x02\x01\xd0", False),  # TRAIL_R
    ("h264", b"", False),
    ("h264", b"\x00\x00\x01", False),
])
def test_has_keyframe(codec: str, data: bytes, key: bool) -> None:
    """Random access points are found from the NAL unit types of Annex B data."""
    assert has_keyframe(codec, data) is key


def test_backoff_initial_clamped_to_max() -> None:
    """A longest wait shorter than the first one (valid in the config) caps the first one."""
    src = RtspSource("cam-x", "rtsp://cam/x", backoff_max_s=0.1)
    assert src.backoff_initial_s == 0.1


def test_backoff_doubles_caps_and_resets() -> None:
    """Delays double up to the maximum (within the jitter) and start over after reset."""
    b = Backoff(0.25, 2.0, jitter=0.2)
    delays = [b.next() for _ in range(6)]
    for d, base in zip(delays, [0.25, 0.5, 1.0, 2.0, 2.0, 2.0], strict=True):
        assert base * 0.8 <= d <= min(2.0, base * 1.2)
    b.reset()
    assert b.next() <= 0.25 * 1.2


def test_timeline_continues_across_sessions() -> None:
    """Timestamps start at 0, fill gaps, never repeat, and a new session continues after
    the last one with the real time in between."""
    tl = Timeline()
    tb = Fraction(1, 90000)
    tl.new_session(tb, 15.0)
    assert tl.map(None, None, 10.0) == (0, 0)  # FFmpeg's first RTSP packet has no pts
    assert tl.map(5999, 5999, 10.066) == (6000, 6000)
    assert tl.map(11999, 11999, 10.133) == (12000, 12000)
    assert tl.map(11999, 11999, 10.134) == (12001, 12001)  # repeated dts nudged
    tl.new_session(tb, 15.0)  # reconnect 2 s later, the camera's clock starts anew
    pts, dts = tl.map(777, 777, 12.134)
    assert dts == pts and 12001 + 179_000 <= dts <= 12001 + 181_000


@pytest.mark.parametrize(("kw", "message"), [
    ({"url": "http://cam/live"}, "url must start with rtsp://"),
    ({"url": "rtsp://a:secret@cam/x", "sub_url": "udp://cam/sub"}, "sub_url must start"),
    ({"url": "rtsp://cam/x", "transport": "sctp"}, "transport must be"),
    ({"url": "rtsp://cam/x", "stall_s": 0}, "stall_s must be > 0"),
    ({"url": "rtsp://cam/x", "backoff_max_s": -1}, "backoff_max_s must be > 0"),
    ({"url": "rtsp://cam/x", "open_timeout_s": float("nan")}, "open_timeout_s must be > 0"),
])
def test_constructor_rejects_bad_arguments(kw: dict[str, object], message: str) -> None:
    """Bad configuration fails at once with a clear message naming the camera."""
    with pytest.raises(ValueError, match=message) as err:
        RtspSource("cam-x", **kw)  # type: ignore[arg-type]
    assert "cam-x" in str(err.value) and "secret" not in str(err.value)


# -- against the GStreamer RTSP server -------------------------------------------------


def test_online_frames_ring_remux_kill_and_recover(
    clips: dict[str, Path], rtsp_server: Callable[..., object],
    sources: Callable[..., RtspSource], tmp_path: Path, record_property: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over TCP the camera comes online with 640x360 frames and a keyframe-first ring that
    remuxes into a decodable MP4; SIGKILL of the server makes it offline with a reason;
    a restart on the same port brings it back online."""
    caplog.set_level(logging.INFO)
    server = rtsp_server("--h264", str(clips["main"]), "--fps", str(FPS))
    src = sources(server.url(), backoff_max_s=1.0)  # type: ignore[attr-defined]
    wait_until(lambda: src.health.status == "online", 10, "online")
    wait_until(lambda: src.health.frames >= 20 and src.packets.total_packets >= 20, 10,
               "20 frames")
    frame = src.slot.take()
    assert frame is not None and frame.video is not None
    assert (frame.video.width, frame.video.height) == (WIDTH, HEIGHT)
    assert frame.image().shape == (HEIGHT, WIDTH, 3)
    h = src.health
    assert (h.codec, h.width, h.height, h.reason) == ("h264", WIDTH, HEIGHT, None)
    assert h.bitrate_kbps > 0 and h.fps > 0 and h.last_frame_at is not None

    info, pkts = src.packets.snapshot()
    assert info is not None and info.codec == "h264" and (info.width, info.height) == (
        WIDTH, HEIGHT)
    assert info.time_base == Fraction(1, 90000)
    assert info.extradata is not None and info.extradata.startswith(b"\x00\x00\x00\x01")
    assert pkts[0].keyframe
    assert [p.keyframe for p in pkts] == [has_keyframe("h264", p.data) for p in pkts]
    dts = [p.dts for p in pkts]
    assert all(d is not None for d in dts) and dts == sorted(set(dts))  # type: ignore[type-var]
    frames = remux_and_decode(info, pkts, tmp_path / "ring.mp4")
    assert len(frames) == len(pkts)
    assert all((f.width, f.height) == (WIDTH, HEIGHT) and not f.is_corrupt for f in frames)

    server.kill()  # type: ignore[attr-defined]
    wait_until(lambda: src.health.status == "offline", 10, "offline after SIGKILL")
    assert src.health.reason in {"stream ended by the server", "connection refused",
                                 "connection reset"}
    assert src.threads_alive()

    frames_before = src.health.frames
    restarted = time.monotonic()
    server.restart()  # type: ignore[attr-defined]
    ready = time.monotonic() - restarted
    recovery = wait_until(lambda: src.health.status == "online"
                          and src.health.frames > frames_before, 10, "online after restart")
    assert src.health.reconnects >= 1
    record_property("recovery_s", round(recovery + ready, 3))
    log.info("recovery after server restart: %.2f s (server start %.2f s)", recovery + ready,
             ready)
    info2, pkts2 = src.packets.snapshot()
    assert info2 == info and pkts2[0].keyframe
    dts2 = [p.dts for p in pkts2]
    assert dts2 == sorted(set(dts2))  # type: ignore[type-var]  # one timeline across sessions
    frames2 = remux_and_decode(info2, pkts2, tmp_path / "ring2.mp4")
    assert len(frames2) == len(pkts2) and not any(f.is_corrupt for f in frames2)


def test_udp_transport(clips: dict[str, Path], rtsp_server: Callable[..., object],
                       sources: Callable[..., RtspSource]) -> None:
    """RTP over UDP against the same server delivers frames and a keyframe-first ring."""
    server = rtsp_server("--h264", str(clips["main"]), "--fps", str(FPS))
    src = sources(server.url(), transport="udp")  # type: ignore[attr-defined]
    wait_until(lambda: src.health.frames >= 15, 10, "15 frames over UDP")
    frame = src.slot.take()
    assert frame is not None and frame.video is not None
    assert (frame.video.width, frame.video.height) == (WIDTH, HEIGHT)
    assert src.health.status == "online"
    _, pkts = src.packets.snapshot()
    assert pkts and pkts[0].keyframe


def test_join_mid_gop(clips: dict[str, Path], rtsp_server: Callable[..., object],
                      sources: Callable[..., RtspSource]) -> None:
    """A camera joined mid-GOP (a shared server pipeline already running) starts its ring
    and its decoding at the next keyframe, without counting decode errors."""
    server = rtsp_server("--h264", str(clips["main"]), "--fps", str(FPS), "--shared")
    anchor = sources(server.url())  # type: ignore[attr-defined]
    wait_until(lambda: anchor.health.frames >= 5, 10, "the first client's frames")
    for _ in range(4):  # a join lands on a keyframe 1 time in 15; try until one does not
        late = sources(server.url())  # type: ignore[attr-defined]
        wait_until(lambda s=late: s.health.frames >= 20, 10, "the late client's frames")
        if late.skipped_before_key > 0:
            break
    assert late.skipped_before_key > 0
    assert late.health.decode_errors == 0 and late.health.status == "online"
    _, pkts = late.packets.snapshot()
    assert pkts[0].keyframe
    assert late.packets.total_packets - late.health.frames <= 1  # none before the keyframe


def test_sub_stream_decoded_main_recorded(
    clips: dict[str, Path], rtsp_server: Callable[..., object],
    sources: Callable[..., RtspSource],
) -> None:
    """With a sub stream, frames come from it and the ring from the main stream; losing
    the sub stream leaves the camera degraded, not offline."""
    main = rtsp_server("--h264", str(clips["main"]), "--fps", str(FPS))
    sub = rtsp_server("--h264", str(clips["sub"]), "--fps", str(FPS))
    src = sources(main.url(), sub_url=sub.url())  # type: ignore[attr-defined]
    wait_until(lambda: src.health.status == "online" and src.health.frames >= 5, 10, "online")
    frame = src.slot.take()
    assert frame is not None and frame.video is not None
    assert (frame.video.width, frame.video.height) == (320, 180)
    info, pkts = src.packets.snapshot()
    assert info is not None and (info.width, info.height) == (WIDTH, HEIGHT)
    assert (src.health.width, src.health.height) == (WIDTH, HEIGHT)
    assert pkts and pkts[0].keyframe

    sub.kill()  # type: ignore[attr-defined]
    wait_until(lambda: src.health.status == "degraded", 10, "degraded without the sub stream")
    assert (src.health.reason or "").startswith("sub stream: ")
    n = src.packets.total_packets
    wait_until(lambda: src.packets.total_packets > n + 5, 10, "main packets still flowing")


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_stall_reconnects(transport: str, clips: dict[str, Path],
                          rtsp_server: Callable[..., object],
                          sources: Callable[..., RtspSource],
                          caplog: pytest.LogCaptureFixture) -> None:
    """A server that stops sending (SIGSTOP) makes the camera offline with "no packets
    for 1 s"; when it sends again the camera reconnects and comes back."""
    caplog.set_level(logging.INFO, logger="ingest")
    server = rtsp_server("--h264", str(clips["main"]), "--fps", str(FPS))
    src = sources(server.url(), stall_s=1.0, open_timeout_s=1.0,  # type: ignore[attr-defined]
                  backoff_max_s=1.0, transport=transport)
    wait_until(lambda: src.health.status == "online", 10, "online")
    server.pause()  # type: ignore[attr-defined]
    wait_until(lambda: src.health.status == "offline", 10, "offline after the stall")
    assert "cam1: offline (no packets for 1 s)" in caplog.text
    server.resume()  # type: ignore[attr-defined]
    frames = src.health.frames
    wait_until(lambda: src.health.status == "online" and src.health.frames > frames, 10,
               "online after the stall")
    assert src.health.reconnects >= 1


def test_low_frame_rate_degraded(clips: dict[str, Path], rtsp_server: Callable[..., object],
                                 sources: Callable[..., RtspSource]) -> None:
    """A camera that announces 15 fps in its SDP but sends 5 is degraded, with the reason."""
    server = rtsp_server("--h264", str(clips["main"]), "--fps", "5", "--sdp-fps", str(FPS))
    src = sources(server.url())  # type: ignore[attr-defined]
    wait_until(lambda: src.health.status == "online", 10, "online")
    wait_until(lambda: src.health.status == "degraded", 10, "degraded")
    assert src.health.reason == "frame rate below 50% of 15 fps"
    assert 3 < src.health.fps < 7


@pytest.mark.parametrize(("mode", "reason"), [
    ("refuse", "connection refused"),
    ("junk", "invalid data: "),
    ("silent", "timeout opening (0.5 s)"),
])
def test_bad_servers_offline_with_reason(
    mode: str, reason: str, tcp_peer: Callable[[str], TcpPeer],
    sources: Callable[..., RtspSource],
) -> None:
    """A refusing, junk-answering or silent server: offline with a sensible reason, the
    source keeps retrying on a live thread, and stop() ends it."""
    p = tcp_peer(mode)
    src = sources(f"rtsp://127.0.0.1:{p.port}/cam", open_timeout_s=0.5, backoff_max_s=0.5)
    wait_until(lambda: src.health.reconnects >= 2, 15, "two reconnects")
    assert src.health.status == "offline"
    assert (src.health.reason or "").startswith(reason), src.health.reason
    assert src.threads_alive()
    if mode != "refuse":
        assert p.accepted >= 2
    src.stop(timeout=3.0)
    assert not src.threads_alive()
    assert src.health.status == "offline" and src.health.reason == "stopped"


def test_corrupt_stream_counts_errors_and_goes_on(
    clips: dict[str, Path], rtsp_server: Callable[..., object],
    sources: Callable[..., RtspSource],
) -> None:
    """Damaged slices are dropped and counted as decode errors, the camera is degraded
    while they are recent, and frames keep arriving after the damage."""
    server = rtsp_server("--h264", str(clips["damaged"]), "--fps", str(FPS))
    src = sources(server.url())  # type: ignore[attr-defined]
    wait_until(lambda: src.health.decode_errors >= 1, 15, "a decode error")
    wait_until(lambda: src.health.status == "degraded", 5, "degraded")
    assert src.health.reason == "decode errors in the last 10 s"
    # 6 damaged units (5 P-frames, 1 IDR) per 6 s loop; the decoder flags each one.
    wait_until(lambda: src.health.decode_errors >= 6, 15, "every damaged frame counted")
    after = src.health.frames
    wait_until(lambda: src.health.frames >= after + 15, 10, "frames after the damage")
    assert src.packets.total_packets >= after + 15 + 6  # damaged packets still recorded
    assert src.threads_alive()


def test_credentials_never_logged(clips: dict[str, Path], rtsp_server: Callable[..., object],
                                  sources: Callable[..., RtspSource],
                                  caplog: pytest.LogCaptureFixture) -> None:
    """With HTTP Basic auth the right password gets online, the wrong one is offline
    "unauthorized", and neither password appears in any log line or reason."""
    caplog.set_level(logging.DEBUG)
    server = rtsp_server("--h264", str(clips["main"]), "--fps", str(FPS),
                         "--auth", "viewer:Tr0ub4dor-3")
    good = sources(server.url(userinfo="viewer:Tr0ub4dor-3"))  # type: ignore[attr-defined]
    bad = sources(server.url(userinfo="viewer:wrong-horse"),  # type: ignore[attr-defined]
                  backoff_max_s=0.5)
    wait_until(lambda: good.health.status == "online", 10, "online with credentials")
    wait_until(lambda: bad.health.reconnects >= 1, 10, "a retry with bad credentials")
    assert bad.health.status == "offline"
    assert (bad.health.reason or "").startswith("unauthorized (401)")
    text = caplog.text + repr(good.health) + repr(bad.health)
    assert "viewer:***@127.0.0.1" in text
    assert "Tr0ub4dor-3" not in text and "wrong-horse" not in text
