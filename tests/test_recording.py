"""Continuous recording, the recordings index, start-up repair, retention with evidence
locks, incident clips and a full disk: against the real GStreamer RTSP server, the real hub
(uvicorn, store, bus, worker) and real files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import subprocess
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from conftest import HubProcess, RunningHub, running_hub
from cryptography.hazmat.primitives import serialization

from hub.api_recordings import sign_clip
from hub.bus import IncidentCandidate
from hub.bus.messages import RecordingStatus
from hub.evidence import KEY_FILE
from hub.evidence_verify import render, verify_bundle
from hub.models import Incident
from hub.recordings import iso
from ingest import replay
from ingest.fmp4 import split_lengths
from ingest.packets import StreamInfo, VideoPacket
from ingest.recorder import Recorder, Segment
from ingest.segments import cut_clip, repair, scan
from tests.recording_helpers import (
    CAM,
    FedSource,
    RecordingSink,
    login,
    peer,
    rtsp_camera,
    service,
    until,
    with_recording,
)

FPS = 15


async def complete_segments(c: httpx.AsyncClient, h: dict[str, str], n: int,
                            what: str) -> list[dict[str, Any]]:
    """The camera's complete segments in the index, once there are at least ``n`` (40 s)."""

    async def done() -> list[dict[str, Any]] | None:
        r = await c.get("/api/recordings", params={"camera": CAM}, headers=h)
        items = [i for i in r.json()["items"] if i["state"] == "complete"]
        return items if len(items) >= n else None

    found: list[dict[str, Any]] = await until(done, 40, what)
    return found


def au_bodies(clip: Path) -> set[tuple[bytes, ...]]:
    """The NAL units of each access unit of an Annex B clip, parameter sets and AUDs left
    out (they live in the segment's avcC)."""
    out = set()
    for au in peer.access_units(clip.read_bytes()):
        nals = [n[4:] for n in peer.nal_units(au)]
        out.add(tuple(n for n in nals if n[0] & 0x1F not in (7, 8, 9)))
    return out


def samples_of(path: Path) -> list[tuple[bytes, ...]]:
    s = scan(path)
    out = []
    with path.open("rb") as f:
        for frag in s.fragments:
            f.seek(frag.data_offset)
            for _dur, size, _key, _cto in frag.samples:
                out.append(tuple(split_lengths(f.read(size))))
    return out


