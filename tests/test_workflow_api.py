"""The workflow over HTTP on a real uvicorn: reports, photos, one case from report to
closure with every role, 409 naming the allowed actions, ledger and statistics (JSON and
CSV), CAP 1.2, and the OpenAPI body schema of each action."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from hub.states import ACTIONS
from tests.conftest import RunningHub
from tests.test_api import client, events, login

G01 = {"lat": 34.7675, "lon": 113.6675}


def photo() -> bytes:
    img = np.zeros((120, 160, 3), np.uint8)
    cv2.rectangle(img, (20, 20), (140, 100), (0, 0, 255), -1)
    return bytes(cv2.imencode(".jpg", img)[1])


async def test_report_to_closure_with_photos_ledger_and_stats(hub_server: RunningHub) -> None:
    """Grid staff report road damage with a photo; the operator dispatches with one click
    (the suggestion); the department accepts, reports back with a photo and resolves; the
    operator closes. Each step is pushed live; the ledger lists the case while it is open
    with the reason; the statistics count it and its closure."""
    async with client(hub_server) as c:
        staff = await login(c, "staff-01")
        op = await login(c, "operator")
        roads = await login(c, "roads")
        async with events(hub_server, op) as ev:
            r = await c.post("/api/reports", headers=staff, json={
                "type": "road_damage", "description": "井盖缺失", "position": G01})
            assert r.status_code == 201, r.text
            body = r.json()
            inc = body["incident"]
            assert body["merged"] is False and inc["source"] == "manual"
            assert inc["grid_id"] == "zz-jinshui-jingba-c1-g01" and inc["reporter"] == "staff-01"
            pushed = await ev.wait("incident.created", lambda d: d["id"] == inc["id"])
            assert pushed["description"] == "井盖缺失"
            iid = inc["id"]
            up = await c.post(f"/api/incidents/{iid}/photos", headers=staff,
                              files={"photo": ("p.jpg", photo(), "image/jpeg")})
            assert up.status_code == 201, up.text
            got = await c.get(up.json()["url"], headers=op)
            assert got.status_code == 200 and got.content == photo()
            bad = await c.post(f"/api/incidents/{iid}/photos", headers=staff,
                               files={"photo": ("p.jpg", b"not an image", "image/jpeg")})
            assert bad.status_code == 415

            ledger = (await c.get("/api/ledger", headers=op)).json()
            row = next(i for i in ledger["items"] if i["id"] == iid)
            assert "待确认" in row["reason"] and row["queue_grid"] == inc["grid_id"]

            r = await c.post(f"/api/incidents/{iid}/close", headers=op, json={})
            assert r.status_code == 409
            assert "confirm" in r.json()["detail"]["allowed"]
            assert "close" not in r.json()["detail"]["allowed"]

            r = await c.post(f"/api/incidents/{iid}/dispatch", headers=op, json={})
            assert r.status_code == 200, r.text
            assert r.json()["departments"] == ["roads"] and r.json()["ack_due"]
            await ev.wait("incident.updated", lambda d: d["state"] == "dispatched")
            for action, payload in (("accept", {}), ("en_route", {"note": "出发"}),
                                    ("on_scene", {})):
                r = await c.post(f"/api/incidents/{iid}/{action}", headers=roads, json=payload)
                assert r.status_code == 200, (action, r.text)
            fb = await c.post(f"/api/incidents/{iid}/photos", headers=roads,
                              files={"photo": ("after.jpg", photo(), "image/jpeg")})
            r = await c.post(f"/api/incidents/{iid}/feedback", headers=roads,
                             json={"text": "已设围挡", "photos": [fb.json()["id"]]})
            assert r.status_code == 200, r.text
            r = await c.post(f"/api/incidents/{iid}/feedback", headers=roads,
                             json={"text": "x", "photos": ["nope"]})
            assert r.status_code == 422
            r = await c.post(f"/api/incidents/{iid}/resolve", headers=roads,
                             json={"result": "井盖已补装"})
            assert r.status_code == 200 and r.json()["state"] == "resolved"
            await ev.wait("incident.updated", lambda d: d["state"] == "resolved")
            r = await c.post(f"/api/incidents/{iid}/close", headers=roads, json={})
            assert r.status_code == 403
            r = await c.post(f"/api/incidents/{iid}/close", headers=op, json={"note": "核实"})
            assert r.status_code == 200 and r.json()["state"] == "closed"

        detail = (await c.get(f"/api/incidents/{iid}", headers=op)).json()
        steps = [e["action"] for e in detail["timeline"]]
        assert steps == ["created", "photo", "dispatch", "accept", "en_route", "on_scene",
                         "photo", "feedback", "resolve", "close"]
        assert all(e["detail"].get("from") for e in detail["timeline"][1:])  # where from

        ledger = (await c.get("/api/ledger", headers=op)).json()
        assert iid not in {i["id"] for i in ledger["items"]}
        st = (await c.get("/api/stats?period=today&type=road_damage", headers=op)).json()
        assert (st["received"], st["dispatched"], st["resolved"], st["closed"]) == (1, 1, 1, 1)
        assert st["closure_rate"] == 1.0 and st["on_time_rate"] == 1.0
        assert st["series"][-1]["received"] == 1
        text = (await c.get("/api/stats?period=7d&format=csv", headers=op)).content
        assert text.startswith("\ufeff".encode())
        rows = list(csv.DictReader(io.StringIO(text.decode("utf-8-sig"))))
        assert rows[0]["closure_rate"] == "1.0"
        for bad in ("period=yesterday", "period=2026-13", "grid=nowhere", "type=fire"):
            assert (await c.get(f"/api/stats?{bad}", headers=op)).status_code == 422, bad


async def test_report_scope_merge_and_cap(hub_server: RunningHub) -> None:
    """Staff cannot report outside their grid; a second report nearby merges; the CAP 1.2
    alert carries the grid polygon; a department cannot read what is not assigned to it."""
    async with client(hub_server) as c:
        staff = await login(c, "staff-01")
        op = await login(c, "operator")
        roads = await login(c, "roads")
        far = {"lat": 34.80, "lon": 113.70}  # the district, outside the staff's community
        r = await c.post("/api/reports", headers=staff, json={
            "type": "other", "description": "x", "position": far})
        assert r.status_code == 403
        r = await c.post("/api/reports", headers=staff, json={
            "type": "illegal_business", "description": "占道经营", "position": G01})
        first = r.json()["incident"]
        r = await c.post("/api/reports", headers=op, json={
            "type": "illegal_business", "description": "热线: 占道经营",
            "position": {"lat": G01["lat"] + 0.0002, "lon": G01["lon"]}, "channel": "hotline"})
        assert r.status_code == 201 and r.json()["merged"] is True
        assert r.json()["incident"]["id"] == first["id"] and r.json()["incident"]["reports"] == 2
        for bad in ({"type": "x", "description": "d", "position": G01},
                    {"type": "other", "description": "", "position": G01},
                    {"type": "other", "description": "d", "position": {"lat": 91, "lon": 0}},
                    {"type": "other", "description": "d"}):
            assert (await c.post("/api/reports", headers=op, json=bad)).status_code == 422
        cap = await c.get(f"/api/incidents/{first['id']}/cap", headers=op)
        assert cap.status_code == 200 and "cap+xml" in cap.headers["content-type"]
        root = ET.fromstring(cap.content)
        ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
        assert root.find("cap:msgType", ns).text == "Update"  # type: ignore[union-attr]
        poly = root.find(".//cap:area/cap:polygon", ns).text  # type: ignore[union-attr]
        pts = poly.split()  # type: ignore[union-attr]
        assert pts[0] == pts[-1] and pts[0].startswith("34.")
        assert (await c.get(f"/api/incidents/{first['id']}", headers=roads)).status_code == 404


async def test_openapi_has_a_body_schema_for_every_action(hub_server: RunningHub) -> None:
    """Each action has its own POST route with its body schema in OpenAPI."""
    async with client(hub_server) as c:
        spec = (await c.get("/openapi.json")).json()
    for action in ("confirm", "dispatch", "accept", "on_scene", "resolve", "close", "dismiss",
                   "reopen", "escalate", "challenge", "comment"):
        assert action in ACTIONS
        op: dict[str, Any] = spec["paths"][f"/api/incidents/{{incident_id}}/{action}"]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert "$ref" in str(schema), (action, schema)
    for path in ("/api/reports", "/api/ledger", "/api/stats", "/api/challenges",
                 "/api/incidents/{incident_id}/photos", "/api/incidents/{incident_id}/cap"):
        assert path in spec["paths"], path


async def test_the_hub_runs_on_postgresql(demo_config: Path, tmp_path: Path, pg_url: str
                                          ) -> None:
    """With a PostgreSQL URL the whole hub keeps its cases there: a report, a dispatch and
    the ledger work, and a second hub on the same database sees the case."""
    from tests.conftest import running_hub

    async with running_hub(demo_config, tmp_path / "a", database_url=pg_url) as hub:
        async with client(hub) as c:
            op = await login(c, "operator")
            r = await c.post("/api/reports", headers=op, json={
                "type": "road_damage", "description": "坑槽", "position": G01})
            assert r.status_code == 201, r.text
            iid = r.json()["incident"]["id"]
            assert (await c.post(f"/api/incidents/{iid}/dispatch", headers=op,
                                 json={})).status_code == 200
            health = (await c.get("/api/health")).json()
            assert health["components"]["store"]["where"].startswith("postgresql")
    async with running_hub(demo_config, tmp_path / "b", database_url=pg_url) as hub:
        async with client(hub) as c:
            op = await login(c, "operator")
            got = (await c.get(f"/api/incidents/{iid}", headers=op)).json()
            assert got["state"] == "dispatched" and got["departments"] == ["roads"]
            ledger = (await c.get("/api/ledger", headers=op)).json()
            assert iid in {i["id"] for i in ledger["items"]}


async def test_workflow_steps_reach_a_webhook_signed_and_retried(
        demo_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub configured with a webhook: a report, its escalation and a comment arrive at
    a real receiver that fails the first attempt; each delivery is signed with the
    configured secret, and the outbox holds nothing undelivered afterwards."""
    import yaml
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from hub.notify import verify_signature
    from tests.conftest import running_hub, serve_app

    hits: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Condition()
    answers = [500]

    async def handle(request: Request) -> Response:
        body = await request.body()
        async with arrived:
            hits.append((dict(request.headers), body))
            arrived.notify_all()
        return Response(status_code=answers.pop(0) if answers else 200)

    async with serve_app(Starlette(routes=[Route("/hook", handle, methods=["POST"])])) as rx:
        rules = yaml.safe_load((demo_config / "rules.yaml").read_text())
        rules["notifications"] = {
            "webhooks": [{"name": "ops", "url": f"{rx.url}/hook", "secret_env": "OPS_SECRET",
                          "events": ["incident.created", "incident.escalated",
                                     "incident.updated"]}],
            "retry": {"max_attempts": 5, "initial_s": 0.2, "factor": 1.5, "max_s": 1}}
        (demo_config / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True))
        monkeypatch.setenv("OPS_SECRET", "s3cret-for-the-test")
        async with running_hub(demo_config, tmp_path / "data") as hub:
            async with client(hub) as c:
                op = await login(c, "operator")
                r = await c.post("/api/reports", headers=op, json={
                    "type": "road_damage", "description": "x", "position": G01})
                iid = r.json()["incident"]["id"]
                await c.post(f"/api/incidents/{iid}/escalate", headers=op,
                             json={"reason": "needs the community"})
                await c.post(f"/api/incidents/{iid}/comment", headers=op, json={"text": "ok"})

                def events() -> list[str]:
                    return [json.loads(b)["event"] for h, b in hits]

                async with asyncio.timeout(30), arrived:
                    await arrived.wait_for(lambda: events().count("incident.created") >= 2
                                           and "incident.escalated" in events()
                                           and "incident.updated" in events())
                for h, body in hits:
                    assert verify_signature("s3cret-for-the-test", h["x-gridhub-timestamp"],
                                            body, h["x-gridhub-signature"])
                    assert json.loads(body)["incident"]["id"] == iid
                first = [h["x-gridhub-delivery"] for h, b in hits
                         if json.loads(b)["event"] == "incident.created"]
                assert first[0] == first[1]  # the failed attempt, retried as the same delivery
                assert await hub.state.notifier.dead_letters() == []  # type: ignore[attr-defined]


