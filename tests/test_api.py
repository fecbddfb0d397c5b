"""The HTTP and WebSocket API on a real uvicorn: auth, incidents, dispatch, accept, errors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import websockets

from hub.bus import IncidentCandidate
from tests.conftest import RunningHub


def jpeg() -> bytes:
    img = np.full((72, 128, 3), 90, np.uint8)
    return bytes(cv2.imencode(".jpg", img)[1])


def candidate(event_id: str = "ev-1", phase: str = "start", conf: float = 0.6) -> IncidentCandidate:
    now = datetime.now(UTC)
    return IncidentCandidate(
        event_id=event_id, phase=phase, type="person_down", camera_id="cam-jingba-01",  # type: ignore[arg-type]
        at=now, started_at=now, confidence=conf, boxes=[(10, 20, 30, 40)], frame_size=(128, 72),
        track_id=4, snapshot_jpeg=jpeg(),
    )


async def login(c: httpx.AsyncClient, user: str, pw: str = "demo") -> dict[str, str]:
    r = await c.post("/api/auth/token", data={"username": user, "password": pw})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@asynccontextmanager
async def client(hub: RunningHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        yield c


class Events:
    """A console WebSocket that collects events and waits for matching ones."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def wait(self, type_: str, pred: Any = lambda d: True) -> dict[str, Any]:
        async with asyncio.timeout(15):
            while True:
                ev = json.loads(await self.ws.recv())
                if ev["type"] == type_ and pred(ev["data"]):
                    return ev["data"]  # type: ignore[no-any-return]


@asynccontextmanager
async def events(hub: RunningHub, headers: dict[str, str]) -> AsyncIterator[Events]:
    token = headers["Authorization"].split()[1]
    async with websockets.connect(f"{hub.ws_url}?token={token}") as ws:
        ev = Events(ws)
        await ev.wait("hello")
        yield ev


async def raise_incident(hub: RunningHub, ev: Events, event_id: str = "ev-1") -> dict[str, Any]:
    await hub.state.bus.publish(candidate(event_id))  # type: ignore[attr-defined]
    return await ev.wait("incident.created")


async def test_health_needs_no_auth_and_lists_components(hub_server: RunningHub) -> None:
    """/api/health answers without a token and reports store, bus and incidents."""
    async with client(hub_server) as c:
        r = await c.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["components"]["store"]["status"] == "ok"
    assert body["components"]["bus"]["kind"] == "memory"


@pytest.mark.parametrize("path", ["/api/incidents", "/api/me", "/api/departments",
                                  "/api/cameras", "/api/incidents/x"])
