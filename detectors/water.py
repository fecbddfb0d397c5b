"""Standing-water segmenters for the flooding rule: frame in, water mask out.

* :class:`HeuristicWater` (built in, no model): water on a road reflects the sky. It finds
  the sky (bright, smooth, low-saturation pixels connected to the top edge) and marks, in
  the lower part of the frame, smooth regions whose colour and brightness match the sky's
  (a reflecting surface) or are muddy brown and smooth (turbid flood water), keeping only
  large connected regions. It needs the sky (or a bright reflection source) in view and
  knows nothing of texture it has not been told about: it is a baseline, measured in
  ``docs/detection.md``, and a trained model should replace it where flooding matters.
* :class:`UltralyticsWater`: a user-trained ultralytics model, classification (the water
  classes' probability times the whole zone) or segmentation (the water classes' masks).

Both work on a single frame (no reference frame), so a clip that starts flooded and a
moving patrol camera are handled the same way as a fixed camera.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from detectors.backends.base import ModelError
from hub.config import WaterModelConfig

log = logging.getLogger(__name__)

WORK_W = 192  # the heuristic works on a frame this wide


class WaterSegmenter:
    """Frame (BGR) in, water mask (bool, the frame's size) and a confidence out."""

    def segment(self, frame: np.ndarray) -> tuple[np.ndarray, float | None]:
        raise NotImplementedError


def _content_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """The picture inside black bars (pillar- or letterboxing), as x0, y0, x1, y1."""
    cols = np.where(gray.max(axis=0) > 24)[0]
    rows = np.where(gray.max(axis=1) > 24)[0]
    if len(cols) < 8 or len(rows) < 8:
        return 0, 0, gray.shape[1], gray.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class HeuristicWater(WaterSegmenter):
    def segment(self, frame: np.ndarray) -> tuple[np.ndarray, float | None]:
        h, w = frame.shape[:2]
        sh = max(8, round(h * WORK_W / w))
        small = cv2.resize(frame, (WORK_W, sh), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        x0, y0, x1, y1 = _content_box(gray)
        mask = np.zeros((sh, WORK_W), bool)
        pic = small[y0:y1, x0:x1]
        ph, pw = pic.shape[:2]
        if ph < 16 or pw < 16:
            return cv2.resize(mask.astype(np.uint8), (w, h)) > 0, None
        hsv = cv2.cvtColor(pic, cv2.COLOR_BGR2HSV).astype(np.float32)
        hue, sat, val = hsv[..., 0], hsv[..., 1] / 255, hsv[..., 2] / 255
        g = cv2.cvtColor(pic, cv2.COLOR_BGR2GRAY).astype(np.float32)
        texture = cv2.blur(np.abs(cv2.Laplacian(g, cv2.CV_32F)), (5, 5))
        smooth = texture < 8.0
        # Sky: bright, smooth, little colour, touching the top of the picture.
        sky_px = (val > 0.55) & (sat < 0.25) & smooth
        n, labels = cv2.connectedComponents(sky_px.astype(np.uint8))
        top = set(np.unique(labels[: max(2, ph // 20)])) - {0}
        sky = np.isin(labels, list(top)) if top else np.zeros_like(sky_px)
        if sky.mean() < 0.03:
            return cv2.resize(mask.astype(np.uint8), (w, h)) > 0, None
        sky_v = float(np.median(val[sky]))
        horizon = int(np.percentile(np.where(sky.any(axis=1))[0], 90)) + 1
        below = np.zeros_like(sky)
        below[max(horizon, ph // 3):] = True
        reflective = (val > 0.6 * sky_v) & (sat < 0.35) & smooth
        muddy = (hue >= 5) & (hue <= 30) & (sat >= 0.12) & (sat <= 0.6) & (val > 0.3) & smooth
        cand = (reflective | muddy) & below & ~sky
        closed = cv2.morphologyEx(cand.astype(np.uint8), cv2.MORPH_CLOSE,
                                  np.ones((5, 5), np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(closed)
        keep = np.zeros_like(cand, bool)
        for i in range(1, n):
            x, y, bw, bh, area = stats[i]
            if area >= 0.02 * ph * pw and bw >= 0.25 * pw:  # wide, as water on a road lies
                keep |= labels == i
        mask[y0:y1, x0:x1] = keep
        return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0, None


class UltralyticsWater(WaterSegmenter):
    """A user-trained ultralytics classify or segment model."""

    def __init__(self, cfg: WaterModelConfig, base: Path) -> None:
        from detectors.backends.ultralytics import load_yolo

        if not cfg.model:
            raise ModelError("rules.yaml flooding.water.model: required for type ultralytics")
        self.model, self.path = load_yolo(cfg.model, base)
        self.task = getattr(self.model, "task", None)
        if self.task not in ("classify", "segment"):
            raise ModelError(f"{self.path}: a classify or segment model is needed for water, "
                             f"this one is {self.task!r}")
        names = {int(k): str(v) for k, v in self.model.names.items()}
        self.water_ids = [k for k, v in names.items() if v in cfg.classes]
        if not self.water_ids:
            raise ModelError(f"{self.path}: none of the water classes {cfg.classes} is among "
                             f"the model's classes {sorted(names.values())}")
        self.imgsz = cfg.imgsz
        self._lock = threading.Lock()  # detection loops share it; ultralytics is not safe so

    def segment(self, frame: np.ndarray) -> tuple[np.ndarray, float | None]:
        h, w = frame.shape[:2]
        with self._lock:
            r = self.model.predict(frame, imgsz=self.imgsz, verbose=False)[0]
        if self.task == "classify":
            p = float(sum(float(r.probs.data[i]) for i in self.water_ids))
            return np.full((h, w), p >= 0.5), p
        mask = np.zeros((h, w), bool)
        if r.masks is not None:
            for m, c in zip(r.masks.data.cpu().numpy(), r.boxes.cls.cpu().numpy(), strict=True):
                if int(c) in self.water_ids:
                    mask |= cv2.resize(m.astype(np.uint8), (w, h)) > 0
        return mask, None


def make_water(cfg: WaterModelConfig, base: Path) -> WaterSegmenter:
    if cfg.type == "ultralytics":
        return UltralyticsWater(cfg, base)
    return HeuristicWater()


def mask_polygons(mask: np.ndarray, max_points: int = 64) -> list[list[tuple[float, float]]]:
    """The mask's outer contours as polygons in its own pixels (for the incident)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in sorted(contours, key=cv2.contourArea, reverse=True)[:8]:
        eps = 0.01 * cv2.arcLength(c, True)
        approx = cv2.approxPolyDP(c, eps, True).reshape(-1, 2)[:max_points]
        if len(approx) >= 3:
            out.append([(float(x), float(y)) for x, y in approx])
    return out
