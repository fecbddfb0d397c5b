"""Workflow throughput: actions per second with 200 consoles connected, and the time from a
dispatch click to the department's console, on the in-memory bus and on Redis.

    .venv/bin/python bench/bench_workflow.py [--seconds 20] [--workers 32]
        [--consoles 200] [--buses memory,redis]

Prints, asserts nothing. For each bus, ``gridhub run --no-worker`` runs as a child
process (SQLite store, full sync) on a copy of the demo configuration; this process
connects the consoles (10 of them as the department, the rest as operators) and runs
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
    rules.setdefault("workflow", {})["merge_radius_m"] = 0.5  # every report is its own case
    (cfg / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True))
    return cfg


def start_hub(cfg: Path, data: Path, port: int, redis: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if redis:
        env["GRIDHUB_REDIS_URL"] = redis
        env["GRIDHUB_REDIS_PREFIX"] = f"bench-{uuid.uuid4().hex[:6]}"
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


def one(bus: str, args: argparse.Namespace, work: Path) -> None:
    cfg = bench_config(work / bus)
    port = free_port()
    proc = start_hub(cfg, work / bus / "data", port, args.redis if bus == "redis" else None)
    url = f"http://127.0.0.1:{port}"
    try:
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        res = asyncio.run(run_load(url, seconds=args.seconds, workers=args.workers,
                                   consoles=args.consoles))
        cpu = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0)
        health = httpx.get(f"{url}/api/health", timeout=10).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    if not res.acked:
        print(f"{bus}: no action acknowledged; errors: {res.errors[:3]}")
        return
    span = max(a[3] for a in res.acked) - min(a[2] for a in res.acked)
    per = {s: [(a[3] - a[2]) * 1000 for a in res.acked if a[1] == s]
           for s in ("create", "dispatch", "accept", "resolve")}
    lat = [(res.dispatch_seen[i] - t) * 1000 for i, t in res.dispatch_sent.items()
           if i in res.dispatch_seen]
    print(f"\n== bus: {bus}  ({res.consoles} consoles connected, {args.workers} workers, "
          f"{args.seconds:.0f} s)")
    print(f"acknowledged actions: {len(res.acked)} in {span:.1f} s = "
          f"{len(res.acked) / span:.0f} actions/s; errors: {len(res.errors)}"
          + (f" (first: {res.errors[0]})" if res.errors else ""))
    for s, xs in per.items():
        print(f"  {s:9s} HTTP p50 {pct(xs, 50):6.1f} ms  p99 {pct(xs, 99):6.1f} ms  (n={len(xs)})")
    print(f"dispatch -> department console: p50 {pct(lat, 50):.1f} ms  p99 {pct(lat, 99):.1f} ms"
          f"  (n={len(lat)} of {len(res.dispatch_sent)} dispatches; mean "
          f"{statistics.fmean(lat) if lat else float('nan'):.1f} ms)")
    ws = health["components"]["websocket"]
    print(f"console events received: {res.console_messages} in {res.frames} frames; "
          f"consoles dropped as slow: "
          f"{ws['dropped_slow_clients']}; hub CPU {cpu * 100:.0f} % of one core")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--consoles", type=int, default=200)
    ap.add_argument("--buses", default="memory,redis")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-wf-") as tmp:
        for bus in args.buses.split(","):
            one(bus, args, Path(tmp))


if __name__ == "__main__":
    main()
