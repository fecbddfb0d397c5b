"""``gridhub train``: fine-tune the person model on the operators' verdicts, export ONNX.

Every incident an operator confirmed or dismissed keeps its frame (without overlay) and the
detections in it (see ``Store.examples``). Those become a YOLO dataset:

- the incident's box: confirmed -> the class meaning ``person_down`` (``Fall``);
  dismissed as ``person_ok`` -> the class meaning ``person`` (``Normal``); dismissed as
  ``not_person`` -> no box at all (background: a van, a dog, a shadow); ``other`` -> the
  example is left out (nobody said what it was);
- the frame's other detections, where confident (>= ``pseudo_conf``) and not overlapping the
  incident's box, keep the model's own class (pseudo-labels), so fine-tuning does not teach
  the model that the other people in the picture are background.

ultralytics then fine-tunes the base weights (offline: ``YOLO_OFFLINE=1``, no plots, no
AMP check, no downloads) and exports the best weights to ONNX with a dynamic batch and input
size, for the ``onnx`` backend (``detector.imgsz`` set to the training size).

``--task water`` instead trains a frame classifier (dry / water) from the flooding
examples, for ``flooding.water`` (type ultralytics): confirmed flooding -> water, a
dismissed one -> dry (unless dismissed as ``other``). With no base weights it trains a
small ultralytics classifier from scratch (no pretrained weights can be had offline), so
it needs many examples before it is of use.

Exceptions::

    TrainError      not enough examples, a base model whose classes do not fit, a failed run
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

PERSON_TYPES = ("person_down",)


class TrainError(Exception):
    """Training cannot go ahead or failed; the message says why."""


@dataclass
class DatasetSummary:
    yaml: Path
    train: int
    val: int
    boxes: dict[str, int]
    skipped: int


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def example_labels(ex: dict[str, Any], names: list[str], meaning_class: dict[str, int],
                   pseudo_conf: float) -> list[tuple[int, list[float]]] | None:
    """(class index, x1 y1 x2 y2) boxes for one example, or None to leave it out."""
    box = ex.get("box")
    if box is None:
        return None
    if ex["verdict"] == "confirmed":
        main: int | None = meaning_class["person_down"]
    elif ex["label"] == "person_ok":
        main = meaning_class["person"]
    elif ex["label"] == "not_person":
        main = None
    else:
        return None
    out: list[tuple[int, list[float]]] = [] if main is None else [(main, list(box))]
    for d in ex.get("detections", []):
        if d.get("class") not in names or (d.get("confidence") or 0) < pseudo_conf:
            continue
        if _iou(d["box"], box) >= 0.3:
            continue  # the judged box itself (or a duplicate of it)
        out.append((names.index(d["class"]), list(d["box"])))
    return out


def build_dataset(examples: list[dict[str, Any]], out: Path, names: list[str],
                  meanings: dict[str, str], *, val_every: int = 5,
                  pseudo_conf: float = 0.5) -> DatasetSummary:
    """Write a YOLO dataset (images/, labels/, data.yaml) from labelled examples."""
    meaning_class = {m: names.index(n) for n, m in meanings.items() if n in names}
    for need in ("person", "person_down"):
        if need not in meaning_class:
            raise TrainError(f"the base model's classes {names} have none meaning {need!r} "
                             f"in detector.classes {meanings}")
    if out.exists():
        shutil.rmtree(out)
    rows = []
    skipped = 0
    for ex in examples:
        if ex["type"] not in PERSON_TYPES:
            skipped += 1
            continue
        labels = example_labels(ex, names, meaning_class, pseudo_conf)
        if labels is None:
            skipped += 1
            continue
        rows.append((ex, labels))
    if len(rows) < 2:
        raise TrainError(f"{len(rows)} usable labelled example(s) of {list(PERSON_TYPES)}; "
                         "at least 2 are needed (confirm or dismiss incidents in the console)")
    # Deterministic split by incident id; at least one image on each side.
    order = sorted(rows, key=lambda r: hashlib.sha256(r[0]["incident_id"].encode()).digest())
    val_n = max(1, len(order) // val_every)
    counts = {"train": 0, "val": 0}
    boxes = {n: 0 for n in names}
    for i, (ex, labels) in enumerate(order):
        split = "val" if i < val_n else "train"
        img = cv2.imdecode(np.frombuffer(ex["jpeg"], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            skipped += 1
            continue
        h, w = img.shape[:2]
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        stem = ex["incident_id"]
        (out / "images" / split / f"{stem}.jpg").write_bytes(ex["jpeg"])
        lines = []
        for cls, (x1, y1, x2, y2) in labels:
            x1, x2 = max(0.0, x1), min(float(w), x2)
            y1, y2 = max(0.0, y1), min(float(h), y2)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            lines.append(f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                         f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
            boxes[names[cls]] += 1
        (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        counts[split] += 1
    if counts["train"] == 0 or counts["val"] == 0:
        raise TrainError("the examples could not be split into training and validation images")
    data = out / "data.yaml"
    data.write_text(json.dumps({
        "path": str(out.resolve()), "train": "images/train", "val": "images/val",
        "names": dict(enumerate(names)),
    }, indent=1))
    return DatasetSummary(data, counts["train"], counts["val"], boxes, skipped)


def _fit(model: Any, out: Path, name: str, **kw: Any) -> Path:
    """ultralytics training offline on the CPU, no plots; returns the best weights."""
    try:
        model.train(device="cpu", project=str(out.resolve()), name=name, exist_ok=True,
                    plots=False, amp=False, verbose=False, seed=0, deterministic=True, **kw)
    except Exception as err:
        raise TrainError(f"training failed: {type(err).__name__}: {err}") from err
    weights = out / name / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    if not best.is_file():
        raise TrainError(f"training wrote no weights under {weights}")
    return best


def train(data: Path, base: Path, out: Path, *, epochs: int, imgsz: int, batch: int,
          workers: int = 0) -> Path:
    """Fine-tune ``base`` on the dataset; returns the exported ONNX model's path."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    from detectors.backends.ultralytics import load_yolo

    model, _ = load_yolo(str(base), Path("."))
    best = _fit(model, out, "run", data=str(data), epochs=epochs, imgsz=imgsz, batch=batch,
                workers=workers, patience=max(epochs, 50))
    tuned, _ = load_yolo(str(best.resolve()), Path("."))
    try:
        exported = Path(tuned.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=False,
                                     half=False, device="cpu"))
    except Exception as err:
        raise TrainError(f"ONNX export failed: {type(err).__name__}: {err}") from err
    final = out / "model.onnx"
    shutil.copyfile(exported, final)
    shutil.copyfile(best, out / "model.pt")
    return final


