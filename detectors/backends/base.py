"""The interface every model backend implements, and the shared last step of decoding.

Exceptions::

    ModelError      a model file is missing, corrupt, of the wrong shape, or does not
                    have the classes the configuration names
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import cv2
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

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release threads the backend holds (idempotent)."""


def empty_detections() -> sv.Detections:
    empty = sv.Detections.empty()
    empty.data["meaning"] = np.array([], dtype=np.object_)
    return empty


def finish(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, shape: tuple[int, ...],
           meanings: Sequence[str], min_conf: float, iou: float) -> sv.Detections:
    """Boxes in frame pixels -> clipped, class-agnostic NMS (one person is one box, whether
    the model says Normal or Fall), meanings attached, ignored classes dropped."""
    if len(xyxy) == 0:
        return empty_detections()
    h, w = shape[:2]
    xyxy = np.clip(np.asarray(xyxy, np.float32), 0, [w, h, w, h]).astype(np.float32)
    picked = cv2.dnn.NMSBoxes(
        [[float(a), float(c), float(e - a), float(f - c)] for a, c, e, f in xyxy],
        np.asarray(conf, float).tolist(), min_conf, iou,
    )
    idx = np.asarray(picked, dtype=int).reshape(-1)
    cls = np.asarray(cls, int)
    det = sv.Detections(
        xyxy=xyxy[idx], confidence=np.asarray(conf, np.float32)[idx], class_id=cls[idx],
    )
    meaning = np.array([meanings[int(c)] for c in cls[idx]], dtype=np.object_)
    det.data["meaning"] = meaning
    kept = det[meaning != "ignore"]
    assert isinstance(kept, sv.Detections)
    return kept
