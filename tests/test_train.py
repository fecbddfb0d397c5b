"""Operators' verdicts become labelled examples, and ``gridhub train`` fine-tunes on them
and exports an ONNX model the runtime loads (one epoch on images this test composes)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from detectors.backends import make_backend
from detectors.train import example_labels
from hub.bus import IncidentCandidate
from hub.config import OnnxDetectorConfig, UltralyticsDetectorConfig
from ingest.demo_scene import compose, person_cutouts, street_background
from tests.conftest import running_hub

W, H = 640, 360
NAMES = ["Normal", "Fall"]
MEANING_CLASS = {"person": 0, "person_down": 1}


def frame(kind: str, x: float) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A street with one person lying ('down'), standing ('up'), or a grey crate ('object'),
    and the box around it."""
    bg = street_background(W, H)
    if kind == "object":
        img = bg.copy()
        box = (x - 60, 250.0, x + 60, 310.0)
        cv2.rectangle(img, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])),
                      (90, 90, 100), -1)
        return img, box
    angle = 90 if kind == "down" else 0
    cut = person_cutouts()[int(x) % 2]
    img = compose(bg, cut, center_x=x, ground_y=320, height_px=190, angle_deg=angle)
    half_w, half_h = (95, 35) if kind == "down" else (35, 95)
    cy = 320 - half_h
    return img, (x - half_w, cy - half_h, x + half_w, cy + half_h)


def jpeg(img: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".jpg", img)[1])


def candidate(event_id: str, img: np.ndarray, box: tuple[float, float, float, float],
              others: list[dict[str, Any]]) -> IncidentCandidate:
    now = datetime.now(UTC)
    det = [{"box": list(box), "class": "Fall", "meaning": "person_down", "confidence": 0.7},
           *others]
    return IncidentCandidate(
        event_id=event_id, phase="start", type="person_down", camera_id="cam-jingba-01",
        at=now, started_at=now, confidence=0.7, boxes=[box], frame_size=(W, H), track_id=1,
        snapshot_jpeg=jpeg(img), frame_jpeg=jpeg(img), detections=det,
    )


def test_example_labels_rules() -> None:
    """Confirmed -> Fall; person_ok -> Normal; not_person -> no box; other -> left out;
    confident other detections away from the judged box stay as pseudo-labels."""
    box = [100.0, 100.0, 200.0, 150.0]
    other = {"box": [400.0, 50.0, 440.0, 150.0], "class": "Normal", "confidence": 0.8}
    weak = {"box": [500.0, 50.0, 540.0, 150.0], "class": "Normal", "confidence": 0.3}
    same = {"box": [102.0, 101.0, 201.0, 151.0], "class": "Fall", "confidence": 0.9}
    base = {"box": box, "detections": [other, weak, same]}

    def lab(verdict: str, label: str) -> Any:
        return example_labels({**base, "verdict": verdict, "label": label}, NAMES,
                              MEANING_CLASS, 0.5)

    assert lab("confirmed", "person_down") == [(1, box), (0, other["box"])]
    assert lab("rejected", "person_ok") == [(0, box), (0, other["box"])]
    assert lab("rejected", "not_person") == [(0, other["box"])]
    assert lab("rejected", "other") is None


