"""Runtime settings of one GridHub process (not the site configuration).

Built explicitly by the CLI or a test and passed to ``create_app``; nothing here is a
module-level singleton. Secrets and deployment choices come from the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    config_dir: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    redis_prefix: str = "gridhub"
    with_worker: bool = True  # run ingest + detection in this process
    max_body_bytes: int = 1 << 20

    @classmethod
    def from_env(cls, config_dir: Path, data_dir: Path, **kw: object) -> Settings:
        env = os.environ
        return cls(
            config_dir=config_dir,
            data_dir=data_dir,
            redis_url=env.get("GRIDHUB_REDIS_URL") or None,
            redis_prefix=env.get("GRIDHUB_REDIS_PREFIX", "gridhub"),
            **kw,  # type: ignore[arg-type]
        )
