"""The store, on SQLite and on the real PostgreSQL: atomic writes, conditional updates,
migrations, and a timeline whose edits are detected."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.models import Incident
from hub.store import Conflict, NotFound, Store, StoreError


def incident(iid: str = "inc_1") -> Incident:
    now = datetime.now(UTC)
    return Incident(id=iid, type="person_down", state="new", severity="orange",
                    created_at=now, updated_at=now, started_at=now, last_seen_at=now)


def entry(action: str, actor: str = "operator") -> dict[str, object]:
    return {"at": datetime.now(UTC), "actor": actor, "action": action, "from_state": "new",
            "to_state": "new", "detail": {"note": "中文 ok"}}


async def test_insert_update_and_timeline(db_url: str) -> None:
    """Incidents round-trip; timeline entries are numbered and chained."""
    store = Store(db_url)
    await store.open()
    inc = incident()
    await store.insert(inc, event_id="ev", entry=entry("created", "detector:c"),
                       snapshot=(inc.created_at, b"\xff\xd8x"))
    await store.update(inc.model_copy(update={"state": "dispatched"}), entry=entry("dispatch"),
                       expect_state="new")
    assert (await store.get("inc_1")).state == "dispatched"
    assert (await store.by_event("ev")).id == "inc_1"  # type: ignore[union-attr]
    tl = await store.timeline("inc_1")
    assert [e.seq for e in tl] == [1, 2] and tl[1].detail["note"] == "中文 ok"
    assert await store.snapshot("inc_1") == b"\xff\xd8x"
    with pytest.raises(NotFound):
        await store.get("inc_2")
    await store.close()


async def test_conditional_update_refuses_stale_state(db_url: str) -> None:
    """An update expecting a state the incident has left fails and writes nothing."""
    store = Store(db_url)
    await store.open()
    inc = incident()
    await store.insert(inc, event_id=None, entry=entry("created"))
    with pytest.raises(Conflict):
        await store.update(inc.model_copy(update={"state": "accepted"}), entry=entry("accept"),
                           expect_state="dispatched")
    assert (await store.get("inc_1")).state == "new"
    assert len(await store.timeline("inc_1")) == 1
    # Optimistic locking: an update computed from an old version is refused.
    await store.update(inc.model_copy(update={"version": 2}), entry=entry("comment"),
                       expect_version=1)
    with pytest.raises(Conflict):
        await store.update(inc.model_copy(update={"version": 2, "state": "confirmed"}),
                           entry=entry("confirm"), expect_version=1)
    got = await store.get("inc_1")
    assert (got.version, got.state) == (2, "new")
    assert [e.action for e in await store.timeline("inc_1")] == ["created", "comment"]
    await store.close()


async def test_tampering_is_detected(tmp_path: Path) -> None:
    """Editing or deleting a stored timeline entry is found by verify-audit (exit 1)."""
    store = Store(tmp_path / "gridhub.sqlite3")
    await store.open()
    await store.insert(incident(), event_id=None, entry=entry("created"))
    for a in ("dispatch", "accept", "comment"):
        await store.update(incident(), entry=entry(a))
    assert store.verify_chain() == []
    await store.close()

    def audit() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hub", "verify-audit", "--data",
                               str(tmp_path)], capture_output=True, text=True, timeout=60)

    assert audit().returncode == 0
    db = sqlite3.connect(tmp_path / "gridhub.sqlite3")
    db.execute("UPDATE timeline SET actor='someone-else' WHERE seq=2")
    db.commit()
    res = audit()
    assert res.returncode == 1 and "inc_1 #2: entry was altered" in res.stderr
    db.execute("UPDATE timeline SET actor='operator' WHERE seq=2")
    db.execute("DELETE FROM timeline WHERE seq=3")
    db.commit()
    db.close()
    res = audit()
    assert res.returncode == 1 and "inc_1 #4: previous hash does not match" in res.stderr


async def test_documents_survive_reopen(db_url: str) -> None:
    """Documents are stored by scope and key, replaced in place, and survive a reopen."""
    store = Store(db_url)
    await store.open()
    await store.put_doc("layouts", "operator", {"tiles": 4, "sources": ["a", "b"]})
    await store.put_doc("layouts", "operator", {"tiles": 9, "sources": ["c"]})
    await store.put_doc("layouts", "dispatcher", {"tiles": 1, "sources": []})
    await store.put_doc("cameras", "operator", {"unrelated": True})
    assert await store.delete_doc("layouts", "dispatcher") is True
    assert await store.delete_doc("layouts", "nobody") is False
    await store.close()
    store = Store(db_url)
    await store.open()
    assert await store.get_doc("layouts", "operator") == {"tiles": 9, "sources": ["c"]}
    assert await store.get_doc("layouts", "dispatcher") is None
    assert await store.list_docs("layouts") == {"operator": {"tiles": 9, "sources": ["c"]}}
    await store.close()


async def test_postgres_timeline_tampering_is_detected(pg_url: str) -> None:
    """On PostgreSQL too, verify-audit (given the database URL) finds an edited entry."""
    import psycopg

    store = Store(pg_url)
    await store.open()
    await store.insert(incident(), event_id=None, entry=entry("created"))
    await store.update(incident(), entry=entry("dispatch"))
    await store.close()

    def audit() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hub", "verify-audit", "--database-url",
                               pg_url], capture_output=True, text=True, timeout=60)

    assert audit().returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE timeline SET detail = '{}' WHERE seq = 2")
    res = audit()
    assert res.returncode == 1 and "inc_1 #2: entry was altered" in res.stderr


# The schema GridHub 0.1 created itself (before Alembic), with a stored incident.
LEGACY = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE incidents (id TEXT PRIMARY KEY, event_id TEXT UNIQUE, type TEXT NOT NULL,
    state TEXT NOT NULL, severity TEXT NOT NULL, grid_id TEXT, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX incidents_created ON incidents (created_at);
CREATE TABLE timeline (incident_id TEXT NOT NULL REFERENCES incidents (id),
    seq INTEGER NOT NULL, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    from_state TEXT, to_state TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL, PRIMARY KEY (incident_id, seq));
CREATE TABLE snapshots (incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
    at TEXT NOT NULL, jpeg BLOB NOT NULL);
CREATE TABLE frames (incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
    at TEXT NOT NULL, jpeg BLOB NOT NULL, detections TEXT NOT NULL);
CREATE TABLE documents (scope TEXT NOT NULL, key TEXT NOT NULL, updated_at TEXT NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (scope, key));
"""


