"""A workflow load generator: cases created, dispatched, accepted and resolved over HTTP,
with console WebSockets connected. Used by ``bench/bench_workflow.py`` (figures) and by
the SIGKILL durability test (what was acknowledged). Not part of the hub.

Each worker loops: POST /api/reports (create) -> dispatch -> accept -> resolve, recording
every acknowledged (2xx) action with the time it was sent and answered. Department
consoles record when each dispatch reached them, for the click-to-console latency.

The load generator shares the machine with the hub, so it is built to cost little: the
consoles run in their own processes (``console_procs``; CLOCK_MONOTONIC is system-wide,
so their receive times compare with the workers' send times), and the workers speak
HTTP/1.1 with keep-alive over plain asyncio streams instead of a full client library.
The CPU each part used is reported, so a reader can see when the generator, not the hub,
was the limit.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# Cell zz-jinshui-jingba-c1-g01 of the demo grid.
CELL = ((34.7652, 34.7698), (113.6652, 113.6698))
STEPS = ("create", "dispatch", "accept", "resolve")
OPERATOR_SAMPLES = 10


@dataclass
class LoadResult:
    acked: list[tuple[str, str, float, float]] = field(default_factory=list)  # id, action, t0, t1
    errors: list[str] = field(default_factory=list)
    dispatch_sent: dict[str, float] = field(default_factory=dict)
    dispatch_seen: dict[str, float] = field(default_factory=dict)
    # (incident, time) each sampled operator console first saw each dispatch
    dispatch_seen_op: list[tuple[str, float]] = field(default_factory=list)
    console_messages: int = 0
    frames: int = 0
    consoles: int = 0
    worker_cpu_s: float = 0.0  # CPU of this process (the workers) during the run
    console_cpu_s: float = 0.0  # CPU of the console processes during the run


class HttpError(Exception):
    pass


class Http:
    """A minimal HTTP/1.1 keep-alive client for JSON requests (one connection, one request
    at a time). Enough for the hub's API; not a general client."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        u = urlsplit(base_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.timeout = timeout
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._r = self._w = None

    async def request(self, method: str, path: str, *, token: str | None = None,
                      body: Any = None, form: str | None = None) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._request(method, path, token, body, form)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, HttpError) as err:
            await self.close()
            raise HttpError(f"{type(err).__name__}: {err}") from err

    async def _request(self, method: str, path: str, token: str | None, body: Any,
                       form: str | None) -> tuple[int, bytes]:
        if self._w is None:
            self._r, self._w = await asyncio.open_connection(self.host, self.port)
        assert self._r is not None
        data = form.encode() if form is not None else (
            json.dumps(body).encode() if body is not None else b"")
        ctype = "application/x-www-form-urlencoded" if form is not None else "application/json"
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n")
        self._w.write(head.encode() + data)
        status_line = await self._r.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while True:
            line = await self._r.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise HttpError("chunked responses are not supported here")
        payload = await self._r.readexactly(length)
        if close:
            await self.close()
        return status, payload


async def token(c: Http, user: str, password: str = "demo") -> str:
    status, body = await c.request("POST", "/api/auth/token",
                                   form=f"username={user}&password={password}")
    if status != 200:
        raise HttpError(f"login {user}: {status} {body[:200]!r}")
    return str(json.loads(body)["access_token"])


# --- consoles (in child processes) ------------------------------------------------------

async def _console(ws_url: str, tok: str, department: bool, sample: bool,
                   out: dict[str, Any], ready: asyncio.Event, stop: mp.synchronize.Event
                   ) -> None:
    import websockets

    mine: set[str] = set()
    try:
        async with websockets.connect(f"{ws_url}?token={tok}&batch=1", max_size=None,
                                      open_timeout=30, compression=None) as ws:
            json.loads(await ws.recv())  # hello
            out["consoles"] += 1
            ready.set()
            while not stop.is_set():
                try:
                    async with asyncio.timeout(0.5):
                        text = await ws.recv()
                except TimeoutError:
                    continue
                out["frames"] += 1
                if not department and not sample:  # an operator console: count only
                    out["messages"] += (text.count('"type":"incident.')
                                        + text.count('"type": "incident.')) or 1
                    continue
                now = time.monotonic()
                msg = json.loads(text)
                evs = msg["data"] if msg.get("type") == "batch" else [msg]
                out["messages"] += len(evs)
                for ev in evs:
                    data = ev.get("data") or {}
                    if ev.get("type") == "incident.updated" and data.get("state") == "dispatched":
                        if department:
                            out["seen"].setdefault(data["id"], now)
                        elif data["id"] not in mine:
                            mine.add(data["id"])
                            out["seen_op"].append((data["id"], now))
    except Exception as err:  # the hub went away (SIGKILL test) or refused us
        out["errors"].append(f"console: {type(err).__name__}: {err}")
    finally:
        ready.set()


