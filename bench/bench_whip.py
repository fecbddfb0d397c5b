"""WHIP ingest figures against real peers (GStreamer webrtcbin, Debian chromium), loopback.

    .venv/bin/python bench/bench_whip.py [--runs 5] [--no-chromium]

Prints, asserts nothing:

* WHIP offer to first decoded frame, median/min/max of N fresh sessions, split into
  offer -> answer (the POST: aiortc setup, ICE gathering on 127.0.0.1) and answer -> first
  frame (ICE checks, DTLS, first keyframe, decode). GStreamer 640x480@15 H.264 and VP8
  (times from the hub's view: the POST arriving; the client's offer event for the total);
  chromium 1280x720@15 VP8 with a plain WHIP page.
* What the answer's bitrate hints change in chromium: the resolution of the first frame
  and the frame rate and resolution 5 s in, with and without the hints.
* The one H.264 encode per stream: libx264 time per 720p frame on this machine.
"""

# A bench script prints its figures (T201 is for the application code).
# ruff: noqa: T201

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_whip import (  # noqa: E402  (the tests' hub and peers, reused)
    PLAIN_WHIP_PUBLISH,
    WhipHub,
    chromium,
    gst_client,
    whip_hub,
)

import ingest.webrtc as webrtc  # noqa: E402


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    ms = [v * 1000 for v in values]
    return (f"median {statistics.median(ms):7.1f} ms  min {min(ms):7.1f}  max {max(ms):7.1f}"
            f"  (n={len(ms)})")


async def one_gst(hub: WhipHub, codec: str, unit: str) -> tuple[float, float, float]:
    token = await hub.token(unit)
    n_before = len(hub.rec.started)
    async with gst_client(f"{hub.url}/whip/{unit}", token, "--codec", codec) as client:
        await hub.rec.wait(lambda: len(hub.rec.started) > n_before, 30, "a session")
        src = hub.rec.started[-1]
        session = hub.sessions.live(unit)
        assert session is not None and session.answered_t is not None
        await hub.rec.wait(lambda: src.first_frame_t is not None, 30, "the first frame")
        assert src.first_frame_t is not None
        offer = client.event("offer")
        total = src.first_frame_t - (offer["t"] if offer else session.created_t)
        result = (session.answered_t - session.created_t,
                  src.first_frame_t - session.answered_t, total)
    await hub.rec.wait(lambda: src in hub.rec.ended, 30, "the session to end")
    return result


async def one_chromium(hub: WhipHub, browser: Any, unit: str, watch_s: float = 0.0
                       ) -> dict[str, Any]:
    token = await hub.token(unit)
    n_before = len(hub.rec.started)
    ctx = await browser.new_context(permissions=["camera"])
    page = await ctx.new_page()
    await page.goto(f"{hub.url}/api/health")
    await page.evaluate(PLAIN_WHIP_PUBLISH, {"unit": unit, "token": token})
    await hub.rec.wait(lambda: len(hub.rec.started) > n_before, 30, "a session")
    src = hub.rec.started[-1]
    session = hub.sessions.live(unit)
    assert session is not None and session.answered_t is not None
    await hub.rec.wait(lambda: src.first_frame_t is not None, 30, "the first frame")
    assert src.first_frame_t is not None
    out: dict[str, Any] = {
        "answer": session.answered_t - session.created_t,
        "first": src.first_frame_t - session.answered_t,
        "total": src.first_frame_t - session.created_t,
        "first_size": (src.health.width, src.health.height),
    }
    await hub.rec.wait(lambda: src.packets.total_packets >= 1, 30, "an encoded frame")
    if watch_s:
        await asyncio.sleep(watch_s)  # a benchmark observes a fixed span; tests never do
        out["later_size"] = (src.health.width, src.health.height)
        out["later_fps"] = src.health.fps
        out["encode_ms"] = 1000 * src.encode_seconds / max(1, src.encoded_frames)
        out["encode_dropped"] = src.encode_dropped
    await page.evaluate("""async (token) => (await fetch(window.whipLocation,
        {method: "DELETE", headers: {"Authorization": `Bearer ${token}`}})).status""", token)
    await hub.rec.wait(lambda: src in hub.rec.ended, 30, "the session to end")
    await ctx.close()
    return out


async def main(runs: int, with_chromium: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-whip-") as tmp:
        config = Path(tmp) / "config"
        shutil.copytree(ROOT / "configs" / "demo", config)
        async with whip_hub(config, Path(tmp) / "data") as hub:
            print(f"WHIP offer -> first decoded frame, {runs} fresh sessions each, loopback")
            for codec in ("h264", "vp8"):
                results = [await one_gst(hub, codec, "patrol-02") for _ in range(runs)]
                print(f"  gst webrtcbin {codec:4s} 640x480@15, RSA DTLS")
                print(f"    offer -> answer       {fmt([r[0] for r in results])}")
                print(f"    answer -> first frame {fmt([r[1] for r in results])}")
                print(f"    client offer -> frame {fmt([r[2] for r in results])}")
            if not with_chromium:
                return
            y4m = Path(tmp) / "720p.y4m"
            ffmpeg = await asyncio.create_subprocess_exec(
                "/usr/bin/ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                "testsrc2=size=1280x720:rate=15", "-frames:v", "30", "-pix_fmt", "yuv420p",
                str(y4m))
            if await ffmpeg.wait() != 0:
                raise RuntimeError("ffmpeg could not write the test clip")
            async with chromium(y4m) as browser:
                results = [await one_chromium(hub, browser, "patrol-01") for _ in range(runs)]
                print("  chromium plain WHIP page, 1280x720@15 fake camera, ECDSA DTLS")
                print(f"    offer -> answer       {fmt([r['answer'] for r in results])}")
                print(f"    answer -> first frame {fmt([r['first'] for r in results])}")
                print(f"    offer -> first frame  {fmt([r['total'] for r in results])}")
                print("\nChromium with and without the answer's bitrate hints (plain page, "
                      "5 s after the first frame)")
                original: Callable[..., str] = webrtc.munge_answer
                for label, munge in (("with hints", original),
                                     ("without hints", lambda sdp, hints: sdp)):
                    webrtc.munge_answer = munge  # type: ignore[assignment]
                    try:
                        r = await one_chromium(hub, browser, "patrol-01", watch_s=5.0)
                    finally:
                        webrtc.munge_answer = original  # type: ignore[assignment]
                    print(f"  {label:14s} first frame {r['first_size'][0]}x{r['first_size'][1]}"
                          f", at 5 s {r['later_size'][0]}x{r['later_size'][1]} "
                          f"{r['later_fps']:.1f} fps; H.264 re-encode {r['encode_ms']:.1f} ms/"
                          f"frame, {r['encode_dropped']} dropped")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-chromium", dest="chromium", action="store_false")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    asyncio.run(main(args.runs, args.chromium))
    print(f"\n(bench took {time.monotonic() - started:.0f} s)")
