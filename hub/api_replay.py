"""Replay API: a camera's recorded time window as one MP4 that a browser seeks by Range.

* ``GET /api/replay/{camera}/window?from=&to=``: cuts (or finds in the cache) the window
  and describes it: the wall-clock time of its first frame (a keyframe at or before
  ``from``), its duration, the frame duration, and ``pieces``, the map from media time to
  wall time: ``[media_s, wall, duration_s]`` runs (``wall`` in Unix seconds); wall time
  between runs (a gap in the recording) is not in the MP4. ``url`` is the video, signed
  for the user (a ``<video>`` element cannot send a bearer token), valid ``URL_TTL_S``.
  Nothing recorded in the window: ``recorded`` false, ``url`` null.
* ``GET /api/replay/{camera}?from=&to=``: the MP4 itself (``moov`` first), with HTTP
  Range (206; 416 past the end); a bearer token or the signature from ``/window``.
  Headers ``X-Replay-Start`` (Unix time of the first frame) and ``X-Replay-Duration``.
  A range longer than about ``RANGE_S`` seconds of the video (``bytes=N-`` is what a
  browser asks for) is answered with that much only, a shorter 206 whose
  ``Content-Range`` says so; the browser asks again for what it needs next. Without
  that, each seek made the hub push several megabytes per camera that the browser threw
  away at the next seek, and with four cameras on two cores that copying delayed the
  decoding the seek waits for (``bench/bench_replay.py``; figures in docs/recording.md).

The window is at most ``MAX_WINDOW_S``; a longer, empty or reversed one is a 422.
``from``/``to`` are ISO 8601 (UTC when no offset is given).

Cuts are stream copies by the cutter the composition root hands in (``ingest.replay``:
``cut_clip`` plus the map); each is kept under ``<data>/replay-cache/`` as ``<key>.mp4``
and ``<key>.json``, ``key`` a hash of the camera, the window and the size and time of each
segment file it reads (a segment still being written makes a new key as it grows, so a
cached cut never changes under a browser's ranges). The cache is bounded (bytes; oldest
use first) and entries unused for ``CACHE_MAX_AGE_S`` are removed.

Who: as for ``GET /api/recordings`` (``may_view_recordings``): command-center roles;
department and patrol accounts get 403.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from hub.api import Me, St, bearer
from hub.api_recordings import may_view_recordings
from hub.app import HubState
from hub.auth import AuthError, load_secret
from hub.models import User
from hub.recordings import GOP_MARGIN_S, ClipLike, RecordingService

log = logging.getLogger(__name__)

router = APIRouter()

MAX_WINDOW_S = 30 * 60.0
URL_TTL_S = 6 * 3600
CACHE_DIR = "replay-cache"
# A 206 answers at most about this many seconds of the video (at its average bitrate),
# within [RANGE_MIN_BYTES, RANGE_MAX_BYTES].
RANGE_S = 2.0
RANGE_MIN_BYTES = 256 * 1024
RANGE_MAX_BYTES = 4 * 1024 * 1024
_SINGLE_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
CACHE_MAX_BYTES = 2 << 30
CACHE_MAX_AGE_S = 24 * 3600.0
CUTS_AT_ONCE = 2


class WindowCutLike(ClipLike, Protocol):
    @property
    def frame_s(self) -> float: ...
    @property
    def codec(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def pieces(self) -> list[tuple[float, float, float]]: ...
    @property
    def note(self) -> str | None: ...


WindowCutter = Callable[[list[Path], float, float, Path], WindowCutLike | None]


class WindowOut(BaseModel):
    camera: str
    window_from: datetime = Field(description="The window asked for...")
    window_to: datetime = Field(description="...and its end.")
    recorded: bool = Field(description="Whether anything of the window is recorded.")
    start: datetime | None = Field(None, description="Wall-clock time of the first frame "
                                   "(a keyframe at or before the window's start).")
    end: datetime | None = Field(None, description="Wall-clock end of the last frame.")
    duration_s: float = 0.0
    frame_s: float = Field(0.0, description="The usual frame duration (frame stepping).")
    size: int = 0
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    pieces: list[tuple[float, float, float]] = Field(
        default_factory=list, description="[media_s, wall (Unix s), duration_s] runs: "
        "media time t of a run is at wall + (t - media_s).")
    url: str | None = Field(None, description="The MP4, signed for this user (Range).")


# --- the cache -----------------------------------------------------------------------------


class ReplayCache:
    """Cut windows under ``<data>/replay-cache``, bounded in bytes and age."""

    def __init__(self, cutter: WindowCutter, *, max_bytes: int = CACHE_MAX_BYTES,
                 max_age_s: float = CACHE_MAX_AGE_S) -> None:
        self.cutter = cutter
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.cuts = 0  # windows cut (not found in the cache)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # key -> lock, users
        self._sem = asyncio.Semaphore(CUTS_AT_ONCE)
        self._url_key: bytes | None = None
        # Descriptions in memory and their last use: a browser's Range requests for a cut
        # it already has cost no index query and no file read.
        self._known: dict[str, dict[str, Any]] = {}
        self._used: dict[str, float] = {}

    # -- signed URLs ------------------------------------------------------------------

    def _key(self, state: HubState) -> bytes:
        if self._url_key is None:  # derived from the token signing key (shared by hubs)
            secret = load_secret(state.settings.data_dir)
            self._url_key = hashlib.sha256(b"gridhub replay url\0" + secret.encode()).digest()
        return self._url_key

    def sign(self, state: HubState, user: str, camera: str, start: float, end: float,
             exp: int) -> str:
        msg = f"{user}\n{camera}\n{start:.6f}\n{end:.6f}\n{exp}".encode()
        return hmac.new(self._key(state), msg, hashlib.sha256).hexdigest()

    def check(self, state: HubState, sig: str, user: str, camera: str, start: float,
              end: float, exp: int) -> bool:
        if exp < time.time():
            return False
        return hmac.compare_digest(sig, self.sign(state, user, camera, start, end, exp))

    # -- cuts -----------------------------------------------------------------------

    @staticmethod
    def root(data_dir: Path) -> Path:
        return data_dir / CACHE_DIR

    async def version(self, data_dir: Path, camera: str, start: float, end: float,
                      version: str) -> dict[str, Any] | None:
        """The cut ``version`` (a key ``get`` gave) of that window, if it is still kept."""
        if len(version) != 32 or not version.isalnum():
            return None
        meta = self._known.get(version)
        if meta is None:
            meta = await asyncio.to_thread(self._cached, self.root(data_dir), version)
        if meta is None or (meta["camera"], meta["window"]) != \
                (camera, [round(start, 6), round(end, 6)]):
            return None
        self._remember(version, meta)
        return meta

    async def get(self, data_dir: Path, camera: str, start: float, end: float,
                  paths: list[Path]) -> dict[str, Any] | None:
        """The description of the window cut from ``paths`` (``file``: the MP4), cut
        unless cached. None: nothing recorded."""
        root = self.root(data_dir)
        key = await asyncio.to_thread(self._cache_key, camera, start, end, paths)
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1  # one cut per key at a time (the same .part file)
        try:
            async with lock:
                meta = self._known.get(key) or await asyncio.to_thread(self._cached, root, key)
                if meta is None:
                    async with self._sem:
                        meta, gone = await asyncio.to_thread(
                            self._cut, root, key, camera, start, end, paths, dict(self._used))
                    for k in gone:
                        self._known.pop(k, None)
                        self._used.pop(k, None)
                if meta is not None:
                    self._remember(key, meta)
                return meta
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    def _remember(self, key: str, meta: dict[str, Any]) -> None:
        self._known[key] = meta
        self._used[key] = time.time()

    @staticmethod
    def _cache_key(camera: str, start: float, end: float, paths: list[Path]) -> str:
        files = []
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            files.append([p.name, st.st_size, st.st_mtime_ns])
        text = json.dumps([camera, round(start, 6), round(end, 6), files])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @staticmethod
    def _cached(root: Path, key: str) -> dict[str, Any] | None:
        mp4, meta = root / f"{key}.mp4", root / f"{key}.json"
        try:
            data: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
            if not mp4.is_file():
                return None
            # Last use, on the description only: the MP4's time makes its ETag and
            # Last-Modified, which must not change under a browser's If-Range requests.
            now = time.time()
            os.utime(meta, (now, now))
        except (OSError, ValueError):
            return None
        data["file"] = mp4
        return data

    def _cut(self, root: Path, key: str, camera: str, start: float, end: float,
             paths: list[Path], used: dict[str, float]
             ) -> tuple[dict[str, Any] | None, list[str]]:
        """Cut, describe, then prune (``used``: last uses known in memory); returns the
        description and the keys pruned."""
        root.mkdir(parents=True, exist_ok=True)
        mp4 = root / f"{key}.mp4"
        began = time.perf_counter()
        cut = self.cutter(paths, start, end, mp4)
        if cut is None:
            return None, []
        self.cuts += 1
        meta: dict[str, Any] = {
            "key": key, "camera": camera, "window": [round(start, 6), round(end, 6)],
            "start": cut.start, "end": cut.end, "duration_s": cut.duration_s,
            "frame_s": cut.frame_s, "size": cut.size, "codec": cut.codec,
            "width": cut.width, "height": cut.height,
            "pieces": [list(p) for p in cut.pieces], "note": cut.note}
        tmp = root / f"{key}.json.part"
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        tmp.replace(root / f"{key}.json")
        log.info("replay: %s %.0f s window cut in %.0f ms (%d bytes, %d runs)%s", camera,
                 end - start, (time.perf_counter() - began) * 1000, cut.size,
                 len(cut.pieces), f"; {cut.note}" if cut.note else "")
        gone = self._prune(root, keep=key, used=used)
        meta["file"] = mp4
        return meta, gone

    def _prune(self, root: Path, keep: str, used: dict[str, float]) -> list[str]:
        """Remove entries unused for ``max_age_s``, then the least recently used ones
        while the cache holds more than ``max_bytes`` (never ``keep``); returns their keys."""
        gone: list[str] = []
        now = time.time()
        entries = []
        for mp4 in root.glob("*.mp4"):
            try:
                st = mp4.stat()
            except OSError:
                continue
            try:  # last use: the description's time (the MP4's while it is being written)
                last = mp4.with_suffix(".json").stat().st_mtime
            except OSError:
                last = st.st_mtime
            entries.append((max(last, used.get(mp4.stem, 0.0)), st.st_size, mp4))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for last, size, mp4 in entries:
            if mp4.stem == keep:
                continue
            if total <= self.max_bytes and now - last <= self.max_age_s:
                continue
            gone.append(mp4.stem)
            for p in (mp4, mp4.with_suffix(".json")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
                except OSError as err:
                    log.error("replay: cannot remove %s from the cache: %s", p.name, err)
            total -= size
        for part in root.glob("*.part"):  # a cut interrupted by a crash
            try:
                if now - part.stat().st_mtime > 3600:
                    part.unlink()
            except OSError:
                pass
        return gone


# --- helpers -------------------------------------------------------------------------------


def _cache(request: Request) -> ReplayCache:
    cache: ReplayCache = request.app.state.replay
    return cache


def _recordings(state: HubState) -> RecordingService:
    svc = next((s for s in state.services if isinstance(s, RecordingService)), None)
    if svc is None:
        raise HTTPException(503, "recording is not running on this hub")
    return svc


def _unix(d: datetime) -> float:
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def _window(from_: datetime, to: datetime) -> tuple[float, float]:
    start, end = _unix(from_), _unix(to)
    if end <= start:
        raise HTTPException(422, "the window is empty: 'to' must be after 'from'")
    if end - start > MAX_WINDOW_S:
        raise HTTPException(422, f"the window is {end - start:.0f} s long; at most "
                                 f"{MAX_WINDOW_S:.0f} s ({MAX_WINDOW_S / 60:.0f} min) at once")
    return start, end


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


async def _cut(state: HubState, cache: ReplayCache, camera: str, start: float, end: float,
               version: str | None = None) -> dict[str, Any] | None:
    svc = _recordings(state)
    if version is not None:  # a cut the browser already reads: serve the same bytes
        meta = await cache.version(svc.data_dir, camera, start, end, version)
        if meta is not None:
            return meta
    recs = await svc.index.query(camera=camera, since=start - GOP_MARGIN_S, until=end)
    paths = [svc.data_dir / r.path for r in recs if r.state != "damaged"]
    if not paths:
        return None
    return await cache.get(svc.data_dir, camera, start, end, paths)


From = Annotated[datetime, Query(alias="from", description="Window start, ISO 8601.")]
To = Annotated[datetime, Query(description="Window end, ISO 8601 (at most 30 min later).")]


# --- endpoints -------------------------------------------------------------------------------


@router.get("/api/replay/{camera}/window", response_model=WindowOut, tags=["replay"],
            responses={422: {"description": "empty or reversed window, or over 30 min"}})
async def replay_window(state: St, user: Me, request: Request, camera: str, from_: From,
                        to: To) -> WindowOut:
    """Cut the camera's recorded window (cached) and describe it: where its first frame
    is on the wall clock, the media-to-wall map, and the signed URL of the MP4."""
    may_view_recordings(user)
    start, end = _window(from_, to)
    cache = _cache(request)
    meta = await _cut(state, cache, camera, start, end)
    out = WindowOut(camera=camera, window_from=datetime.fromtimestamp(start, UTC),
                    window_to=datetime.fromtimestamp(end, UTC), recorded=meta is not None)
    if meta is None:
        return out
    exp = int(time.time()) + URL_TTL_S
    sig = cache.sign(state, user.username, camera, start, end, exp)
    query = urlencode({"from": _iso(start), "to": _iso(end), "v": meta["key"], "u":
                       user.username, "exp": exp, "sig": sig})
    return out.model_copy(update={
        "start": datetime.fromtimestamp(meta["start"], UTC),
        "end": datetime.fromtimestamp(meta["end"], UTC), "duration_s": meta["duration_s"],
        "frame_s": meta["frame_s"], "size": meta["size"], "codec": meta["codec"],
        "width": meta["width"], "height": meta["height"],
        "pieces": [tuple(p) for p in meta["pieces"]],
        "url": f"/api/replay/{quote(camera, safe='')}?{query}"})


async def _viewer(state: St, request: Request, camera: str, from_: From, to: To,
                  token: Annotated[str | None, Depends(bearer)],
                  u: Annotated[str | None, Query(description="Signed URL: the user.")] = None,
                  exp: Annotated[int | None, Query(description="Signed URL: expiry.")] = None,
                  sig: Annotated[str | None, Query(description="Signed URL: HMAC.")] = None,
                  ) -> User:
    """The user (one who may view recordings): from the bearer token, or from a URL
    signed by ``/window``."""
    if token:
        try:
            user = state.accounts.verify(token)
        except AuthError as err:
            raise HTTPException(401, str(err), headers={"WWW-Authenticate": "Bearer"}) from err
        may_view_recordings(user)
        return user
    if u and exp is not None and sig:
        start, end = _window(from_, to)
        found = state.accounts.user(u)
        if found is not None and _cache(request).check(state, sig, u, camera, start, end, exp):
            may_view_recordings(found)  # the account's role now, not when it was signed
            return found
        raise HTTPException(401, "the replay link is invalid or has expired")
    raise HTTPException(401, "not authenticated: send a bearer token",
                        headers={"WWW-Authenticate": "Bearer"})


class CappedFileResponse(FileResponse):
    """A file answered as Starlette does, except that a single range ``bytes=a-`` or
    ``bytes=a-b`` longer than ``max_range`` bytes is narrowed to ``max_range`` bytes from
    ``a`` before Starlette reads it (RFC 9110 lets a server send less than asked, the
    ``Content-Range`` of the 206 saying what it is)."""

    chunk_size = 256 * 1024  # a thread hop per chunk: fewer, larger reads

    def __init__(self, *args: Any, max_range: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_range = max_range

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = []
        for name, value in scope.get("headers", []):
            if name == b"range":
                value = self._narrow(value)
            headers.append((name, value))
        await super().__call__({**scope, "headers": headers}, receive, send)

    def _narrow(self, value: bytes) -> bytes:
        m = _SINGLE_RANGE.fullmatch(value.decode("latin-1").strip())
        if m is None:
            return value  # a suffix, several ranges or a malformed one: Starlette decides
        first = int(m[1])
        last = int(m[2]) if m[2] else None
        if last is not None and last - first + 1 <= self.max_range:
            return value
        return f"bytes={first}-{first + self.max_range - 1}".encode()


def range_cap(size: int, duration_s: float) -> int:
    """The longest 206 for a video of ``size`` bytes lasting ``duration_s``."""
    rate = size / duration_s if duration_s > 0 else RANGE_MAX_BYTES
    return int(min(RANGE_MAX_BYTES, max(RANGE_MIN_BYTES, rate * RANGE_S)))


@router.get("/api/replay/{camera}", tags=["replay"], response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "a range"},
                       404: {"description": "nothing recorded in the window"},
                       416: {"description": "range not satisfiable"},
                       422: {"description": "empty or reversed window, or over 30 min"}})
async def replay_video(state: St, request: Request, camera: str, from_: From, to: To,
                       viewer: Annotated[User, Depends(_viewer)],
                       v: Annotated[str | None, Query(
                           description="The cut to serve (the key from /window).")] = None,
                       ) -> FileResponse:
    """The window as one plain MP4 (``moov`` first), cut from the recordings by stream
    copy; Range requests are answered with 206."""
    start, end = _window(from_, to)
    meta = await _cut(state, _cache(request), camera, start, end, v)
    if meta is None:
        raise HTTPException(404, f"nothing of {camera!r} is recorded in that window")
    return CappedFileResponse(
        meta["file"], max_range=range_cap(meta["size"], meta["duration_s"]),
        media_type="video/mp4", filename=f"{camera}-{int(start)}.mp4",
        content_disposition_type="inline",
        headers={"X-Replay-Start": f"{meta['start']:.6f}",
                 "X-Replay-Duration": f"{meta['duration_s']:.6f}",
                 # a versioned cut never changes; the latest cut of a window may
                 "Cache-Control": "private, max-age=3600" if v == meta["key"]
                 else "no-cache"})


def make_replay_mount(cutter: WindowCutter, *, max_bytes: int = CACHE_MAX_BYTES,
                      max_age_s: float = CACHE_MAX_AGE_S) -> Callable[[FastAPI], None]:
    """A ``routers`` entry of ``create_app``: the replay endpoints, cutting with
    ``cutter`` (``ingest.replay.cut_window``)."""

    def mount(app: FastAPI) -> None:
        app.state.replay = ReplayCache(cutter, max_bytes=max_bytes, max_age_s=max_age_s)
        app.include_router(router)

    return mount
