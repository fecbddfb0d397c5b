"""Runtime settings of one GridHub process (not the site configuration).

Built explicitly by the CLI or a test and passed to ``create_app``; nothing here is a
module-level singleton. Secrets and deployment choices come from the environment.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    config_dir: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    database_url: str | None = None  # PostgreSQL for the scaled set-up; default SQLite in data_dir
    redis_prefix: str = "gridhub"
    with_worker: bool = True  # run ingest + detection in this process
    max_body_bytes: int = 1 << 20
    # WebRTC (WHIP ingest). Host addresses ICE may offer (empty: every interface) and the
    # UDP port range it binds in; STUN/TURN only when configured (air-gapped by default).
    ice_hosts: tuple[str, ...] = ()
    ice_port_min: int | None = None
    ice_port_max: int | None = None
    ice_servers: tuple[str, ...] = ()  # stun:/turn: URLs

    @classmethod
    def from_env(cls, config_dir: Path, data_dir: Path, **kw: object) -> Settings:
        env = os.environ
        return cls(
            config_dir=config_dir,
            data_dir=data_dir,
            redis_url=env.get("GRIDHUB_REDIS_URL") or None,
            database_url=env.get("GRIDHUB_DATABASE_URL") or None,
            redis_prefix=env.get("GRIDHUB_REDIS_PREFIX", "gridhub"),
            ice_hosts=_csv(env.get("GRIDHUB_ICE_HOSTS")),
            ice_port_min=_port_range(env.get("GRIDHUB_ICE_PORTS"))[0],
            ice_port_max=_port_range(env.get("GRIDHUB_ICE_PORTS"))[1],
            ice_servers=_csv(env.get("GRIDHUB_ICE_SERVERS")),
            **kw,  # type: ignore[arg-type]
        )


def store_location(settings: Settings) -> str | Path:
    """Where the store lives: GRIDHUB_DATABASE_URL, else the SQLite file in the data folder."""
    return settings.database_url or settings.data_dir / "gridhub.sqlite3"


def node_id(data_dir: Path) -> str:
    """This hub's data folder's id (``node-id`` in it, made on first use): which folder
    holds a recorded file, when several hubs share one store."""
    path = data_dir / "node-id"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    data_dir.mkdir(parents=True, exist_ok=True)
    made = f"node-{uuid.uuid4().hex[:12]}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another process made it first: take theirs
        return path.read_text().strip() or made
    with os.fdopen(fd, "w") as fh:
        fh.write(made + "\n")
    return made


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _port_range(value: str | None) -> tuple[int | None, int | None]:
    """``"50000-50100"`` -> (50000, 50100); unset -> (None, None)."""
    if not value:
        return None, None
    lo, sep, hi = value.partition("-")
    try:
        a, b = int(lo), int(hi if sep else lo)
    except ValueError as err:
        raise ValueError(f"GRIDHUB_ICE_PORTS: expected MIN-MAX, got {value!r}") from err
    if not (1024 <= a <= b <= 65535):
        raise ValueError(f"GRIDHUB_ICE_PORTS: need 1024 <= MIN <= MAX <= 65535, got {value!r}")
    return a, b
