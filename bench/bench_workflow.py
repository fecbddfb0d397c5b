"""Workflow throughput: actions per second with 200 consoles connected, and the time from a
dispatch click to the department's console, on the in-memory bus and on Redis.

    .venv/bin/python bench/bench_workflow.py [--seconds 20] [--workers 32]
        [--consoles 200] [--buses memory,redis]

Prints, asserts nothing. For each bus, ``gridhub run --no-worker`` runs as a child
process (SQLite store, full sync) on a copy of the demo configuration; this process
connects the consoles (10 of them as the department, the rest as operators; in child
processes) and runs
``--workers`` loops of create (POST /api/reports) -> dispatch -> accept -> resolve. It
reports acknowledged actions per second, HTTP latency per action (p50/p99), the
dispatch-to-department-console latency (p50/p99: from sending the dispatch request to
the WebSocket message arriving), console messages delivered, consoles dropped as slow,
and the hub's CPU. The load generator shares the machine's 2 cores with the hub.
"""

# ruff: noqa: T201

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.workflow_load import run_load  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_config(work: Path) -> Path:
    cfg = work / "config"
    shutil.copytree(ROOT / "configs" / "demo", cfg)
    (cfg / "cameras.yaml").write_text("cameras: []\n")
    rules = yaml.safe_load((cfg / "rules.yaml").read_text())
    rules.setdefault("workflow", {})["merge_radius_m"] = 0.001  # every report is its own case
    (cfg / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True))
    return cfg


def start_hub(cfg: Path, data: Path, port: int, redis: str | None, prefix: str,
              database_url: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "GRIDHUB_SECRET_KEY": "bench-shared-signing-key-0123456789abcdef"}
    if redis:
        env["GRIDHUB_REDIS_URL"] = redis
        env["GRIDHUB_REDIS_PREFIX"] = prefix
    if database_url:
        env["GRIDHUB_DATABASE_URL"] = database_url
    log = (data.parent / f"hub-{port}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "run", "--config", str(cfg), "--data", str(data),
         "--port", str(port), "--no-worker", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"hub exited with {proc.returncode}; see {log.name}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("hub did not answer in 60 s")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_database(admin_url: str) -> tuple[str, object]:
    """A fresh PostgreSQL database for one run; returns (url, a function dropping it)."""
    import psycopg

    name = f"gridhub_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin_url.rsplit("/", 1)[0] + "/" + name, drop


def one(bus: str, args: argparse.Namespace, work: Path, hubs: int = 1,
        store: str = "sqlite", rate: float | None = None) -> None:
    cfg = bench_config(work / f"{bus}-{hubs}-{store}")
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    db_url, drop = pg_database(args.pg) if store == "postgresql" else (None, None)
    procs, urls = [], []
    try:
        for i in range(hubs):
            port = free_port()
            procs.append(start_hub(cfg, work / f"{bus}-{hubs}-{store}" / f"data{i}", port,
                                   args.redis if bus == "redis" else None, prefix, db_url))
            urls.append(f"http://127.0.0.1:{port}")
        c0, t0 = sum(cpu_s(p.pid) for p in procs), time.monotonic()
        res = asyncio.run(run_load(urls, seconds=args.seconds, workers=args.workers,
                                   consoles=args.consoles, rate=rate))
        cpu = (sum(cpu_s(p.pid) for p in procs) - c0) / (time.monotonic() - t0)
        health = [httpx.get(f"{u}/api/health", timeout=10).json() for u in urls]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        if drop is not None:
            drop()  # type: ignore[operator]
    if not res.acked:
        print(f"{bus}: no action acknowledged; errors: {res.errors[:3]}")
        return
    span = max(a[3] for a in res.acked) - min(a[2] for a in res.acked)
    per = {s: [(a[3] - a[2]) * 1000 for a in res.acked if a[1] == s]
           for s in ("create", "dispatch", "accept", "resolve")}
    lat = [(res.dispatch_seen[i] - t) * 1000 for i, t in res.dispatch_sent.items()
           if i in res.dispatch_seen]
    load = f"offered {rate:.0f} actions/s" if rate else "as fast as answered"
    print(f"\n== bus: {bus}, store: {store}, hub processes: {hubs}  ({res.consoles} consoles "
          f"connected, {args.workers} workers, {load}, {args.seconds:.0f} s)")
    print(f"acknowledged actions: {len(res.acked)} in {span:.1f} s = "
          f"{len(res.acked) / span:.0f} actions/s; errors: {len(res.errors)}"
          + (f" (first: {res.errors[0]})" if res.errors else ""))
    for s, xs in per.items():
        print(f"  {s:9s} HTTP p50 {pct(xs, 50):6.1f} ms  p99 {pct(xs, 99):6.1f} ms  (n={len(xs)})")
    print(f"dispatch -> department console: p50 {pct(lat, 50):.1f} ms  p99 {pct(lat, 99):.1f} ms"
          f"  (n={len(lat)} of {len(res.dispatch_sent)} dispatches; mean "
          f"{statistics.fmean(lat) if lat else float('nan'):.1f} ms)")
    op = [(seen - res.dispatch_sent[i]) * 1000 for i, seen in res.dispatch_seen_op
          if i in res.dispatch_sent]
    print(f"dispatch -> operator console (10 sampled, frames at most every 100 ms): p50 "
          f"{pct(op, 50):.1f} ms  p99 {pct(op, 99):.1f} ms  (n={len(op)})")
    dropped = sum(h["components"]["websocket"]["dropped_slow_clients"] for h in health)
    print(f"console events received: {res.console_messages} in {res.frames} frames; "
          f"consoles dropped as slow: {dropped}; hub CPU {cpu * 100:.0f} % of one core"
          + (" (all hub processes)" if hubs > 1 else ""))
    run_s = args.seconds
    print(f"load generator CPU: workers {res.worker_cpu_s / run_s * 100:.0f} %, consoles "
          f"{res.console_cpu_s / (run_s + 1) * 100:.0f} % of one core (the machine has "
          f"{os.cpu_count()} cores for all of it)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--consoles", type=int, default=200)
    ap.add_argument("--buses", default="memory,redis")
    ap.add_argument("--rates", default="100,200,300,500",
                    help="Also run each bus at these offered loads (actions/s, open loop) "
                    "for the latency at a given load; empty: skip")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL where a scratch database is made for the scaled runs")
    ap.add_argument("--scaled", type=int, default=2,
                    help="Also run this many hub processes on Redis + PostgreSQL (0: skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-wf-") as tmp:
        for bus in args.buses.split(","):
            one(bus, args, Path(tmp))
            for r in filter(None, args.rates.split(",")):
                one(bus, args, Path(tmp) / f"rate{r}", rate=float(r))
        if args.scaled:
            one("redis", args, Path(tmp), hubs=1, store="postgresql")
            one("redis", args, Path(tmp), hubs=args.scaled, store="postgresql")


if __name__ == "__main__":
    main()