def decode_all(path: Path) -> tuple[int, float]:
    """(frames decoded without error, container duration in s)."""
    with av.open(str(path)) as c:
        n = sum(1 for _ in c.decode(video=0))
        return n, float(c.duration or 0) / 1e6


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 s H.264 camera clip (640x360, 15 fps, a keyframe every second)."""
    d = tmp_path_factory.mktemp("clips")
    return Path(peer.make_clip(d / "main.h264", width=640, height=360, fps=FPS, seconds=6))


@pytest.fixture
def rtsp(clip: Path, tmp_path: Path) -> Iterator[Any]:
    """The real GStreamer RTSP server looping the clip; killed after."""
    server = peer.ServerProcess(["--h264", str(clip), "--fps", str(FPS)], tmp_path / "rtsp.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def rec_hub(demo_config: Path, tmp_path: Path, rtsp: Any) -> AsyncIterator[RunningHub]:
    """The hub with one RTSP camera recorded in 2 s segments, clips 2 s before to 2 s
    after."""
    with_recording(demo_config, [rtsp_camera(rtsp.url())], segment_s=2, preroll_s=2,
                   postroll_s=2, min_free_gb=0)
    async with running_hub(demo_config, tmp_path / "data", with_worker=True) as hub:
        yield hub


# --- recording from the real RTSP server ------------------------------------------------


async def test_records_rtsp_camera_into_segments_by_stream_copy(
        rec_hub: RunningHub, clip: Path) -> None:
    """A real RTSP camera is recorded into 2 s fMP4 segments, indexed with their times;
    every file decodes, its length matches the index, and each sample is byte for byte an
    access unit the camera sent (no re-encode)."""
    async with httpx.AsyncClient(base_url=rec_hub.url) as c:
        h = await login(c, "operator")

        items = await complete_segments(c, h, 3, "three complete segments")
        listing = (await c.get("/api/recordings", params={"camera": CAM}, headers=h)).json()
        data_dir = rec_hub.state.settings.data_dir  # type: ignore[attr-defined]
        sent = au_bodies(clip)
        for it in items:
            start, end = datetime.fromisoformat(it["start"]), datetime.fromisoformat(it["end"])
            length = (end - start).total_seconds()
            assert 1.5 <= length <= 3.5, it  # 2 s, cut at the next keyframe (1 s GOP)
            assert (it["codec"], it["width"], it["height"]) == ("h264", 640, 360)
            path = data_dir / "recordings" / CAM / start.strftime("%Y-%m-%d")
            # The file the API serves for this row is one of the segment files on disk
            # (segments of a constant-rate clip may share a size, so match the bytes).
            r = await c.get(it["url"], headers=h)
            assert r.status_code == 200, r.text
            files = [p for p in path.glob("*.mp4")
                     if p.stat().st_size == it["size"] and p.read_bytes() == r.content]
            assert len(files) == 1, it
            frames, duration = decode_all(files[0])
            assert abs(duration - length) < 0.3, (duration, length)
            assert abs(frames - length * FPS) <= 2, (frames, length)
            samples = samples_of(files[0])
            assert len(samples) == frames
            assert all(s in sent for s in samples)  # byte-identical to what was sent
        # Consecutive segments follow each other without missing time.
        first, last = items[0]["start"], items[-1]["end"]
        assert not [g for g in listing["gaps"] if first <= g["start"] <= last]
        st = (await c.get("/api/recordings/status", headers=h)).json()
        cam = next(x for x in st["cameras"] if x["camera"] == CAM)
        assert cam["state"] == "recording" and cam["segments"] >= 3
        # Recorded video is as sensitive as live video: not for department accounts.
        dep = await login(c, "civil-affairs")
        for url in ("/api/recordings", "/api/recordings/status", items[0]["url"]):
            r = await c.get(url, headers=dep)
            assert r.status_code == 403, (url, r.status_code)


async def test_records_h265_rtsp_camera_by_stream_copy(demo_config: Path,
                                                       tmp_path: Path) -> None:
    """An H.265 camera (the real GStreamer RTSP server, rtph265pay) is recorded the same
    way: hvc1 segments with the VPS/SPS/PPS in their hvcC, every file decodes with the
    right length, and each sample is byte for byte an access unit the camera sent."""
    clip = Path(peer.make_clip(tmp_path / "main.h265", width=640, height=360, fps=FPS,
                               seconds=6, codec="hevc"))
    sent = set()
    for au in peer.access_units(await asyncio.to_thread(clip.read_bytes), hevc=True):
        nals = [n[4:] for n in peer.nal_units(au)]
        sent.add(tuple(n for n in nals if (n[0] >> 1) & 0x3F not in (32, 33, 34, 35)))
    assert len(sent) > FPS  # the clip has distinct access units to compare with
    server = peer.ServerProcess(["--h265", str(clip), "--fps", str(FPS)],
                                tmp_path / "rtsp.log")
    server.start()
    try:
        with_recording(demo_config, [rtsp_camera(server.url())], segment_s=2,
                       preroll_s=2, postroll_s=2, min_free_gb=0)
        async with running_hub(demo_config, tmp_path / "data", with_worker=True) as hub, \
                httpx.AsyncClient(base_url=hub.url) as c:
            h = await login(c, "operator")

            items = await complete_segments(c, h, 2, "two complete H.265 segments")
            for n, it in enumerate(items):
                assert (it["codec"], it["width"], it["height"]) == ("hevc", 640, 360), it
                r = await c.get(it["url"], headers=h)
                assert r.status_code == 200, r.text
                seg = tmp_path / f"seg{n}.mp4"
                seg.write_bytes(r.content)
                assert b"hvcC" in r.content[:4096]
                length = (datetime.fromisoformat(it["end"])
                          - datetime.fromisoformat(it["start"])).total_seconds()
                assert 1.5 <= length <= 3.5, it
                frames, duration = decode_all(seg)
                assert abs(duration - length) < 0.3, (duration, length)
                assert abs(frames - length * FPS) <= 2, (frames, length)
                samples = samples_of(seg)
                assert len(samples) == frames
                assert all(x in sent for x in samples)  # byte-identical to what was sent
    finally:
        server.kill()


async def test_incident_clip_is_cut_locked_attached_and_served_with_ranges(
        rec_hub: RunningHub) -> None:
    """A detector incident locks its window and gets a clip of [t - 2 s, t + 2 s] (from the
    keyframe before), a plain MP4 with moov before mdat, attached to the incident and
    served with Range (206; 416 past the end)."""
    hub = rec_hub
    svc = service(hub)
    async with httpx.AsyncClient(base_url=hub.url) as c:
        h = await login(c, "operator")

        async def recording() -> bool:
            r = await c.get("/api/recordings", params={"camera": CAM}, headers=h)
            return any(i["state"] == "complete" for i in r.json()["items"])

        await until(recording, 40, "a complete segment")
        now = datetime.now(UTC)
        await hub.state.bus.publish(IncidentCandidate(  # type: ignore[attr-defined]
            event_id="ev-clip", phase="start", type="person_down", camera_id=CAM, at=now,
            started_at=now, confidence=0.9, frame_size=(640, 360),
            clip_start=now - timedelta(seconds=10), clip_end=now + timedelta(seconds=30)))

        async def with_clip() -> dict[str, Any] | None:
            r = await c.get("/api/incidents", headers=h)
            items = [i for i in r.json()["items"] if i["camera_id"] == CAM]
            return items[0] if items and items[0]["clip_url"] else None

        inc = await until(with_clip, 30, "the incident's clip")
        done_at = datetime.now(UTC)
        assert (done_at - now).total_seconds() < 2 + 6  # post-roll, then within seconds
        r = await c.get(inc["clip_url"], headers=h)
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        body = r.content
        assert body[4:8] == b"ftyp"
        assert 0 < body.find(b"moov") < body.find(b"mdat")  # faststart: plays at once
        path = hub.state.settings.data_dir / "clips" / f"{inc['id']}.mp4"  # type: ignore[attr-defined]
        frames, duration = decode_all(path)
        assert 4.0 - 0.2 <= duration <= 4.0 + 1.0 + 0.2, duration  # the window, within a GOP
        assert abs(frames - duration * FPS) <= 2
        r = await c.get(inc["clip_url"], headers={**h, "Range": "bytes=0-99"})
        assert r.status_code == 206 and len(r.content) == 100
        assert r.headers["content-range"] == f"bytes 0-99/{len(body)}"
        r = await c.get(inc["clip_url"], headers={**h, "Range": f"bytes={len(body) + 10}-"})
        assert r.status_code == 416
        # A <video> element cannot send the token: /clip/link signs the clip's URL for the
        # user (Range without a token); altered, another user's or expired, it is refused.
        iid = inc["id"]
        link = (await c.get(f"/api/incidents/{iid}/clip/link", headers=h)).json()
        assert link["url"].startswith(f"/api/incidents/{iid}/clip?")
        r = await c.get(link["url"], headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == body[100:200]
        assert (await c.get(link["url"].replace("sig=", "sig=0"))).status_code == 401
        assert (await c.get(link["url"].replace("u=operator", "u=reviewer"))).status_code == 401
        assert (await c.get(inc["clip_url"])).status_code == 401  # neither token nor signature
        key = hub.app.state.clip_url_key  # type: ignore[attr-defined]
        old = int(time.time()) - 1
        r = await c.get(inc["clip_url"], params={
            "u": "operator", "exp": old, "sig": sign_clip(key, "operator", iid, old)})
        assert r.status_code == 401
        # Visibility is checked when the clip is fetched: not a department's case, not its clip.
        dep = await login(c, "civil-affairs")
        assert (await c.get(f"/api/incidents/{iid}/clip/link", headers=dep)).status_code == 404
        soon = int(time.time()) + 60
        r = await c.get(inc["clip_url"], params={
            "u": "civil-affairs", "exp": soon, "sig": sign_clip(key, "civil-affairs", iid, soon)})
        assert r.status_code == 404
        locks = (await c.get(f"/api/incidents/{inc['id']}/evidence/locks", headers=h)).json()
        assert [lk["camera"] for lk in locks] == [CAM] and locks[0]["released_at"] is None
        # The window reaches 10 s (clip_start) + 2 s (pre-roll) back: what is recorded of it
        # is locked, and so is what is written later inside it.
        listing = (await c.get("/api/recordings", params={"camera": CAM}, headers=h)).json()
        assert all(inc["id"] in i["locked_by"] for i in listing["items"]
                   if i["end"] >= iso(now.timestamp() - 12) and i["state"] != "recording")
        assert svc.clips_made == 1
        # The clip is in the hash-chained timeline as cut (by the recorder, with its
        # SHA-256), so a bundle whose clip was swapped fails verification even when its
        # manifest is re-signed with the installation's own key.
        tl = (await c.get(f"/api/incidents/{iid}", headers=h)).json()["timeline"]
        cut = [e for e in tl if e["action"] == "clip"]
        assert len(cut) == 1 and cut[0]["actor"] == "system:recorder", tl
        assert cut[0]["detail"]["sha256"] == hashlib.sha256(body).hexdigest()
        assert cut[0]["detail"]["bytes"] == len(body) and cut[0]["detail"]["camera"] == CAM
        rv = await login(c, "reviewer")
        r = await c.post(f"/api/incidents/{iid}/export", headers=rv, json={"reason": "court"})
        assert r.status_code == 200, r.text
        data_dir = hub.state.settings.data_dir  # type: ignore[attr-defined]
        bundle, swapped = data_dir / "b.zip", data_dir / "swapped.zip"
        bundle.write_bytes(r.content)
        assert verify_bundle(bundle, None).ok
        with zipfile.ZipFile(bundle) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            members = {n: zf.read(n) for n in zf.namelist()}
        clip_name = next(f["path"] for f in manifest["files"] if f["kind"] == "clip")
        other = body[:-1] + bytes([body[-1] ^ 0xFF])  # another clip
        for f in manifest["files"]:
            if f["path"] == clip_name:
                f["size"], f["sha256"] = len(other), hashlib.sha256(other).hexdigest()
        text = json.dumps(manifest).encode()
        key = serialization.load_pem_private_key(
            (data_dir / KEY_FILE).read_bytes(), password=None)
        with zipfile.ZipFile(swapped, "w", zipfile.ZIP_STORED) as zf:
            for n, b in members.items():
                zf.writestr(n, {clip_name: other, "manifest.json": text,
                                "manifest.sig": key.sign(text)}.get(n, b))  # type: ignore[union-attr]
        result = verify_bundle(swapped, None)
        assert not result.ok
        assert [ch.name for ch in result.checks if not ch.ok] == [clip_name], render(result)


# --- crash and repair -----------------------------------------------------------------


def test_killed_hub_leaves_a_segment_repaired_on_restart(
        demo_config: Path, tmp_path: Path, rtsp: Any) -> None:
    """A hub killed (SIGKILL) mid-segment, with a torn fragment at the end of the file,
    repairs it at the next start: cut back to its last complete fragment, marked
    repaired, decodable to its end; the listing still works."""
    config = with_recording(demo_config, [rtsp_camera(rtsp.url())], segment_s=30,
                            min_free_gb=0)
    data = tmp_path / "data"
    hub = HubProcess(config, data, tmp_path / "hub.log")
    hub.start()
    try:
        token = hub.token("operator")
        auth = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 60
        seg: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            items = httpx.get(f"{hub.url}/api/recordings", params={"camera": CAM},
                              headers=auth).json()["items"]
            live = [i for i in items if i["state"] == "recording"]
            if live and (datetime.fromisoformat(live[0]["end"])
                         - datetime.fromisoformat(live[0]["start"])).total_seconds() > 3:
                seg = live[0]
                break
            time.sleep(0.2)
        assert seg is not None, "no segment being recorded"
        hub.kill()
    finally:
        hub.stop()
    path = next((data / "recordings" / CAM).glob("*/*.mp4"))
    whole = path.stat().st_size
    with path.open("ab") as f:  # a fragment torn by the crash: header written, body not
        f.write(struct.pack(">I4s", 50_000, b"moof") + b"\x00" * 40)
    hub2 = HubProcess(config, data, tmp_path / "hub2.log")
    hub2.start()
    try:
        auth = {"Authorization": f"Bearer {hub2.token('operator')}"}
        r = httpx.get(f"{hub2.url}/api/recordings", params={"camera": CAM}, headers=auth)
        assert r.status_code == 200
        fixed = next(i for i in r.json()["items"] if i["id"] == seg["id"])
        assert fixed["state"] == "repaired" and fixed["size"] == path.stat().st_size == whole
        assert fixed["end"] > fixed["start"] and "cut 48 bytes" in fixed["note"]
        frames, duration = decode_all(path)
        length = (datetime.fromisoformat(fixed["end"])
                  - datetime.fromisoformat(fixed["start"])).total_seconds()
        assert frames >= 3 * FPS and abs(duration - length) < 0.3
    finally:
        hub2.stop()




def record_clip(clip: Path, data: Path, *, segment_s: float = 60.0, t0: float | None = None
                ) -> list[Segment]:
    """Record the clip's access units as the RTSP source hands them over (Annex B, 90 kHz
    timestamps, wall times 1/15 s apart from ``t0``)."""
    src, sink = FedSource("cam1"), RecordingSink()
    rec = Recorder(src, data, sink, segment_s=segment_s)
    rec.start()
    src.packets.set_info(StreamInfo("h264", 640, 360, Fraction(1, 90000), None, FPS))
    t0 = time.time() if t0 is None else t0
    for i, au in enumerate(peer.access_units(clip.read_bytes())):
        ts = i * 90000 // FPS
        src.packets.put(VideoPacket(au, ts, ts, peer.is_idr(au), time.monotonic(),
                                    t0 + i / FPS))
    rec.stop()
    return sink.closed


def test_repair_cuts_a_torn_segment_and_marks_unusable_files_damaged(
        clip: Path, tmp_path: Path) -> None:
    """A segment cut in the middle of a fragment is cut back to the last complete one and
    plays to its end; a file with only its header, or no MP4 at all, is damaged (and kept)."""
    seg = record_clip(clip, tmp_path)[0]
    s = scan(seg.path)
    assert len(s.fragments) == 6 and s.duration_s == pytest.approx(6.0, abs=0.01)
    torn = s.fragments[-1].data_offset + 1000  # inside the last fragment's mdat
    with seg.path.open("r+b") as f:
        f.truncate(torn)
    r = repair(seg.path)
    assert r.state == "repaired" and r.size == s.fragments[-2].end == seg.path.stat().st_size
    assert r.end == pytest.approx(seg.start + 5.0, abs=0.01)
    assert decode_all(seg.path)[0] == 5 * FPS
    assert repair(seg.path).state == "complete"  # idempotent
    header_only = tmp_path / "header.mp4"
    header_only.write_bytes(seg.path.read_bytes()[:s.fragments[0].data_offset - 200])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(5000))
    for p in (header_only, junk):
        before = p.read_bytes()
        assert repair(p).state == "damaged" and p.read_bytes() == before


def test_clip_cut_across_segments_is_fast_and_starts_on_a_keyframe(
        clip: Path, tmp_path: Path) -> None:
    """A clip spanning several segments starts on the keyframe at or before its window,
    has continuous timestamps and decodes completely."""
    t0 = 1_800_000_000.0
    segs = record_clip(clip, tmp_path, segment_s=2, t0=t0)
    assert len(segs) == 3
    out = tmp_path / "clip.mp4"
    c = cut_clip([s.path for s in segs], t0 + 1.5, t0 + 4.5, out)
    assert c.start == pytest.approx(t0 + 1.0, abs=1e-3)  # the keyframe before 1.5 s
    assert c.duration_s == pytest.approx(3.6, abs=0.07)
    frames, duration = decode_all(out)
    assert frames == c.samples and duration == pytest.approx(c.duration_s, abs=0.05)


def test_replay_map_is_the_clips_while_the_last_segment_grows(
        clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay window reaching the segment being written: the segment grows by a fragment
    while the window is cut, and the wall-clock map still describes exactly the samples
    the MP4 holds (a map read from a later scan once put seeks 7 s off in CI)."""
    t0 = 1_800_000_000.0
    segs = record_clip(clip, tmp_path, segment_s=3, t0=t0)
    last = segs[-1].path
    whole = last.read_bytes()
    frags = scan(last).fragments
    assert len(frags) >= 2
    last.write_bytes(whole[:frags[-2].end])  # the recorder has written all but one fragment
    real = replay.cut_clip

    def cut_then_grow(*args: Any, **kwargs: Any) -> Any:
        c = real(*args, **kwargs)
        last.write_bytes(whole)  # the writer thread appends the next fragment meanwhile
        return c

    monkeypatch.setattr(replay, "cut_clip", cut_then_grow)
    w = replay.cut_window([s.path for s in segs], t0 + 0.5, t0 + 100, tmp_path / "w.mp4")
    assert w is not None and w.note is None
    assert w.start == pytest.approx(t0, abs=1e-3)
    assert w.duration_s == pytest.approx(6.0 - 1.0, abs=0.01)  # the last fragment not in it
    assert w.samples == decode_all(w.path)[0] == 5 * FPS
    assert sum(d for _m, _w, d in w.pieces) == pytest.approx(w.duration_s, abs=1e-5)
    assert w.pieces[0][:2] == (0.0, pytest.approx(t0, abs=1e-3))


