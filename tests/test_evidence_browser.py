"""The evidence card of the console's incident detail in a real browser (Debian chromium
via Playwright): the real hub records a real RTSP camera (the GStreamer RTSP server), a
detector incident on it locks its window and gets a clip. The reviewer watches the card
go from "no clip yet" to the clip (pushed), plays it to its end, sees the camera's lock,
exports a bundle that ``gridhub verify`` accepts, unlocks, and sees both in the timeline;
an operator sees the card without export or unlock; a department user sees its case's
clip but not the replay link or the locks."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from hub.bus import IncidentCandidate
from hub.bus.messages import RecordingStatus
from tests.conftest import DEMO, RunningHub, running_hub
from tests.recording_helpers import CAM, login, peer, rtsp_camera, until, with_recording

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

FPS = 15
PREROLL_S, POSTROLL_S = 2.0, 4.0  # the clip: [t - 2 s, t + 4 s]
GOP_S = 1.0
WAIT_MS = 20_000
GRIDHUB = Path(sys.executable).with_name("gridhub")
REASON = "法院调取 court order 2026-118"


@dataclass
class Scene:
    hub: RunningHub
    client: httpx.AsyncClient
    op: dict[str, str]  # the operator's Authorization header
    tmp: Path
    incident: str | None = None  # made by the first test that needs it


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    """The hub recording one RTSP camera in 2 s segments (clips 2 s before to 4 s after an
    incident), once a segment is complete."""
    tmp = tmp_path_factory.mktemp("evidence")
    clip = peer.make_clip(tmp / "cam.h264", width=640, height=360, fps=FPS, seconds=4)
    server = peer.ServerProcess(["--h264", str(clip), "--fps", str(FPS)], tmp / "rtsp.log")
    server.start()
    config = tmp / "config"
    shutil.copytree(DEMO, config)
    with_recording(config, [rtsp_camera(server.url())], segment_s=2, preroll_s=PREROLL_S,
                   postroll_s=POSTROLL_S, min_free_gb=0)
    rules = yaml.safe_load((config / "rules.yaml").read_text(encoding="utf-8"))
    rules["detect_fps"] = 0.5  # the detector runs, slowly: the incident is published below
    (config / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True),
                                       encoding="utf-8")
    try:
        async with running_hub(config, tmp / "data", with_worker=True) as hub, \
                httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
            op = await login(c, "operator")

            async def recording() -> bool:
                r = await c.get("/api/recordings", params={"camera": CAM}, headers=op)
                return any(i["state"] == "complete" for i in r.json()["items"])

            await until(recording, 40, "a complete segment")
            yield Scene(hub, c, op, tmp)
    finally:
        server.kill()


async def raise_incident(scene: Scene) -> str:
    """A person_down detection on the recorded camera, as the detection worker sends it."""
    now = datetime.now(UTC)
    await scene.hub.state.bus.publish(IncidentCandidate(  # type: ignore[attr-defined]
        event_id="ev-evidence-card", phase="start", type="person_down", camera_id=CAM,
        at=now, started_at=now, confidence=0.9, frame_size=(640, 360)))

    async def created() -> str | None:
        r = await scene.client.get("/api/incidents", headers=scene.op)
        items = [i for i in r.json()["items"] if i["camera_id"] == CAM]
        return str(items[0]["id"]) if items else None

    scene.incident = await until(created, 15, "the incident")
    return scene.incident


async def incident_with_clip(scene: Scene) -> str:
    iid = scene.incident or await raise_incident(scene)

    async def with_clip() -> bool:
        r = await scene.client.get(f"/api/incidents/{iid}", headers=scene.op)
        return bool(r.json()["clip_url"])

    await until(with_clip, 30, "the incident's clip")
    return iid


async def console(chromium: Any, scene: Scene, user: str, errors: list[str]) -> Any:
    """A new browser context signed in to the console as ``user``, live."""
    ctx = await chromium.new_context(locale="zh-CN", viewport={"width": 1400, "height": 1000},
                                     accept_downloads=True)
    page = await ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{user}: {exc}"))
    await page.goto(scene.hub.url)
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", "demo")
    await page.click("#login-submit")
    await page.wait_for_selector("#conn-status[data-state=live]", timeout=WAIT_MS)
    await page.evaluate("window.__sameDocument = true")
    return page


async def open_incident(page: Any, iid: str) -> None:
    row = f"li.incident[data-id='{iid}']"
    await page.wait_for_selector(row, timeout=WAIT_MS)
    await page.click(row)
    await page.wait_for_selector(f"#incident-detail[data-id='{iid}'] #timeline li.timeline-entry",
                                 timeout=WAIT_MS)


async def play_to_end(page: Any) -> dict[str, Any]:
    """Play the card's <video> (muted, 2x) to its ``ended`` event."""
    async with asyncio.timeout(40):
        return dict(await page.eval_on_selector("#evidence-video", """async (v) => {
            v.muted = true;
            const ended = new Promise((ok, bad) => {
              v.addEventListener("ended", () => ok(true), {once: true});
              v.addEventListener("error", () => bad(new Error(`video error ${v.error?.code}`)));
            });
            if (v.readyState < 1) {
              await new Promise((ok) => v.addEventListener("loadedmetadata", ok, {once: true}));
            }
            v.playbackRate = 2;
            await v.play();
            await ended;
            return {duration: v.duration, currentTime: v.currentTime, w: v.videoWidth,
                    src: v.getAttribute("src"), preload: v.getAttribute("preload"),
                    controls: v.controls};
        }"""))