async def test_legacy_sqlite_store_is_migrated_in_place(tmp_path: Path) -> None:
    """A store made before migrations is adopted: its incident, timeline and documents stay,
    missing tables and columns are added, and the chain still verifies."""
    path = tmp_path / "gridhub.sqlite3"
    old = Store(tmp_path / "scratch.sqlite3")  # build the rows with today's hashing
    await old.open()
    inc = incident("inc_old")
    await old.insert(inc, event_id="ev-old", entry=entry("created", "detector:c"))
    rows = await old.read(lambda c: c.exec_driver_sql(
        "SELECT incident_id, seq, at, actor, action, from_state, to_state, detail, "
        "prev_hash, hash FROM timeline").all())
    await old.close()
    db = sqlite3.connect(path)
    db.executescript(LEGACY)
    db.execute("INSERT INTO incidents VALUES (?,?,?,?,?,?,?,?,?)",
               ("inc_old", "ev-old", "person_down", "new", "orange", None,
                inc.created_at.isoformat(), inc.updated_at.isoformat(),
                inc.model_dump_json(exclude={"version", "queue_grid"})))
    db.executemany("INSERT INTO timeline VALUES (?,?,?,?,?,?,?,?,?,?)", [tuple(r) for r in rows])
    db.execute("INSERT INTO documents VALUES ('layouts', 'op', '2026-01-01', '{\"a\": 1}')")
    db.commit()
    db.close()

    store = Store(path)
    await store.open()
    assert (await store.get("inc_old")).type == "person_down"
    assert await store.get_doc("layouts", "op") == {"a": 1}
    assert store.verify_chain() == []
    await store.insert(incident("inc_new"), event_id=None, entry=entry("created"))
    await store.update(incident("inc_new").model_copy(update={"version": 2}),
                       entry=entry("dispatch"), expect_version=1,
                       assign=[("civil-affairs", True)])
    cols = await store.read(lambda c: {r[1] for r in c.exec_driver_sql(
        "PRAGMA table_info(frames)").all()})
    assert "box" in cols
    await store.close()


