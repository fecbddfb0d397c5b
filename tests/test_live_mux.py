"""Live fMP4 muxing and fan-out (ingest.live): H.264 clips generated with ffmpeg, played by
real FileSources, muxed and read back with PyAV; viewers on a real event loop."""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ingest.file_source import FileSource
from ingest.fmp4 import codec_string, parse_avcc, sps_dimensions
from ingest.live import (
    Fragment,
    FragmentMuxer,
    InitSegment,
    Item,
    Limits,
    LiveHub,
    Status,
    Viewer,
    ViewerDropped,
)
from ingest.packets import StreamInfo, VideoPacket

FPS = 15


def make_clip(path: Path, *, pattern: str = "testsrc", size: str = "320x240", seconds: float = 3,
              gop: int = 15, profile: str = "baseline", codec: str = "libx264",
              extra_filter: str | None = None) -> Path:
    """An H.264 clip (no B-frames) from an ffmpeg test source; testsrc draws a frame counter."""
    vf = ["format=yuv420p"] + ([extra_filter] if extra_filter else [])
    preset = "ultrafast" if profile == "baseline" else "veryfast"  # ultrafast means baseline
    enc = (["-c:v", codec, "-preset", preset, "-tune", "zerolatency", "-profile:v", profile,
            "-bf", "0"] if codec == "libx264" else ["-c:v", codec])
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate={FPS}",
         "-t", str(seconds), "-vf", ",".join(vf), *enc, "-g", str(gop), "-keyint_min", str(gop),
         "-sc_threshold", "0", str(path)],
        check=True, timeout=120,
    )
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clips for this module: 320x240 and 640x360, long-GOP, Annex B and MPEG-4 Part 2."""
    d = tmp_path_factory.mktemp("clips")
    out = {
        "small": make_clip(d / "small.mp4", seconds=3, gop=15, profile="high"),
        "long_gop": make_clip(d / "long_gop.mp4", pattern="testsrc2", seconds=8, gop=60),
        "big": make_clip(d / "big.mp4", pattern="smptebars", size="640x360", seconds=2,
                         gop=15, profile="main"),
        "mpeg4": make_clip(d / "mpeg4.mp4", codec="mpeg4", seconds=1),
    }
    annexb = d / "small.h264"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(out["small"]), "-c", "copy",
                    "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(annexb)], check=True)
    out["annexb"] = annexb
    return out


def demux(path: Path, *, annexb: bool = False) -> tuple[StreamInfo, list[VideoPacket]]:
    """Every packet of a file as a source would put it in its ring."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        tb = Fraction(s.time_base or Fraction(1, 90000))
        info = StreamInfo(codec=cc.name, width=cc.width, height=cc.height, time_base=tb,
                          extradata=None if annexb else bytes(cc.extradata or b"") or None,
                          fps=FPS)
        pkts = []
        for i, p in enumerate(c.demux(s)):
            if p.size == 0:
                continue
            pts = p.pts if not annexb else i * int(1 / (FPS * tb))  # raw H.264 has no times
            pkts.append(VideoPacket(bytes(p), pts, pts if annexb else p.dts,
                                    bool(p.is_keyframe), time.monotonic(), time.time(),
                                    p.duration if not annexb else None))
    return info, pkts


def frames_of(data: bytes) -> list[np.ndarray]:
    """Decode fMP4 bytes with PyAV, frame by frame (yuv420p planes)."""
    with av.open(io.BytesIO(data), format="mp4") as c:
        return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]


def clip_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]


def stream_bytes(items: list[Item]) -> bytes:
    return b"".join(i.data for i in items if isinstance(i, InitSegment | Fragment))


async def take(viewer: Viewer, fragments: int, within: float = 30) -> list[Item]:
    """A viewer's items (inits as they would be sent) until ``fragments`` fragments."""
    items: list[Item] = []
    async with asyncio.timeout(within):
        while sum(isinstance(i, Fragment) for i in items) < fragments:
            items.append(await viewer.get())
    return items


