"""One case from detection to closure in four real browsers (Debian chromium via
Playwright): an operator, a dispatcher, a department (civil-affairs) and a patrol unit
(patrol-01), each in its own browser context, each seeing every step arrive live over the
WebSocket, without reloading. The hub runs on the real Redis so the test can put a
detector candidate on its bus, as the detection worker does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.test_api import jpeg
from tests.test_browser import CHROMIUM_ARGS
from tests.test_console_judge import publish, redis_hub  # noqa: F401  (fixture)
from tests.test_map_browser import ThreadHub

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.slow]

WAIT = 20_000  # ms, for anything that crosses the hub


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Debian's chromium (never a downloaded browser); launch() gives it a fresh temporary
    profile, and each context made from it is isolated from the others."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is not installed (make test installs it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser: Any, errors: list[str], who: str) -> Any:
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{who}: {exc}"))
    return page


def console_login(page: Any, url: str, user: str) -> None:
    page.goto(url)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "demo")
    page.click("#login-submit")
    page.wait_for_selector("#conn-status[data-state=live]", timeout=WAIT)
    page.evaluate("window.__sameDocument = true")


def patrol_login(page: Any, url: str, user: str) -> None:
    page.goto(f"{url}/patrol")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "demo")
    page.click("#login-submit")
    page.wait_for_selector("#patrol-view:not([hidden])", timeout=WAIT)
    page.wait_for_selector("#dispatches-conn[data-state=live]", timeout=WAIT)
    page.evaluate("window.__sameDocument = true")


def timeline(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#timeline li.timeline-entry",
                                          "els => els.map(e => e.dataset.action)"))


def test_case_from_detection_to_closure_in_four_browsers(
        redis_hub: ThreadHub, redis_prefix: str, chromium: Any) -> None:  # noqa: F811
    """Detection -> operator confirms -> dispatcher sends it to civil-affairs (lead) with
    emergency-medical and patrol-01 -> the department accepts -> the patrol crew is on
    scene and sends feedback with a photo -> the department resolves -> the operator
    closes; each page follows every step live, and the timeline records them in order."""
    errors: list[str] = []
    url = redis_hub.url
    op = open_page(chromium, errors, "operator")
    disp = open_page(chromium, errors, "dispatcher")
    dep = open_page(chromium, errors, "civil-affairs")
    pat = open_page(chromium, errors, "patrol-01")
    console_login(op, url, "operator")
    console_login(disp, url, "dispatcher")
    console_login(dep, url, "civil-affairs")
    patrol_login(pat, url, "patrol-01")

    # A detection arrives live on the operator's (and the dispatcher's) console.
    publish(redis_prefix, "workflow-1")
    op.wait_for_selector("li.incident[data-state=new]", timeout=WAIT)
    iid = op.get_attribute("li.incident[data-state=new]", "data-id")
    assert iid
    row = f"li.incident[data-id='{iid}']"
    disp.wait_for_selector(row, timeout=WAIT)
    assert dep.query_selector(row) is None  # not dispatched to them yet
    assert pat.query_selector("#dispatch-list li.dispatch") is None
    severity = op.get_attribute(row, "data-severity")
    if severity in ("orange", "red"):  # the alert tone was asked for (audio may be blocked)
        op.wait_for_function(f"(document.body.dataset.lastAlert || '').startsWith('{iid}:new')")

    # The operator confirms.
    op.click(row)
    op.wait_for_selector(f"#incident-detail[data-id='{iid}']")
    op.wait_for_selector("#confirm-btn:not([disabled])")
    op.click("#confirm-btn")
    op.wait_for_selector(f"{row}[data-state=confirmed]", timeout=WAIT)

    # The dispatcher sees the suggestion on the one-click button, and dispatches with the
    # picker: both suggested departments (civil-affairs leading) and patrol-01.
    disp.wait_for_selector(f"{row}[data-state=confirmed]", timeout=WAIT)
    disp.click(row)
    disp.wait_for_selector("#dispatch-btn:not([disabled])", timeout=WAIT)
    one_click = disp.inner_text("#dispatch-btn")
    assert "民政局（牵头）" in one_click and "急救中心" in one_click
    # patrol-02 is busy on another case: the picker says so (it may still be picked).
    admin = {"Authorization": f"Bearer {redis_hub.token('admin')}"}
    other = httpx.post(f"{url}/api/reports", headers=admin, json={
        "type": "road_damage", "description": "另一处", "position": {
            "lat": 34.7676, "lon": 113.6721}}).json()["incident"]["id"]
    assert httpx.post(f"{url}/api/incidents/{other}/dispatch", headers=admin,
                      json={"units": ["patrol-02"]}).status_code == 200
    disp.click("#dispatch-other summary")
    disp.wait_for_selector("[data-busy=patrol-02]", timeout=WAIT)
    assert disp.query_selector("[data-busy=patrol-01]") is None
    assert disp.is_checked("input[name=dispatch-dept][value=civil-affairs]")
    assert disp.is_checked("input[name=dispatch-dept][value=emergency-medical]")
    disp.select_option("#dispatch-lead", "civil-affairs")
    disp.check("input[name=dispatch-unit][value=patrol-01]", timeout=WAIT)
    disp.fill("#action-note", "一人倒地，请民政牵头、急救协同，巡逻一号车先行到场")
    disp.click("#dispatch-other-btn")
    disp.wait_for_selector(f"{row}[data-state=dispatched]", timeout=WAIT)
    op.wait_for_selector(f"{row}[data-state=dispatched]", timeout=WAIT)
    op.wait_for_selector("#timeline li.timeline-entry[data-action=dispatch]", timeout=WAIT)
    op.wait_for_selector("#detail-fields [data-field=ack_due] .countdown", timeout=WAIT)
    assert "巡逻一号车" in op.inner_text("#detail-fields [data-field=units]")

    # The department sees it arrive without reloading, and accepts.
    dep.wait_for_selector(f"{row}[data-state=dispatched]", timeout=WAIT)
    dep.click(row)
    dep.wait_for_selector("#accept-btn:not([disabled])")
    # The department names the unit working the case (from /api/units/names), not its id.
    dep.wait_for_function(
        "() => (document.querySelector('#detail-fields [data-field=units]') || {})"
        ".textContent?.includes('巡逻一号车')", timeout=WAIT)
    dep.click("#accept-btn")
    dep.wait_for_selector(f"{row}[data-state=accepted]", timeout=WAIT)
    op.wait_for_selector(f"{row}[data-state=accepted]", timeout=WAIT)

    # The patrol tablet got the dispatch live; the crew is on scene and reports back.
    item = f"#dispatch-list li.dispatch[data-id='{iid}']"
    pat.wait_for_selector(f"{item}[data-state=accepted]", timeout=WAIT)
    pat.click(f"{item} button[data-action=on_scene]")
    pat.wait_for_selector(f"{item}[data-state=on_scene]", timeout=WAIT)
    pat.fill(f"{item} .d-text", "老人已扶起，意识清醒，等待急救车")
    pat.set_input_files(f"{item} .d-photo", files=[
        {"name": "scene.jpg", "mimeType": "image/jpeg", "buffer": jpeg()}])
    pat.click(f"{item} button[data-action=feedback]")
    pat.wait_for_selector(f"{item} .d-info:not([hidden])", timeout=WAIT)
    assert pat.query_selector(f"{item} .d-error:not([hidden])") is None

    op.wait_for_selector(f"{row}[data-state=on_scene]", timeout=WAIT)
    op.wait_for_selector("#timeline li.timeline-entry[data-action=feedback]", timeout=WAIT)
    op.wait_for_selector("#photos .thumb[data-loaded=true]", timeout=WAIT)
    assert "等待急救车" in op.inner_text("#detail-fields [data-field=last_note]")

    # The department (whose open detail follows along) resolves it.
    dep.wait_for_selector(f"#incident-detail[data-id='{iid}'][data-state=on_scene]", timeout=WAIT)
    dep.wait_for_selector("#resolve-btn:not([disabled])", timeout=WAIT)
    dep.fill("#action-note", "已送医，现场处置完毕")
    dep.click("#resolve-btn")
    dep.wait_for_selector(f"{row}[data-state=resolved]", timeout=WAIT)
    pat.wait_for_selector(f"{item}[data-state=resolved]", timeout=WAIT)

    # The operator saw it resolved live and closes it.
    op.wait_for_selector(f"{row}[data-state=resolved]", timeout=WAIT)
    op.wait_for_selector("#close-btn:not([disabled])", timeout=WAIT)
    op.click("#close-btn")
    op.wait_for_selector(f"{row}[data-state=closed]", timeout=WAIT)
    op.wait_for_selector("#timeline li.timeline-entry[data-action=close]", timeout=WAIT)
    disp.wait_for_selector(f"{row}[data-state=closed]", timeout=WAIT)
    pat.wait_for_selector(item, state="detached", timeout=WAIT)  # closed: off the tablet

    inc = httpx.get(f"{url}/api/incidents/{iid}", headers={
        "Authorization": f"Bearer {redis_hub.token('admin')}"}).json()
    assert inc["state"] == "closed"
    assert inc["lead_department"] == "civil-affairs"
    assert set(inc["departments"]) == {"civil-affairs", "emergency-medical"}
    assert inc["units"] == ["patrol-01"]
    assert len(inc["photos"]) == 1
    steps = [(e["action"], e["actor"]) for e in inc["timeline"]]
    actions = [a for a, _ in steps]
    assert actions[0] == "created"
    flow = ["confirm", "dispatch", "accept", "on_scene", "feedback", "resolve", "close"]
    assert [a for a in actions if a in flow] == flow
    assert dict((a, who) for a, who in steps if a in flow) == {
        "confirm": "operator", "dispatch": "dispatcher", "accept": "civil-affairs",
        "on_scene": "patrol-01", "feedback": "patrol-01", "resolve": "civil-affairs",
        "close": "operator"}
    feedback = next(e for e in inc["timeline"] if e["action"] == "feedback")
    assert feedback["detail"]["photos"] == inc["photos"]
    assert timeline(op)[-1] == "close"

    for page in (op, disp, dep, pat):
        assert page.evaluate("window.__sameDocument") is True  # never reloaded
    assert errors == []


@pytest.fixture
def memory_hub(demo_config: Any, tmp_path: Any) -> Iterator[ThreadHub]:
    """The hub (in-memory bus) in a background thread, stopped afterwards."""
    hub = ThreadHub(demo_config, tmp_path / "data")
    hub.start()
    yield hub
    hub.stop()


def test_staff_report_hotline_merge_ledger_stats_and_escalation(
        memory_hub: ThreadHub, chromium: Any) -> None:
    """Grid staff report from the phone page (type, description, GPS position, photo); the
    operator sees it live with reporter, description and photo; a hotline call about the
    same problem merges into it; the ledger lists it; the statistics draw it; raising it to
    red and escalating it sounds the alert and offers a challenge; mute is remembered."""
    errors: list[str] = []
    url = memory_hub.url
    op = open_page(chromium, errors, "operator")
    console_login(op, url, "operator")

    ctx = chromium.new_context(locale="zh-CN", viewport={"width": 390, "height": 844},
                               geolocation={"latitude": 34.7675, "longitude": 113.6675},
                               permissions=["geolocation"])
    phone = ctx.new_page()
    phone.on("pageerror", lambda exc: errors.append(f"staff: {exc}"))
    phone.goto(f"{url}/report")
    phone.fill("input[name=username]", "staff-01")
    phone.fill("input[name=password]", "demo")
    phone.click("#login-submit")
    phone.wait_for_selector("#gps-status[data-state=ok]", timeout=WAIT)
    assert phone.input_value("#lat") == "34.767500"
    types = phone.eval_on_selector_all("#types input", "els => els.map(e => e.value)")
    assert types[:4] == ["illegal_construction", "illegal_business", "road_damage", "other"]
    phone.check("#types input[value=road_damage]")
    phone.fill("#description", "黄河路人行道塌陷约一米")
    phone.set_input_files("#photo", files=[
        {"name": "hole.jpg", "mimeType": "image/jpeg", "buffer": jpeg()}])
    phone.click("#report-submit")
    phone.wait_for_selector("#report-result[data-merged=false]", timeout=WAIT)
    iid = phone.get_attribute("#report-result", "data-id")
    assert iid and iid in phone.inner_text("#report-result")
    phone.wait_for_selector(f"#mine li[data-id='{iid}']", timeout=WAIT)

    # The operator's console shows it live, with what the reporter wrote and the photo.
    row = f"li.incident[data-id='{iid}']"
    op.wait_for_selector(row, timeout=WAIT)
    op.click(row)
    op.wait_for_selector("#photos .thumb[data-loaded=true]", timeout=WAIT)
    assert "staff-01" in op.inner_text("#detail-fields [data-field=reporter]")
    assert "人行道塌陷" in op.inner_text("#detail-fields [data-field=description]")

    # A hotline call about the same thing merges into the open case.
    op.click("#view-tabs [data-view=hotline]")
    op.select_option("#hotline-type", "road_damage")
    op.fill("#hotline-description", "市民来电：黄河路人行道有坑")
    op.fill("#hotline-lat", "34.7675")
    op.fill("#hotline-lon", "113.6676")
    op.click("#hotline-submit")
    op.wait_for_selector(f"#hotline-result[data-merged=true][data-id='{iid}']", timeout=WAIT)

    # The ledger lists the open case; the statistics count and draw it.
    op.click("#view-tabs [data-view=ledger]")
    ledger_row = f"#ledger-table tbody tr[data-id='{iid}']"
    op.wait_for_selector(ledger_row, timeout=WAIT)
    # Filters: the grid tree in order (indented by level), departments and types; the
    # other cell hides the case, its street shows it again.
    grid_opts = op.eval_on_selector_all("#ledger-grid option", "os => os.map(o => o.value)")
    assert grid_opts[:6] == ["", "zz", "zz-jinshui", "zz-jinshui-jingba",
                             "zz-jinshui-jingba-c1", "zz-jinshui-jingba-c1-g01"]
    op.select_option("#ledger-grid", "zz-jinshui-jingba-c1-g02")
    op.wait_for_selector(ledger_row, state="detached", timeout=WAIT)
    op.select_option("#ledger-grid", "zz-jinshui-jingba")
    op.wait_for_selector(ledger_row, timeout=WAIT)
    op.select_option("#ledger-type", "illegal_business")
    op.wait_for_selector(ledger_row, state="detached", timeout=WAIT)
    op.select_option("#ledger-type", "")
    op.wait_for_selector(ledger_row, timeout=WAIT)
    op.click("#view-tabs [data-view=stats]")
    op.wait_for_selector("svg[data-chart=by_type] rect[data-type=road_damage]", timeout=WAIT)
    assert op.input_value("#stats-grid") == "zz-jinshui-jingba"  # kept across the views
    assert int(op.inner_text("#stats-figures [data-stat=received] .figure-value")) >= 1
    with op.expect_response(lambda r: "/api/stats" in r.url and "type=illegal_business"
                            in r.url and "grid=zz-jinshui-jingba" in r.url) as resp:
        op.select_option("#stats-type", "illegal_business")
    assert resp.value.ok and resp.value.json()["received"] == 0
    op.wait_for_function("document.querySelector("
                         "'#stats-figures [data-stat=received] .figure-value').textContent"
                         ".trim() === '0'", timeout=WAIT)
    op.select_option("#stats-type", "")
    op.select_option("#stats-grid", "")
    op.wait_for_selector("svg[data-chart=by_type] rect[data-type=road_damage]", timeout=WAIT)
    assert int(op.inner_text("#stats-figures [data-stat=received] .figure-value")) >= 1
    assert op.locator("svg[data-chart=daily] rect.bar.received").count() >= 1
    with op.expect_download() as dl:
        op.click("#stats-csv")
    assert dl.value.suggested_filename == "stats.csv"

    # Red, then escalated: the alert is asked for and a challenge becomes possible.
    op.click("#view-tabs [data-view=incidents]")
    op.click(row)
    op.wait_for_selector("#severity-btn:not([disabled])", timeout=WAIT)
    op.select_option("#severity-select", "red")
    op.fill("#action-note", "塌陷扩大，危及行人")
    op.click("#severity-btn")
    op.wait_for_selector(f"{row}[data-severity=red]", timeout=WAIT)
    op.click("#escalate-btn")  # no reason: refused in the page
    op.wait_for_selector("#action-error:not([hidden])")
    op.fill("#action-note", "需区级协调施工单位")
    op.click("#escalate-btn")
    op.wait_for_selector(f"{row}[data-state=escalated]", timeout=WAIT)
    op.wait_for_function(
        f"(document.body.dataset.lastAlert || '').startsWith('{iid}:escalated')", timeout=WAIT)
    op.wait_for_selector("#challenge-btn", timeout=WAIT)
    op.wait_for_selector("#escalations-card:not([hidden]) li.escalation", timeout=WAIT)

    # Mute is remembered.
    assert op.get_attribute("#mute-toggle", "data-muted") == "false"
    op.click("#mute-toggle")
    assert op.evaluate("localStorage.getItem('gridhub.mute')") == "1"
    op.reload()
    op.wait_for_selector("#mute-toggle[data-muted=true]", timeout=WAIT)

    inc = httpx.get(f"{url}/api/incidents/{iid}", headers={
        "Authorization": f"Bearer {memory_hub.token('admin')}"}).json()
    assert inc["reports"] == 2 and inc["severity"] == "red" and inc["state"] == "escalated"
    assert errors == []