async def test_migrated_schema_matches_the_code(db_url: str) -> None:
    """After the migrations, the database has exactly the tables and columns hub.schema
    declares (Alembic's autogenerate finds nothing to add or drop)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from hub.schema import metadata

    store = Store(db_url)
    await store.open()

    def diff(conn: object) -> list[object]:
        ctx = MigrationContext.configure(conn)  # type: ignore[arg-type]
        return [d for d in compare_metadata(ctx, metadata)
                if d[0] in ("add_table", "remove_table", "add_column", "remove_column")]

    assert await store.read(diff) == []
    await store.close()


async def test_store_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """A store migrated by a newer GridHub is refused with a clear error, not damaged."""
    path = tmp_path / "gridhub.sqlite3"
    store = Store(path)
    await store.open()
    await store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()
    store = Store(path)
    with pytest.raises(StoreError, match="newer than this GridHub"):
        await store.open()
    await store.close()


def test_migrate_command_creates_the_schema_and_refuses_a_bad_url(tmp_path: Path) -> None:
    """`gridhub migrate` brings a new data folder to the newest revision; an unreachable
    database is a clear error (exit 2), not a traceback."""
    ok = subprocess.run([sys.executable, "-m", "hub", "migrate", "--data", str(tmp_path)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "schema at revision 0005" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "hub", "migrate", "--database-url",
                          "postgresql://nobody@127.0.0.1:1/none"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot open the store" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_recordings_index_locks_and_clips(db_url: str) -> None:
    """The recordings index (migration 0003): rows by camera and time, evidence locks by
    time window (also over rows added later), deletion only while unlocked, clips."""
    import time

    from hub.recordings import RecordingsIndex

    store = Store(db_url)
    await store.open()
    idx = RecordingsIndex(store)
    inc = incident("inc_rec")
    await store.insert(inc, event_id=None, entry=entry("created"))
    t0 = time.time() - 3600
    for i in range(3):
        await idx.add("cam1", f"recordings/cam1/d/{i}.mp4", t0 + 60 * i, end=t0 + 60 * i + 60,
                      size=1000 * (i + 1), codec="h264", width=640, height=360,
                      state="complete")
    await idx.add("cam2", "recordings/cam2/d/0.mp4", t0, end=t0 + 60, size=5, state="complete")
    assert await idx.lock("inc_rec", "cam1", t0 + 70, t0 + 200)
    assert not await idx.lock("inc_rec", "cam1", t0, t0 + 1)  # once per incident
    await idx.add("cam1", "recordings/cam1/d/3.mp4", t0 + 180, state="recording")
    rows = await idx.query(camera="cam1", since=t0 + 30, until=t0 + 190)
    assert [r.path[-5:] for r in rows] == ["0.mp4", "1.mp4", "2.mp4", "3.mp4"]
    assert [r.locked_by for r in rows] == [[], ["inc_rec"], ["inc_rec"], ["inc_rec"]]
    assert await idx.total_size() == 6005
    assert [p for _, p, _ in await idx.deletable()] == [
        "recordings/cam1/d/0.mp4", "recordings/cam2/d/0.mp4"]
    locked = rows[1].id
    assert not await idx.delete_if_unlocked(locked)
    await idx.finish("recordings/cam1/d/3.mp4", end=t0 + 240, size=7, state="repaired",
                     note="cut")
    assert (await idx.query(ids=[rows[3].id]))[0].state == "repaired"
    await idx.save_clip("inc_rec", "cam1", "clips/inc_rec.mp4", t0 + 70, t0 + 110, 1234)
    assert (await idx.clip("inc_rec"))["size"] == 1234  # type: ignore[index]
    import sqlalchemy as sa

    from hub import schema as t
    await store.tx(lambda c: c.execute(sa.update(t.evidence_locks).values(
        released_at="2030-01-01T00:00:00+00:00", released_by="reviewer")))
    assert await idx.delete_if_unlocked(locked)
    assert (await idx.locks("inc_rec"))[0]["released_by"] == "reviewer"
    await store.close()


async def test_installation_id_is_made_once_and_shared_by_every_hub_on_the_store(
        db_url: str) -> None:
    """Two hubs opening one store at once get one installation id, kept across reopening."""
    a, b = Store(db_url), Store(db_url)
    await a.open()
    await b.open()
    ids = await asyncio.gather(a.installation(), b.installation(), a.installation())
    assert len({i["id"] for i in ids}) == 1 and ids[0]["id"].startswith("gh-")
    await a.close()
    await b.close()
    c = Store(db_url)
    await c.open()
    assert (await c.installation()) == ids[0]
    await c.close()


async def test_each_hub_sees_only_the_recordings_in_its_own_data_folder(db_url: str) -> None:
    """Several hubs on one store (migration 0004): repair, retention, quota and replay of
    one hub see its own rows and rows from before the column (no node), never another
    hub's, so a hub cannot mark another's segment damaged or delete its row."""
    import time

    import sqlalchemy as sa

    from hub import schema as t
    from hub.recordings import RecordingsIndex

    store = Store(db_url)
    await store.open()
    a, b, every = (RecordingsIndex(store, "node-a"), RecordingsIndex(store, "node-b"),
                   RecordingsIndex(store))
    t0 = time.time() - 3600
    await a.add("cam1", "recordings/cam1/a0.mp4", t0, end=t0 + 60, size=10, state="complete")
    await a.add("cam1", "recordings/cam1/a1.mp4", t0 + 60, state="recording")
    await b.add("cam2", "recordings/cam2/b0.mp4", t0, end=t0 + 60, size=100, state="complete")
    await b.add("cam2", "recordings/cam2/b1.mp4", t0 + 60, state="recording")
    await store.tx(lambda c: c.execute(sa.insert(t.recordings).values(  # before 0004
        camera="cam0", start_at=iso(t0 - 60), end_at=iso(t0), path="recordings/old.mp4",
        size=1000, state="complete")))
    assert await a.paths() == {"recordings/cam1/a0.mp4", "recordings/cam1/a1.mp4",
                               "recordings/old.mp4"}
    assert [r.path for r in await a.unfinished()] == ["recordings/cam1/a1.mp4"]
    assert [r.path for r in await b.unfinished()] == ["recordings/cam2/b1.mp4"]
    assert await a.total_size() == 1010 and await b.total_size() == 1100
    assert [p for _, p, _ in await a.deletable()] == ["recordings/old.mp4",
                                                      "recordings/cam1/a0.mp4"]
    assert [r.path for r in await a.query(camera="cam2")] == []  # b's files are not here
    b0 = (await b.query(camera="cam2"))[0]
    assert not await a.delete_if_unlocked(b0.id)
    await a.finish("recordings/cam2/b1.mp4", end=t0 + 99, size=1, state="damaged")
    await a.forget("recordings/cam2/b0.mp4")
    assert [(r.path, r.state) for r in await b.query(camera="cam2")] == [
        ("recordings/cam2/b0.mp4", "complete"), ("recordings/cam2/b1.mp4", "recording")]
    assert len(await every.query()) == 5
    assert await b.delete_if_unlocked(b0.id)
    await store.close()


def iso(ts: float) -> str:
    from hub.recordings import iso as rec_iso

    return rec_iso(ts)
