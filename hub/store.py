"""Durable store: incidents, timelines, snapshots, assignments, photos, challenges and the
notification outbox, on SQLite (default: WAL, full sync) or PostgreSQL
(``GRIDHUB_DATABASE_URL=postgresql://...``), through SQLAlchemy Core.

Every write is one transaction committed before the caller is answered, so an
acknowledged action survives ``kill -9``. The schema is created and upgraded by the
Alembic migrations in ``hub/migrations`` when the store opens. All database work runs on
the store's own thread, never on the event loop.

Incidents use optimistic locking: every stored change bumps ``version``, and an update
names the version (and, for state changes, the state) it was computed from, so two hubs
on one PostgreSQL never overwrite each other's change silently.

Exceptions::

    StoreError
     +-- NotFound          no incident with that id
     +-- Conflict          the incident changed under the caller (retry or 409)
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from hub import schema as t
from hub.chain import GENESIS, entry_hash
from hub.models import Incident, TimelineEntry
from hub.states import OPEN

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")
# The frame behind a snapshot: JPEG without overlay, its detections, the event's box in it.
Frame = tuple[bytes, list[dict[str, Any]], Any]


class StoreError(Exception):
    """The store could not do what was asked."""


class NotFound(StoreError):
    """No incident with that id."""


class Conflict(StoreError):
    """The incident is not in the state (or version) the caller expected."""


def database_url(where: str | Path) -> str:
    """A SQLAlchemy URL: a path is a SQLite file; ``postgresql://`` URLs use psycopg 3."""
    if isinstance(where, Path) or "://" not in where:
        return f"sqlite:///{Path(where)}"
    if where.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + where.split("://", 1)[1]
    return where


def masked(url: str) -> str:
    """The URL with its password hidden (for logs and /api/health)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by the engine, not here
        return "<invalid database URL>"


def alembic_config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def _iso(v: datetime | None) -> str | None:
    """UTC ISO 8601, so that columns compare correctly as text."""
    return v.astimezone(UTC).isoformat() if v is not None else None


def _projection(inc: Incident, alarm: datetime | None = None, doc: str | None = None
                ) -> dict[str, Any]:
    """The incident's columns: its document plus the fields queries filter on."""
    pos = inc.position
    return {
        "alarm_at": _iso(alarm),
        "type": inc.type, "state": inc.state, "severity": inc.severity, "grid_id": inc.grid_id,
        "created_at": _iso(inc.created_at), "updated_at": _iso(inc.updated_at),
        "doc": doc if doc is not None else inc.model_dump_json(), "version": inc.version,
        "source": inc.source,
        "queue_grid": inc.queue_grid, "lat": pos[0] if pos else None,
        "lon": pos[1] if pos else None, "ack_due": _iso(inc.ack_due),
        "resolve_due": _iso(inc.resolve_due), "dispatched_at": _iso(inc.dispatched_at),
        "accepted_at": _iso(inc.accepted_at), "resolved_at": _iso(inc.resolved_at),
        "closed_at": _iso(inc.closed_at),
    }


# Statements of the hot write path, built once: executed with a parameter dict they skip
# SQLAlchemy's per-call statement construction and hit its compiled cache. (An UPDATE takes
# its SET columns from the parameter keys that name columns.)
_TL = t.timeline.c
_INC = t.incidents.c
_LAST_ENTRY = (sa.select(_TL.seq, _TL.hash).where(_TL.incident_id == sa.bindparam("iid"))
               .order_by(_TL.seq.desc()).limit(1))
_INSERT_ENTRY = sa.insert(t.timeline)
_INSERT_INCIDENT = sa.insert(t.incidents)
_UPDATE_INCIDENT = {
    (by_state, by_version): sa.update(t.incidents).where(*(
        [_INC.id == sa.bindparam("_id")]
        + ([_INC.state == sa.bindparam("_state")] if by_state else [])
        + ([_INC.version == sa.bindparam("_version")] if by_version else [])))
    for by_state in (False, True) for by_version in (False, True)
}
_GET_DOC = sa.select(_INC.doc).where(_INC.id == sa.bindparam("iid"))
# Open cases of a type inside a lat/lon box (merging reports), by the incidents_open_place
# index. No ORDER BY: with one, SQLite walks incidents_type_created instead (every case
# of the type ever recorded); the caller picks by distance.
_NEAR = sa.text(
    "SELECT doc FROM incidents WHERE type = :type AND state IN ("
    + ", ".join(f"'{s}'" for s in sorted(OPEN)) + ") AND lat BETWEEN :lat0 AND :lat1 "
    "AND lon BETWEEN :lon0 AND :lon1 LIMIT :n")
_UPSERTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], Any] = {}
DOC_CACHE = 4096  # incident documents kept in memory by a SQLite store
_COMPILED: dict[tuple[str, int, tuple[str, ...]], tuple[Any, tuple[str, ...] | None]] = {}


def _driver(conn: Connection) -> Any:
    """The driver's own connection (sqlite3 or psycopg) under a SQLAlchemy connection."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise StoreError("the store's connection is closed")
    return raw


def _execute(conn: Connection, stmt: Any, params: dict[str, Any]) -> Any:
    """Run one of the hot statements on the driver's own cursor, in ``conn``'s
    transaction; returns that cursor. Compiled once per dialect and parameter names.

    SQLAlchemy's execute costs about 100 us of Python per statement on top of the
    driver's own work (events, result set-up, parameter processing), five times a write.
    These statements touch only text, number and bytes columns, which both drivers take
    as they are, so nothing is lost by going straight to the driver."""
    key = (conn.dialect.name, id(stmt), tuple(params))
    found = _COMPILED.get(key)
    if found is None:
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(params))
        order = tuple(compiled.positiontup) if compiled.positional else None
        found = _COMPILED[key] = (compiled, order)
    compiled, order = found
    values = compiled.construct_params(params, _check=False)
    cur = _driver(conn).cursor()
    cur.execute(compiled.string, [values[k] for k in order] if order is not None else values)
    return cur


class Store:
    """The store; async methods run the work on the store's own thread."""

    def __init__(self, where: str | Path) -> None:
        self.url = database_url(where)
        self.path = Path(where) if self.url.startswith("sqlite:") else None
        self.where = str(self.path) if self.path else masked(self.url)
        # One writer thread (group commit: the writes that queue up while a commit is on
        # disk go together in the next transaction, each in its own savepoint) and two
        # reader threads (WAL lets them read while the writer writes).
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-w")
        self._rx = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-r")
        self._engine: Engine | None = None
        self._pending: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # When the deadline checker must next look at an incident (set by the incident
        # service; stored as the alarm_at column so it finds due cases by an index).
        self.alarm: Callable[[Incident], datetime | None] = lambda inc: None
        # Called inside the transaction of every incident write that adds a timeline entry
        # (the notification outbox rows go in with it), and after each commit.
        self.on_incident_write: Callable[[Connection, Incident, dict[str, Any]], None] | None \
            = None
        self.on_commit: Callable[[], None] | None = None
        # The documents of recently written or read incidents, as committed (SQLite only:
        # a SQLite store belongs to one hub process, so nothing else changes its rows; on
        # PostgreSQL other hubs write too and every read goes to the database). An
        # incident action reads its incident first; this saves that read a thread hop and
        # a query (about half a millisecond of CPU each on this project's machines).
        self._docs: OrderedDict[str, str] = OrderedDict()
        self.cached_docs = DOC_CACHE
        self.commits = 0  # transactions committed (each one disk sync)
        self.writes = 0  # writes committed (several per transaction under load)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)
        if self.path is None:
            self.cached_docs = 0

    def _remember(self, incident_id: str, doc: str | None) -> None:
        """Keep (or with None, forget) an incident's committed document."""
        if not self.cached_docs:
            return
        if doc is None:
            self._docs.pop(incident_id, None)
            return
        self._docs[incident_id] = doc
        self._docs.move_to_end(incident_id)
        while len(self._docs) > self.cached_docs:
            self._docs.popitem(last=False)

    def _open(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(self.url, poolclass=sa.pool.SingletonThreadPool)

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # transactions are ours (BEGIN below)
                cur = dbapi_conn.cursor()
                for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                               "busy_timeout=5000"):
                    cur.execute(f"PRAGMA {pragma}")
                cur.close()

            @sa.event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                # Writers take the write lock up front; a reader's statement is its own
                # snapshot (autocommit), which needs no BEGIN.
                if not conn.get_execution_options().get("gridhub_read", False):
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            engine = sa.create_engine(self.url, pool_size=4, pool_pre_ping=True)
        try:
            with engine.begin() as conn:
                self._migrate(conn)
        except SQLAlchemyError as err:
            engine.dispose()
            raise StoreError(f"{self.where}: cannot open the store: {err}") from err
        self._engine = engine

    def _migrate(self, conn: Connection) -> None:
        """Bring the schema to the newest migration; refuse a store newer than this code."""
        head = ScriptDirectory.from_config(alembic_config(conn)).get_current_head()
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current != head and not _known(conn, current):
            raise StoreError(f"{self.where}: schema revision {current} is newer than this "
                             f"GridHub (newest known: {head}); upgrade GridHub")
        if current != head:
            log.info("store %s: migrating schema %s -> %s", self.where, current or "new", head)
            command.upgrade(alembic_config(conn), "head")

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)  # queued writes land before closing
        if self._engine is not None:
            await self._run(self._engine.dispose)
            self._engine = None
        self._ex.shutdown(wait=True)
        self._rx.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StoreError("store is not open")
        return self._engine

    def _read(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return fn(conn.execution_options(gridhub_read=True))

    async def tx(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` atomically (in its own savepoint of a group commit) on the
        writer thread; returns once it is committed."""
        return await self._submit(fn)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` (reads only) on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._rx, self._read, fn)

    async def _submit(self, fn: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="store-flush")
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await loop.run_in_executor(
                    self._ex, self._commit_batch, [fn for fn, _ in batch])
            except Exception as err:  # the commit itself failed: nothing in it landed
                results = [(False, err)] * len(batch)
            for (_, fut), (ok, value) in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            if self.on_commit is not None:
                self.on_commit()

    @staticmethod
    def _undo(cur: Any) -> None:
        cur.execute("ROLLBACK TO SAVEPOINT gridhub_write")
        cur.execute("RELEASE SAVEPOINT gridhub_write")

    def _commit_batch(self, fns: list[Callable[[Connection], Any]]) -> list[tuple[bool, Any]]:
        """Run each write in its own savepoint of one transaction; one commit for all."""
        results: list[tuple[bool, Any]] = []
        with self.engine.begin() as conn:
            # Savepoints on the driver's cursor: SQLAlchemy's begin_nested compiles a
            # statement for each SAVEPOINT and RELEASE (a third of a write's CPU).
            cur = _driver(conn).cursor()
            integrity = (IntegrityError, getattr(conn.dialect.dbapi, "IntegrityError",
                                                 IntegrityError))
            for fn in fns:
                cur.execute("SAVEPOINT gridhub_write")
                try:
                    value = fn(conn)
                    cur.execute("RELEASE SAVEPOINT gridhub_write")
                    results.append((True, value))
                except integrity as err:
                    # a racing writer took the same key first
                    self._undo(cur)
                    results.append((False, Conflict(
                        f"concurrent change: {getattr(err, 'orig', err)}")))
                except Exception as err:  # this write fails alone; the others go on
                    self._undo(cur)
                    results.append((False, err))
        self.commits += 1
        self.writes += sum(1 for ok, _ in results if ok)
        return results

    # --- documents -------------------------------------------------------------

    async def put_doc(self, scope: str, key: str, doc: Any) -> None:
        """Create or replace one JSON document (committed before returning)."""
        text = json.dumps(doc, ensure_ascii=False, sort_keys=True)
        now = datetime.now().astimezone().isoformat()
        await self.tx(lambda c: self._upsert(
            c, t.documents, {"scope": scope, "key": key, "updated_at": now, "doc": text},
            keys=("scope", "key")))

    async def installation(self) -> dict[str, Any]:
        """This installation's identity, ``{"id", "created_at"}``: made by the first hub
        to open the store and shared by every hub on it (evidence manifests name it)."""
        found = await self.get_doc("installation", "id")
        if found is not None:
            return dict(found)
        made = {"id": f"gh-{uuid.uuid4()}",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        d = t.documents.c

        def run(c: Connection) -> None:  # the first hub wins; the others read its id
            if c.execute(sa.select(d.key).where(d.scope == "installation",
                                                d.key == "id")).first() is None:
                c.execute(sa.insert(t.documents).values(
                    scope="installation", key="id", updated_at=made["created_at"],
                    doc=json.dumps(made, sort_keys=True)))

        try:
            await self.tx(run)
        except Conflict:  # another hub inserted it between the check and the insert
            pass
        found = await self.get_doc("installation", "id")
        return dict(found) if found is not None else made

    async def get_doc(self, scope: str, key: str) -> Any | None:
        d = t.documents.c
        row = await self.read(lambda c: c.execute(
            sa.select(d.doc).where(d.scope == scope, d.key == key)).first())
        return None if row is None else json.loads(row[0])

    async def list_docs(self, scope: str) -> dict[str, Any]:
        d = t.documents.c
        rows = await self.read(lambda c: c.execute(
            sa.select(d.key, d.doc).where(d.scope == scope).order_by(d.key)).all())
        return {k: json.loads(v) for k, v in rows}

    async def delete_doc(self, scope: str, key: str) -> bool:
        d = t.documents.c
        n = await self.tx(lambda c: c.execute(
            sa.delete(t.documents).where(d.scope == scope, d.key == key)).rowcount)
        return bool(n)

    async def ping(self) -> bool:
        try:
            await self.read(lambda c: c.execute(sa.text("SELECT 1")).scalar())
        except (SQLAlchemyError, StoreError):
            return False
        return True

    def _upsert(self, conn: Connection, table: sa.Table, values: dict[str, Any],
                keys: Iterable[str]) -> None:
        """Insert a row, or update the columns other than ``keys`` if it exists."""
        keys = tuple(keys)
        cache_key = (conn.dialect.name, table.name, keys, tuple(sorted(values)))
        stmt = _UPSERTS.get(cache_key)
        if stmt is None:
            if conn.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
            ins = insert(table)
            stmt = _UPSERTS[cache_key] = ins.on_conflict_do_update(
                index_elements=list(keys),
                set_={k: ins.excluded[k] for k in cache_key[3] if k not in keys},
            )
        _execute(conn, stmt, values)

    # --- writes ------------------------------------------------------------

    def _append(self, conn: Connection, incident_id: str, entry: dict[str, Any]
                ) -> TimelineEntry:
        row = _execute(conn, _LAST_ENTRY, {"iid": incident_id}).fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        at = entry["at"]
        entry = {**entry, "seq": seq, "at": at.isoformat() if isinstance(at, datetime) else at}
        h = entry_hash(prev, incident_id, entry)
        _execute(conn, _INSERT_ENTRY, {
            "incident_id": incident_id, "seq": seq, "at": entry["at"], "actor": entry["actor"],
            "action": entry["action"], "from_state": entry.get("from_state"),
            "to_state": entry.get("to_state"),
            "detail": json.dumps(entry.get("detail", {}), ensure_ascii=False, default=str),
            "prev_hash": prev, "hash": h,
        })
        return TimelineEntry.model_validate({**entry, "hash": h})

    def _write(
        self,
        conn: Connection,
        inc: Incident,
        *,
        insert: bool,
        event_id: str | None,
        entry: dict[str, Any] | None,
        snapshot: tuple[datetime, bytes] | None,
        expect_state: str | None,
        expect_version: int | None = None,
        frame: Frame | None = None,
        example: dict[str, Any] | None = None,
        assign: Iterable[tuple[str, bool]] = (),
        doc: str | None = None,
    ) -> TimelineEntry | None:
        if insert:
            _execute(conn, _INSERT_INCIDENT, {"id": inc.id, "event_id": event_id,
                                            **_projection(inc, self.alarm(inc), doc)})
        else:
            params = {"_id": inc.id, **_projection(inc, self.alarm(inc), doc)}
            if expect_state is not None:
                params["_state"] = expect_state
            if expect_version is not None:
                params["_version"] = expect_version
            stmt = _UPDATE_INCIDENT[(expect_state is not None, expect_version is not None)]
            if _execute(conn, stmt, params).rowcount != 1:
                raise Conflict(f"incident {inc.id} changed while being updated")
        written = self._append(conn, inc.id, entry) if entry is not None else None
        if entry is not None and self.on_incident_write is not None:
            self.on_incident_write(conn, inc, entry)
        if snapshot is not None:
            self._upsert(conn, t.snapshots, {"incident_id": inc.id,
                                             "at": snapshot[0].isoformat(),
                                             "jpeg": snapshot[1]}, keys=("incident_id",))
            if frame is not None:
                self._upsert(conn, t.frames, {
                    "incident_id": inc.id, "at": snapshot[0].isoformat(), "jpeg": frame[0],
                    "detections": json.dumps(frame[1]),
                    "box": json.dumps(list(frame[2])) if frame[2] is not None else None,
                }, keys=("incident_id",))
        if example is not None:
            self._keep_example(conn, inc, example)
        for assignee, lead in assign:
            self._upsert(conn, t.assignments, {
                "incident_id": inc.id, "assignee": assignee, "lead": lead,
                "at": inc.updated_at.isoformat()}, keys=("incident_id", "assignee"))
        return written

    def _keep_example(self, conn: Connection, inc: Incident, ex: dict[str, Any]) -> None:
        """Copy the incident's frame, with the event's box in that frame, into the labelled
        examples (replacing an earlier verdict and frame). An incident without a frame (a
        manual report) leaves no example."""
        f = t.frames.c
        row = conn.execute(sa.select(f.box, f.at, f.jpeg, f.detections)
                           .where(f.incident_id == inc.id)).first()
        if row is None:
            return
        self._upsert(conn, t.examples, {
            "incident_id": inc.id, "type": inc.type, "camera_id": inc.camera_id,
            "verdict": ex["verdict"], "label": ex["label"], "box": row.box, "at": row.at,
            "decided_at": ex["at"].isoformat(), "decided_by": ex["by"],
            "reason": ex.get("reason"), "jpeg": row.jpeg, "detections": row.detections,
        }, keys=("incident_id",))

    async def insert(
        self,
        inc: Incident,
        *,
        event_id: str | None,
        entry: dict[str, Any],
        snapshot: tuple[datetime, bytes] | None = None,
        frame: Frame | None = None,
        photos: Iterable[dict[str, Any]] = (),
    ) -> TimelineEntry | None:
        """Create an incident with its first timeline entry (and photos), atomically."""
        doc = inc.model_dump_json()

        def run(conn: Connection) -> TimelineEntry | None:
            written = self._write(conn, inc, insert=True, event_id=event_id, entry=entry,
                                  snapshot=snapshot, expect_state=None, frame=frame, doc=doc)
            for p in photos:
                conn.execute(sa.insert(t.photos).values(incident_id=inc.id, **p))
            return written

        written = await self._submit(run)
        self._remember(inc.id, doc)
        return written

    async def update(
        self,
        inc: Incident,
        *,
        entry: dict[str, Any] | None = None,
        snapshot: tuple[datetime, bytes] | None = None,
        expect_state: str | None = None,
        expect_version: int | None = None,
        frame: Frame | None = None,
        example: dict[str, Any] | None = None,
        assign: Iterable[tuple[str, bool]] = (),
        also: Callable[[Connection], None] | None = None,
    ) -> TimelineEntry | None:
        """Replace an incident (only if still in ``expect_state`` / at ``expect_version``)
        and append to its timeline; with ``example`` (verdict, label, at, by, reason) keep
        its frame as a labelled example; ``assign`` adds (assignee, lead) rows; ``also``
        runs more writes in the same transaction."""
        assign = list(assign)
        doc = inc.model_dump_json()

        def run(conn: Connection) -> TimelineEntry | None:
            written = self._write(conn, inc, insert=False, event_id=None, entry=entry,
                                  snapshot=snapshot, expect_state=expect_state,
                                  expect_version=expect_version, frame=frame, example=example,
                                  assign=assign, doc=doc)
            if also is not None:
                also(conn)
            return written

        try:
            written = await self._submit(run)
        except BaseException:
            self._remember(inc.id, None)  # whatever is stored now, read it next time
            raise
        self._remember(inc.id, doc)
        return written

    # --- reads ---------------------------------------------------------------

    async def get(self, incident_id: str) -> Incident:
        doc = self._docs.get(incident_id)
        if doc is None:
            row = await self.read(lambda conn: conn.execute(
                _GET_DOC, {"iid": incident_id}).first())
            if row is None:
                raise NotFound(incident_id)
            doc = row[0]
            # A write that committed while this read was on its way is newer: keep that.
            if incident_id not in self._docs:
                self._remember(incident_id, doc)
        return Incident.model_validate_json(doc)

    async def near(self, type_: str, lat: tuple[float, float], lon: tuple[float, float],
                   limit: int = 200) -> list[Incident]:
        """Open incidents of ``type_`` whose position is inside the box (any order)."""
        params = {"type": type_, "lat0": lat[0], "lat1": lat[1], "lon0": lon[0],
                  "lon1": lon[1], "n": limit}
        rows = await self.read(lambda conn: _execute(conn, _NEAR, params).fetchall())
        return [Incident.model_validate_json(r[0]) for r in rows]

    async def by_event(self, event_id: str) -> Incident | None:
        c = t.incidents.c
        row = await self.read(lambda conn: conn.execute(
            sa.select(c.doc).where(c.event_id == event_id)).first())
        return None if row is None else Incident.model_validate_json(row[0])

    async def query(
        self,
        *,
        state: str | Iterable[str] | None = None,
        type: str | None = None,
        severity: str | None = None,
        since: datetime | None = None,
        where: Iterable[Any] = (),
        limit: int | None = 200,
        oldest_first: bool = False,
    ) -> list[Incident]:
        c = t.incidents.c
        stmt = sa.select(c.doc)
        if isinstance(state, str):
            stmt = stmt.where(c.state == state)
        elif state is not None:
            stmt = stmt.where(c.state.in_(list(state)))
        if type is not None:
            stmt = stmt.where(c.type == type)
        if severity is not None:
            stmt = stmt.where(c.severity == severity)
        if since is not None:
            stmt = stmt.where(c.created_at >= _iso(since))
        for cond in where:
            stmt = stmt.where(cond)
        stmt = stmt.order_by(c.created_at.asc() if oldest_first else c.created_at.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = await self.read(lambda conn: conn.execute(stmt).all())
        return [Incident.model_validate_json(r[0]) for r in rows]

    async def timeline(self, incident_id: str) -> list[TimelineEntry]:
        tl = t.timeline.c
        rows = await self.read(lambda conn: conn.execute(
            sa.select(tl.seq, tl.at, tl.actor, tl.action, tl.from_state, tl.to_state,
                      tl.detail, tl.hash).where(tl.incident_id == incident_id)
            .order_by(tl.seq)).all())
        return [
            TimelineEntry(
                seq=r[0], at=r[1], actor=r[2], action=r[3], from_state=r[4], to_state=r[5],
                detail=json.loads(r[6]), hash=r[7],
            )
            for r in rows
        ]

    async def snapshot(self, incident_id: str) -> bytes | None:
        s = t.snapshots.c
        row = await self.read(lambda conn: conn.execute(
            sa.select(s.jpeg).where(s.incident_id == incident_id)).first())
        return None if row is None else bytes(row[0])

    async def photo(self, incident_id: str, photo_id: str) -> tuple[str, bytes] | None:
        p = t.photos.c
        row = await self.read(lambda conn: conn.execute(
            sa.select(p.content_type, p.data).where(p.incident_id == incident_id,
                                                    p.id == photo_id)).first())
        return None if row is None else (row[0], bytes(row[1]))

    async def examples(self, type: str | None = None, with_jpeg: bool = False
                       ) -> list[dict[str, Any]]:
        """Labelled examples, oldest decision first."""
        e = t.examples.c
        cols = [e.incident_id, e.type, e.camera_id, e.verdict, e.label, e.box, e.at,
                e.decided_at, e.decided_by, e.reason, e.detections] + (
                    [e.jpeg] if with_jpeg else [])
        stmt = sa.select(*cols)
        if type is not None:
            stmt = stmt.where(e.type == type)
        stmt = stmt.order_by(e.decided_at, e.incident_id)
        rows = await self.read(lambda conn: conn.execute(stmt).mappings().all())
        out = []
        for r in rows:
            d = dict(r)
            d["box"] = json.loads(d["box"]) if d["box"] else None
            d["detections"] = json.loads(d["detections"])
            if with_jpeg:
                d["jpeg"] = bytes(d["jpeg"])
            out.append(d)
        return out

    async def example_jpeg(self, incident_id: str) -> bytes | None:
        e = t.examples.c
        row = await self.read(lambda conn: conn.execute(
            sa.select(e.jpeg).where(e.incident_id == incident_id)).first())
        return None if row is None else bytes(row[0])

    def verify_chain(self) -> list[str]:
        """Problems in the hash chain of every timeline (empty when intact). Sync; CLI use."""
        problems: list[str] = []
        tl = t.timeline.c
        last: dict[str, str] = {}
        with self.engine.connect() as conn:
            conn = conn.execution_options(gridhub_read=True)
            rows = conn.execute(sa.select(
                tl.incident_id, tl.seq, tl.at, tl.actor, tl.action, tl.from_state, tl.to_state,
                tl.detail, tl.prev_hash, tl.hash).order_by(tl.incident_id, tl.seq))
            for inc_id, seq, at, actor, action, fs, ts, detail, prev, h in rows:
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


def _known(conn: Connection, revision: str) -> bool:
    """Whether this code has the migration ``revision`` (an older store, not a newer one)."""
    try:
        return ScriptDirectory.from_config(alembic_config(conn)).get_revision(
            revision) is not None
    except Exception:  # alembic raises its own errors for an unknown revision
        return False