# --- water: a frame classifier from the flooding verdicts ----------------------------------

WATER_CLASSES = ("dry", "water")


def build_water_dataset(examples: list[dict[str, Any]], out: Path, *,
                        val_every: int = 5) -> DatasetSummary:
    """An ultralytics classification dataset (train/<class>/, val/<class>/) from the
    flooding examples: confirmed -> water; dismissed as not_person/person_ok (not water,
    whatever the label says about people) -> dry; dismissed as other -> left out."""
    if out.exists():
        shutil.rmtree(out)
    by_class: dict[str, list[dict[str, Any]]] = {c: [] for c in WATER_CLASSES}
    skipped = 0
    for ex in examples:
        if ex["type"] != "flooding" or (ex["verdict"] == "rejected" and ex["label"] == "other"):
            skipped += 1
            continue
        by_class["water" if ex["verdict"] == "confirmed" else "dry"].append(ex)
    short = [c for c, xs in by_class.items() if len(xs) < 2]
    if short:
        have = ", ".join(f"{c} {len(by_class[c])}" for c in WATER_CLASSES)
        raise TrainError(f"flooding examples: {have}; at least 2 of each are needed (confirm "
                         "real flooding, dismiss false alarms in the console)")
    counts = {"train": 0, "val": 0}
    for cls, xs in by_class.items():
        order = sorted(xs, key=lambda e: hashlib.sha256(e["incident_id"].encode()).digest())
        val_n = max(1, len(order) // val_every)
        for i, ex in enumerate(order):
            split = "val" if i < val_n else "train"
            d = out / split / cls
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{ex['incident_id']}.jpg").write_bytes(ex["jpeg"])
            counts[split] += 1
    return DatasetSummary(out, counts["train"], counts["val"],
                          {c: len(xs) for c, xs in by_class.items()}, skipped)


def train_water(data: Path, base: str, out: Path, *, epochs: int, imgsz: int, batch: int,
                workers: int = 0) -> Path:
    """Train (or fine-tune) an ultralytics classifier on the water dataset; returns the
    weights for ``flooding.water`` (type ultralytics)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if base.endswith(".yaml"):  # an architecture from ultralytics' own configs, random init
        try:
            from ultralytics import YOLO  # type: ignore[attr-defined]

            model = YOLO(base, task="classify")
        except Exception as err:
            raise TrainError(f"{base}: cannot build the classifier: {err}") from err
    else:
        from detectors.backends.ultralytics import load_yolo

        model, _ = load_yolo(base, Path.cwd(), task="classify")
    best = _fit(model, out, "water", data=str(data.resolve()), epochs=epochs, imgsz=imgsz,
                batch=batch, workers=workers, pretrained=False)
    final = out / "water.pt"
    shutil.copyfile(best, final)
    return final
