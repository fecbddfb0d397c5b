"""The whole process: the demo raises a real incident; kill -9 loses nothing acknowledged."""

from __future__ import annotations

import subprocess
import sys

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
