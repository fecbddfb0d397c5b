"""gridhub eval: scoring by the labels' rules, and the command on clips the test makes
(one unreadable, one real but empty of events)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.evaluate import ClipResult, score
from hub.config import RulesFile

LABELS = {
    "format": "gridhub-eval/1",
    "defaults": {"params": {"person_down.min_s": 2, "stranded_person.dwell_s": 20,
                            "flooding.min_s": 3}},
    "clips": [
        {"file": "a.mp4", "events": [{"type": "person_down", "start_s": 4.0, "end_s": 9.0}],
         "ignore": ["stranded_person"]},
        {"file": "b.mp4", "events": [], "params": {"person_down.min_s": 1}},
        {"file": "c.mp4", "events": [{"type": "flooding", "start_s": 0.0, "end_s": 30.0}]},
    ],
}


def inc(typ: str, t: float) -> dict[str, object]:
    return {"type": typ, "start_s": t, "confidence": 0.7}


def test_scoring_follows_the_labels_rules() -> None:
    """Hit window [start - 1, end + 2]; a second incident for one event is a false positive;
    ignored types are not; latency counts from start + the type's threshold."""
    results = {
        "a.mp4": ClipResult("a.mp4", [inc("person_down", 6.5), inc("person_down", 8.0),
                                      inc("stranded_person", 7.0)]),
        "b.mp4": ClipResult("b.mp4", [inc("person_down", 3.0)]),
        "c.mp4": ClipResult("c.mp4", [inc("flooding", 33.0)]),  # after end + 2
    }
    s = score(LABELS, results, RulesFile())
    assert s["person_down"]["tp"] == 1 and s["person_down"]["fp"] == 2
    assert s["person_down"]["fn"] == 0 and s["person_down"]["latency_p50_s"] == 0.5
    assert s["person_down"]["precision"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["stranded_person"] == {**s["stranded_person"], "tp": 0, "fp": 0, "fn": 0}
    assert s["flooding"]["tp"] == 0 and s["flooding"]["fp"] == 1 and s["flooding"]["fn"] == 1
    assert s["flooding"]["f1"] == 0.0


def test_eval_command_reports_unreadable_clips_and_goes_on(tmp_path: Path) -> None:
    """A corrupt clip is reported in the output; a real (generated) clip is still scored."""
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=10", "-t", "3", "-pix_fmt", "yuv420p",
                    str(clips / "empty_street.mp4")], check=True, timeout=60)
    labels = {"format": "gridhub-eval/1", "defaults": {"params": {}}, "clips": [
        {"file": "broken.mp4", "events": [{"type": "person_down", "start_s": 0, "end_s": 2}]},
        {"file": "empty_street.mp4", "events": []},
        {"file": "missing.mp4", "events": []},
    ]}
    lf = tmp_path / "labels.json"
    lf.write_text(json.dumps(labels))
    out = subprocess.run(
        [sys.executable, "-m", "hub", "eval", "--clips", str(clips), "--labels", str(lf),
         "--json"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "YOLO_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_file = {c["file"]: c for c in report["clips"]}
    assert "error" in by_file["broken.mp4"] and by_file["missing.mp4"]["error"] == \
        "file not found"
    assert "error" not in by_file["empty_street.mp4"]
    assert by_file["empty_street.mp4"]["frames_sampled"] >= 5
    assert report["types"]["person_down"]["fn"] == 1
    assert set(report["types"]) == {"person_down", "stranded_person", "flooding"}
    for t in report["types"].values():
        assert {"tp", "fp", "fn", "precision", "recall", "f1", "latency_p50_s",
                "latency_p95_s"} <= set(t)


def test_eval_refuses_a_bad_labels_file(tmp_path: Path) -> None:
    lf = tmp_path / "labels.json"
    lf.write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "hub", "eval", "--clips", str(tmp_path),
                          "--labels", str(lf)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "labels:" in out.stderr