async def test_endpoints_need_a_token(hub_server: RunningHub, path: str) -> None:
    """Without a token, or with a forged one, every endpoint but health/token is 401."""
    async with client(hub_server) as c:
        assert (await c.get(path)).status_code == 401
        r = await c.get(path, headers={"Authorization": "Bearer not.a.jwt"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"


async def test_login_wrong_password_is_401(hub_server: RunningHub) -> None:
    """A wrong password or unknown user gets 401 and no token."""
    async with client(hub_server) as c:
        for user, pw in (("operator", "nope"), ("nobody", "demo")):
            r = await c.post("/api/auth/token", data={"username": user, "password": pw})
            assert r.status_code == 401 and "access_token" not in r.text


async def test_websocket_rejects_bad_token(hub_server: RunningHub) -> None:
    """/ws without a valid token is closed before any event is sent."""
    with pytest.raises(websockets.exceptions.WebSocketException):
        async with websockets.connect(f"{hub_server.ws_url}?token=forged") as ws:
            await ws.recv()


async def test_slice_detect_dispatch_accept(hub_server: RunningHub) -> None:
    """Candidate -> incident pushed live -> operator dispatches -> department sees it live,
    accepts -> the operator sees it accepted, and the timeline has each step with who."""
    await slice_detect_dispatch_accept(hub_server)


@pytest.mark.redis
async def test_slice_on_the_redis_bus(hub_server_redis: RunningHub) -> None:
    """The same slice with Redis as the bus (Streams for candidates, pub/sub for consoles)."""
    assert hub_server_redis.state.bus.name == "redis"  # type: ignore[attr-defined]
    await slice_detect_dispatch_accept(hub_server_redis)


async def slice_detect_dispatch_accept(hub_server: RunningHub) -> None:
    async with client(hub_server) as c:
        op = await login(c, "operator")
        dep = await login(c, "civil-affairs")
        async with events(hub_server, op) as op_ev, events(hub_server, dep) as dep_ev:
            inc = await raise_incident(hub_server, op_ev)
            assert inc["state"] == "new" and inc["type"] == "person_down"
            assert inc["suggested_departments"][0] == "civil-affairs"
            assert inc["grid_id"] == "zz-jinshui-jingba-c1-g01"
            # the department does not see undispatched incidents
            assert (await c.get("/api/incidents", headers=dep)).json()["items"] == []

            r = await c.post(f"/api/incidents/{inc['id']}/dispatch", headers=op,
                             json={"department": inc["suggested_departments"][0]})
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "dispatched"
            seen = await dep_ev.wait("incident.updated", lambda d: d["id"] == inc["id"])
            assert seen["state"] == "dispatched" and seen["departments"] == ["civil-affairs"]

            r = await c.post(f"/api/incidents/{inc['id']}/accept", headers=dep, json={})
            assert r.status_code == 200, r.text
            done = await op_ev.wait("incident.updated", lambda d: d["state"] == "accepted")
            assert done["id"] == inc["id"]

        detail = (await c.get(f"/api/incidents/{inc['id']}", headers=op)).json()
    steps = [(e["action"], e["actor"], e["from_state"], e["to_state"]) for e in detail["timeline"]]
    assert steps == [
        ("created", "detector:cam-jingba-01", None, "new"),
        ("dispatch", "operator", "new", "dispatched"),
        ("accept", "civil-affairs", "dispatched", "accepted"),
    ]
    assert all(e["at"] for e in detail["timeline"])
    assert detail["timeline"][1]["detail"]["department"] == "civil-affairs"


async def test_same_event_is_one_incident(hub_server: RunningHub) -> None:
    """Repeated and updated candidates of one event update one incident instead of adding."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
        async with events(hub_server, op) as ev:
            inc = await raise_incident(hub_server, ev, "ev-dup")
            bus = hub_server.state.bus  # type: ignore[attr-defined]
            await bus.publish(candidate("ev-dup"))  # redelivered start
            await bus.publish(candidate("ev-dup", "update", conf=0.9))
            up = await ev.wait("incident.updated", lambda d: d["confidence"] == 0.9)
            assert up["id"] == inc["id"] and up["severity"] == "red"
            await bus.publish(candidate("ev-dup", "end"))
            end = await ev.wait("incident.updated", lambda d: d["ended_at"] is not None)
            assert end["id"] == inc["id"]
        items = (await c.get("/api/incidents", headers=op)).json()["items"]
    assert [i["id"] for i in items] == [inc["id"]]


async def test_snapshot_served_as_jpeg(hub_server: RunningHub) -> None:
    """The incident snapshot comes back as the JPEG the detector sent."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
        async with events(hub_server, op) as ev:
            inc = await raise_incident(hub_server, ev)
        r = await c.get(inc["snapshot_url"], headers=op)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == jpeg()


async def test_action_errors(hub_server: RunningHub) -> None:
    """403 for the wrong role, 404 unknown incident, 409 illegal state, 422 bad bodies."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
        rev = await login(c, "reviewer")
        dep = await login(c, "civil-affairs")
        async with events(hub_server, op) as ev:
            inc = await raise_incident(hub_server, ev)
        url = f"/api/incidents/{inc['id']}"
        body = {"department": "civil-affairs"}
        assert (await c.post(f"{url}/dispatch", headers=rev, json=body)).status_code == 403
        assert (await c.post(f"{url}/dispatch", headers=dep, json=body)).status_code == 403
        assert (await c.post(f"{url}/accept", headers=op, json={})).status_code == 403
        r = await c.post("/api/incidents/inc_nope/dispatch", headers=op, json=body)
        assert r.status_code == 404
        r = await c.post(f"{url}/dispatch", headers=op, json={"department": "x", "urgent": 1})
        assert r.status_code == 422 and "urgent" in r.text
        r = await c.post(f"{url}/dispatch", headers=op, json={"department": "space-force"})
        assert r.status_code == 422 and "space-force" in r.text
        r = await c.post(f"{url}/dispatch", headers={**op, "content-type": "application/json"},
                         content=b"{not json")
        assert r.status_code == 422
        # accept before dispatch: illegal transition, naming what is allowed
        r = await c.post(f"{url}/accept", headers=await login(c, "admin"), json={})
        assert r.status_code == 409
        assert "dispatch" in r.json()["detail"]["allowed"]
        # the incident is untouched by all of that
        assert (await c.get(url, headers=op)).json()["state"] == "new"


async def test_list_filters(hub_server: RunningHub) -> None:
    """state/type/severity filters narrow the list; unknown values are 422."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
        async with events(hub_server, op) as ev:
            a = await raise_incident(hub_server, ev, "ev-a")
            await raise_incident(hub_server, ev, "ev-b")
        await c.post(f"/api/incidents/{a['id']}/dispatch", headers=op,
                     json={"department": "civil-affairs"})
        got = (await c.get("/api/incidents?state=dispatched", headers=op)).json()["items"]
        assert [i["id"] for i in got] == [a["id"]]
        got = (await c.get("/api/incidents?type=person_down", headers=op)).json()["items"]
        assert len(got) == 2
        assert (await c.get("/api/incidents?type=fire", headers=op)).status_code == 422
        assert (await c.get("/api/incidents?severity=purple", headers=op)).status_code == 422
        assert (await c.get("/api/incidents?since=yesterday", headers=op)).status_code == 422
        # since/until bound a window of creation times (the replay page's markers).
        first, second = sorted(got, key=lambda i: i["created_at"])
        between = {"since": first["created_at"], "until": first["created_at"]}
        got = (await c.get("/api/incidents", params=between, headers=op)).json()["items"]
        assert [i["id"] for i in got] == [first["id"]]
        got = (await c.get("/api/incidents", headers=op, params={
            "until": second["created_at"]})).json()["items"]
        assert {i["id"] for i in got} == {first["id"], second["id"]}
        assert (await c.get("/api/incidents?until=soon", headers=op)).status_code == 422


async def test_oversized_body_is_413_and_server_stays_up(hub_server: RunningHub) -> None:
    """A body over the limit is refused with 413; the server keeps serving."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
        big = b"x" * (200 * 1024)
        r = await c.post("/api/incidents/x/dispatch", headers=op, content=big)
        assert r.status_code == 413
        assert (await c.get("/api/health")).status_code == 200


async def test_openapi_documents_the_contract(hub_server: RunningHub) -> None:
    """/openapi.json lists the endpoints of the stable contract."""
    async with client(hub_server) as c:
        spec = (await c.get("/openapi.json")).json()
    for path in ("/api/health", "/api/auth/token", "/api/incidents",
                 "/api/incidents/{incident_id}", "/api/incidents/{incident_id}/dispatch",
                 "/api/incidents/{incident_id}/accept"):
        assert path in spec["paths"], path


async def test_console_served_offline(hub_server: RunningHub) -> None:
    """The console page and its scripts come from this server, with no external URLs."""
    async with client(hub_server) as c:
        page = await c.get("/")
        assert page.status_code == 200 and "<html" in page.text
        for asset in ("/static/app.js", "/static/i18n.js", "/static/style.css"):
            r = await c.get(asset)
            assert r.status_code == 200
            assert "http://" not in r.text.replace("http://127.0.0.1", "")
            assert "https://" not in r.text


async def test_slow_console_is_dropped_others_unaffected(hub_server: RunningHub) -> None:
    """A console that stops reading is disconnected once it falls too far behind, while a
    console that keeps reading gets every event and stays connected."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
    token = op["Authorization"].split()[1]
    clients = hub_server.state.clients  # type: ignore[attr-defined]
    clients.send_timeout_s = 2.0
    # A real TCP client that completes the WebSocket handshake and then never reads.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)  # the loop's sock_* calls need it
    await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", hub_server.port))
    await asyncio.get_running_loop().sock_sendall(
        slow,
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode(),
    )
    head = await asyncio.get_running_loop().sock_recv(slow, 1024)
    assert head.startswith(b"HTTP/1.1 101")
    payload = {"blob": "x" * 64_000}
    n = 600  # 600 x 64 kB: far more than the queue (256) plus the socket buffers
    async with events(hub_server, op) as fast:
        got = 0
        progress = asyncio.Condition()

        async def read_fast() -> None:
            nonlocal got
            while got < n:
                ev = json.loads(await fast.ws.recv())
                async with progress:
                    got += ev["type"] == "bulk"
                    progress.notify_all()

        reader = asyncio.create_task(read_fast())
        for sent in range(1, n + 1):
            clients.send("bulk", payload, lambda u: True)
            async with progress:  # a live feed, not a burst: the fast console keeps up
                await asyncio.wait_for(progress.wait_for(lambda s=sent: s - got < 50), 30)
        await asyncio.wait_for(reader, 60)
        assert got == n
        async with asyncio.timeout(30):
            while clients.dropped_clients < 1:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.05)
        assert clients.dropped_clients == 1
        clients.send("bulk", {"last": True}, lambda u: True)  # the fast one is still served
        assert (await fast.wait("bulk", lambda d: d.get("last")))["last"] is True
    slow.close()


async def test_batch_websocket_gets_queued_events_in_one_frame(hub_server: RunningHub) -> None:
    """A console that asks for batches (?batch=1) gets the events that queued up during a
    send as one {"type": "batch"} frame, in order; a plain console gets them one by one."""
    async with client(hub_server) as c:
        op = await login(c, "operator")
    token = op["Authorization"].split()[1]
    async with websockets.connect(f"{hub_server.ws_url}?token={token}&batch=1") as batched, \
            websockets.connect(f"{hub_server.ws_url}?token={token}") as plain:
        assert json.loads(await batched.recv())["data"]["batch"] is True
        await plain.recv()
        clients = hub_server.state.clients  # type: ignore[attr-defined]
        for i in range(10):  # queued in one go, before either sender runs
            clients.send("test.event", {"n": i}, lambda u: True)
        async with asyncio.timeout(10):
            frame = json.loads(await batched.recv())
            frames = [frame]
            while sum(len(f["data"]) if f["type"] == "batch" else 1 for f in frames) < 10:
                frames.append(json.loads(await batched.recv()))
            singles = [json.loads(await plain.recv()) for _ in range(10)]
    events = [e for f in frames for e in (f["data"] if f["type"] == "batch" else [f])]
    assert [e["data"]["n"] for e in events] == list(range(10))
    assert len(frames) < 10 and any(f["type"] == "batch" for f in frames)
    assert [s["data"]["n"] for s in singles] == list(range(10))


async def test_batch_consoles_share_frames_at_their_roles_pace(hub_server: RunningHub) -> None:
    """Batch consoles of one audience get the same frames (built once for the group); a
    command-center console gets at most one frame per 100 ms, a department console at
    most one per 25 ms; every event arrives, in order, on each."""
    from hub.ws import BATCH_INTERVAL_S, WATCH_INTERVAL_S

    async with client(hub_server) as c:
        tokens = {u: (await login(c, u))["Authorization"].split()[1]
                  for u in ("operator", "civil-affairs")}
    clients = hub_server.state.clients  # type: ignore[attr-defined]
    n = 40
    url = f"{hub_server.ws_url}?batch=1&token="
    async with websockets.connect(url + tokens["operator"]) as op1, \
            websockets.connect(url + tokens["operator"]) as op2, \
            websockets.connect(url + tokens["civil-affairs"]) as dep:
        for ws in (op1, op2, dep):
            assert json.loads(await ws.recv())["type"] == "hello"
        loop = asyncio.get_running_loop()
        began = loop.time()
        for i in range(n):
            clients.send("test.event", {"n": i}, lambda u: True)
            await asyncio.sleep(0.01)
        sent_for = loop.time() - began

        async def frames(ws: Any) -> list[str]:
            out: list[str] = []
            async with asyncio.timeout(10):
                while sum(len(f["data"]) if f["type"] == "batch" else 1
                          for f in map(json.loads, out)) < n:
                    out.append(await ws.recv())
            return out

        got = {name: await frames(ws) for name, ws in
               (("op1", op1), ("op2", op2), ("dep", dep))}
        took = loop.time() - began
    for name, fs in got.items():
        evs = [e for f in map(json.loads, fs)
               for e in (f["data"] if f["type"] == "batch" else [f])]
        assert [e["data"]["n"] for e in evs] == list(range(n)), name
    assert got["op1"] == got["op2"]  # one frame per interval for the group, the same bytes
    assert len(got["op1"]) <= took / WATCH_INTERVAL_S + 1, (len(got["op1"]), took)
    assert len(got["dep"]) <= took / BATCH_INTERVAL_S + 1, (len(got["dep"]), took)
    assert sent_for > 2 * WATCH_INTERVAL_S  # the events were spread over several intervals
