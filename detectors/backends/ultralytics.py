"""Loading ultralytics models (``.pt`` or exported weights) for the water segmenter.

ultralytics needs PyTorch, which the default install leaves out (the default models run on
ONNX Runtime): a configuration that names an ultralytics model on a machine without it
fails at start with a clear error. ``YOLO_OFFLINE=1`` keeps ultralytics from reaching out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from detectors.backends.base import ModelError
from detectors.backends.onnx import resolve_model


def load_yolo(spec: str, base: Path) -> tuple[Any, Path]:
    """An ultralytics ``YOLO`` for a weights file; raises ModelError naming the file."""
    path = resolve_model(spec, base)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    try:
        from ultralytics import YOLO
    except ImportError as err:
        raise ModelError(f"{path}: ultralytics models need the ultralytics and torch packages "
                         f"({err})") from err
    try:
        return YOLO(str(path)), path
    except Exception as err:  # ultralytics raises many kinds on a bad file
        raise ModelError(f"{path}: cannot load as an ultralytics model: {err}") from err
