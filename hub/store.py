"""Durable store for incidents, their timelines and snapshots (SQLite, WAL, full sync).

Every write is one transaction committed to disk before the caller is answered, so an
acknowledged action survives ``kill -9``. All SQLite work runs on one dedicated thread
(one connection), never on the event loop.

Exceptions::

    StoreError
     +-- NotFound          no incident with that id
     +-- Conflict          the incident changed state under the caller (retry or 409)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from hub.models import Incident, TimelineEntry

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    event_id TEXT UNIQUE,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    grid_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_created ON incidents (created_at);
CREATE TABLE IF NOT EXISTS timeline (
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (incident_id, seq)
);
CREATE TABLE IF NOT EXISTS snapshots (
    incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
    at TEXT NOT NULL,
    jpeg BLOB NOT NULL
);
-- The frame behind the snapshot, without the overlay, and every detection in it.
CREATE TABLE IF NOT EXISTS frames (
    incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
    at TEXT NOT NULL,
    jpeg BLOB NOT NULL,
    detections TEXT NOT NULL,
    box TEXT
);
-- Labelled examples: the frame of an incident an operator confirmed or dismissed.
CREATE TABLE IF NOT EXISTS examples (
    incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
    type TEXT NOT NULL,
    camera_id TEXT,
    verdict TEXT NOT NULL,
    label TEXT NOT NULL,
    box TEXT,
    at TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    reason TEXT,
    jpeg BLOB NOT NULL,
    detections TEXT NOT NULL
);
-- Small JSON documents by (scope, key): runtime camera changes, per-user wall layouts.
CREATE TABLE IF NOT EXISTS documents (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
"""

GENESIS = "0" * 64
# The frame behind a snapshot: JPEG without overlay, its detections, the event's box in it.
Frame = tuple[bytes, list[dict[str, Any]], Any]


class StoreError(Exception):
    """The store could not do what was asked."""


class NotFound(StoreError):
    """No incident with that id."""


class Conflict(StoreError):
    """The incident is not in the state the caller expected."""