# (label, user, method-less path with {iid} for the case, body) - sent as JSON unless the
# body is bytes (then raw, with the content type in the label after "|").
HOT_SCRIPT: list[tuple[str, str | None, str, Any]] = [
    ("report", "staff-01", "/api/reports",
     {"type": "road_damage", "description": "路面塌陷", "position": G01}),
    ("report without a token", None, "/api/reports",
     {"type": "road_damage", "description": "x", "position": G01}),
    ("report with a bad token", "bad", "/api/reports",
     {"type": "road_damage", "description": "x", "position": G01}),
    ("report not JSON|application/json", "staff-01", "/api/reports", b"{not json"),
    ("report nested too deep|application/json", "staff-01", "/api/reports", b"[" * 30000),
    ("report as text|text/plain", "staff-01", "/api/reports",
     json.dumps({"type": "road_damage", "description": "x", "position": G01}).encode()),
    ("report with an unknown field", "staff-01", "/api/reports",
     {"type": "road_damage", "description": "x", "position": G01, "extra": 1}),
    ("report of an unknown type", "staff-01", "/api/reports",
     {"type": "nope", "description": "x", "position": G01}),
    ("report outside every grid", "staff-01", "/api/reports",
     {"type": "road_damage", "description": "x", "position": {"lat": 0, "lon": 0}}),
    ("close too early", "operator", "/api/incidents/{iid}/close", {}),
    ("dispatch by a department", "roads", "/api/incidents/{iid}/dispatch", {}),
    ("dispatch to nobody known", "operator", "/api/incidents/{iid}/dispatch",
     {"departments": ["nope"]}),
    ("dispatch with null|application/json", "operator", "/api/incidents/{iid}/dispatch",
     b"null"),
    ("dispatch, one click, no body|application/json", "operator",
     "/api/incidents/{iid}/dispatch", b""),
    ("accept", "roads", "/api/incidents/{iid}/accept", {}),
    ("resolve without a body|application/json", "roads", "/api/incidents/{iid}/resolve", b""),
    ("resolve with an empty result", "roads", "/api/incidents/{iid}/resolve", {"result": ""}),
    ("resolve", "roads", "/api/incidents/{iid}/resolve", {"result": "已修复"}),
    ("comment without text", "operator", "/api/incidents/{iid}/comment", {}),
    ("comment", "operator", "/api/incidents/{iid}/comment", {"text": "复查"}),
    ("action on no incident", "operator", "/api/incidents/nope/close", {}),
    ("action with a trailing slash", "operator", "/api/incidents/{iid}/close/", {}),
    ("close", "operator", "/api/incidents/{iid}/close", {"note": "ok"}),
]
VOLATILE = {"id", "resolve_from", "version"}


