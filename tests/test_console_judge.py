"""Confirm and dismiss in the console, in a real browser: the label the operator picks for
a false alarm is the one kept with the example (the hub runs on the real Redis, so the
test can feed it detector candidates)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.bus import IncidentCandidate, make_bus
from tests.conftest import REDIS_URL
from tests.test_api import jpeg
from tests.test_map_browser import ThreadHub, browser  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.redis]


@pytest.fixture
def redis_hub(demo_config: Path, tmp_path: Path, redis_prefix: str) -> Iterator[ThreadHub]:
    hub = ThreadHub(demo_config, tmp_path / "data", redis_url=REDIS_URL, prefix=redis_prefix)
    hub.start()
    yield hub
    hub.stop()


def publish(prefix: str, event_id: str) -> None:
    async def go() -> None:
        bus = make_bus(REDIS_URL, prefix=prefix)
        await bus.start()
        now = datetime.now(UTC)
        await bus.publish(IncidentCandidate(
            event_id=event_id, phase="start", type="person_down", camera_id="cam-jingba-01",
            at=now, started_at=now, confidence=0.6, boxes=[(10, 20, 60, 40)],
            frame_size=(128, 72), track_id=3, snapshot_jpeg=jpeg(), frame_jpeg=jpeg(),
            detections=[{"box": [10, 20, 60, 40], "class": "Fall", "meaning": "person_down",
                         "confidence": 0.6}]))
        await bus.close()

    # Playwright's sync API keeps an event loop in this thread: publish from another one.
    t = threading.Thread(target=asyncio.run, args=(go(),))
    t.start()
    t.join(30)


def test_dismiss_keeps_the_chosen_label(redis_hub: ThreadHub, redis_prefix: str,
                                        browser: Any) -> None:  # noqa: F811
    errors: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(redis_hub.url)
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", "demo")
    page.click("#login-submit")
    page.wait_for_selector("#conn-status[data-state=live]", timeout=20_000)

    publish(redis_prefix, "judge-1")
    row = "li.incident[data-state=new]"
    page.wait_for_selector(row, timeout=20_000)
    iid = page.get_attribute(row, "data-id")
    page.click(row)
    page.wait_for_selector(f"#incident-detail[data-id='{iid}']")
    page.wait_for_selector("#dismiss-btn:not([disabled])")
    page.select_option("#dismiss-label", "person_ok")
    publish(redis_prefix, "judge-1")  # a redelivered candidate re-renders the panel meanwhile
    page.fill("#action-note", "a man resting on the bench")
    page.click("#dismiss-btn")
    page.wait_for_selector(f"li.incident[data-id='{iid}'][data-state=dismissed]",
                           timeout=15_000)

    tok = redis_hub.token("reviewer")
    ex = httpx.get(f"{redis_hub.url}/api/examples",
                   headers={"Authorization": f"Bearer {tok}"}).json()
    assert [(e["incident_id"], e["verdict"], e["label"], e["reason"]) for e in ex] == [
        (iid, "rejected", "person_ok", "a man resting on the bench")]
    assert errors == []