async def mid_gop(src: FileSource, after: int, within: float = 30) -> None:
    """Wait until the source is ``after`` packets into a GOP (told by a ring listener)."""
    loop = asyncio.get_running_loop()
    reached = asyncio.Event()
    since_key = -1

    def listen(_info: StreamInfo, pkt: VideoPacket) -> None:
        nonlocal since_key
        since_key = 0 if pkt.keyframe else since_key + (since_key >= 0)
        if since_key == after:
            loop.call_soon_threadsafe(reached.set)

    src.packets.subscribe(listen)
    try:
        async with asyncio.timeout(within):
            await reached.wait()
    finally:
        src.packets.unsubscribe(listen)


@pytest.fixture
def sources() -> Iterator[Callable[..., FileSource]]:
    """Factory of started FileSources, stopped afterwards."""
    made: list[FileSource] = []

    def make(sid: str, path: Path | Callable[[], Path], *, loop: bool = True,
             realtime: bool = True, start: bool = True) -> FileSource:
        src = FileSource(sid, path, loop=loop, realtime=realtime)
        made.append(src)
        if start:
            src.start()
        return src

    yield make
    for s in made:
        s.stop()


# --- sans-I/O: bitstream and boxes ---------------------------------------------------------


@pytest.mark.parametrize("size,profile", [("320x240", "baseline"), ("326x186", "main"),
                                          ("1280x720", "high"), ("1920x1080", "high")])
def test_sps_gives_dimensions_and_codec_string(tmp_path: Path, size: str, profile: str) -> None:
    """Width and height (after cropping) and the avc1.PPCCLL string come from the SPS."""
    clip = make_clip(tmp_path / "c.mp4", size=size, profile=profile, seconds=0.2)
    info, _ = demux(clip)
    assert info.extradata is not None
    sps = parse_avcc(info.extradata)[0][0]
    assert sps_dimensions(sps) == tuple(int(x) for x in size.split("x"))
    expect = {"baseline": "avc1.42c0", "main": "avc1.4d40", "high": "avc1.6400"}[profile]
    assert codec_string(sps).startswith(expect)


def test_fmp4_from_avcc_packets_decodes_to_the_same_frames(clips: dict[str, Path]) -> None:
    """Packets with avcC extradata mux to fMP4 whose frames equal the clip's, bit for bit."""
    info, pkts = demux(clips["small"])
    mux = FragmentMuxer()
    out = [it for p in pkts for it in mux.push(info, p)]
    assert isinstance(out[0], InitSegment) and out[0].codec.startswith("avc1.64")
    assert (out[0].width, out[0].height) == (320, 240)
    assert sum(isinstance(i, Fragment) for i in out) == len(pkts)
    got = frames_of(stream_bytes(out))
    want = clip_frames(clips["small"])
    assert len(got) == len(want) == 45
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_annexb_without_extradata_builds_a_valid_init(clips: dict[str, Path]) -> None:
    """An Annex B stream with no extradata (as RTSP may give) gets its avcC from the in-band
    SPS/PPS; the result decodes to the clip's frames."""
    info, pkts = demux(clips["annexb"], annexb=True)
    assert info.extradata is None and pkts[0].data.startswith(b"\x00\x00\x00\x01")
    ref_info, _ = demux(clips["small"])
    assert ref_info.extradata is not None
    mux = FragmentMuxer()
    out = [it for p in pkts for it in mux.push(info, p)]
    inits = [i for i in out if isinstance(i, InitSegment)]
    assert len(inits) == 1, "same SPS/PPS at every keyframe: one init"
    assert inits[0].codec == codec_string(parse_avcc(ref_info.extradata)[0][0])
    assert (inits[0].width, inits[0].height) == (320, 240)
    got = frames_of(stream_bytes(out))
    want = clip_frames(clips["small"])
    assert len(got) == len(want)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_annexb_joined_mid_gop_waits_for_a_keyframe(clips: dict[str, Path]) -> None:
    """Joining an Annex B stream mid-GOP: nothing until the next keyframe with SPS/PPS, then a
    stream that starts on that keyframe."""
    info, pkts = demux(clips["annexb"], annexb=True)
    mux = FragmentMuxer()
    out = [it for p in pkts[5:] for it in mux.push(info, p)]
    assert isinstance(out[0], InitSegment)
    first = out[1]
    assert isinstance(first, Fragment) and first.keyframe
    assert mux.dropped == 10  # packets 5..14 of the first 15-frame GOP
    assert len(frames_of(stream_bytes(out))) == len(pkts) - 15