def entry_hash(prev_hash: str, incident_id: str, entry: dict[str, Any]) -> str:
    """Hash chaining one timeline entry to the one before it."""
    body = json.dumps(
        {"incident": incident_id, **entry}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class Store:
    """SQLite store; async methods run the work on the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None

    # --- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        cols = {r[1] for r in db.execute("PRAGMA table_info(frames)")}
        if "box" not in cols:  # stores made before the event's box was kept with its frame
            db.execute("ALTER TABLE frames ADD COLUMN box TEXT")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {row[0]} is newer than this GridHub "
                f"({SCHEMA_VERSION}); upgrade GridHub"
            )
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._ex.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    # --- documents -------------------------------------------------------------

    async def put_doc(self, scope: str, key: str, doc: Any) -> None:
        """Create or replace one JSON document (committed before returning)."""
        text = json.dumps(doc, ensure_ascii=False, sort_keys=True)

        def put() -> None:
            self.db.execute(
                "INSERT INTO documents VALUES (?, ?, datetime('now'), ?) ON CONFLICT (scope, key)"
                " DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
                (scope, key, text),
            )

        await self._run(put)

    async def get_doc(self, scope: str, key: str) -> Any | None:
        def get() -> Any | None:
            row = self.db.execute(
                "SELECT doc FROM documents WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
            return None if row is None else json.loads(row[0])

        return await self._run(get)

    async def list_docs(self, scope: str) -> dict[str, Any]:
        def ls() -> dict[str, Any]:
            rows = self.db.execute(
                "SELECT key, doc FROM documents WHERE scope = ? ORDER BY key", (scope,)
            ).fetchall()
            return {k: json.loads(d) for k, d in rows}

        return await self._run(ls)

    async def delete_doc(self, scope: str, key: str) -> bool:
        def rm() -> bool:
            cur = self.db.execute("DELETE FROM documents WHERE scope = ? AND key = ?", (scope, key))
            return cur.rowcount > 0

        return await self._run(rm)

    async def ping(self) -> bool:
        try:
            await self._run(lambda: self.db.execute("SELECT 1").fetchone())
        except (sqlite3.Error, StoreError):
            return False
        return True

    # --- writes ------------------------------------------------------------

    def _append(self, incident_id: str, entry: dict[str, Any]) -> TimelineEntry:
        row = self.db.execute(
            "SELECT seq, hash FROM timeline WHERE incident_id=? ORDER BY seq DESC LIMIT 1",
            (incident_id,),
        ).fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        at = entry["at"]
        entry = {**entry, "seq": seq, "at": at.isoformat() if isinstance(at, datetime) else at}
        h = entry_hash(prev, incident_id, entry)
        self.db.execute(
            "INSERT INTO timeline VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                incident_id,
                seq,
                entry["at"],
                entry["actor"],
                entry["action"],
                entry.get("from_state"),
                entry.get("to_state"),
                json.dumps(entry.get("detail", {}), ensure_ascii=False, default=str),
                prev,
                h,
            ),
        )
        return TimelineEntry.model_validate({**entry, "hash": h})

    def _write(
        self,
        inc: Incident,
        *,
        insert: bool,
        event_id: str | None,
        entry: dict[str, Any] | None,
        snapshot: tuple[datetime, bytes] | None,
        expect_state: str | None,
        frame: Frame | None = None,
        example: dict[str, Any] | None = None,
    ) -> TimelineEntry | None:
        db = self.db
        doc = inc.model_dump_json()
        db.execute("BEGIN IMMEDIATE")
        try:
            if insert:
                db.execute(
                    "INSERT INTO incidents VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        inc.id,
                        event_id,
                        inc.type,
                        inc.state,
                        inc.severity,
                        inc.grid_id,
                        inc.created_at.isoformat(),
                        inc.updated_at.isoformat(),
                        doc,
                    ),
                )
            else:
                sql = (
                    "UPDATE incidents SET state=?, severity=?, grid_id=?, updated_at=?, doc=? "
                    "WHERE id=?"
                )
                args: list[Any] = [
                    inc.state,
                    inc.severity,
                    inc.grid_id,
                    inc.updated_at.isoformat(),
                    doc,
                    inc.id,
                ]
                if expect_state is not None:
                    sql += " AND state=?"
                    args.append(expect_state)
                if db.execute(sql, args).rowcount != 1:
                    raise Conflict(f"incident {inc.id} changed while being updated")
            written = self._append(inc.id, entry) if entry is not None else None
            if snapshot is not None:
                db.execute(
                    "INSERT INTO snapshots VALUES (?,?,?) ON CONFLICT (incident_id) "
                    "DO UPDATE SET at=excluded.at, jpeg=excluded.jpeg",
                    (inc.id, snapshot[0].isoformat(), snapshot[1]),
                )
                if frame is not None:
                    db.execute(
                        "INSERT INTO frames (incident_id, at, jpeg, detections, box) "
                        "VALUES (?,?,?,?,?) ON CONFLICT (incident_id) DO UPDATE SET "
                        "at=excluded.at, jpeg=excluded.jpeg, detections=excluded.detections, "
                        "box=excluded.box",
                        (inc.id, snapshot[0].isoformat(), frame[0], json.dumps(frame[1]),
                         json.dumps(list(frame[2])) if frame[2] is not None else None),
                    )
            if example is not None:
                self._keep_example(inc, example)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return written

    def _keep_example(self, inc: Incident, ex: dict[str, Any]) -> None:
        """Copy the incident's frame, with the event's box in that frame, into the labelled
        examples (replacing an earlier verdict and frame). An incident without a frame (a
        manual report) leaves no example."""
        self.db.execute(
            "INSERT INTO examples SELECT f.incident_id, ?, ?, ?, ?, f.box, f.at, ?, ?, ?, "
            "f.jpeg, f.detections FROM frames f WHERE f.incident_id=? ON CONFLICT "
            "(incident_id) DO UPDATE SET verdict=excluded.verdict, label=excluded.label, "
            "box=excluded.box, at=excluded.at, jpeg=excluded.jpeg, "
            "detections=excluded.detections, decided_at=excluded.decided_at, "
            "decided_by=excluded.decided_by, reason=excluded.reason",
            (inc.type, inc.camera_id, ex["verdict"], ex["label"], ex["at"].isoformat(),
             ex["by"], ex.get("reason"), inc.id),
        )

    async def insert(
        self,
        inc: Incident,
        *,
        event_id: str | None,
        entry: dict[str, Any],
        snapshot: tuple[datetime, bytes] | None = None,
        frame: Frame | None = None,
    ) -> TimelineEntry | None:
        """Create an incident with its first timeline entry, atomically."""
        return await self._run(
            lambda: self._write(
                inc, insert=True, event_id=event_id, entry=entry, snapshot=snapshot,
                expect_state=None, frame=frame,
            )
        )

    async def update(
        self,
        inc: Incident,
        *,
        entry: dict[str, Any] | None = None,
        snapshot: tuple[datetime, bytes] | None = None,
        expect_state: str | None = None,
        frame: Frame | None = None,
        example: dict[str, Any] | None = None,
    ) -> TimelineEntry | None:
        """Replace an incident (only if still in ``expect_state``) and append to its timeline;
        with ``example`` (verdict, label, at, by, reason) keep its frame as a labelled
        example in the same transaction."""
        return await self._run(
            lambda: self._write(
                inc, insert=False, event_id=None, entry=entry, snapshot=snapshot,
                expect_state=expect_state, frame=frame, example=example,
            )
        )

    # --- reads ---------------------------------------------------------------

    async def get(self, incident_id: str) -> Incident:
        row = await self._run(
            lambda: self.db.execute(
                "SELECT doc FROM incidents WHERE id=?", (incident_id,)
            ).fetchone()
        )
        if row is None:
            raise NotFound(incident_id)
        return Incident.model_validate_json(row[0])

    async def by_event(self, event_id: str) -> Incident | None:
        row = await self._run(
            lambda: self.db.execute(
                "SELECT doc FROM incidents WHERE event_id=?", (event_id,)
            ).fetchone()
        )
        return None if row is None else Incident.model_validate_json(row[0])

    async def query(
        self,
        *,
        state: str | None = None,
        type: str | None = None,
        severity: str | None = None,
        since: datetime | None = None,
        limit: int = 200,
    ) -> list[Incident]:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("state", state), ("type", type), ("severity", severity)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if since is not None:
            where.append("created_at>=?")
            args.append(since.isoformat())
        sql = "SELECT doc FROM incidents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        rows = await self._run(lambda: self.db.execute(sql, args).fetchall())
        return [Incident.model_validate_json(r[0]) for r in rows]

    async def timeline(self, incident_id: str) -> list[TimelineEntry]:
        rows = await self._run(
            lambda: self.db.execute(
                "SELECT seq, at, actor, action, from_state, to_state, detail, hash "
                "FROM timeline WHERE incident_id=? ORDER BY seq",
                (incident_id,),
            ).fetchall()
        )
        return [
            TimelineEntry(
                seq=r[0], at=r[1], actor=r[2], action=r[3], from_state=r[4], to_state=r[5],
                detail=json.loads(r[6]), hash=r[7],
            )
            for r in rows
        ]

    async def snapshot(self, incident_id: str) -> bytes | None:
        row = await self._run(
            lambda: self.db.execute(
                "SELECT jpeg FROM snapshots WHERE incident_id=?", (incident_id,)
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def examples(self, type: str | None = None, with_jpeg: bool = False
                       ) -> list[dict[str, Any]]:
        """Labelled examples, oldest decision first."""
        cols = ("incident_id", "type", "camera_id", "verdict", "label", "box", "at",
                "decided_at", "decided_by", "reason", "detections") + (
                    ("jpeg",) if with_jpeg else ())
        sql = f"SELECT {', '.join(cols)} FROM examples"
        args: list[Any] = []
        if type is not None:
            sql += " WHERE type=?"
            args.append(type)
        sql += " ORDER BY decided_at, incident_id"
        rows = await self._run(lambda: self.db.execute(sql, args).fetchall())
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            d["box"] = json.loads(d["box"]) if d["box"] else None
            d["detections"] = json.loads(d["detections"])
            if with_jpeg:
                d["jpeg"] = bytes(d["jpeg"])
            out.append(d)
        return out

    async def example_jpeg(self, incident_id: str) -> bytes | None:
        row = await self._run(
            lambda: self.db.execute(
                "SELECT jpeg FROM examples WHERE incident_id=?", (incident_id,)
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    def verify_chain(self) -> list[str]:
        """Problems in the hash chain of every timeline (empty when intact). Sync; CLI use."""
        problems: list[str] = []
        cur = self.db.execute(
            "SELECT incident_id, seq, at, actor, action, from_state, to_state, detail, "
            "prev_hash, hash FROM timeline ORDER BY incident_id, seq"
        )
        last: dict[str, str] = {}
        for inc_id, seq, at, actor, action, fs, ts, detail, prev, h in cur:
            expect_prev = last.get(inc_id, GENESIS)
            entry = {
                "seq": seq, "at": at, "actor": actor, "action": action,
                "from_state": fs, "to_state": ts, "detail": json.loads(detail),
            }
            if prev != expect_prev:
                problems.append(f"{inc_id} #{seq}: previous hash does not match")
            if entry_hash(prev, inc_id, entry) != h:
                problems.append(f"{inc_id} #{seq}: entry was altered")
            last[inc_id] = h
        return problems
