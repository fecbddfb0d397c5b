"""Recordings on the hub's side: the index, start-up repair, retention, evidence locks and
incident clips.

The recorders themselves (ingest) write the segment files and tell this service about
each one through the :class:`SegmentSink` methods, on their own threads; the service
hands that over to the event loop and keeps the index in the store (``recordings``):
a row when a segment opens (``recording``), completed when it closes. What a crash leaves
(rows still ``recording``, files without a row) is repaired at start before anything
records: cut back to the last complete fragment (``repaired``), or marked ``damaged``
when nothing in it is usable; such files are kept, never deleted silently.

Evidence locks (``evidence_locks``) keep a camera's *time window* for an incident: every
segment of that camera overlapping the window, written before or after the lock, is kept
by retention until a reviewer releases the incident's locks (``evidence_unlock``, an
incident action with its reason in the timeline). A detector incident locks
``[min(clip_start, t) - preroll_s, max(clip_end, t) + postroll_s]`` (``t`` its start).

Retention (every ``RETENTION_EVERY_S``): segments that ended more than ``retain_days``
ago, then, while the recordings take more than ``quota_gb``, the oldest; never a locked
one or one being written. Each deletion removes the row (only if still unlocked, in the
same statement) and then the file.

Clips: once ``t + postroll_s`` has passed and the recorder has written that far, the
frames of ``[t - preroll_s, t + postroll_s]`` are copied (no re-encode; from the keyframe
at or before the start) into ``<data>/clips/<incident id>.mp4``, indexed in ``clips`` and
attached to the incident (``clip_url``, served by ``GET /api/incidents/{id}/clip``).

This module imports nothing of ``ingest``: the recorders, the repair and the clip cutter
are handed in by the composition root (``hub/cli.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hub import schema as t
from hub.bus import BusError, IncidentEvent
from hub.bus.messages import RecordingStatus
from hub.config import RecordingConfig
from hub.models import Incident
from hub.settings import node_id
from hub.store import Conflict, NotFound, Store

if TYPE_CHECKING:
    from hub.app import HubState

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 60.0
CLIP_WAIT_S = 15.0  # after the post-roll, how long a clip waits for the recorder to catch up
CATCH_UP_S = 24 * 3600.0  # incidents this recent get their locks and clips after a restart
GOP_MARGIN_S = 30.0  # segments this far before a window may hold its first keyframe


def iso(ts: float) -> str:
    """A Unix time as the store's ISO 8601 UTC text (fixed width: sorts as text)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --- what the ingest side hands in (structural types) ------------------------------------