def verify(bundle: Path) -> tuple[int, str]:
    """``gridhub verify`` as a reviewer runs it on the downloaded file."""
    p = subprocess.run([str(GRIDHUB), "verify", str(bundle)], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout + p.stderr


async def test_reviewer_plays_the_clip_exports_and_unlocks(scene: Scene, chromium: Any) -> None:
    """The reviewer's card says "no clip yet" until the recorder attaches the clip (pushed,
    no reload), then plays it to its end; lists the camera's lock; refuses an export
    without a reason; exports with one (a download named by the server, with the bundle id
    and key fingerprint shown, which ``gridhub verify`` accepts and whose custody names
    the reviewer and the reason); unlocks (the lock shows released); a second unlock's 409
    is shown; the timeline has both entries."""
    errors: list[str] = []
    page = await console(chromium, scene, "reviewer", errors)
    iid = await raise_incident(scene)  # after sign-in: the card sees the clip arrive
    await open_incident(page, iid)
    await page.wait_for_selector("#evidence-card:not([hidden])")
    assert await page.get_attribute("#evidence-clip", "data-state") == "none", \
        "the clip came before the card could say it was not there yet"
    assert "暂无视频片段" in await page.inner_text("#evidence-clip")
    assert await page.get_attribute("#replay-link", "href") == f"/replay?incident={iid}"

    # The clip, attached by the recorder after the post-roll, arrives by incident.updated.
    await page.wait_for_selector("#evidence-clip[data-state=ready]", timeout=30_000)
    got = await play_to_end(page)
    window = PREROLL_S + POSTROLL_S
    assert window - 1 / FPS <= got["duration"] <= window + GOP_S + 1 / FPS, got
    assert got["currentTime"] == pytest.approx(got["duration"], abs=1 / FPS)
    assert got["w"] == 640 and got["preload"] == "metadata" and got["controls"]
    assert "sig=" in got["src"] and "token" not in got["src"]  # a signed URL, no bearer

    # The lock of the incident's camera.
    lock = "#evidence-locks li.evidence-lock"
    await page.wait_for_selector(f"{lock}[data-camera='{CAM}'][data-state=locked]",
                                 timeout=WAIT_MS)
    assert await page.locator(lock).count() == 1

    # Export: a reason is required (nothing is sent without one).
    await page.click("#export-btn")
    await page.wait_for_selector("#evidence-error:not([hidden])")
    assert "请填写导出原因" in await page.inner_text("#evidence-error")
    await page.fill("#export-reason", REASON)
    async with page.expect_download(timeout=WAIT_MS) as dl:
        await page.click("#export-btn")
    download = await dl.value
    name = download.suggested_filename
    assert name.startswith(f"evidence-{iid}-") and name.endswith(".zip"), name
    bundle = scene.tmp / name
    await download.save_as(bundle)
    result = await page.wait_for_selector("#evidence-result:not([hidden])")
    assert await page.is_hidden("#evidence-error")
    shown_bundle = await result.get_attribute("data-bundle")
    shown_key = await result.get_attribute("data-fingerprint")
    key = (await scene.client.get("/api/evidence/key", headers=scene.op)).json()
    assert shown_key == key["fingerprint"]
    text = await result.inner_text()
    assert f"gridhub verify {name}" in text and shown_bundle in text and shown_key in text
    assert await page.input_value("#export-reason") == ""
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["bundle_id"] == shown_bundle
        assert [n for n in zf.namelist() if n.startswith("clips/")]  # the clip went with it
    code, out = await asyncio.to_thread(verify, bundle)
    assert code == 0, out
    assert "VERIFIED" in out and REASON in out and "审核员" in out and "reviewer" in out
    entry = "#timeline li.timeline-entry[data-action=export]"
    await page.wait_for_selector(entry, timeout=WAIT_MS)
    assert REASON in await page.inner_text(entry)

    # Unlock: the lock shows released, by whom and why, and the timeline has it.
    why = "案件已办结，录像无需继续保留"
    await page.fill("#unlock-reason", why)
    await page.click("#unlock-btn")
    released = f"{lock}[data-camera='{CAM}'][data-state=released]"
    await page.wait_for_selector(released, timeout=WAIT_MS)
    assert why in await page.inner_text(released) and "reviewer" in await page.inner_text(released)
    await page.wait_for_selector("#evidence-info:not([hidden])")
    entry = "#timeline li.timeline-entry[data-action=evidence_unlock]"
    await page.wait_for_selector(entry, timeout=WAIT_MS)
    assert why in await page.inner_text(entry)
    # Nothing is locked any more: the hub's 409 is said in the card.
    await page.fill("#unlock-reason", "再次解除")
    await page.click("#unlock-btn")
    await page.wait_for_selector("#evidence-error:not([hidden])", timeout=WAIT_MS)
    assert "没有生效的证据锁定" in await page.inner_text("#evidence-error")
    assert await page.locator(released).count() == 1

    assert await page.evaluate("window.__sameDocument") is True  # never reloaded
    assert errors == []
    await page.context.close()


async def test_operator_sees_the_card_and_clip_without_export_or_unlock(
        scene: Scene, chromium: Any) -> None:
    """An operator watches the clip and the locks; export and unlock are not offered."""
    iid = await incident_with_clip(scene)
    errors: list[str] = []
    page = await console(chromium, scene, "operator", errors)
    await open_incident(page, iid)
    await page.wait_for_selector("#evidence-card:not([hidden])")
    await page.wait_for_selector("#evidence-clip[data-state=ready]", timeout=WAIT_MS)
    await page.wait_for_function(
        "() => document.querySelector('#evidence-video').readyState >= 1", timeout=WAIT_MS)
    assert await page.eval_on_selector("#evidence-video", "v => v.duration") > PREROLL_S
    await page.wait_for_selector("#evidence-locks li.evidence-lock", timeout=WAIT_MS)
    for sel in ("#export-btn", "#unlock-btn", "#export-reason", "#unlock-reason"):
        assert await page.query_selector(sel) is None, sel
    assert await page.is_visible("#replay-link")
    assert errors == []
    await page.context.close()


async def test_department_sees_its_case_clip_but_no_recordings(scene: Scene, chromium: Any
                                                                ) -> None:
    """A department user, once the case is dispatched to it, sees the case's clip (as the
    API allows) but not the replay link or the evidence locks (recordings are for the
    command center), and no export or unlock."""
    iid = await incident_with_clip(scene)
    r = await scene.client.post(f"/api/incidents/{iid}/dispatch", headers=scene.op, json={})
    assert r.status_code == 200, r.text
    assert "civil-affairs" in r.json()["departments"]
    errors: list[str] = []
    page = await console(chromium, scene, "civil-affairs", errors)
    await open_incident(page, iid)
    await page.wait_for_selector("#accept-btn")  # the detail is rendered for this role
    await page.wait_for_selector("#evidence-card", state="visible", timeout=WAIT_MS)
    await page.wait_for_function(
        "() => document.querySelector('#evidence-video').readyState >= 1", timeout=WAIT_MS)
    assert await page.eval_on_selector("#evidence-video", "v => v.duration") > PREROLL_S
    assert not await page.is_visible("#replay-link")
    assert not await page.is_visible("#evidence-locks")
    assert await page.query_selector("#export-btn") is None
    assert errors == []
    await page.context.close()


async def test_paused_recording_is_a_console_banner_until_it_resumes(scene: Scene,
                                                                     chromium: Any) -> None:
    """A recorder that pauses (disk full or low) is named in a banner on the operator's
    console, with the reason, until it resumes; department consoles get no such event."""
    errors: list[str] = []
    page = await console(chromium, scene, "operator", errors)
    dep = await console(chromium, scene, "civil-affairs", errors)
    assert await page.is_hidden("#rec-alerts")
    bus = scene.hub.state.bus  # type: ignore[attr-defined]
    await bus.broadcast(RecordingStatus(kind="recording.paused", camera_id=CAM,
                                        reason="disk full (No space left on device)",
                                        at=datetime.now(UTC)))
    banner = f"#rec-alerts .rec-alert[data-camera='{CAM}']"
    await page.wait_for_selector(banner, timeout=WAIT_MS)
    text = await page.inner_text(banner)
    assert CAM in text and "No space left on device" in text, text
    await bus.broadcast(RecordingStatus(kind="recording.resumed", camera_id=CAM,
                                        at=datetime.now(UTC)))
    await page.wait_for_selector("#rec-alerts", state="hidden", timeout=WAIT_MS)
    assert await dep.is_hidden("#rec-alerts")
    assert errors == []
    await page.context.close()
    await dep.context.close()
