"""Evidence export and verification on a real hub (uvicorn, store, bus): the bundle's
contents, its signature and manifest, ``gridhub verify`` passing on an intact bundle and
naming the member when any byte of any member changes, files added, removed or re-packed,
another installation's key, who may export, the export in the timeline (and
``gridhub verify-audit`` after it), and the signing key kept across restarts or refusing
to start when damaged."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from hub.bus import IncidentCandidate
from hub.cli import cli
from hub.evidence import KEY_FILE, EvidenceKeyError, default_clip_files, find_evidence
from hub.models import Incident
from tests.conftest import RunningHub, running_hub
from tests.test_api import client, events, login

GRIDHUB = Path(sys.executable).with_name("gridhub")
G01 = {"lat": 34.7675, "lon": 113.6675}


def image(value: int) -> bytes:
    img = np.full((72, 128, 3), value, np.uint8)
    cv2.circle(img, (64, 36), 20, (0, 0, 255), -1)
    return bytes(cv2.imencode(".jpg", img)[1])


async def detected_case(hub: RunningHub, c: httpx.AsyncClient, event_id: str = "ev-evidence",
                        **attributes: str) -> str:
    """A person_down detection (snapshot and frame) with a photo, dispatched and accepted."""
    op = await login(c, "operator")
    now = datetime.now(UTC)
    async with events(hub, op) as ev:
        await hub.state.bus.publish(IncidentCandidate(  # type: ignore[attr-defined]
            event_id=event_id, phase="start", type="person_down", camera_id="cam-jingba-01",
            at=now, started_at=now, confidence=0.8, boxes=[(10, 20, 30, 40)],
            frame_size=(128, 72), track_id=3, snapshot_jpeg=image(90), frame_jpeg=image(60),
            attributes=dict(attributes), clip_start=now, clip_end=now))
        inc = await ev.wait("incident.created", lambda d: d["camera_id"] == "cam-jingba-01")
    iid = str(inc["id"])
    r = await c.post(f"/api/incidents/{iid}/photos", headers=op,
                     files={"photo": ("scene.jpg", image(200), "image/jpeg")})
    assert r.status_code == 201, r.text
    r = await c.post(f"/api/incidents/{iid}/dispatch", headers=op, json={})
    assert r.status_code == 200, r.text
    r = await c.post(f"/api/incidents/{iid}/accept", headers=await login(c, "civil-affairs"),
                     json={})
    assert r.status_code == 200, r.text
    return iid


async def export(c: httpx.AsyncClient, user: str, iid: str, reason: str, dst: Path
                 ) -> httpx.Response:
    r = await c.post(f"/api/incidents/{iid}/export", headers=await login(c, user),
                     json={"reason": reason})
    assert r.status_code == 200, r.text
    await asyncio.to_thread(dst.write_bytes, r.content)
    return r


def verify_process(*args: str | Path) -> tuple[int, str]:
    """``gridhub verify`` as a user runs it."""
    p = subprocess.run([str(GRIDHUB), "verify", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def verify_cli(*args: str | Path) -> tuple[int, str]:
    """The same command in this process (typer's runner), for the many-bundle loops."""
    r = CliRunner().invoke(cli, ["verify", *map(str, args)])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output


def failing(output: str) -> set[str]:
    return set(re.findall(r"^FAIL\s+(\S+?): ", output, re.M))


def member_offset(bundle: Path, name: str) -> tuple[int, int]:
    """Where a member's bytes lie in the ZIP file, and how many there are."""
    with zipfile.ZipFile(bundle) as zf:
        info = zf.getinfo(name)
    with bundle.open("rb") as fh:
        fh.seek(info.header_offset)
        head = fh.read(30)
    n, m = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + n + m, info.compress_size


def flip(src: Path, name: str, dst: Path) -> None:
    """A copy of ``src`` with one byte of member ``name`` inverted."""
    data = bytearray(src.read_bytes())
    start, size = member_offset(src, name)
    data[start + size // 2] ^= 0xFF
    dst.write_bytes(bytes(data))


def repack(src: Path, dst: Path, change: dict[str, bytes | None]) -> None:
    """A copy of ``src`` re-zipped (valid CRCs) with members replaced, dropped (None) or
    added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in change:
                data = change[info.filename]
                if data is not None:
                    zout.writestr(info.filename, data)
            else:
                zout.writestr(info, zin.read(info))
        for name, data in change.items():
            if name not in zin.namelist() and data is not None:
                zout.writestr(name, data)


async def test_exported_bundle_verifies_and_each_changed_member_is_named(
        hub_server: RunningHub, tmp_path: Path) -> None:
    """A reviewer's export holds the record, the whole hash-chained timeline (ending with
    the export), snapshot, frame, photo and clip, stored uncompressed, with a signed
    manifest; ``gridhub verify`` passes and prints each file and the chain of custody;
    inverting one byte of any member (data, manifest, signature, key) fails it, naming
    that member."""
    clip = tmp_path / "cam-jingba-01 clip.mp4"
    clip.write_bytes(os.urandom(3 << 20))
    svc = find_evidence(hub_server.state)  # type: ignore[arg-type]
    assert svc is not None
    svc.clip_files = lambda inc: [clip]  # the recorder's hook
    bundle = tmp_path / "bundle.zip"
    async with client(hub_server) as c:
        iid = await detected_case(hub_server, c)
        reviewer = await login(c, "reviewer")
        key = (await c.get("/api/evidence/key", headers=reviewer)).json()
        r = await export(c, "reviewer", iid, "法院调取 court order 2026-118", bundle)
        api = (await c.get(f"/api/incidents/{iid}", headers=reviewer)).json()
    assert r.headers["content-type"] == "application/zip"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment;") and iid in disposition
    assert r.headers["x-gridhub-key-fingerprint"] == key["fingerprint"]
    pem = key["public_key_pem"].encode()
    raw = serialization.load_pem_public_key(pem).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key["fingerprint"] == hashlib.sha256(raw).hexdigest()

    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        files = {n: zf.read(n) for n in names}
    photo = next(n for n in names if n.startswith("photos/"))
    assert sorted(names) == sorted([
        "incident.json", "timeline.json", "snapshots/snapshot.jpg", "snapshots/frame.jpg",
        photo, "clips/cam-jingba-01_clip.mp4", "public_key.pem", "manifest.json",
        "manifest.sig"])
    assert files["clips/cam-jingba-01_clip.mp4"] == clip.read_bytes()
    assert files[photo] == image(200)
    assert files["snapshots/snapshot.jpg"] == image(90)
    assert files["snapshots/frame.jpg"] == image(60)
    assert files["public_key.pem"] == pem

    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == "gridhub-evidence/1" and manifest["incident_id"] == iid
    assert manifest["exported_by"]["username"] == "reviewer"
    assert manifest["reason"] == "法院调取 court order 2026-118"
    assert manifest["key_fingerprint"] == key["fingerprint"]
    assert manifest["installation_id"] == key["installation_id"]
    assert manifest["installation_id"].startswith("gh-")
    datetime.fromisoformat(manifest["exported_at"])
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(names) - {"manifest.json", "manifest.sig"}
    for name, f in listed.items():
        assert f["size"] == len(files[name])
        assert f["sha256"] == hashlib.sha256(files[name]).hexdigest()
    assert len(files["manifest.sig"]) == 64
    Ed25519PublicKey.from_public_bytes(raw).verify(files["manifest.sig"],
                                                   files["manifest.json"])  # raises if not

    timeline = json.loads(files["timeline.json"])["entries"]
    assert [e["action"] for e in timeline] == ["created", "photo", "dispatch", "accept",
                                               "export"]
    assert [e["hash"] for e in timeline] == [e["hash"] for e in api["timeline"]]
    assert all(e["prev_hash"] for e in timeline)
    assert timeline[-1]["actor"] == "reviewer"
    assert timeline[-1]["detail"]["reason"] == manifest["reason"]
    record = json.loads(files["incident.json"])
    assert record == {k: v for k, v in api.items() if k != "timeline"}
    custody = manifest["custody"]
    assert custody["recorded"]["cameras"] == [
        {"id": "cam-jingba-01", "name": api["camera_name"], "source": "demo_scene"}]
    assert ("dispatch", "operator") in {(e["action"], e["actor"]) for e in custody["handled"]}
    assert ("accept", "civil-affairs") in {(e["action"], e["actor"])
                                           for e in custody["handled"]}
    assert custody["exported"]["username"] == "reviewer"
    assert custody["exported"]["reason"] == manifest["reason"]

    if shutil.which("openssl"):  # the check docs/evidence.md shows, without GridHub
        for name in ("manifest.json", "manifest.sig", "public_key.pem"):
            (tmp_path / name).write_bytes(files[name])
        p = await asyncio.to_thread(
            subprocess.run, ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
                             "public_key.pem", "-rawin", "-in", "manifest.json", "-sigfile",
                             "manifest.sig"], cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0 and "Signature Verified Successfully" in p.stdout, p.stderr

    key_file = tmp_path / "hub-key.pem"
    key_file.write_bytes(pem)
    code, out = await asyncio.to_thread(verify_process, bundle)
    assert code == 0, out
    assert "NO TRUSTED KEY GIVEN" in out and key["fingerprint"] in out
    for name in names:
        assert re.search(rf"^OK\s+{re.escape(name)}: ", out, re.M), (name, out)
    assert "exported by reviewer" in out and "court order 2026-118" in out
    assert "civil-affairs: accept" in out and "cam-jingba-01 (demo_scene)" in out
    assert out.rstrip().splitlines()[-1].startswith("VERIFIED")
    code, out = await asyncio.to_thread(verify_process, bundle, "--key", key_file)
    assert code == 0 and f"trusted key (--key): {key['fingerprint']}" in out, out

    for name in names:
        damaged = tmp_path / f"flipped-{name.replace('/', '_')}.zip"
        flip(bundle, name, damaged)
        code, out = await asyncio.to_thread(verify_cli, damaged, "--key", key_file)
        assert code == 1, (name, out)
        bad = failing(out)
        assert name in bad, (name, out)
        if name in ("manifest.json", "manifest.sig", "public_key.pem"):
            assert bad <= {name, "signature", "key"}, (name, out)
        else:
            assert bad == {name}, (name, out)
        assert "Traceback" not in out
    code, out = await asyncio.to_thread(verify_process, tmp_path / "flipped-incident.json.zip")
    assert code == 1 and failing(out) == {"incident.json"}, out
    assert out.rstrip().splitlines()[-1] == "FAILED: incident.json"


async def test_verify_names_missing_added_repacked_and_damaged_files(
        hub_server: RunningHub, tmp_path: Path) -> None:
    """A file dropped, a file added, a file changed and re-zipped with a valid CRC (only
    the SHA-256 can tell), a truncated ZIP and a file that is no ZIP at all each fail with
    a message naming what is wrong; a missing bundle or bad --key is a usage error."""
    bundle = tmp_path / "bundle.zip"
    async with client(hub_server) as c:
        iid = await detected_case(hub_server, c)
        await export(c, "admin", iid, "internal review", bundle)
    with zipfile.ZipFile(bundle) as zf:
        photo = next(n for n in zf.namelist() if n.startswith("photos/"))
    cases: list[tuple[str, dict[str, bytes | None], set[str], str]] = [
        ("dropped", {photo: None}, {photo}, "missing from the bundle"),
        ("added", {"notes.txt": b"planted"}, {"notes.txt"}, "not listed in the manifest"),
        ("repacked", {"snapshots/snapshot.jpg": image(91)}, {"snapshots/snapshot.jpg"},
         "SHA-256"),
    ]
    for label, change, want, says in cases:
        dst = tmp_path / f"{label}.zip"
        repack(bundle, dst, change)
        code, out = await asyncio.to_thread(verify_cli, dst)
        assert code == 1 and failing(out) == want and says in out, (label, out)

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    not_zip = tmp_path / "not-a-zip.zip"
    not_zip.write_text("hello")
    for damaged in (truncated, not_zip):
        code, out = await asyncio.to_thread(verify_process, damaged)
        assert code == 1 and "not a readable ZIP" in out and "Traceback" not in out, out

    code, out = await asyncio.to_thread(verify_process, tmp_path / "nowhere.zip")
    assert code == 2 and "no such file" in out
    (tmp_path / "junk.pem").write_text("junk")
    code, out = await asyncio.to_thread(verify_process, bundle, "--key", tmp_path / "junk.pem")
    assert code == 2 and "not a PEM public key" in out and "Traceback" not in out, out


async def test_another_installations_key_fails_with_key(
        hub_server: RunningHub, demo_config: Path, tmp_path: Path) -> None:
    """A bundle checked against another installation's key fails; so does a bundle
    changed and re-signed with a key of the forger's own, which passes only without --key
    (the fingerprint printed then is not the installation's)."""
    bundle = tmp_path / "bundle.zip"
    async with client(hub_server) as c:
        iid = await detected_case(hub_server, c)
        await export(c, "reviewer", iid, "appeal", bundle)
        ours = (await c.get("/api/evidence/key", headers=await login(c, "reviewer"))).json()
    async with running_hub(demo_config, tmp_path / "other-data") as other, client(other) as c:
        theirs = (await c.get("/api/evidence/key", headers=await login(c, "operator"))).json()
    assert theirs["fingerprint"] != ours["fingerprint"]
    (tmp_path / "ours.pem").write_text(ours["public_key_pem"])
    (tmp_path / "theirs.pem").write_text(theirs["public_key_pem"])

    code, out = await asyncio.to_thread(verify_process, bundle, "--key", tmp_path / "theirs.pem")
    assert code == 1 and {"key", "signature"} <= failing(out), out
    assert f"signed with key {ours['fingerprint']}, not the trusted key" in out
    # Several trusted keys (hubs of one installation each sign with their own): one file
    # holding them all, or --key again; the bundle's key is one of them.
    (tmp_path / "both.pem").write_text(theirs["public_key_pem"] + ours["public_key_pem"])
    code, out = await asyncio.to_thread(verify_cli, bundle, "--key", tmp_path / "both.pem")
    assert code == 0 and "trusted keys (--key): " in out, out
    assert theirs["fingerprint"] in out and ours["fingerprint"] in out
    code, out = await asyncio.to_thread(verify_cli, bundle, "--key", tmp_path / "theirs.pem",
                                        "--key", tmp_path / "ours.pem")
    assert code == 0, out
    (tmp_path / "both-theirs.pem").write_text(theirs["public_key_pem"] * 2)
    code, out = await asyncio.to_thread(verify_cli, bundle, "--key", tmp_path / "both-theirs.pem")
    assert code == 1 and "not one of the trusted keys" in out, out

    forger = Ed25519PrivateKey.generate()
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        record = json.loads(zf.read("incident.json"))
    record["state"] = "dismissed"
    changed = json.dumps(record).encode()
    forged_pem = forger.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = forger.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    manifest["key_fingerprint"] = hashlib.sha256(raw).hexdigest()
    for f in manifest["files"]:
        new = {"incident.json": changed, "public_key.pem": forged_pem}.get(f["path"])
        if new is not None:
            f["size"], f["sha256"] = len(new), hashlib.sha256(new).hexdigest()
    body = json.dumps(manifest).encode()
    forged = tmp_path / "forged.zip"
    repack(bundle, forged, {"incident.json": changed, "public_key.pem": forged_pem,
                            "manifest.json": body, "manifest.sig": forger.sign(body)})
    code, out = await asyncio.to_thread(verify_cli, forged)
    assert code == 0 and manifest["key_fingerprint"] in out and "NO TRUSTED KEY" in out, out
    code, out = await asyncio.to_thread(verify_cli, forged, "--key", tmp_path / "ours.pem")
    assert code == 1 and {"key", "signature"} <= failing(out), out


async def test_who_may_export_and_what_a_request_needs(hub_server: RunningHub,
                                                       tmp_path: Path) -> None:
    """No token: 401; a role other than reviewer or admin: 403 and nothing recorded; a
    missing, blank, too long or unknown field: 422; an unknown incident: 404. Anyone
    signed in may read the public key."""
    async with client(hub_server) as c:
        iid = await detected_case(hub_server, c)
        url = f"/api/incidents/{iid}/export"
        assert (await c.post(url, json={"reason": "x"})).status_code == 401
        assert (await c.get("/api/evidence/key")).status_code == 401
        for user in ("operator", "dispatcher", "civil-affairs", "staff-01"):
            r = await c.post(url, headers=await login(c, user), json={"reason": "x"})
            assert r.status_code == 403, (user, r.text)
        reviewer = await login(c, "reviewer")
        for body in ({}, {"reason": ""}, {"reason": "  \n "}, {"reason": "x" * 2001},
                     {"reason": "x", "format": "tar"}, None):
            r = await c.post(url, headers=reviewer, json=body)
            assert r.status_code == 422, (body, r.text)
        r = await c.post("/api/incidents/inc_nope/export", headers=reviewer,
                         json={"reason": "x"})
        assert r.status_code == 404
        timeline = (await c.get(f"/api/incidents/{iid}", headers=reviewer)).json()["timeline"]
        assert "export" not in {e["action"] for e in timeline}
        fingerprints = set()
        for user in ("staff-01", "civil-affairs", "patrol-01", "reviewer"):
            r = await c.get("/api/evidence/key", headers=await login(c, user))
            assert r.status_code == 200 and "BEGIN PUBLIC KEY" in r.json()["public_key_pem"]
            fingerprints.add(r.json()["fingerprint"])
        assert len(fingerprints) == 1


async def test_exports_are_in_the_timeline_in_any_state_and_the_audit_holds(
        hub_server: RunningHub, tmp_path: Path) -> None:
    """Exports of a dismissed and of a closed case are allowed and leave the state as it
    was; each adds an ``export`` entry (who, why, from where, bundle id, key) that the
    bundle's own timeline ends with; ``gridhub verify-audit`` passes afterwards."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
        reviewer = await login(c, "reviewer")
        fp = (await c.get("/api/evidence/key", headers=reviewer)).json()["fingerprint"]
        r = await c.post("/api/reports", headers=op, json={
            "type": "road_damage", "description": "井盖缺失", "position": G01})
        closed = r.json()["incident"]["id"]
        roads = await login(c, "roads")
        for who, action, body in ((op, "dispatch", {}), (roads, "accept", {}),
                                  (roads, "resolve", {"result": "补装"}), (op, "close", {})):
            r = await c.post(f"/api/incidents/{closed}/{action}", headers=who, json=body)
            assert r.status_code == 200, (action, r.text)
        dismissed = (await c.post("/api/reports", headers=op, json={
            "type": "other", "description": "误报", "position": G01})).json()["incident"]["id"]
        r = await c.post(f"/api/incidents/{dismissed}/dismiss", headers=op,
                         json={"reason": "duplicate call"})
        assert r.status_code == 200, r.text
        for case, state in ((closed, "closed"), (dismissed, "dismissed")):
            for n, reason in enumerate(("court order", "second copy for the archive")):
                dst = tmp_path / f"{case}-{n}.zip"
                resp = await export(c, "reviewer", case, reason, dst)
                detail = (await c.get(f"/api/incidents/{case}", headers=reviewer)).json()
                assert detail["state"] == state
                last = detail["timeline"][-1]
                assert (last["action"], last["actor"]) == ("export", "reviewer")
                assert last["from_state"] == last["to_state"] == state
                assert last["detail"]["reason"] == reason
                assert last["detail"]["from"] == "127.0.0.1"
                assert last["detail"]["bundle"] == resp.headers["x-gridhub-bundle"]
                assert last["detail"]["key"] == fp
                with zipfile.ZipFile(dst) as zf:
                    entries = json.loads(zf.read("timeline.json"))["entries"]
                assert entries[-1]["hash"] == last["hash"]
                code, out = await asyncio.to_thread(verify_cli, dst)
                assert code == 0, out
            actions = [e["action"] for e in detail["timeline"]]
            assert actions.count("export") == 2
    data = hub_server.state.settings.data_dir  # type: ignore[attr-defined]
    p = await asyncio.to_thread(subprocess.run, [str(GRIDHUB), "verify-audit", "--data",
                                                 str(data)], capture_output=True, text=True)
    assert p.returncode == 0 and "audit trail intact" in p.stdout, p.stdout + p.stderr


def test_default_clip_is_the_one_the_record_names_inside_the_data_folder(
        tmp_path: Path) -> None:
    """Until a recorder sets the hook, the clip an incident names (``clip_path``) is
    exported when it is a file in the data folder; a path outside it is never read."""
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    (data / "clips" / "ev-1.mp4").write_bytes(b"clip")
    now = datetime.now(UTC)
    hook = default_clip_files(data)

    def inc(**attributes: str) -> Incident:
        return Incident(id="inc_1", type="person_down", state="new", severity="red",
                        created_at=now, updated_at=now, started_at=now, last_seen_at=now,
                        attributes=attributes)

    assert hook(inc(clip_path="clips/ev-1.mp4")) == [(data / "clips" / "ev-1.mp4").resolve()]
    assert hook(inc(clip_path="clips/none.mp4")) == []
    assert hook(inc()) == []
    for outside in ("/etc/hostname", "../../../etc/hostname", "clips/../../x"):
        assert hook(inc(clip_path=outside)) == [], outside


async def test_key_is_made_once_and_kept_across_restarts(demo_config: Path,
                                                         tmp_path: Path) -> None:
    """The first start makes the key (mode 0600); later starts use the same file, unchanged,
    and hand out the same fingerprint."""
    data = tmp_path / "data"
    seen = []
    for _ in range(2):
        async with running_hub(demo_config, data) as hub, client(hub) as c:
            r = await c.get("/api/evidence/key", headers=await login(c, "reviewer"))
            seen.append((r.json()["fingerprint"], (data / KEY_FILE).read_bytes(),
                         r.json()["installation_id"]))
            # One hub: the installation's key set is its own key.
            assert [(k["fingerprint"], k["public_key_pem"])
                    for k in r.json()["installation_keys"]] == [
                (r.json()["fingerprint"], r.json()["public_key_pem"])]
        assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600
    assert seen[0] == seen[1]  # the installation id is kept too (in the store)
    assert b"BEGIN PRIVATE KEY" in seen[0][1] and seen[0][2].startswith("gh-")


async def test_every_hub_on_one_store_registers_its_key_in_the_installations_set(
        db_url: str, tmp_path: Path) -> None:
    """Hubs sharing a store (each with its own data folder) sign with their own keys; each
    registers its public key once, with its node, and every hub lists them all."""
    from hub.evidence import EvidenceService
    from hub.settings import node_id
    from hub.store import Store

    stores = [Store(db_url), Store(db_url)]
    for s in stores:
        await s.open()
    try:
        a, b = (EvidenceService(tmp_path / n, s) for n, s in zip("ab", stores, strict=True))
        await asyncio.gather(a.start(), b.start())
        again = EvidenceService(tmp_path / "a", stores[1])  # hub a restarted
        await again.start()
        want = {(a.key.fingerprint, node_id(tmp_path / "a"), a.key.public_pem.decode()),
                (b.key.fingerprint, node_id(tmp_path / "b"), b.key.public_pem.decode())}
        assert a.key.fingerprint != b.key.fingerprint == b.key.fingerprint
        for svc in (a, b, again):
            keys = await svc.installation_keys()
            assert {(k["fingerprint"], k["node"], k["public_key_pem"]) for k in keys} == want
            assert len(keys) == 2 and all(k["registered_at"] for k in keys)
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize("content", [
    b"not a key", b"",
    ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()),
], ids=["garbage", "empty", "ec-key"])
async def test_a_damaged_key_stops_the_start_and_is_kept(
        demo_config: Path, tmp_path: Path, content: bytes) -> None:
    """A key file that is garbage, empty or not Ed25519 stops the hub's start with an error
    naming the file, and ``gridhub run`` exits 2 saying so; the file is left as it was."""
    from hub.cli import build_app
    from hub.config import load_config
    from hub.settings import Settings

    data = tmp_path / "data"
    data.mkdir()
    (data / KEY_FILE).write_bytes(content)
    app = build_app(Settings(config_dir=demo_config, data_dir=data, with_worker=False),
                    load_config(demo_config))
    with pytest.raises(EvidenceKeyError, match=re.escape(str(data / KEY_FILE))):
        async with app.router.lifespan_context(app):
            pass
    p = await asyncio.to_thread(subprocess.run, [
        str(GRIDHUB), "run", "--config", str(demo_config), "--data", str(data),
        "--no-worker", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "evidence key:" in p.stderr and str(data / KEY_FILE) in p.stderr
    assert "Traceback" not in p.stderr
    assert (data / KEY_FILE).read_bytes() == content
