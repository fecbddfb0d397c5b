"""Model backends, chosen by the ``type`` key of ``rules.yaml: detector``."""

from __future__ import annotations

from pathlib import Path

from detectors.backends.base import Backend, ModelError
from hub.config import DetectorConfig, OnnxDetectorConfig

__all__ = ["Backend", "ModelError", "make_backend"]


def make_backend(cfg: DetectorConfig, base: Path) -> Backend:
    """Build the configured backend; raises ModelError naming the file on failure."""
    if isinstance(cfg, OnnxDetectorConfig):
        from detectors.backends.onnx import OnnxBackend

        return OnnxBackend(cfg, base)
    raise ModelError(f"unsupported detector type {cfg.type!r}")
