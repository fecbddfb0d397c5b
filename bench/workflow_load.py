"""A workflow load generator: cases created, dispatched, accepted and resolved over HTTP,
with console WebSockets connected. Used by ``bench/bench_workflow.py`` (figures) and by
the SIGKILL durability test (what was acknowledged). Not part of the hub.

Each worker loops: POST /api/reports (create) -> dispatch -> accept -> resolve, recording
every acknowledged (2xx) action with the time it was sent and answered. Department
consoles record when each dispatch reached them, for the click-to-console latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

# Cell zz-jinshui-jingba-c1-g01 of the demo grid.
CELL = ((34.7652, 34.7698), (113.6652, 113.6698))
STEPS = ("create", "dispatch", "accept", "resolve")


@dataclass
class LoadResult:
    acked: list[tuple[str, str, float, float]] = field(default_factory=list)  # id, action, t0, t1
    errors: list[str] = field(default_factory=list)
    dispatch_sent: dict[str, float] = field(default_factory=dict)
    dispatch_seen: dict[str, float] = field(default_factory=dict)
    console_messages: int = 0
    frames: int = 0
    consoles: int = 0


async def token(c: httpx.AsyncClient, user: str, password: str = "demo") -> str:
    r = await c.post("/api/auth/token", data={"username": user, "password": password})
    r.raise_for_status()
    return str(r.json()["access_token"])


async def console(ws_url: str, tok: str, res: LoadResult, department: bool,
                  ready: asyncio.Event, stop: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(f"{ws_url}?token={tok}&batch=1", max_size=None,
                                  open_timeout=30) as ws:
        json.loads(await ws.recv())  # hello
        res.consoles += 1
        ready.set()
        while not stop.is_set():
            try:
                async with asyncio.timeout(0.5):
                    text = await ws.recv()
            except TimeoutError:
                continue
            res.frames += 1
            if not department:  # an operator console: count what arrived
                res.console_messages += text.count('"type": "incident.') or 1
                continue
            msg = json.loads(text)
            evs = msg["data"] if msg.get("type") == "batch" else [msg]
            res.console_messages += len(evs)
            now = time.monotonic()
            for ev in evs:
                data = ev.get("data") or {}
                if ev.get("type") == "incident.updated" and data.get("state") == "dispatched":
                    res.dispatch_seen.setdefault(data["id"], now)


async def worker(c: httpx.AsyncClient, op: dict[str, str], dep: dict[str, str],
                 res: LoadResult, stop: asyncio.Event, rng: random.Random) -> None:
    while not stop.is_set():
        pos = {"lat": rng.uniform(*CELL[0]), "lon": rng.uniform(*CELL[1])}
        iid = None
        for step in STEPS:
            if stop.is_set():
                return
            t0 = time.monotonic()
            try:
                if step == "create":
                    r = await c.post("/api/reports", headers=op, json={
                        "type": "road_damage", "description": "load", "position": pos})
                else:
                    body: dict[str, Any] = {"departments": ["roads"]} if step == "dispatch" \
                        else {"result": "done"} if step == "resolve" else {}
                    if step == "dispatch":
                        res.dispatch_sent[str(iid)] = t0
                    r = await c.post(f"/api/incidents/{iid}/{step}",
                                     headers=dep if step in ("accept", "resolve") else op,
                                     json=body)
            except httpx.HTTPError as err:
                res.errors.append(f"{step}: {type(err).__name__}: {err}")
                return
            t1 = time.monotonic()
            if r.status_code >= 300:
                res.errors.append(f"{step}: {r.status_code} {r.text[:200]}")
                break
            if step == "create":
                iid = r.json()["incident"]["id"]
            res.acked.append((str(iid), step, t0, t1))


async def run_load(base_url: str | list[str], *, seconds: float, workers: int,
                   consoles: int, department_consoles: int = 10, seed: int = 1) -> LoadResult:
    """Connect the consoles, run the workers for ``seconds``, return what happened. With
    several hubs (same token key, same bus and store), workers and consoles are spread
    over them round-robin."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    res = LoadResult()
    per_hub = workers // len(urls) + 4
    limits = httpx.Limits(max_connections=per_hub, max_keepalive_connections=per_hub)
    clients = [httpx.AsyncClient(base_url=u, timeout=60, limits=limits) for u in urls]
    try:
        op_tok, dep_tok = await token(clients[0], "operator"), await token(clients[0], "roads")
        op = {"Authorization": f"Bearer {op_tok}"}
        dep = {"Authorization": f"Bearer {dep_tok}"}
        stop = asyncio.Event()
        tasks = []
        for i in range(consoles):
            ready = asyncio.Event()
            is_dep = i < department_consoles
            ws_url = urls[i % len(urls)].replace("http://", "ws://") + "/ws"
            tasks.append(asyncio.create_task(console(
                ws_url, dep_tok if is_dep else op_tok, res, is_dep, ready, stop)))
            await ready.wait()
        rng = random.Random(seed)
        load = [asyncio.create_task(worker(clients[i % len(clients)], op, dep, res, stop, rng))
                for i in range(workers)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
        await asyncio.sleep(1.0)  # let the consoles receive the last events
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for c in clients:
            await c.aclose()
    return res