async def _consoles_main(specs: list[tuple[str, str, bool, bool]], ready_q: Any,
                         stop: mp.synchronize.Event) -> dict[str, Any]:
    out: dict[str, Any] = {"consoles": 0, "frames": 0, "messages": 0, "seen": {},
                           "seen_op": [], "errors": []}
    tasks = []
    for ws_url, tok, dep, sample in specs:  # one at a time: the hub sees them in order
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(_console(ws_url, tok, dep, sample, out, ready,
                                                  stop)))
        await ready.wait()
    ready_q.put(out["consoles"])
    out["cpu0"] = _cpu()
    await asyncio.gather(*tasks, return_exceptions=True)
    return out


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _consoles_proc(specs: list[tuple[str, str, bool, bool]], ready_q: Any, result_q: Any,
                   stop: mp.synchronize.Event) -> None:
    out = asyncio.run(_consoles_main(specs, ready_q, stop))
    out["cpu_s"] = _cpu() - out.pop("cpu0", 0.0)  # from all connected to the end
    result_q.put(out)


# --- workers ------------------------------------------------------------------------------

class Pacer:
    """Open-loop pacing: hands out send times ``1 / rate`` apart, whoever asks."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        at = self.next = max(self.next + self.gap, now)
        if at > now:
            await asyncio.sleep(at - now)


async def worker(c: Http, op: str, dep: str, res: LoadResult, stop: asyncio.Event,
                 rng: random.Random, pacer: Pacer | None = None) -> None:
    while not stop.is_set():
        pos = {"lat": rng.uniform(*CELL[0]), "lon": rng.uniform(*CELL[1])}
        iid = None
        for step in STEPS:
            if pacer is not None:
                await pacer.wait()
            if stop.is_set():
                return
            t0 = time.monotonic()
            try:
                if step == "create":
                    status, body = await c.request("POST", "/api/reports", token=op, body={
                        "type": "road_damage", "description": "load", "position": pos})
                else:
                    payload: dict[str, Any] = {"departments": ["roads"]} if step == "dispatch" \
                        else {"result": "done"} if step == "resolve" else {}
                    if step == "dispatch":
                        res.dispatch_sent[str(iid)] = t0
                    status, body = await c.request(
                        "POST", f"/api/incidents/{iid}/{step}",
                        token=dep if step in ("accept", "resolve") else op, body=payload)
            except HttpError as err:
                res.errors.append(f"{step}: {err}")
                await asyncio.sleep(0.2)  # the hub is gone or restarting: do not spin
                break
            t1 = time.monotonic()
            if status >= 300:
                res.errors.append(f"{step}: {status} {body[:200]!r}")
                break
            if step == "create":
                iid = json.loads(body)["incident"]["id"]
            res.acked.append((str(iid), step, t0, t1))


async def run_load(base_url: str | list[str], *, seconds: float, workers: int,
                   consoles: int, department_consoles: int = 10, seed: int = 1,
                   console_procs: int | None = None, rate: float | None = None) -> LoadResult:
    """Connect the consoles, run the workers for ``seconds``, return what happened. With
    several hubs (same token key, same bus and store), workers and consoles are spread
    over them round-robin. Consoles run in ``console_procs`` child processes (default:
    one per 100 consoles). With ``rate``, the workers together send at most that many
    actions per second (open loop: latency at a given load); without, as fast as the hub
    answers (closed loop: throughput)."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    res = LoadResult()
    login = Http(urls[0], timeout=30)
    try:
        op_tok, dep_tok = await token(login, "operator"), await token(login, "roads")
    finally:
        await login.close()
    # The first OPERATOR_SAMPLES operator consoles also time the dispatches they see.
    specs = [(urls[i % len(urls)].replace("http://", "ws://") + "/ws",
              dep_tok if i < department_consoles else op_tok, i < department_consoles,
              department_consoles <= i < department_consoles + OPERATOR_SAMPLES)
             for i in range(consoles)]
    nproc = min(len(specs), console_procs or max(1, -(-consoles // 100)))
    ctx = mp.get_context("spawn")
    ready_q, result_q, stop_ev = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_consoles_proc, args=(specs[i::nproc], ready_q, result_q,
                                                       stop_ev), daemon=True)
             for i in range(nproc)]
    loop = asyncio.get_running_loop()
    for p in procs:
        p.start()
    clients = [Http(urls[i % len(urls)]) for i in range(workers)]
    try:
        for _ in procs:
            await loop.run_in_executor(None, ready_q.get, True, 120)
        cpu0 = _cpu()
        stop = asyncio.Event()
        rng = random.Random(seed)
        pacer = Pacer(rate) if rate else None
        load = [asyncio.create_task(worker(c, op_tok, dep_tok, res, stop, rng, pacer))
                for c in clients]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
        res.worker_cpu_s = _cpu() - cpu0
        await asyncio.sleep(1.0)  # let the consoles receive the last events
        stop_ev.set()
        for _ in procs:
            out = await loop.run_in_executor(None, result_q.get, True, 60)
            res.consoles += out["consoles"]
            res.frames += out["frames"]
            res.console_messages += out["messages"]
            res.console_cpu_s += out["cpu_s"]
            for k, v in out["seen"].items():
                res.dispatch_seen.setdefault(k, v)
            res.dispatch_seen_op += out["seen_op"]
    finally:
        stop_ev.set()
        for c in clients:
            await c.close()
        for p in procs:
            await loop.run_in_executor(None, p.join, 10)
            if p.is_alive():
                p.kill()
    return res
