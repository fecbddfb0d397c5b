"""``gridhub eval``: run the real pipeline over labelled clips and score it.

Labels (``gridhub-eval/1``, see ``../shared/media/labels.json``): per clip, events with a
type and the span ``[start_s, end_s]`` in which the condition holds, types to ignore, and
params that override the rule settings for that clip (over the file's defaults). An
incident of a type raised inside ``[start_s - 1, end_s + 2]`` of an event of that type is a
hit (the first one per event); every other incident of a type the clip does not ignore is
a false positive, duplicates included. Latency is the time from ``start_s`` plus the type's
threshold (``person_down.min_s``, ``stranded_person.dwell_s``, ``flooding.min_s``) to the
incident.

Clips are decoded as fast as the machine allows and sampled as live: one frame every
``1 / detect_fps`` seconds of clip time, each the first frame at or after its due time.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np

from detectors.backends import Backend
from detectors.pipeline import DetectionPipeline
from detectors.water import WaterSegmenter, make_water
from hub.config import RulesFile, with_params

log = logging.getLogger(__name__)

TYPES = ("person_down", "stranded_person", "flooding")
THRESHOLD_KEY = {"person_down": "min_s", "stranded_person": "dwell_s", "flooding": "min_s"}
EARLY_S, LATE_S = 1.0, 2.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class LabelsError(ValueError):
    """The labels file cannot be used; the message says where."""


@dataclass
class ClipResult:
    file: str
    incidents: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    frames: int = 0
    inferences: int = 0
    seconds: float = 0.0  # clip duration seen
    wall_s: float = 0.0


def load_labels(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LabelsError(f"{path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("clips"), list):
        raise LabelsError(f"{path}: expected an object with a 'clips' list")
    for i, c in enumerate(data["clips"]):
        if not isinstance(c, dict) or "file" not in c:
            raise LabelsError(f"{path}: clips[{i}]: needs 'file'")
        for j, e in enumerate(c.get("events", [])):
            if e.get("type") not in TYPES or not {"start_s", "end_s"} <= set(e):
                raise LabelsError(f"{path}: clips[{i}].events[{j}]: needs a type of {TYPES}, "
                                  "start_s and end_s")
    return data


def clip_rules(base: RulesFile, labels: dict[str, Any], clip: dict[str, Any]) -> RulesFile:
    params = {**labels.get("defaults", {}).get("params", {}), **clip.get("params", {})}
    return with_params(base, params)


def run_clip(path: Path, rules: RulesFile, backend: Backend,
             water: WaterSegmenter | None) -> ClipResult:
    """The pipeline over one clip; incidents as they were raised (phase start)."""
    res = ClipResult(file=path.name)
    t_start = time.perf_counter()
    pipe = DetectionPipeline(path.stem, rules, backend, water=water)
    period = 1.0 / rules.detect_fps
    due = 0.0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            first: float | None = None
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * (stream.time_base or 0))
                first = t if first is None else first
                t -= first
                res.seconds = t
                if t + 1e-6 < due:
                    continue
                due = max(due + period, t)
                img = frame.to_ndarray(format="bgr24")
                res.frames += 1
                out = pipe.step(img, t, T0 + timedelta(seconds=t))
                for ev in out.events:
                    if ev.phase == "start":
                        res.incidents.append({
                            "type": ev.type, "start_s": round(t, 2),
                            "confidence": round(ev.confidence, 3), "zone": ev.zone,
                            "condition_since_s": round((ev.started_wall - T0).total_seconds(), 2),
                            **{k: v for k, v in ev.attributes.items() if v is not None},
                        })
    except (av.FFmpegError, OSError, ValueError) as err:
        res.error = f"{type(err).__name__}: {err}"
    if res.frames == 0 and res.error is None:
        res.error = "no decodable video frames"
    res.inferences = pipe.inferences
    res.wall_s = time.perf_counter() - t_start
    return res


def score(labels: dict[str, Any], results: dict[str, ClipResult],
          base: RulesFile) -> dict[str, Any]:
    counts: dict[str, dict[str, Any]] = {
        t: {"tp": 0, "fp": 0, "fn": 0, "lat": []} for t in TYPES
    }
    for clip in labels["clips"]:
        res = results.get(clip["file"])
        if res is None:
            continue
        rules = clip_rules(base, labels, clip)
        ignore = set(clip.get("ignore", []))
        for typ in TYPES:
            events = [e for e in clip.get("events", []) if e["type"] == typ]
            incs = sorted((i for i in res.incidents if i["type"] == typ),
                          key=lambda i: i["start_s"])
            threshold = getattr(getattr(rules, typ), THRESHOLD_KEY[typ])
            used: set[int] = set()
            for e in events:
                hit = next((k for k, i in enumerate(incs) if k not in used
                            and e["start_s"] - EARLY_S <= i["start_s"] <= e["end_s"] + LATE_S),
                           None)
                if hit is None:
                    counts[typ]["fn"] += 1
                    continue
                used.add(hit)
                counts[typ]["tp"] += 1
                counts[typ]["lat"].append(incs[hit]["start_s"] - (e["start_s"] + threshold))
            if typ not in ignore:
                counts[typ]["fp"] += len(incs) - len(used)
    types: dict[str, Any] = {}
    for typ, c in counts.items():
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        p = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        r = tp / (tp + fn) if tp + fn else 1.0
        lat = sorted(c["lat"])
        types[typ] = {
            "tp": tp, "fp": fp, "fn": fn, "precision": round(p, 3), "recall": round(r, 3),
            "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
            "latency_p50_s": _pct(lat, 50), "latency_p95_s": _pct(lat, 95),
        }
    return types


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return round(float(np.percentile(xs, q, method="linear")), 2)


def evaluate(clips_dir: Path, labels_path: Path, rules: RulesFile, backend: Backend,
             water: WaterSegmenter | None, base: Path,
             progress: Any = None) -> dict[str, Any]:
    labels = load_labels(labels_path)
    if water is None and rules.flooding.enabled:
        water = make_water(rules.flooding.water, base)
    results: dict[str, ClipResult] = {}
    for clip in labels["clips"]:
        path = clips_dir / clip["file"]
        try:
            r = clip_rules(rules, labels, clip)
        except ValueError as err:
            results[clip["file"]] = ClipResult(clip["file"], error=f"params: {err}")
            continue
        if not path.is_file():
            results[clip["file"]] = ClipResult(clip["file"], error="file not found")
        else:
            results[clip["file"]] = run_clip(path, r, backend, water)
        if progress is not None:
            progress(results[clip["file"]])
    out_clips = []
    for clip in labels["clips"]:
        res = results[clip["file"]]
        item: dict[str, Any] = {"file": res.file, "incidents": res.incidents}
        if res.error:
            item["error"] = res.error
        item.update(frames_sampled=res.frames, inferences=res.inferences,
                    clip_s=round(res.seconds, 1), wall_s=round(res.wall_s, 1))
        out_clips.append(item)
    return {"types": score(labels, results, rules), "clips": out_clips,
            "detect_fps": rules.detect_fps}


def table(report: dict[str, Any]) -> str:
    lines = ["| type | TP | FP | FN | precision | recall | F1 | latency p50 | latency p95 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for typ, s in report["types"].items():
        lat = [("-" if s[k] is None else f"{s[k]:.2f} s") for k in
               ("latency_p50_s", "latency_p95_s")]
        lines.append(f"| {typ} | {s['tp']} | {s['fp']} | {s['fn']} | {s['precision']:.2f} | "
                     f"{s['recall']:.2f} | {s['f1']:.2f} | {lat[0]} | {lat[1]} |")
    lines += ["", "| clip | incidents raised (type @ clip time, confidence) | note |",
              "|---|---|---|"]
    for c in report["clips"]:
        incs = ", ".join(f"{i['type']} @ {i['start_s']:.1f} s ({i['confidence']:.2f})"
                         for i in c["incidents"]) or "none"
        note = c.get("error") or (f"{c['frames_sampled']} frames sampled, "
                                  f"{c['inferences']} inferences, {c['wall_s']:.1f} s")
        lines.append(f"| {c['file']} | {incs} | {note} |")
    return "\n".join(lines)