class SegmentLike(Protocol):
    @property
    def camera(self) -> str: ...
    @property
    def rel(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def size(self) -> int: ...
    @property
    def codec(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def state(self) -> str: ...


class StatusLike(Protocol):
    @property
    def camera(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def since(self) -> float: ...
    @property
    def segment(self) -> str | None: ...
    @property
    def segments(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def queue_drops(self) -> int: ...


class Recorders(Protocol):
    """The recorders (``ingest.recorder.RecorderPool``)."""

    sink: Any

    def sync(self) -> None: ...
    def stop_all(self, timeout: float = 5.0) -> None: ...
    def statuses(self) -> Sequence[StatusLike]: ...


class RepairLike(Protocol):
    @property
    def state(self) -> str: ...  # complete, repaired, damaged
    @property
    def size(self) -> int: ...
    @property
    def start(self) -> float | None: ...
    @property
    def end(self) -> float | None: ...
    @property
    def codec(self) -> str | None: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def cut_bytes(self) -> int: ...
    @property
    def reason(self) -> str | None: ...


class ClipLike(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def size(self) -> int: ...


Repairer = Callable[[Path], RepairLike]
Cutter = Callable[[list[Path], float, float, Path], ClipLike]


# --- the index -----------------------------------------------------------------------------


def _unlocked(r: Any = t.recordings.c) -> Any:
    """SQL: no active evidence lock overlaps the recording ``r``."""
    lk = t.evidence_locks.c
    return ~sa.exists().where(lk.camera == r.camera, lk.released_at.is_(None),
                              lk.start_at <= r.end_at, lk.end_at >= r.start_at)


@dataclass(frozen=True)
class Recording:
    id: int
    camera: str
    start: datetime
    end: datetime
    path: str
    size: int
    codec: str | None
    width: int | None
    height: int | None
    state: str
    note: str | None
    locked_by: list[str]


class RecordingsIndex:
    """The ``recordings``, ``evidence_locks`` and ``clips`` tables."""

    def __init__(self, store: Store, node: str | None = None) -> None:
        """``node``: this hub's data folder (hub.settings.node_id). With several hubs on
        one store each sees only the rows of its own files (and rows from before the
        column existed); None sees every row (tools, tests)."""
        self.store = store
        self.node = node

    def _mine(self, r: Any = t.recordings.c) -> Any:
        if self.node is None:
            return sa.true()
        return sa.or_(r.node == self.node, r.node.is_(None))

    async def add(self, camera: str, rel: str, start: float, *, end: float | None = None,
                  size: int = 0, codec: str | None = None, width: int | None = None,
                  height: int | None = None, state: str = "recording",
                  note: str | None = None) -> None:
        values = {"camera": camera, "start_at": iso(start), "end_at": iso(end or start),
                  "path": rel, "size": size, "codec": codec, "width": width,
                  "height": height, "state": state, "note": note, "node": self.node}
        await self.store.tx(lambda c: c.execute(sa.insert(t.recordings).values(**values)))

    async def finish(self, rel: str, *, end: float | None, size: int, state: str,
                     note: str | None = None, start: float | None = None) -> None:
        r = t.recordings.c
        values: dict[str, Any] = {"size": size, "state": state, "note": note}
        if end is not None:
            values["end_at"] = iso(end)
        if start is not None:
            values["start_at"] = iso(start)
        await self.store.tx(lambda c: c.execute(
            sa.update(t.recordings).where(r.path == rel, self._mine()).values(**values)))

    async def forget(self, rel: str) -> None:
        r = t.recordings.c
        await self.store.tx(lambda c: c.execute(
            sa.delete(t.recordings).where(r.path == rel, self._mine())))

    async def paths(self) -> set[str]:
        r = t.recordings.c
        rows = await self.store.read(lambda c: c.execute(
            sa.select(r.path).where(self._mine())).all())
        return {row[0] for row in rows}

    async def unfinished(self) -> list[Recording]:
        return await self.query(state="recording")

    async def query(self, *, camera: str | None = None, since: float | None = None,
                    until: float | None = None, state: str | None = None,
                    ids: Sequence[int] | None = None) -> list[Recording]:
        """Recordings overlapping ``[since, until]``, oldest first, with their locks."""
        r, lk = t.recordings.c, t.evidence_locks.c
        stmt = sa.select(t.recordings).where(self._mine())
        if camera is not None:
            stmt = stmt.where(r.camera == camera)
        if since is not None:  # a segment being written has no end yet: keep it
            stmt = stmt.where(sa.or_(r.end_at >= iso(since), r.state == "recording"))
        if until is not None:
            stmt = stmt.where(r.start_at <= iso(until))
        if state is not None:
            stmt = stmt.where(r.state == state)
        if ids is not None:
            stmt = stmt.where(r.id.in_(list(ids)))
        stmt = stmt.order_by(r.start_at, r.id)

        def run(c: Connection) -> list[Recording]:
            rows = c.execute(stmt).mappings().all()
            if not rows:
                return []
            cams = sorted({row["camera"] for row in rows})
            locks = c.execute(sa.select(lk.incident_id, lk.camera, lk.start_at, lk.end_at)
                              .where(lk.camera.in_(cams), lk.released_at.is_(None))).all()
            return [Recording(
                id=row["id"], camera=row["camera"],
                start=datetime.fromisoformat(row["start_at"]),
                end=datetime.fromisoformat(row["end_at"]), path=row["path"],
                size=row["size"], codec=row["codec"], width=row["width"],
                height=row["height"], state=row["state"], note=row["note"],
                locked_by=sorted({i for i, cam, s, e in locks if cam == row["camera"]
                                  and s <= row["end_at"] and e >= row["start_at"]}))
                for row in rows]

        return await self.store.read(run)

    async def total_size(self) -> int:
        r = t.recordings.c
        n = await self.store.read(lambda c: c.execute(
            sa.select(sa.func.coalesce(sa.func.sum(r.size), 0)).where(self._mine())).scalar())
        return int(n or 0)

    async def deletable(self, *, ended_before: float | None = None, limit: int = 500
                        ) -> list[tuple[int, str, int]]:
        """(id, path, size) of unlocked, finished recordings, oldest first."""
        r = t.recordings.c
        stmt = sa.select(r.id, r.path, r.size).where(r.state != "recording", _unlocked(),
                                                     self._mine())
        if ended_before is not None:
            stmt = stmt.where(r.end_at < iso(ended_before))
        stmt = stmt.order_by(r.start_at, r.id).limit(limit)
        rows = await self.store.read(lambda c: c.execute(stmt).all())
        return [(int(i), str(p), int(s)) for i, p, s in rows]

    async def delete_if_unlocked(self, rec_id: int) -> bool:
        """Delete the row unless a lock covers it now (checked in the same statement)."""
        r = t.recordings.c
        n = await self.store.tx(lambda c: c.execute(sa.delete(t.recordings).where(
            r.id == rec_id, r.state != "recording", _unlocked(), self._mine())).rowcount)
        return bool(n)

    # --- evidence locks --------------------------------------------------------------

    async def lock(self, incident_id: str, camera: str, start: float, end: float) -> bool:
        """Lock ``camera``'s ``[start, end]`` for the incident (once per incident)."""
        lk = t.evidence_locks.c

        def run(c: Connection) -> bool:
            if c.execute(sa.select(lk.id).where(lk.incident_id == incident_id)).first():
                return False
            c.execute(sa.insert(t.evidence_locks).values(
                incident_id=incident_id, camera=camera, start_at=iso(start),
                end_at=iso(end), created_at=iso(time.time())))
            return True

        return await self.store.tx(run)

    async def locks(self, incident_id: str) -> list[dict[str, Any]]:
        lk = t.evidence_locks.c
        rows = await self.store.read(lambda c: c.execute(
            sa.select(lk.id, lk.camera, lk.start_at, lk.end_at, lk.created_at, lk.released_at,
                      lk.released_by, lk.release_reason)
            .where(lk.incident_id == incident_id).order_by(lk.id)).mappings().all())
        return [dict(r) for r in rows]

    # --- clips ---------------------------------------------------------------------

    async def save_clip(self, incident_id: str, camera: str, rel: str, start: float,
                        end: float, size: int) -> None:
        values = {"incident_id": incident_id, "camera": camera, "path": rel,
                  "start_at": iso(start), "end_at": iso(end), "size": size,
                  "created_at": iso(time.time())}
        await self.store.tx(lambda c: self.store._upsert(c, t.clips, values,
                                                         keys=("incident_id",)))

    async def clip(self, incident_id: str) -> dict[str, Any] | None:
        cl = t.clips.c
        row = await self.store.read(lambda c: c.execute(
            sa.select(t.clips).where(cl.incident_id == incident_id)).mappings().first())
        return dict(row) if row else None


# --- the service -------------------------------------------------------------------------


class RecordingService:
    """Index, repair, retention, locks and clips; the recorders' sink."""

    def __init__(self, state: HubState, recorders: Recorders | None, *, repair: Repairer,
                 cut_clip: Cutter, retention_every_s: float = RETENTION_EVERY_S,
                 sync_every_s: float = 1.0) -> None:
        self.state = state
        self.config: RecordingConfig = state.site.rules.recording
        self.data_dir = state.settings.data_dir
        self.index = RecordingsIndex(state.store, node_id(self.data_dir))
        self.recorders = recorders if self.config.enabled else None
        self.repair_file = repair
        self.cut_file = cut_clip
        self.retention_every_s = retention_every_s
        self.sync_every_s = sync_every_s
        self.live: dict[str, SegmentLike] = {}  # camera -> segment being written (progress)
        self.status: dict[str, StatusLike] = {}  # camera -> the recorder's latest status
        self.clips_made = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._clip_tasks: dict[str, asyncio.Task[None]] = {}
        self._retention_lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.repair_all()
        spawn = self._loop.create_task
        self._tasks.append(spawn(self._apply_events(), name="recordings-index"))
        self._tasks.append(spawn(self._retention_loop(), name="recordings-retention"))
        self._tasks.append(spawn(self._follow_incidents(), name="recordings-incidents"))
        self._tasks.append(spawn(self._forward_status(), name="recordings-alerts"))
        if self.recorders is not None:
            self.recorders.sink = self
            self._tasks.append(spawn(self._follow_sources(), name="recordings-sources"))
        self._hook_evidence()
        await self._catch_up()
        log.info("recordings: started (%s)", "recording" if self.recorders else
                 "recording disabled")

    async def stop(self) -> None:
        for task in self._tasks[:]:
            if task.get_name() in ("recordings-sources", "recordings-retention",
                                   "recordings-incidents"):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._clip_tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.recorders is not None:  # the current fragments land, segments complete
            await asyncio.to_thread(self.recorders.stop_all)
        await asyncio.sleep(0)  # let the writers' last call_soon_threadsafe land
        self._events.put_nowait(("stop", None))  # the index task ends after what is queued
        indexer = next(k for k in self._tasks if k.get_name() == "recordings-index")
        try:
            async with asyncio.timeout(10):
                await indexer
        except TimeoutError:
            log.error("recordings: the index was not brought up to date before stopping")
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _hook_evidence(self) -> None:
        """Evidence bundles (hub.evidence) include the incident's clip."""
        from hub.evidence import find_evidence

        svc = find_evidence(self.state)
        if svc is None:
            return
        clips = self.data_dir / "clips"
        before = svc.clip_files

        def clip_files(inc: Incident) -> list[Path]:
            path = clips / f"{inc.id}.mp4"
            return [path] if path.is_file() else before(inc)

        svc.clip_files = clip_files

    @classmethod
    def from_parts(cls, recorders: Recorders | None, repair: Repairer, cut_clip: Cutter
                   ) -> Callable[[HubState], RecordingService]:
        return lambda state: cls(state, recorders, repair=repair, cut_clip=cut_clip)

    def report(self) -> dict[str, dict[str, object]]:
        """The ``recording`` component of ``GET /api/health``."""
        paused = sorted(c for c, s in self.status.items() if s.state == "paused")
        return {"recording": {
            "status": "degraded" if paused else "ok",
            "enabled": self.recorders is not None,
            "recording": sorted(c for c, s in self.status.items() if s.state == "recording"),
            "paused": paused,
        }}

    # --- the sink (recorder threads) ----------------------------------------------

    def _post(self, kind: str, item: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the start-up repair
            loop.call_soon_threadsafe(self._events.put_nowait, (kind, item))

    def segment_opened(self, seg: SegmentLike) -> None:
        self.live[seg.camera] = seg
        self._post("opened", seg)

    def segment_progress(self, seg: SegmentLike) -> None:
        self.live[seg.camera] = seg

    def segment_closed(self, seg: SegmentLike) -> None:
        if self.live.get(seg.camera) is not None and self.live[seg.camera].rel == seg.rel:
            del self.live[seg.camera]
        self._post("closed", seg)

    def status_changed(self, status: StatusLike) -> None:
        before = self.status.get(status.camera)
        self.status[status.camera] = status
        self._post("status", (before.state if before else None, status))

    # --- index upkeep (event loop) -------------------------------------------------

    async def _apply_events(self) -> None:
        while True:
            kind, item = await self._events.get()
            if kind == "stop":
                return
            try:
                await self._apply(kind, item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recordings: could not index %s %r", kind, item)

    async def _apply(self, kind: str, item: Any) -> None:
        if kind == "opened":
            s: SegmentLike = item
            await self.index.add(s.camera, s.rel, s.start, codec=s.codec, width=s.width,
                                 height=s.height)
        elif kind == "closed":
            s = item
            if s.state == "empty":
                await self.index.forget(s.rel)
            else:
                await self.index.finish(s.rel, end=s.end, size=s.size, state="complete")
        elif kind == "status":
            before, st = item
            what = {"paused": "recording.paused", "unsupported": "recording.unsupported"}.get(
                st.state)
            if what is None and before == "paused" and st.state == "recording":
                what = "recording.resumed"
            if what is not None:
                if what == "recording.paused":
                    log.warning("recordings: %s paused: %s", st.camera, st.reason)
                try:
                    await self.state.bus.broadcast(RecordingStatus(
                        kind=what, camera_id=st.camera, reason=st.reason,
                        at=datetime.fromtimestamp(st.since, UTC)))
                except BusError as err:
                    log.error("recordings: %s alert not sent: %s", st.camera, err)

    async def _forward_status(self) -> None:
        """Recording alerts (of every hub) to the consoles."""
        async with self.state.bus.listen(RecordingStatus) as events:
            async for ev in events:
                self.state.clients.send(ev.kind, ev.model_dump(mode="json"),
                                        lambda u: u.role not in ("department", "patrol"))

    async def _follow_sources(self) -> None:
        assert self.recorders is not None
        while True:
            try:
                await asyncio.to_thread(self.recorders.sync)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recordings: following the sources failed")
            await asyncio.sleep(self.sync_every_s)

    # --- start-up repair --------------------------------------------------------

    async def repair_all(self) -> list[tuple[str, str]]:
        """Repair what a crash left: rows still ``recording`` and files without a row.
        Returns (path, new state) of each."""
        done: list[tuple[str, str]] = []
        for rec in await self.index.unfinished():
            if not (self.data_dir / rec.path).exists():
                continue  # not in this data folder: another hub's (one shared PostgreSQL)
            r = await asyncio.to_thread(self.repair_file, self.data_dir / rec.path)
            state = "damaged" if r.state == "damaged" else "repaired"
            note = r.reason or (f"cut {r.cut_bytes} bytes after the last complete fragment"
                                if r.cut_bytes else "not closed; every fragment complete")
            await self.index.finish(rec.path, end=r.end, size=r.size, state=state, note=note)
            log.warning("recordings: %s was cut short: %s (%s)", rec.path, state, note)
            done.append((rec.path, state))
        known = await self.index.paths()
        root = self.data_dir / "recordings"
        files = await asyncio.to_thread(
            lambda: sorted(root.glob("*/*/*.mp4")) if root.is_dir() else [])
        for f in files:
            rel = f.relative_to(self.data_dir).as_posix()
            if rel in known:
                continue
            r = await asyncio.to_thread(self.repair_file, f)
            state = "damaged" if r.state == "damaged" else "repaired"
            start = r.start if r.start is not None else f.stat().st_mtime
            await self.index.add(f.parent.parent.name, rel, start, end=r.end or start,
                                 size=r.size, codec=r.codec, width=r.width, height=r.height,
                                 state=state, note=f"found without an index row; "
                                 f"{r.reason or 'readable'}")
            log.warning("recordings: %s had no index row: %s", rel, state)
            done.append((rel, state))
        return done

    # --- retention ----------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.retention()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recordings: retention failed")
            await asyncio.sleep(self.retention_every_s)

    async def retention(self, now: float | None = None) -> list[str]:
        """Delete by age, then by quota, oldest first, never a locked or unfinished
        segment. Returns the paths deleted."""
        async with self._retention_lock:
            now = time.time() if now is None else now
            cfg = self.config
            deleted: list[str] = []
            cutoff = now - cfg.retain_days * 86400
            for rec_id, rel, _size in await self.index.deletable(ended_before=cutoff):
                if await self._delete(rec_id, rel):
                    deleted.append(rel)
            if cfg.quota_gb is not None:
                quota = int(cfg.quota_gb * 1e9)
                total = await self.index.total_size()
                while total > quota:
                    batch = await self.index.deletable(limit=100)
                    if not batch:
                        log.warning("recordings: %.2f GB over the quota, all of it locked or "
                                    "being written", (total - quota) / 1e9)
                        break
                    for rec_id, rel, size in batch:
                        if total <= quota:
                            break
                        if await self._delete(rec_id, rel):
                            deleted.append(rel)
                            total -= size
            if deleted:
                log.info("recordings: retention deleted %d segment(s)", len(deleted))
            return deleted

    async def _delete(self, rec_id: int, rel: str) -> bool:
        if not await self.index.delete_if_unlocked(rec_id):
            return False
        path = self.data_dir / rel
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.error("recordings: %s removed from the index but not from disk: %s", rel, err)
        return True

    # --- incidents: locks and clips ----------------------------------------------------

    def windows(self, inc: Incident) -> tuple[tuple[float, float], tuple[float, float]]:
        """(lock window, clip window) of an incident, Unix times."""
        cfg = self.config
        t0 = inc.started_at.timestamp()
        lo = min(inc.clip_start.timestamp() if inc.clip_start else t0, t0)
        hi = max(inc.clip_end.timestamp() if inc.clip_end else t0, t0)
        return ((lo - cfg.preroll_s, hi + cfg.postroll_s),
                (t0 - cfg.preroll_s, t0 + cfg.postroll_s))

    async def on_incident(self, inc: Incident) -> None:
        """Lock the incident's recordings and schedule its clip."""
        if inc.camera_id is None or inc.source != "detector":
            return
        (ls, le), _ = self.windows(inc)
        if await self.index.lock(inc.id, inc.camera_id, ls, le):
            log.info("recordings: %s %s..%s locked for incident %s", inc.camera_id,
                     iso(ls), iso(le), inc.id)
        if inc.clip_url is None and inc.id not in self._clip_tasks and self._loop:
            task = self._loop.create_task(self._clip_when_ready(inc), name=f"clip-{inc.id}")
            self._clip_tasks[inc.id] = task
            task.add_done_callback(partial(self._clip_done, inc.id))

    def _clip_done(self, incident_id: str, _task: asyncio.Task[None]) -> None:
        self._clip_tasks.pop(incident_id, None)

    async def _follow_incidents(self) -> None:
        async with self.state.bus.listen(IncidentEvent) as events:
            async for ev in events:
                if ev.kind != "incident.created":
                    continue
                try:
                    await self.on_incident(Incident.model_validate(ev.incident))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("recordings: incident %s: lock/clip failed",
                                  ev.incident.get("id"))

    async def _catch_up(self) -> None:
        """Locks and clips of recent incidents created while this hub was down."""
        since = datetime.now(UTC) - timedelta(seconds=CATCH_UP_S)
        for inc in await self.state.store.query(
                since=since, where=[t.incidents.c.source == "detector"], limit=1000):
            if await self.index.clip(inc.id) is None or not await self.index.locks(inc.id):
                await self.on_incident(inc)

    async def _clip_when_ready(self, inc: Incident) -> None:
        assert inc.camera_id is not None
        _, (start, end) = self.windows(inc)
        delay = end - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        deadline = time.monotonic() + CLIP_WAIT_S
        while time.monotonic() < deadline:  # the recorder flushes a fragment every ~2 s
            seg = self.live.get(inc.camera_id)
            if seg is None or seg.end >= end:
                break
            await asyncio.sleep(0.25)
        try:
            await self.make_clip(inc, start, end)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("recordings: no clip for incident %s: %s", inc.id, err)

    async def make_clip(self, inc: Incident, start: float, end: float) -> Path:
        """Cut the clip of ``[start, end]`` from the camera's segments and attach it."""
        assert inc.camera_id is not None
        recs = await self.index.query(camera=inc.camera_id, since=start - GOP_MARGIN_S,
                                      until=end)
        paths = [self.data_dir / r.path for r in recs if r.state != "damaged"]
        rel = f"clips/{inc.id}.mp4"
        out = self.data_dir / rel
        began = time.perf_counter()
        clip = await asyncio.to_thread(self.cut_file, paths, start, end, out)
        log.info("recordings: clip of incident %s: %.1f s, %d bytes, cut in %.0f ms", inc.id,
                 clip.duration_s, clip.size, (time.perf_counter() - began) * 1000)
        await self.index.save_clip(inc.id, inc.camera_id, rel, clip.start, clip.end, clip.size)
        digest = await asyncio.to_thread(_sha256_file, out)
        await self._attach(inc.id, f"/api/incidents/{inc.id}/clip", {
            "camera": inc.camera_id, "file": rel, "sha256": digest, "bytes": clip.size,
            "start": iso(clip.start), "end": iso(clip.end),
            "duration_s": round(clip.duration_s, 3)})
        self.clips_made += 1
        return out

    async def _attach(self, incident_id: str, url: str, detail: dict[str, Any]) -> None:
        """Name the clip on the incident, with a timeline entry (by ``system:recorder``)
        holding its SHA-256, size and window: the hash chain then vouches for the clip as
        it was cut, and an evidence bundle's clip can be checked against it."""
        store = self.state.store
        for _ in range(5):
            try:
                inc = await store.get(incident_id)
            except NotFound:
                return
            if inc.clip_url == url:
                return
            now = datetime.now(UTC)
            new = inc.model_copy(update={"clip_url": url, "version": inc.version + 1,
                                         "updated_at": now})
            entry = {"at": now, "actor": "system:recorder", "action": "clip",
                     "from_state": inc.state, "to_state": inc.state, "detail": detail}
            try:
                await store.update(new, entry=entry, expect_version=inc.version)
            except Conflict:
                continue
            try:
                await self.state.bus.broadcast(IncidentEvent(
                    kind="incident.updated", incident=new.model_dump(mode="json"),
                    action="clip"))
            except BusError as err:
                log.error("incident %s: clip broadcast failed: %s", incident_id, err)
            return
        log.error("incident %s: clip not attached (kept changing)", incident_id)

    # --- status ------------------------------------------------------------------

    async def status_report(self) -> dict[str, Any]:
        """For ``GET /api/recordings/status``."""
        disk: dict[str, Any]
        try:
            usage = await asyncio.to_thread(shutil.disk_usage, self.data_dir)
            disk = {"free_bytes": usage.free, "total_bytes": usage.total}
        except OSError as err:
            disk = {"error": os.strerror(err.errno) if err.errno else str(err)}
        counters = {s.camera: s for s in (self.recorders.statuses() if self.recorders else [])}
        cams = []
        for cam in sorted(set(self.status) | set(counters)):
            st = counters.get(cam) or self.status[cam]
            last = self.status.get(cam, st)
            seg = self.live.get(cam)
            cams.append({
                "camera": cam, "state": last.state, "reason": last.reason,
                "since": datetime.fromtimestamp(last.since, UTC),
                "segment": seg.rel if seg else None,
                "recorded_until": datetime.fromtimestamp(seg.end, UTC) if seg else None,
                "segments": st.segments, "bytes": st.bytes, "dropped": st.dropped,
                "queue_drops": st.queue_drops,
            })
        return {"enabled": self.recorders is not None, "cameras": cams,
                "disk": disk, "recordings_bytes": await self.index.total_size(),
                "quota_bytes": int(self.config.quota_gb * 1e9) if self.config.quota_gb
                else None, "min_free_bytes": int(self.config.min_free_gb * 1e9)}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