def test_new_stream_info_starts_a_new_init(clips: dict[str, Path]) -> None:
    """A new StreamInfo (reconnect with another resolution) yields a second init segment with
    the new size; what follows decodes with it. Looping back in time keeps dts increasing."""
    a_info, a = demux(clips["small"])
    b_info, b = demux(clips["big"])
    mux = FragmentMuxer()
    out = [it for p in a for it in mux.push(a_info, p)]
    out += [it for p in a for it in mux.push(a_info, p)]  # a looping file: same info
    out2 = [it for p in b for it in mux.push(b_info, p)]
    inits = [i for i in out + out2 if isinstance(i, InitSegment)]
    assert [(i.gen, i.width, i.height) for i in inits] == [(1, 320, 240), (2, 640, 360)]
    assert isinstance(out2[0], InitSegment)
    assert len(frames_of(stream_bytes(out))) == 2 * len(a)
    with av.open(io.BytesIO(stream_bytes(out)), format="mp4") as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert pts == sorted(set(pts)), "timestamps strictly increase across the loop"
    got = frames_of(stream_bytes(out2))
    assert len(got) == len(b) and got[0].shape == (360 * 3 // 2, 640)


def test_timestamps_never_make_mse_discontinuities(clips: dict[str, Path]) -> None:
    """Packets without durations whose rate drops (15 -> 5 fps), then go back in time (a
    loop) and jump 10 s ahead (a reconnect): output decode times always increase by less
    than twice the previous frame's duration (else MSE drops frames until a keyframe), and
    follow the new rate after one frame."""
    info, pkts = demux(clips["small"])
    tick = int(1 / (FPS * info.time_base))  # one 15 fps frame in the clip's time base
    times = ([i * tick for i in range(20)] + [(19 + 3 * i) * tick for i in range(1, 15)]
             + [i * tick for i in range(5)] + [10 * FPS * tick + i * tick for i in range(6)])
    mux = FragmentMuxer()
    frags = []
    for p, ts in zip(pkts, times, strict=False):
        pkt = VideoPacket(p.data, ts, ts, p.keyframe, p.t, p.wall, None)
        frags += [f for f in mux.push(info, pkt) if isinstance(f, Fragment)]
    assert len(frags) == len(times)
    dts = [int.from_bytes(f.data[60:68], "big") for f in frags]  # tfdt
    dur = [int.from_bytes(f.data[88:92], "big") for f in frags]  # trun sample duration
    assert frags[0].data[52:56] == b"tfdt" and frags[0].data[72:76] == b"trun"
    steps = [b - a for a, b in zip(dts, dts[1:], strict=False)]
    assert all(0 < st < 2 * d for st, d in zip(steps, dur, strict=False)), (steps, dur)
    assert steps[20:33] == [3 * 6000] * 13, "follows the 5 fps rate after one frame"


# --- fan-out on a real loop, from real FileSources ---------------------------------------------


async def test_viewer_from_the_start_gets_the_whole_clip(
        clips: dict[str, Path], sources: Callable[..., FileSource]) -> None:
    """A viewer attached before the source starts receives every frame, decodable by PyAV."""
    src = sources("cam-start", clips["small"], loop=False, realtime=False, start=False)
    hub = LiveHub()
    viewer = await hub.watch(src, "test#1")
    src.start()
    items = await take(viewer, 45)
    assert isinstance(items[0], Status)
    got = frames_of(stream_bytes(items))
    want = clip_frames(clips["small"])
    assert len(got) == 45 and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    await hub.leave(viewer)
    assert not hub.streams()


async def test_late_joiner_starts_with_init_and_newest_keyframe(
        clips: dict[str, Path], sources: Callable[..., FileSource]) -> None:
    """A viewer joining mid-GOP gets status, the init segment, then the newest keyframe (from
    the ring, not the next one); both viewers get the very same fragment objects."""
    src = sources("cam-late", clips["long_gop"])
    await mid_gop(src, 5)  # 60-frame GOPs: the next keyframe is 3.6 s away
    _, gop = src.packets.last_gop()
    hub = LiveHub()
    first = await hub.watch(src, "test#1")
    a = await take(first, 3)
    frags_a = [i for i in a if isinstance(i, Fragment)]
    assert frags_a[0].keyframe and frags_a[0].wall == gop[0].wall  # the ring's newest GOP
    late = await hub.watch(src, "test#2")
    b = await take(late, 3)
    assert isinstance(b[0], Status) and isinstance(b[1], InitSegment)
    frags_b = [i for i in b if isinstance(i, Fragment)]
    assert frags_b[0].keyframe and frags_b[0] is frags_a[0]  # muxed once, shared
    assert len(frames_of(stream_bytes(b))) == 3
    stream = hub.streams()["cam-late"]
    assert len(stream.viewers) == 2
    await hub.leave(first)
    await hub.leave(late)
    assert not hub.streams() and not src.packets._listeners


async def test_source_changing_stream_sends_a_new_init(
        clips: dict[str, Path], sources: Callable[..., FileSource]) -> None:
    """A source whose stream changes (here a file source switching clips, as a camera
    reconnecting at another resolution) makes its viewers get a new init and keyframe."""
    paths = iter([clips["small"], clips["big"], clips["big"], clips["big"]])
    src = sources("cam-switch", lambda: next(paths), realtime=False, start=False)
    hub = LiveHub()
    viewer = await hub.watch(src, "test#1")
    src.start()
    items = await take(viewer, 46)
    inits = [i for i in items if isinstance(i, InitSegment)]
    assert [(i.width, i.height) for i in inits] == [(320, 240), (640, 360)]
    after = items[items.index(inits[1]) + 1]
    assert isinstance(after, Fragment) and after.keyframe and after.init is inits[1]
    await hub.leave(viewer)


async def test_stalled_viewer_is_skipped_then_dropped_without_blocking_others(
        clips: dict[str, Path], sources: Callable[..., FileSource]) -> None:
    """A viewer that reads nothing stays bounded, skips ahead and is finally dropped (counted);
    the viewer next to it gets every fragment in order meanwhile."""
    src = sources("cam-stall", clips["small"])
    hub = LiveHub(Limits(max_lag_s=0.4, max_items=10, max_skips=2, skip_window_s=60))
    stalled = await hub.watch(src, "slow#1")
    good = await hub.watch(src, "good#2")
    seqs: list[int] = []
    async with asyncio.timeout(60):
        while stalled.dropped_reason is None:
            item = await good.get()
            if isinstance(item, Fragment):
                seqs.append(item.seq)
            assert stalled.queued() <= 10 + 2  # fragments, plus an init and a status
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the good viewer missed nothing"
    assert stalled.skips == 3 and stalled.skipped > 0 and good.skips == 0
    with pytest.raises(ViewerDropped):
        await stalled.get()
    await hub.leave(stalled)
    await hub.leave(good)
    assert hub.dropped_viewers == 1 and hub.report()["live"]["dropped_viewers"] == 1


async def test_non_h264_source_reports_unsupported(
        clips: dict[str, Path], sources: Callable[..., FileSource]) -> None:
    """A source in another codec gives viewers an "unsupported codec" status, no video."""
    src = sources("cam-mpeg4", clips["mpeg4"], realtime=False)
    hub = LiveHub()
    viewer = await hub.watch(src, "test#1")
    async with asyncio.timeout(30):
        while True:
            item = await viewer.get()
            assert not isinstance(item, Fragment | InitSegment)
            if item.status == "unsupported":
                break
    assert item.reason is not None and "mpeg4" in item.reason
    await hub.leave(viewer)