# --- retention and evidence locks ------------------------------------------------------


async def test_retention_by_age_and_quota_skips_locks_until_a_reviewer_unlocks(
        demo_config: Path, tmp_path: Path) -> None:
    """Age and quota delete the oldest segments first, never a locked one or the one being
    written; only a reviewer may unlock (403 otherwise), the unlock is in the timeline
    with who and why, and retention then deletes what was locked."""
    config = with_recording(demo_config, None, retain_days=7, quota_gb=2.5e-6)
    async with running_hub(config, tmp_path / "data") as hub:
        svc = service(hub)
        store = hub.state.store  # type: ignore[attr-defined]
        data = hub.state.settings.data_dir  # type: ignore[attr-defined]
        now = time.time()
        old = now - 10 * 86400
        rows = {"o1": (old, "complete"), "o2": (old + 60, "complete"),
                "o3": (old + 120, "complete"), "r1": (now - 3 * 3600, "complete"),
                "r2": (now - 2 * 3600, "repaired"), "r3": (now - 3600, "complete"),
                "r4": (now - 30, "recording")}
        for name, (start, state) in rows.items():
            rel = f"recordings/cam-x/day/{name}.mp4"
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            (data / rel).write_bytes(b"x" * 1000)
            await svc.index.add("cam-x", rel, start, end=start + 60, size=1000, state=state)
        at = datetime.now(UTC)
        inc = Incident(id="inc_lock", type="person_down", state="new", severity="orange",
                       camera_id="cam-x", created_at=at, updated_at=at, started_at=at,
                       last_seen_at=at)
        await store.insert(inc, event_id=None, entry={
            "at": at, "actor": "detector:cam-x", "action": "created", "from_state": None,
            "to_state": "new", "detail": {}})
        assert await svc.index.lock(inc.id, "cam-x", old + 70, old + 80)  # inside o2

        deleted = await svc.retention(now)
        assert deleted == [f"recordings/cam-x/day/{n}.mp4" for n in ("o1", "o3", "r1", "r2",
                                                                      "r3")]
        left = {r.path.rsplit("/", 1)[1]: r for r in await svc.index.query(camera="cam-x")}
        assert sorted(left) == ["o2.mp4", "r4.mp4"] and left["o2.mp4"].locked_by == [inc.id]
        assert sorted(p.name for p in (data / "recordings/cam-x/day").iterdir()) == \
            ["o2.mp4", "r4.mp4"]

        async with httpx.AsyncClient(base_url=hub.url) as c:
            url = f"/api/incidents/{inc.id}/evidence/unlock"
            r = await c.post(url, json={"reason": "x"}, headers=await login(c, "operator"))
            assert r.status_code == 403
            reviewer = await login(c, "reviewer")
            r = await c.post(url, json={"reason": "case closed, no proceedings"},
                             headers=reviewer)
            assert r.status_code == 200, r.text
            tl = (await c.get(f"/api/incidents/{inc.id}", headers=reviewer)).json()["timeline"]
            assert (tl[-1]["action"], tl[-1]["actor"], tl[-1]["detail"]["reason"]) == \
                ("evidence_unlock", "reviewer", "case closed, no proceedings")
            assert (await c.post(url, json={"reason": "again"}, headers=reviewer)
                    ).status_code == 409
        locks = await svc.index.locks(inc.id)
        assert locks[0]["released_by"] == "reviewer"
        assert await svc.retention(now) == ["recordings/cam-x/day/o2.mp4"]
        assert [r.path for r in await svc.index.query(camera="cam-x")] == \
            ["recordings/cam-x/day/r4.mp4"]