def _stable(doc: Any) -> Any:
    """A response body without what differs between two hubs (ids, clock times)."""
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items()
                if k not in VOLATILE and not k.endswith(("_at", "_due"))}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


async def _run_hot_script(hub: RunningHub) -> list[tuple[str, int, Any, str | None]]:
    out = []
    async with client(hub) as c:
        heads = {u: await login(c, u) for u in ("staff-01", "operator", "roads")}
        heads["bad"] = {"Authorization": "Bearer not-a-token"}
        iid = None
        for label, user, path, body in HOT_SCRIPT:
            h = dict(heads[user]) if user else {}
            if isinstance(body, bytes):
                h["Content-Type"] = label.split("|")[1]
                r = await c.post(path.format(iid=iid), headers=h, content=body)
            else:
                r = await c.post(path.format(iid=iid), headers=h, json=body)
            doc = r.json() if r.headers.get("content-type") == "application/json" else r.text
            if label == "report":
                iid = doc["incident"]["id"]
            out.append((label, r.status_code, _stable(doc), r.headers.get("www-authenticate")))
    return out


async def test_hot_routes_answer_as_the_fastapi_routes(demo_config: Path,
                                                       tmp_path: Path) -> None:
    """The lean path for reports and incident actions (HotRoutes) gives the same answers
    as the FastAPI routes alone, for the plain case and for every kind of refusal: the
    same script on a hub with it and on one without it."""
    from hub.api import HotRoutes
    from hub.cli import build_app
    from hub.config import load_config
    from hub.settings import Settings
    from tests.conftest import serve_app

    answers, hot = [], []
    for with_hot in (True, False):
        settings = Settings(config_dir=demo_config, data_dir=tmp_path / f"data-{with_hot}",
                            port=0, with_worker=False, max_body_bytes=64 * 1024)
        app = build_app(settings, load_config(demo_config))
        if not with_hot:
            app.user_middleware = [m for m in app.user_middleware if m.cls is not HotRoutes]
        async with serve_app(app) as hub:
            answers.append(await _run_hot_script(hub))
            layer = app.middleware_stack
            while layer is not None and not isinstance(layer, HotRoutes):
                layer = getattr(layer, "app", None)
            hot.append(layer)
    with_it, without = answers
    assert [a[:2] for a in with_it] == [a[:2] for a in without]
    for a, b in zip(with_it, without, strict=True):
        assert a == b, a[0]
    statuses = {label: status for label, status, _, _ in with_it}
    assert statuses["report"] == 201 and statuses["close"] == 200
    assert statuses["report without a token"] == 401 and statuses["close too early"] == 409
    assert statuses["report not JSON|application/json"] == 422
    assert statuses["report nested too deep|application/json"] == 400
    assert statuses["dispatch, one click, no body|application/json"] == 200
    assert hot[1] is None and hot[0] is not None
    # the plain cases were answered by the lean path, the refusals by FastAPI
    assert hot[0].served >= 8 and hot[0].passed >= 8, (hot[0].served, hot[0].passed)


