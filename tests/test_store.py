"""The store: atomic writes, conditional updates, and a timeline whose edits are detected."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.models import Incident
from hub.store import Conflict, NotFound, Store


def incident(iid: str = "inc_1") -> Incident:
    now = datetime.now(UTC)
    return Incident(id=iid, type="person_down", state="new", severity="orange",
                    created_at=now, updated_at=now, started_at=now, last_seen_at=now)


def entry(action: str, actor: str = "operator") -> dict[str, object]:
    return {"at": datetime.now(UTC), "actor": actor, "action": action, "from_state": "new",
            "to_state": "new", "detail": {"note": "中文 ok"}}


async def test_insert_update_and_timeline(tmp_path: Path) -> None:
    """Incidents round-trip; timeline entries are numbered and chained."""
    store = Store(tmp_path / "s.sqlite3")
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


async def test_conditional_update_refuses_stale_state(tmp_path: Path) -> None:
    """An update expecting a state the incident has left fails and writes nothing."""
    store = Store(tmp_path / "s.sqlite3")
    await store.open()
    inc = incident()
    await store.insert(inc, event_id=None, entry=entry("created"))
    with pytest.raises(Conflict):
        await store.update(inc.model_copy(update={"state": "accepted"}), entry=entry("accept"),
                           expect_state="dispatched")
    assert (await store.get("inc_1")).state == "new"
    assert len(await store.timeline("inc_1")) == 1
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


async def test_documents_survive_reopen(tmp_path: Path) -> None:
    """Documents are stored by scope and key, replaced in place, and survive a reopen."""
    store = Store(tmp_path / "s.db")
    await store.open()
    await store.put_doc("layouts", "operator", {"tiles": 4, "sources": ["a", "b"]})
    await store.put_doc("layouts", "operator", {"tiles": 9, "sources": ["c"]})
    await store.put_doc("layouts", "dispatcher", {"tiles": 1, "sources": []})
    await store.put_doc("cameras", "operator", {"unrelated": True})
    assert await store.delete_doc("layouts", "dispatcher") is True
    assert await store.delete_doc("layouts", "nobody") is False
    await store.close()
    store = Store(tmp_path / "s.db")
    await store.open()
    assert await store.get_doc("layouts", "operator") == {"tiles": 9, "sources": ["c"]}
    assert await store.get_doc("layouts", "dispatcher") is None
    assert await store.list_docs("layouts") == {"operator": {"tiles": 9, "sources": ["c"]}}
    await store.close()
