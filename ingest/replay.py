"""Replay windows: a camera's recorded wall-clock window as one plain MP4, with the map
from its media time to wall-clock time.

:func:`cut_window` cuts the window with :func:`ingest.segments.cut_clip` (stream copy,
from the keyframe at or before the window's start, ``moov`` first) and says where every
part of the MP4 lies on the wall clock. ``cut_clip`` makes timestamps continuous: missing
time inside the window (a reconnect, a segment cut after a jump) is left out of the
media, and the arrival times (``prft``) of the fragments may drift a little from the
sum of the frame durations. The map (:attr:`WindowCut.pieces`) is a list of runs
``(media_s, wall, duration_s)``: inside a run, ``wall = run.wall + (t - run.media_s)``,
exact to ``PIECE_TOLERANCE_S``; wall times between runs are not in the MP4.

The runs are computed from the same scans (one scan of each segment, shared with
``cut_clip``, so a segment still being written cannot grow in between) and the same
sample choice as ``cut_clip``; when the two disagree (they should not) the map falls back
to one run from the clip's start and says so in :attr:`WindowCut.note`.

Presentation is taken to equal decode time (no B-frames, as cameras send); with B-frames
the map is off by the reorder delay (a frame or two).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ingest.segments import NoMedia, Scan, cut_clip, scan_all

log = logging.getLogger(__name__)

# A fragment further than this from where its run predicts it starts a new run.
PIECE_TOLERANCE_S = 0.02


@dataclass(frozen=True)
class WindowCut:
    path: Path
    start: float  # wall-clock time of the first frame (a keyframe at or before the window)
    end: float  # ... of the end of the last frame
    duration_s: float  # media duration of the MP4
    size: int
    samples: int
    frame_s: float  # the usual frame duration
    codec: str
    width: int
    height: int
    pieces: list[tuple[float, float, float]] = field(default_factory=list)
    note: str | None = None


def _choose(scans: list[Scan], start: float, end: float
            ) -> tuple[Scan, list[tuple[float, int, bool, bool]]] | None:
    """The samples ``cut_clip`` copies: (wall, duration ticks, keyframe, starts a
    fragment), and the scan whose sample entry they use. Mirrors its selection."""
    first_scan: Scan | None = None
    samples: list[tuple[float, int, bool, bool]] = []
    for s in scans:
        if s.end is None or s.end < start or (s.start is not None and s.start > end):
            continue
        if first_scan is None:
            first_scan = s
        elif (s.entry, s.timescale) != (first_scan.entry, first_scan.timescale):
            continue
        for f in s.fragments:
            if f.wall is None:
                continue
            t = f.wall
            for n, (dur, _size, key, _cto) in enumerate(f.samples):
                samples.append((t, dur, key, n == 0))
                t += dur / s.timescale
    if first_scan is None or not samples:
        return None
    first = next((k for k in range(len(samples) - 1, -1, -1)
                  if samples[k][2] and samples[k][0] <= start), None)
    if first is None:
        first = next((k for k, smp in enumerate(samples) if smp[2]), None)
    if first is None:
        return None
    last = max((k for k in range(first, len(samples)) if samples[k][0] < end), default=first)
    return first_scan, samples[first:last + 1]


def _pieces(chosen: list[tuple[float, int, bool, bool]], timescale: int
            ) -> list[tuple[float, float, float]]:
    pieces: list[list[float]] = []  # [media_s, wall, duration_s]
    media = 0.0
    for n, (wall, dur, _key, frag_start) in enumerate(chosen):
        d = dur / timescale
        if pieces:
            run = pieces[-1]
            predicted = run[1] + (media - run[0])
            if n and frag_start and abs(wall - predicted) > PIECE_TOLERANCE_S:
                pieces.append([media, wall, 0.0])
        else:
            pieces.append([media, wall, 0.0])
        pieces[-1][2] += d
        media += d
    return [(round(m, 6), round(w, 6), round(d, 6)) for m, w, d in pieces]


def cut_window(paths: list[Path], start: float, end: float, out: Path) -> WindowCut | None:
    """Cut ``[start, end]`` (Unix times) out of the segments ``paths`` (oldest first) into
    ``out``; None when nothing of the window is recorded."""
    # One scan for both the cut and the map: a segment still being written grows between
    # two scans, and a map from a later scan would not be the clip's.
    scans = scan_all(paths)
    try:
        clip = cut_clip(paths, start, end, out, scans)
    except NoMedia:
        return None
    chosen = _choose(scans, start, end)
    note = None
    if chosen is None:
        pieces = [(0.0, clip.start, clip.duration_s)]
        timescale, durations = 90000, [round(clip.duration_s * 90000 / max(clip.samples, 1))]
        entry_scan = None
        note = "map: no samples chosen; one run from the clip's start"
    else:
        entry_scan, samples = chosen
        timescale = entry_scan.timescale
        durations = [d for _w, d, _k, _f in samples]
        media_s = sum(durations) / timescale
        if len(samples) != clip.samples or abs(samples[0][0] - clip.start) > 1e-6 \
                or abs(media_s - clip.duration_s) > 1e-6:
            log.warning("replay: %s: map and clip disagree (%d/%d samples); one run",
                        out.name, len(samples), clip.samples)
            pieces = [(0.0, clip.start, clip.duration_s)]
            note = "map: samples differ from the clip's; one run from the clip's start"
        else:
            pieces = _pieces(samples, timescale)
    frame_ticks = sorted(durations)[len(durations) // 2] if durations else 0
    return WindowCut(
        path=clip.path, start=clip.start, end=clip.end, duration_s=clip.duration_s,
        size=clip.size, samples=clip.samples,
        frame_s=frame_ticks / timescale if frame_ticks else 0.04,
        codec=entry_scan.codec if entry_scan else "h264",
        width=entry_scan.width if entry_scan else 0,
        height=entry_scan.height if entry_scan else 0, pieces=pieces, note=note)
