"""Model backends, chosen by the ``type`` key of ``rules.yaml: detector``:
``onnx`` (default, ONNX Runtime), ``ultralytics`` (.pt or exported weights), ``hog``."""

from __future__ import annotations

from pathlib import Path

from detectors.backends.base import Backend, ModelError
from hub.config import (
    DetectorConfig,
    HogDetectorConfig,
    OnnxDetectorConfig,
    UltralyticsDetectorConfig,
)

__all__ = ["Backend", "ModelError", "make_backend"]


def make_backend(cfg: DetectorConfig, base: Path) -> Backend:
    """Build the configured backend; raises ModelError naming the file on failure."""
    if isinstance(cfg, OnnxDetectorConfig):
        from detectors.backends.onnx import OnnxBackend

        return OnnxBackend(cfg, base)
    if isinstance(cfg, UltralyticsDetectorConfig):
        from detectors.backends.ultralytics import UltralyticsBackend

        return UltralyticsBackend(cfg, base)
    if isinstance(cfg, HogDetectorConfig):
        from detectors.backends.hog import HogBackend

        return HogBackend(cfg)
    raise ModelError(f"unsupported detector type {cfg.type!r}")
