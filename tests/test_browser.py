"""The console in a real browser (Debian chromium via Playwright): the operator dispatches,
the department user sees the incident arrive without reloading and accepts it, and the
operator's page shows it accepted."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium (never a downloaded browser). Playwright's launch() gives it a
    fresh temporary profile of its own, and each context is isolated from the others."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is not installed (make test installs it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def login(page: Any, url: str, user: str) -> None:
    page.goto(url)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "demo")
    page.click("#login-submit")
    page.wait_for_selector("#conn-status[data-state=live]", timeout=20_000)


def test_dispatch_and_accept_across_two_browsers(demo_process: HubProcess, browser: Any) -> None:
    """Operator dispatches in one browser context; the department, in another, sees it live
    and accepts; the operator sees the acceptance live. No page reloads."""
    errors: list[str] = []
    op_ctx = browser.new_context(locale="zh-CN")
    dep_ctx = browser.new_context(locale="zh-CN")
    op, dep = op_ctx.new_page(), dep_ctx.new_page()
    for page in (op, dep):
        page.on("pageerror", lambda exc: errors.append(str(exc)))

    login(op, demo_process.url, "operator")
    login(dep, demo_process.url, "civil-affairs")
    dep.evaluate("window.__sameDocument = true")

    inc = demo_process.wait_incident(demo_process.token("operator"))
    row = f"li.incident[data-id='{inc['id']}']"
    op.wait_for_selector(row, timeout=30_000)
    assert dep.query_selector(row) is None  # not dispatched to them yet

    op.click(row)
    op.wait_for_selector(f"#incident-detail[data-id='{inc['id']}']")
    # Confirm it first: the real detector's frame becomes a labelled example.
    op.wait_for_selector("#confirm-btn:not([disabled])")
    op.click("#confirm-btn")
    op.wait_for_selector(f"{row}[data-state=confirmed]", timeout=15_000)
    assert op.query_selector("#dismiss-btn") is None  # judged: no more confirm/dismiss
    ex = httpx.get(f"{demo_process.url}/api/examples", headers={
        "Authorization": f"Bearer {demo_process.token('reviewer')}"}).json()
    mine = [e for e in ex if e["incident_id"] == inc["id"]]
    assert len(mine) == 1 and mine[0]["verdict"] == "confirmed"
    assert mine[0]["detections"] and mine[0]["box"] is not None
    op.wait_for_selector("#dispatch-btn:not([disabled])")
    assert "民政局" in op.inner_text("#dispatch-btn")  # suggested department, Chinese label
    op.click("#dispatch-btn")
    op.wait_for_selector(f"{row}[data-state=dispatched]", timeout=15_000)

    dep.wait_for_selector(f"{row}[data-state=dispatched]", timeout=15_000)
    dep.click(row)
    dep.wait_for_selector("#accept-btn:not([disabled])")
    dep.click("#accept-btn")
    dep.wait_for_selector(f"{row}[data-state=accepted]", timeout=15_000)

    op.wait_for_selector(f"{row}[data-state=accepted]", timeout=15_000)
    op.wait_for_selector("#timeline li.timeline-entry[data-action=accept]", timeout=15_000)
    actions = op.eval_on_selector_all(
        "#timeline li.timeline-entry", "els => els.map(e => e.dataset.action)"
    )
    assert actions[0] == "created" and "confirm" in actions and "dispatch" in actions
    assert actions[-1] == "accept"
    assert "civil-affairs" in op.inner_text("#timeline") or "民政局" in op.inner_text("#timeline")
    assert dep.evaluate("window.__sameDocument") is True  # never reloaded

    op.click("#lang-toggle")
    assert op.evaluate("document.documentElement.lang") == "en"
    assert errors == []
    op_ctx.close()
    dep_ctx.close()