async def test_verdicts_become_examples_and_train_exports_onnx(demo_config: Path,
                                                                tmp_path: Path) -> None:
    data = tmp_path / "data"
    plan = [("down", 200), ("down", 450), ("down", 330), ("down", 520), ("up", 260),
            ("up", 480), ("object", 300), ("object", 420)]
    async with running_hub(demo_config, data) as hub, \
            httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        tok = (await c.post("/api/auth/token", data={"username": "operator",
                                                     "password": "demo"})).json()
        op = {"Authorization": f"Bearer {tok['access_token']}"}
        ids = []
        for i, (kind, x) in enumerate(plan):
            img, box = frame(kind, x)
            await hub.state.bus.publish(candidate(f"ev-{i}", img, box, []))  # type: ignore[attr-defined]
            for _ in range(100):
                items = (await c.get("/api/incidents", headers=op)).json()["items"]
                if len(items) == i + 1:
                    break
                await asyncio.sleep(0.05)
            ids.append(next(it["id"] for it in items if it["id"] not in ids))
        for iid, (kind, _) in zip(ids, plan, strict=True):
            url = f"/api/incidents/{iid}"
            if kind == "down":
                r = await c.post(f"{url}/confirm", headers=op, json={"note": "seen on wall"})
                assert r.status_code == 200 and r.json()["state"] == "confirmed", r.text
            else:
                label = "person_ok" if kind == "up" else "not_person"
                r = await c.post(f"{url}/dismiss", headers=op, json={"label": label})
                assert r.status_code == 422  # a reason is required
                r = await c.post(f"{url}/dismiss", headers=op,
                                 json={"reason": f"it was {kind}", "label": label})
                assert r.status_code == 200 and r.json()["state"] == "dismissed", r.text
        # judged twice -> 409; a reviewer may not judge
        r = await c.post(f"/api/incidents/{ids[0]}/confirm", headers=op, json={})
        assert r.status_code == 409
        tok = (await c.post("/api/auth/token", data={"username": "reviewer",
                                                     "password": "demo"})).json()
        rev = {"Authorization": f"Bearer {tok['access_token']}"}
        assert (await c.post(f"/api/incidents/{ids[1]}/dismiss", headers=rev,
                             json={"reason": "x"})).status_code == 403
        ex = (await c.get("/api/examples", headers=rev)).json()
        assert sorted((e["verdict"], e["label"]) for e in ex) == sorted(
            [("confirmed", "person_down")] * 4 + [("rejected", "person_ok")] * 2
            + [("rejected", "not_person")] * 2)
        r = await c.get(ex[0]["image_url"], headers=rev)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (H, W, 3)  # the frame without overlay, full size
        tl = (await c.get(f"/api/incidents/{ids[-1]}", headers=op)).json()["timeline"]
        assert tl[-1]["action"] == "dismiss" and tl[-1]["detail"]["label"] == "not_person"

    out = tmp_path / "model"
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub", "train", "--data", str(data), "--out", str(out),
         "--epochs", "1", "--imgsz", "160", "--batch", "4"],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "dataset: 7 training and 1 validation images" in res.stderr, res.stderr[-2000:]
    labels = {p.stem: p.read_text().split() for p in (out / "dataset" / "labels").rglob("*.txt")}
    classes = sorted(v[0] if v else "-" for v in labels.values())
    assert classes == ["-", "-", "0", "0", "1", "1", "1", "1"]
    # The first person lies at x 200: box (105, 250, 295, 320) in a 640x360 frame.
    assert [float(v) for v in labels[ids[0]][1:]] == pytest.approx(
        [200 / W, 285 / H, 190 / W, 70 / H], abs=1e-5)
    model = out / "model.onnx"
    assert model.is_file() and str(model.resolve()) in res.stdout
    backend = make_backend(OnnxDetectorConfig(model=str(model), imgsz=(160, 160)), tmp_path)
    assert backend.class_names == NAMES and backend.batched  # type: ignore[attr-defined]
    frames = [frame("down", 300)[0], frame("up", 300)[0], street_background(W, H)]
    assert len(backend.detect_batch(frames)) == 3
    # The same exported file through the ultralytics backend (exported weights, mapped).
    yolo = make_backend(UltralyticsDetectorConfig(
        type="ultralytics", model=str(model), imgsz=160,
        classes={"Normal": "person", "Fall": "person_down"}), tmp_path)
    assert yolo.class_names == NAMES and len(yolo.detect_batch(frames)) == 3


