"""Shared fixtures: real servers on port 0, the real Redis, demo configuration copies."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"
REDIS_URL = os.environ.get("GRIDHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# A PostgreSQL server where the tests may create and drop databases (make test starts one).
PG_ADMIN_URL = os.environ.get("GRIDHUB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """A writable copy of the demo configuration."""
    dst = tmp_path / "config"
    shutil.copytree(DEMO, dst)
    return dst


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the real Redis, deleted afterwards."""
    if not redis_available():
        pytest.fail("Redis is not running at 127.0.0.1:6379 (make test starts it)")
    prefix = f"gridhub-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)
    r.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"gridhub_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (make test starts it): {err}")
    admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store backend: a SQLite file, and a database on the real PostgreSQL."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "gridhub.sqlite3")


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    """Each bus implementation, started; the Redis one on the real server."""
    from hub.bus import make_bus

    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        b = make_bus(REDIS_URL, prefix=prefix)
    else:
        b = make_bus(None)
    await b.start()
    yield b
    await b.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[object]:
    """Debian's chromium (never a downloaded browser) for async Playwright tests, with a
    fresh temporary profile; one per test module (some modules define their own)."""
    from playwright.async_api import async_playwright

    from tests.test_browser import CHROMIUM_ARGS

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is not installed (make test installs it)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        await b.close()


class RunningHub:
    """A real uvicorn serving the whole app on 127.0.0.1:<random port>."""

    def __init__(self, app: object, port: int) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"

    @property
    def state(self) -> object:
        return self.app.state.hub  # type: ignore[attr-defined]


@asynccontextmanager
async def serve_app(app: object) -> AsyncIterator[RunningHub]:
    """Any ASGI app (with its lifespan) on a real uvicorn on 127.0.0.1:<random port>."""
    import asyncio

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,  # type: ignore[arg-type]
                       ws_per_message_deflate=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(60):
        while not server.started:  # uvicorn has no started event to wait on
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    try:
        yield RunningHub(app, sock.getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


@asynccontextmanager
async def running_hub(
    config: Path, data: Path, *, redis_url: str | None = None, prefix: str = "gridhub",
    with_worker: bool = False, **settings_kw: object,
) -> AsyncIterator[RunningHub]:
    """The hub (API, console, bus, store) built by ``build_app`` on a real uvicorn on port
    0; cameras and detection only ``with_worker``; other Settings fields by keyword."""
    from hub.cli import build_app
    from hub.config import load_config
    from hub.settings import Settings

    settings = Settings(
        config_dir=config, data_dir=data, port=0, with_worker=with_worker,
        max_body_bytes=64 * 1024, redis_url=redis_url, redis_prefix=prefix,
        **settings_kw,  # type: ignore[arg-type]
    )
    async with serve_app(build_app(settings, load_config(config))) as hub:
        yield hub


@pytest.fixture
async def hub_server(demo_config: Path, tmp_path: Path) -> AsyncIterator[RunningHub]:
    """The hub with the in-memory bus."""
    async with running_hub(demo_config, tmp_path / "data") as hub:
        yield hub


@pytest.fixture
async def hub_server_redis(
    demo_config: Path, tmp_path: Path, redis_prefix: str
) -> AsyncIterator[RunningHub]:
    """The hub with the real Redis as its bus."""
    async with running_hub(
        demo_config, tmp_path / "data", redis_url=REDIS_URL, prefix=redis_prefix
    ) as hub:
        yield hub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """``gridhub run`` as a child process (the real thing, as a user starts it)."""

    def __init__(self, config: Path, data: Path, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.config, self.data, self.log_path = config, data, log
        self.extra = extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: object = None

    def start(self) -> None:
        import subprocess
        import sys

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "run", "--config", str(self.config), "--data",
             str(self.data), "--port", str(self.port), *self.extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # type: ignore[attr-defined]
                raise RuntimeError(f"gridhub exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gridhub did not answer:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        self.proc.wait(10)  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:  # type: ignore[attr-defined]
            self.proc.terminate()  # type: ignore[attr-defined]
            try:
                self.proc.wait(20)  # type: ignore[attr-defined]
            except Exception:
                self.kill()
        self._log.close()

    def token(self, user: str, pw: str = "demo") -> str:
        import httpx

        r = httpx.post(f"{self.url}/api/auth/token", data={"username": user, "password": pw})
        r.raise_for_status()
        return str(r.json()["access_token"])

    def wait_incident(self, token: str, timeout: float = 120) -> dict[str, object]:
        """Wait (on the WebSocket) for the first incident the real detector raises."""
        import json

        import httpx
        from websockets.sync.client import connect

        items = httpx.get(f"{self.url}/api/incidents", headers={"Authorization": f"Bearer {token}"}
                          ).json()["items"]
        if items:
            return dict(items[0])
        with connect(f"ws://127.0.0.1:{self.port}/ws?token={token}", open_timeout=10) as ws:
            import time

            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no incident:\n{self.log_path.read_text()[-3000:]}")
                ev = json.loads(ws.recv(timeout=left))
                if ev["type"] == "incident.created":
                    return dict(ev["data"])


@pytest.fixture
def demo_process(tmp_path: Path) -> Iterator[HubProcess]:
    """The demo as `make demo` runs it (demo config, real detector), on a free port."""
    p = HubProcess(DEMO, tmp_path / "data", tmp_path / "gridhub.log")
    p.start()
    yield p
    p.stop()
