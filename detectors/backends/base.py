"""The interface every model backend implements.

Exceptions::

    ModelError      a model file is missing, corrupt, of the wrong shape, or does not
                    have the classes the configuration names
"""

from __future__ import annotations

import abc

import numpy as np
import supervision as sv


class ModelError(Exception):
    """The configured model cannot be used; the message names the file."""


class Backend(abc.ABC):
    """Frame in (BGR uint8), detections out, with ``data["meaning"]`` per box:
    ``person`` (upright or unknown posture) or ``person_down`` (lying or fallen)."""

    class_names: list[str]

    @abc.abstractmethod
    def detect(self, frame: np.ndarray) -> sv.Detections: ...

    def detect_batch(self, frames: list[np.ndarray]) -> list[sv.Detections]:
        """Several frames (from several cameras) at once; backends that can batch do."""
        return [self.detect(f) for f in frames]
