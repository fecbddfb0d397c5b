"""The packet ring: keyframe-aligned pre-roll, byte budget, listeners."""

from __future__ import annotations

from fractions import Fraction

from ingest.packets import PacketRing, StreamInfo, VideoPacket

INFO = StreamInfo(codec="h264", width=64, height=36, time_base=Fraction(1, 90000))


def pkt(t: float, key: bool, size: int = 100) -> VideoPacket:
    return VideoPacket(data=b"x" * size, pts=int(t * 90000), dts=int(t * 90000), keyframe=key,
                       t=t, wall=t)


def feed(ring: PacketRing, seconds: float, fps: int = 10, gop: int = 10, size: int = 100,
         start: float = 0.0) -> None:
    for i in range(int(seconds * fps)):
        ring.put(pkt(start + i / fps, i % gop == 0, size))


def test_ring_keeps_preroll_from_a_keyframe() -> None:
    """After 10 s of 1 s GOPs with a 3 s pre-roll the ring holds whole GOPs covering at
    least 3 s, starting on a keyframe, and never starts mid-GOP."""
    ring = PacketRing(preroll_s=3.0)
    ring.set_info(INFO)
    ring.put(pkt(-0.1, False))  # before any keyframe: not kept
    feed(ring, 10)
    _, pkts = ring.snapshot()
    assert pkts[0].keyframe
    assert 3.0 <= pkts[-1].t - pkts[0].t < 4.0
    assert ring.total_packets == 101
    _, gop = ring.last_gop()
    assert gop[0].keyframe and gop[0].t == 9.0 and len(gop) == 10


def test_byte_budget_drops_old_gops_then_a_lone_oversized_gop() -> None:
    """Over the byte budget, old GOPs go first; a single GOP bigger than the budget (a camera
    that sends no keyframe) empties the ring, which starts again at the next keyframe."""
    ring = PacketRing(preroll_s=60.0, max_bytes=5_000)
    ring.set_info(INFO)
    feed(ring, 5, size=100)  # 5 GOPs of 1,000 bytes = 5,000: fits
    assert len(ring.snapshot()[1]) == 50
    feed(ring, 1, size=100, start=5.0)  # one more GOP: the oldest goes
    _, pkts = ring.snapshot()
    assert len(pkts) == 50 and pkts[0].t == 1.0 and pkts[0].keyframe
    ring.put(pkt(6.0, True))
    for i in range(1, 200):  # no keyframe for 20 s
        ring.put(pkt(6.0 + i / 10, False))
    assert ring.overflows >= 1
    assert sum(len(p.data) for p in ring.snapshot()[1]) <= 5_000
    ring.put(pkt(30.0, True))
    _, pkts = ring.snapshot()
    assert pkts[0].keyframe and pkts[0].t == 30.0


def test_new_stream_info_clears_and_listeners_survive_a_bad_one() -> None:
    """A new StreamInfo starts a new ring; a listener that raises is removed, others stay."""
    ring = PacketRing()
    ring.set_info(INFO)
    seen: list[float] = []

    def bad(_info: StreamInfo, _p: VideoPacket) -> None:
        raise RuntimeError("boom")

    ring.subscribe(bad)
    ring.subscribe(lambda _i, p: seen.append(p.t))
    feed(ring, 1)
    assert len(seen) == 10
    ring.set_info(StreamInfo(codec="h264", width=128, height=72, time_base=Fraction(1, 90000)))
    assert ring.snapshot()[1] == []
    ring.put(pkt(5.0, True))
    assert seen[-1] == 5.0