def test_train_refuses_without_examples(tmp_path: Path, demo_config: Path) -> None:
    """No store, or too few examples: a clear error, exit 2."""
    res = subprocess.run([sys.executable, "-m", "hub", "train", "--data", str(tmp_path / "x"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "no GridHub store" in res.stderr


def water_frame(wet: bool, seed: int) -> np.ndarray:
    """A street whose lower half is brown rippled water, or the dry pavement."""
    rng = np.random.default_rng(seed)
    img = street_background(W, H).copy()
    if wet:
        yy = np.arange(H // 2)[:, None]
        ripple = (12 * np.sin(yy / (3 + seed % 3) + rng.uniform(0, 6))).astype(np.int16)
        water = np.empty((H // 2, W, 3), np.int16)
        water[:] = (70, 95, 120)  # BGR: muddy brown
        img[H // 2 :] = np.clip(water + ripple[:, :, None], 0, 255).astype(np.uint8)
    return img


async def test_flooding_verdicts_train_a_water_classifier(demo_config: Path,
                                                          tmp_path: Path) -> None:
    """Flooding incidents confirmed (water) and dismissed (dry) -> gridhub train --task
    water -> a classifier that plugs in as flooding.water (type ultralytics) and runs."""
    from detectors.water import make_water
    from hub.config import WaterModelConfig

    data = tmp_path / "data"
    async with running_hub(demo_config, data) as hub, \
            httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        tok = (await c.post("/api/auth/token", data={"username": "operator",
                                                     "password": "demo"})).json()
        op = {"Authorization": f"Bearer {tok['access_token']}"}
        for i in range(6):
            wet = i % 2 == 0
            img = water_frame(wet, i)
            now = datetime.now(UTC)
            await hub.state.bus.publish(IncidentCandidate(  # type: ignore[attr-defined]
                event_id=f"fl-{i}", phase="start", type="flooding", camera_id="cam-jingba-01",
                at=now, started_at=now, confidence=0.6, boxes=[], frame_size=(W, H),
                snapshot_jpeg=jpeg(img), frame_jpeg=jpeg(img), detections=[],
                attributes={"coverage": 0.5 if wet else 0.3}))
        for _ in range(200):
            items = (await c.get("/api/incidents?type=flooding", headers=op)).json()["items"]
            if len(items) == 6:
                break
            await asyncio.sleep(0.05)
        assert len(items) == 6
        by_event = {}
        for it in items:
            detail = (await c.get(f"/api/incidents/{it['id']}", headers=op)).json()
            by_event[it["id"]] = detail["timeline"][0]["detail"]["coverage"]
        for iid, cov in by_event.items():
            if cov == 0.5:
                r = await c.post(f"/api/incidents/{iid}/confirm", headers=op, json={})
            else:
                r = await c.post(f"/api/incidents/{iid}/dismiss", headers=op,
                                 json={"reason": "wet road, no standing water",
                                       "label": "not_person"})
            assert r.status_code == 200, r.text
    out = tmp_path / "water"
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub", "train", "--task", "water", "--data", str(data),
         "--out", str(out), "--epochs", "1", "--imgsz", "64", "--batch", "4"],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "{'dry': 3, 'water': 3}" in res.stderr
    assert sorted(p.parent.name for p in (out / "water-dataset" / "val").rglob("*.jpg")) == [
        "dry", "water"]
    weights = out / "water.pt"
    assert weights.is_file() and "type: ultralytics" in res.stdout
    seg = make_water(WaterModelConfig(type="ultralytics", model=str(weights), imgsz=64),
                     tmp_path)
    mask, p = seg.segment(water_frame(True, 9))
    assert mask.shape == (H, W) and p is not None and 0 <= p <= 1
    # too few examples: a clear error
    bad = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub", "train", "--task", "water", "--data", str(tmp_path / "d2"),
         "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2


def test_water_dataset_needs_both_classes(tmp_path: Path) -> None:
    """Two confirmed floods and one dismissal are not enough: the error counts each class;
    person_down examples and 'other' dismissals are left out."""
    from detectors.train import TrainError, build_water_dataset

    def ex(i: int, verdict: str, label: str, type_: str = "flooding") -> dict[str, Any]:
        return {"incident_id": f"i{i}", "type": type_, "verdict": verdict, "label": label,
                "jpeg": b"x"}

    few = [ex(1, "confirmed", "flooding"), ex(2, "confirmed", "flooding"),
           ex(3, "rejected", "not_person"), ex(4, "rejected", "other"),
           ex(5, "confirmed", "person_down", "person_down")]
    with pytest.raises(TrainError, match="dry 1, water 2"):
        build_water_dataset(few, tmp_path / "d")


async def test_examples_follow_grid_scope(demo_config: Path, tmp_path: Path) -> None:
    """An operator scoped to another grid cell sees neither the example nor its frame."""
    import yaml

    users = yaml.safe_load((demo_config / "users.yaml").read_text())
    users["users"].append({"username": "op-g02", "name": "g02", "role": "operator",
                           "grid": "zz-jinshui-jingba-c1-g02"})
    (demo_config / "users.yaml").write_text(yaml.safe_dump(users, allow_unicode=True))
    async with running_hub(demo_config, tmp_path / "data") as hub, \
            httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        async def auth(user: str) -> dict[str, str]:
            r = await c.post("/api/auth/token", data={"username": user, "password": "demo"})
            assert r.status_code == 200, r.text
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        op, other = await auth("operator"), await auth("op-g02")
        img, box = frame("down", 300)
        await hub.state.bus.publish(candidate("ev-scope", img, box, []))  # type: ignore[attr-defined]
        for _ in range(100):
            items = (await c.get("/api/incidents", headers=op)).json()["items"]
            if items:
                break
            await asyncio.sleep(0.05)
        iid = items[0]["id"]
        assert (await c.post(f"/api/incidents/{iid}/confirm", headers=op, json={})
                ).status_code == 200
        assert [e["incident_id"] for e in (await c.get("/api/examples", headers=op)).json()
                ] == [iid]
        assert (await c.get("/api/examples", headers=other)).json() == []
        r = await c.get(f"/api/examples/{iid}/image", headers=other)
        assert r.status_code == 404
        assert (await c.get(f"/api/examples/{iid}/image", headers=op)).status_code == 200
