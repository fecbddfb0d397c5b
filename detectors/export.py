"""``gridhub export-model``: the person model as ONNX at the size the cameras need.

The shipped ONNX file is fixed at 640x640, so a 16:9 frame spends 44 % of its inference on
grey padding. This exports the package's PyTorch weights (or any ultralytics ``.pt``) at
``height x width`` with a dynamic batch, so the worker runs the frames of several cameras in
one call, and optionally quantizes the convolutions to int8 (static QDQ, per channel),
calibrated on street frames composed from the photos ultralytics ships (no camera footage
needed, nothing downloaded). The detection head's box decoding stays in float.

Exceptions::

    ExportError     ultralytics/torch missing, an export or quantization that failed
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ExportError(Exception):
    """The model could not be exported; the message says why."""


def calibration_frames(n: int = 24, seed: int = 0, size: tuple[int, int] = (720, 1280)
                       ) -> list[np.ndarray]:
    """Street frames with people standing and lying at varied places, scales and exposure."""
    from ingest.demo_scene import compose, person_cutouts, street_background

    rng = np.random.default_rng(seed)
    h, w = size
    bg = street_background(w, h)
    cuts = person_cutouts()
    out = []
    for i in range(n):
        img = bg.copy()
        for _ in range(int(rng.integers(1, 4))):
            tall = float(rng.uniform(0.2, 0.6)) * h
            img = compose(img, cuts[int(rng.integers(len(cuts)))],
                          center_x=float(rng.uniform(0.1, 0.9)) * w,
                          ground_y=float(rng.uniform(0.6, 0.95)) * h, height_px=tall,
                          angle_deg=float(rng.choice([0.0, 0.0, 90.0, -90.0, 45.0])))
        if i % 2:
            img = img[:, ::-1]
        img = np.clip(img.astype(np.float32) * rng.uniform(0.6, 1.3) + rng.uniform(-25, 25),
                      0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(img))
    return out


def export_onnx(base: str, out: Path, imgsz: tuple[int, int], int8: bool = False) -> Path:
    """Export ``base`` (ultralytics weights) to ``out`` as ONNX with a dynamic batch."""
    from detectors.backends.base import ModelError
    from detectors.backends.ultralytics import load_yolo

    try:
        model, path = load_yolo(base, Path.cwd())
    except ModelError as err:
        raise ExportError(str(err)) from err
    work = Path(tempfile.mkdtemp(prefix="gridhub-export-"))
    try:
        shutil.copyfile(path, work / "model.pt")  # ultralytics writes beside the weights
        model, _ = load_yolo(str(work / "model.pt"), Path.cwd())
        try:
            fp32 = Path(model.export(format="onnx", imgsz=list(imgsz), dynamic=True,
                                     simplify=False, half=False, device="cpu"))
        except Exception as err:
            raise ExportError(f"{path}: ONNX export failed: {type(err).__name__}: {err}") from err
        out.parent.mkdir(parents=True, exist_ok=True)
        if int8:
            # The detection head is the model's last module; its box decoding stays float.
            head = f"/model.{len(model.model.model) - 1}/"
            quantize(fp32, out, imgsz, head)
        else:
            shutil.copyfile(fp32, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def quantize(src: Path, out: Path, imgsz: tuple[int, int], head: str = "/model.22/") -> None:
    """Static int8 QDQ quantization (every op ORT quantizes), the head's decoding kept in
    float."""
    # onnxruntime's quantization tools write temporary models into the working folder:
    # work in the export's own temporary folder.
    src, out = src.resolve(), out.resolve()
    with contextlib.chdir(src.parent):
        _quantize(src, out, imgsz, head)


def _quantize(src: Path, out: Path, imgsz: tuple[int, int], head: str) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from detectors.backends.onnx import letterbox

    pre = src.with_name("pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference is optional
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre))
    exclude = [n.name for n in graph.graph.node if n.name.startswith(head)
               and "/cv2" not in n.name and "/cv3" not in n.name]
    if not exclude:
        raise ExportError(f"{src}: no detection head named {head}* in the graph; int8 would "
                          "quantize the box decoding (export without --int8)")
    exclude += [n.name for n in graph.graph.node if n.op_type == "Conv" and ".2/Conv" in n.name
                and (f"{head}cv2" in n.name or f"{head}cv3" in n.name)]
    blobs = []
    for f in calibration_frames():
        img = letterbox(f, imgsz)[0][:, :, ::-1].transpose(2, 0, 1)
        blobs.append({graph.graph.input[0].name:
                      (img[None].astype(np.float32) / 255.0)})

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(blobs)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    try:
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, reduce_range=True,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=exclude)
    except Exception as err:
        raise ExportError(f"{src}: int8 quantization failed: {type(err).__name__}: {err}") from err
    # The class names and the rest of ultralytics' metadata, which the runtime reads.
    q = onnx.load(str(out))
    have = {p.key for p in q.metadata_props}
    for p in onnx.load(str(src), load_external_data=False).metadata_props:
        if p.key not in have:
            q.metadata_props.add(key=p.key, value=p.value)
    onnx.save(q, str(out))