# --- a full disk -----------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_disk_pauses_recording_with_an_alert_and_resumes(
        demo_config: Path, tmp_path: Path, rtsp: Any, tiny_disk: Path) -> None:
    """When the disk fills up, recording pauses (bus alert, status with the reason) while
    the hub keeps answering; once space is back it resumes by itself."""
    config = with_recording(demo_config, [rtsp_camera(rtsp.url())], segment_s=2,
                            min_free_gb=0)
    async with running_hub(config, tiny_disk / "data", with_worker=True,
                           database_url=str(tmp_path / "store.sqlite3")) as hub:
        bus = hub.state.bus  # type: ignore[attr-defined]
        async with bus.listen(RecordingStatus) as events, \
                httpx.AsyncClient(base_url=hub.url) as c:
            h = await login(c, "operator")

            async def recording() -> bool:
                r = await c.get("/api/recordings", params={"camera": CAM}, headers=h)
                return bool(r.json()["items"])

            await until(recording, 40, "recording to start")
            filler = tiny_disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill it to the last byte
            for chunk in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:
                    pass
            os.close(fd)

            async def next_event() -> RecordingStatus:
                return await anext(events)

            async with asyncio.timeout(30):
                ev = await next_event()
            assert (ev.kind, ev.camera_id) == ("recording.paused", CAM)
            assert ev.reason and "disk full" in ev.reason
            r = await c.get("/api/recordings/status", headers=h)
            cam = next(x for x in r.json()["cameras"] if x["camera"] == CAM)
            assert cam["state"] == "paused" and "disk full" in cam["reason"]
            health = (await c.get("/api/health")).json()
            assert health["components"]["recording"]["paused"] == [CAM]
            listed = (await c.get("/api/recordings", params={"camera": CAM}, headers=h))
            assert listed.status_code == 200
            before = len(listed.json()["items"])
            filler.unlink()
            async with asyncio.timeout(30):
                ev = await next_event()
            assert (ev.kind, ev.camera_id) == ("recording.resumed", CAM)

            async def new_segment() -> bool:
                r = await c.get("/api/recordings", params={"camera": CAM}, headers=h)
                return len(r.json()["items"]) > before

            await until(new_segment, 30, "a new segment after resuming")
            for it in (await c.get("/api/recordings", params={"camera": CAM},
                                   headers=h)).json()["items"]:
                if it["state"] == "complete":  # what was written before the disk filled
                    path = tiny_disk / "data" / "recordings" / CAM
                    assert any(p.stat().st_size == it["size"] for p in path.glob("*/*.mp4"))