@pytest.mark.parametrize("messages", [
    # a body in three pieces that is not the action's model
    [b'{"result"', b': ""', b"}"],
    # a client that goes away before the end of its body (what came is valid)
    [b'{"result": "done"}', None],
])
async def test_hot_routes_hand_on_what_they_read(messages: list[bytes | None]) -> None:
    """What the lean path does not take reaches the FastAPI route message by message, as
    the client sent it (body pieces, a disconnect), and the lean path answers nothing."""
    from types import SimpleNamespace

    from hub.api import HotRoutes
    from hub.models import User

    user = User(username="roads", name="roads", role="department", department="roads")
    hub_state = SimpleNamespace(accounts=SimpleNamespace(verify=lambda token: user))
    sent = [({"type": "http.disconnect"} if m is None else
             {"type": "http.request", "body": m, "more_body": i < len(messages) - 1})
            for i, m in enumerate(messages)]
    queue = list(sent)
    seen: list[Any] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        for _ in sent:
            seen.append(await receive())

    async def receive() -> Any:
        return queue.pop(0)

    async def send(message: Any) -> None:
        raise AssertionError(f"the lean path answered: {message}")

    hot = HotRoutes(route)
    scope = {"type": "http", "method": "POST", "path": "/api/incidents/inc_1/resolve",
             "headers": [(b"authorization", b"Bearer t"),
                         (b"content-type", b"application/json")],
             "app": SimpleNamespace(state=SimpleNamespace(hub=hub_state))}
    await hot(scope, receive, send)
    assert seen == sent
    assert (hot.served, hot.passed) == (0, 1)
