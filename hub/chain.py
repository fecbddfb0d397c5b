"""The timeline's hash chain, on its own so that checking a chain (``gridhub verify`` of
an evidence bundle) needs neither the store nor the web stack."""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64  # the "previous hash" of an incident's first entry


def entry_hash(prev_hash: str, incident_id: str, entry: dict[str, Any]) -> str:
    """Hash chaining one timeline entry to the one before it."""
    body = json.dumps(
        {"incident": incident_id, **entry}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()
