"""The default ONNX person model: real inference on composed images, clear errors on bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detectors.backends import ModelError, make_backend
from detectors.backends.onnx import OnnxBackend, letterbox
from hub.config import OnnxDetectorConfig
from ingest.demo_scene import compose, person_cutouts, street_background


@pytest.fixture(scope="module")
def backend() -> OnnxBackend:
    b = make_backend(OnnxDetectorConfig(), Path("."))
    assert isinstance(b, OnnxBackend)
    return b


def scene(angle: float) -> np.ndarray:
    bg = street_background(1280, 720)
    cut = person_cutouts()[0]
    return compose(bg, cut, center_x=640, ground_y=600, height_px=380, angle_deg=angle)


def test_letterbox_keeps_aspect_and_pads() -> None:
    """Letterboxing a 1280x720 frame to 640x640 scales by 0.5 and pads top and bottom."""
    img, r, dx, dy = letterbox(np.zeros((720, 1280, 3), np.uint8), (640, 640))
    assert img.shape == (640, 640, 3) and r == 0.5 and dx == 0 and dy == 140
    assert img[0, 0].tolist() == [114, 114, 114]


def test_model_metadata(backend: OnnxBackend) -> None:
    """The shipped model is read as 640x640 with classes Normal and Fall."""
    assert backend.input_size == (640, 640)
    assert backend.class_names == ["Normal", "Fall"]


def test_lying_person_is_person_down(backend: OnnxBackend) -> None:
    """A person lying on the pavement is detected with the person_down meaning."""
    det = backend.detect(scene(90))
    assert "person_down" in list(det.data["meaning"])
    i = list(det.data["meaning"]).index("person_down")
    x1, y1, x2, y2 = det.xyxy[i]
    assert (x2 - x1) > (y2 - y1)  # a lying box is wider than tall
    assert 400 < (x1 + x2) / 2 < 880  # where the person was placed


def test_standing_person_is_not_down(backend: OnnxBackend) -> None:
    """The same person upright is a person, not person_down."""
    det = backend.detect(scene(0))
    assert "person" in list(det.data["meaning"])
    assert "person_down" not in list(det.data["meaning"])


def test_empty_street_has_no_detections(backend: OnnxBackend) -> None:
    """The background with nobody in it yields no person_down."""
    det = backend.detect(street_background(1280, 720))
    assert "person_down" not in list(det.data["meaning"])


def test_missing_model_names_the_file(tmp_path: Path) -> None:
    """A model path that does not exist is an error naming it."""
    with pytest.raises(ModelError, match="nope.onnx: model file not found"):
        make_backend(OnnxDetectorConfig(model="nope.onnx"), tmp_path)


def test_corrupt_model_names_the_file(tmp_path: Path) -> None:
    """A file that is not an ONNX model is an error naming it, not a crash."""
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelError, match="broken.onnx: cannot load ONNX model"):
        make_backend(OnnxDetectorConfig(model=str(bad)), tmp_path)


def test_class_mapping_must_match_model() -> None:
    """Classes in the config that the model lacks are an error listing the model's classes."""
    cfg = OnnxDetectorConfig(classes={"Normal": "person", "Lying": "person_down"})
    with pytest.raises(ModelError, match=r"\['Lying'\].*\['Normal', 'Fall'\]"):
        make_backend(cfg, Path("."))


def test_run_exits_2_on_bad_model(demo_config: Path, tmp_path: Path) -> None:
    """gridhub run refuses to start with a broken model file, naming it."""
    (demo_config / "bad.onnx").write_bytes(b"not a model")
    rules = yaml.safe_load((demo_config / "rules.yaml").read_text())
    rules["detector"]["model"] = "bad.onnx"
    (demo_config / "rules.yaml").write_text(yaml.safe_dump(rules))
    res = subprocess.run(
        [sys.executable, "-m", "hub", "run", "--config", str(demo_config), "--data",
         str(tmp_path / "d"), "--port", "0"], capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2
    assert "bad.onnx: cannot load ONNX model" in res.stderr
