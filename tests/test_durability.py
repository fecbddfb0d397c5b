"""The whole process: the demo raises a real incident; kill -9 loses nothing acknowledged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import HubProcess

pytestmark = pytest.mark.slow


def test_demo_detects_and_dispatch_survives_sigkill(demo_process: HubProcess) -> None:
    """The real detector raises an incident from the demo scene; a dispatch acknowledged
    just before SIGKILL is still there, with its timeline, after a restart."""
    op = demo_process.token("operator")
    h = {"Authorization": f"Bearer {op}"}
    inc = demo_process.wait_incident(op)
    assert inc["type"] == "person_down" and inc["camera_id"] == "cam-jingba-01"

    r = httpx.post(f"{demo_process.url}/api/incidents/{inc['id']}/dispatch", headers=h,
                   json={"department": "civil-affairs", "note": "check on the person"})
    assert r.status_code == 200, r.text
    demo_process.kill()

    demo_process.start()
    op = demo_process.token("operator")  # same signing key: data folder
    detail = httpx.get(f"{demo_process.url}/api/incidents/{inc['id']}",
                       headers={"Authorization": f"Bearer {op}"}).json()
    assert detail["state"] == "dispatched"
    assert detail["departments"] == ["civil-affairs"]
    actions = [(e["action"], e["actor"]) for e in detail["timeline"]]
    assert actions[0] == ("created", "detector:cam-jingba-01")
    assert ("dispatch", "operator") in actions
    snap = httpx.get(f"{demo_process.url}{detail['snapshot_url']}",
                     headers={"Authorization": f"Bearer {op}"})
    assert snap.status_code == 200 and snap.content[:2] == b"\xff\xd8"

    demo_process.stop()
    audit = subprocess.run(
        [sys.executable, "-m", "hub", "verify-audit", "--data", str(demo_process.data)],
        capture_output=True, text=True, timeout=60,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_sigkill_during_a_workflow_load_loses_no_acknowledged_action(
        demo_config: Path, tmp_path: Path) -> None:
    """Eight clients create, dispatch, accept and resolve cases as fast as they can; the
    hub is killed with SIGKILL in the middle. After a restart every action that had been
    answered 2xx is in its case's timeline, and the audit chain is intact."""
    import asyncio
    import threading

    from bench.workflow_load import run_load

    (demo_config / "cameras.yaml").write_text("cameras: []\n")
    hub = HubProcess(demo_config, tmp_path / "data", tmp_path / "gridhub.log",
                     extra=("--no-worker",))
    hub.start()
    killer = threading.Timer(3.0, hub.kill)
    killer.start()
    try:
        res = asyncio.run(run_load(hub.url, seconds=6, workers=8, consoles=4,
                                   department_consoles=1))
    finally:
        killer.join()
    assert len(res.acked) >= 20, f"too little load before the kill: {len(res.acked)}"
    assert res.errors, "the kill should have cut requests off"

    hub.start()
    tok = hub.token("admin")
    h = {"Authorization": f"Bearer {tok}"}
    want: dict[str, set[str]] = {}
    for iid, action, _, _ in res.acked:
        want.setdefault(iid, set()).add("created" if action == "create" else action)
    with httpx.Client(base_url=hub.url, headers=h, timeout=30) as c:
        for iid, actions in want.items():
            r = c.get(f"/api/incidents/{iid}")
            assert r.status_code == 200, f"acknowledged case {iid} is gone"
            have = {e["action"] for e in r.json()["timeline"]}
            assert actions <= have, f"{iid}: acknowledged {actions - have} lost"
    hub.stop()
    audit = subprocess.run(
        [sys.executable, "-m", "hub", "verify-audit", "--data", str(hub.data)],
        capture_output=True, text=True, timeout=60,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
