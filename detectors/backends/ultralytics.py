"""ultralytics models: any ``.pt`` or exported weights, for people and for water.

ultralytics needs PyTorch (installed by ``make``; a configuration that names an ultralytics
model on a machine without it fails at start with a clear error). ``YOLO_OFFLINE=1`` and
``YOLO_AUTOINSTALL=0`` keep ultralytics from reaching out or installing anything.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from detectors.backends.base import Backend, ModelError, finish
from detectors.backends.onnx import resolve_model
from hub.config import UltralyticsDetectorConfig

log = logging.getLogger(__name__)


def load_yolo(spec: str, base: Path, task: str | None = None) -> tuple[Any, Path]:
    """An ultralytics ``YOLO`` for a weights file; raises ModelError naming the file."""
    path = resolve_model(spec, base)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    try:
        from ultralytics import YOLO  # type: ignore[attr-defined]
    except ImportError as err:
        raise ModelError(f"{path}: ultralytics models need the ultralytics and torch packages "
                         f"({err})") from err
    try:
        model = YOLO(str(path), task=task) if task else YOLO(str(path))
        names = model.names  # exported formats read their metadata here
    except Exception as err:  # ultralytics raises many kinds on a bad file
        raise ModelError(f"{path}: cannot load as an ultralytics model: {err}") from err
    if not names:
        raise ModelError(f"{path}: the model declares no class names")
    return model, path


class UltralyticsBackend(Backend):
    """A detection model through ultralytics (PyTorch, or an exported format it runs)."""

    def __init__(self, cfg: UltralyticsDetectorConfig, base: Path) -> None:
        self.cfg = cfg
        self.model, self.path = load_yolo(cfg.model, base, task="detect")
        if self.model.task != "detect":
            raise ModelError(f"{self.path}: a {self.model.task} model, not a detection model")
        names = self.model.names
        self.class_names = [str(names[i]) for i in sorted(names)]
        unknown = sorted(set(cfg.classes) - set(self.class_names))
        if unknown:
            raise ModelError(
                f"{self.path}: rules.yaml detector.classes names {unknown}, "
                f"but the model has {self.class_names}"
            )
        if not any(m != "ignore" for m in cfg.classes.values()):
            raise ModelError(f"{self.path}: detector.classes maps no class to person or "
                             "person_down")
        self.meanings = [cfg.classes.get(n, "ignore") for n in self.class_names]
        self._lock = threading.Lock()  # an ultralytics model is not safe to share by threads
        self.detect(np.zeros((64, 64, 3), np.uint8))  # fail at start, not on the first frame
        log.info("ultralytics backend: %s, classes %s", self.path.name, self.class_names)

    def detect(self, frame: np.ndarray) -> sv.Detections:
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames: list[np.ndarray]) -> list[sv.Detections]:
        if not frames:
            return []
        try:
            with self._lock:
                results = self.model.predict(
                    frames, imgsz=self.cfg.imgsz, conf=self.cfg.confidence, iou=self.cfg.iou,
                    agnostic_nms=True, device="cpu", verbose=False,
                )
        except Exception as err:
            raise ModelError(f"{self.path}: inference failed: {err}") from err
        out = []
        for f, r in zip(frames, results, strict=True):
            b = r.boxes
            out.append(finish(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(),
                              b.cls.cpu().numpy().astype(int), f.shape, self.meanings,
                              self.cfg.confidence, self.cfg.iou))
        return out
