"""OpenCV's HOG people detector: the last resort, with no model file at all.

It finds upright people only (the Dalal-Triggs pedestrian SVM shipped inside OpenCV), so
every box means ``person``: stranded_person works, person_down cannot fire on its own.
The score is the SVM margin squashed to 0..1 with a logistic, for the rules' confidences.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import supervision as sv

from detectors.backends.base import Backend, finish
from hub.config import HogDetectorConfig

log = logging.getLogger(__name__)


class HogBackend(Backend):
    class_names = ["person"]

    def __init__(self, cfg: HogDetectorConfig) -> None:
        self.cfg = cfg
        self.hog = cv2.HOGDescriptor()
        people = cv2.HOGDescriptor_getDefaultPeopleDetector()  # type: ignore[attr-defined]
        self.hog.setSVMDetector(people)
        log.warning("hog backend: upright people only; person_down will not be detected")

    def detect(self, frame: np.ndarray) -> sv.Detections:
        h, w = frame.shape[:2]
        r = min(1.0, self.cfg.width / w)
        img = cv2.resize(frame, (round(w * r), round(h * r))) if r < 1 else frame
        s = self.cfg.win_stride
        found, weights = self.hog.detectMultiScale(
            img, hitThreshold=self.cfg.min_weight, winStride=(s, s), padding=(8, 8),
            scale=self.cfg.scale,
        )
        rects = np.asarray(found, np.float32).reshape(-1, 4)
        xyxy = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / r
        score = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float32).reshape(-1)))
        return finish(xyxy, score, np.zeros(len(score), int), frame.shape, ["person"], 0.0,
                      self.cfg.iou)
