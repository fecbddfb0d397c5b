"""Evidence export: the installation's signing key and signed evidence bundles.

The installation has one Ed25519 signing key, created on first start in the data folder
(``evidence-signing-key.pem``, PKCS#8 PEM, mode 0600) and never replaced: a key file
that cannot be read is a start-up error, not a reason to make a new key, because every
bundle exported so far names that key. Its fingerprint is the SHA-256 (hex) of the raw
32-byte public key.

A bundle (``POST /api/incidents/{id}/export``, :mod:`hub.api_evidence`) is a ZIP whose
members are all stored uncompressed:

- ``incident.json``: the incident as the API returns it;
- ``timeline.json``: the whole hash-chained timeline, each entry exactly as hashed, with
  ``prev_hash`` and ``hash`` (ending with the export's own entry);
- ``snapshots/``: the detector's snapshot (with the overlay) and its frame (without);
- ``photos/``: the photos people attached;
- ``clips/``: the video clips, from :attr:`EvidenceService.clip_files`;
- ``public_key.pem``: the installation's public key;
- ``manifest.json``: format, incident, who exported it, when and why, the key
  fingerprint, every other file's path, size and SHA-256, and the chain of custody;
- ``manifest.sig``: the raw 64-byte Ed25519 signature of the exact bytes of
  ``manifest.json`` (``openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin
  -in manifest.json -sigfile manifest.sig`` checks it).

``gridhub verify`` (:mod:`hub.evidence_verify`) checks a bundle.

Clips: the recorder sets ``EvidenceService.clip_files`` (a callable ``incident ->
list[Path]``, called in a worker thread) to the files of an incident's clips. Until then
the default takes the clip path the incident record names (a ``clip_path`` field, or the
``clip_path`` attribute), relative to the data folder, if that file exists inside it.

Exceptions::

    EvidenceError
     +-- EvidenceKeyError   the key file cannot be read or is not an Ed25519 private key
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import stat
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.engine import Connection

from hub import schema as t
from hub.chain import GENESIS
from hub.evidence_verify import MANIFEST, PUBLIC_KEY, SIGNATURE, fingerprint
from hub.models import Incident, User
from hub.store import Store

if TYPE_CHECKING:
    from hub.app import HubState
    from hub.store import Store

log = logging.getLogger(__name__)

KEY_FILE = "evidence-signing-key.pem"
KEY_SET = "evidence-keys"  # documents scope: the public key of every hub of the installation
SIGNATURE_ENCODING = "raw 64-byte Ed25519 signature over the exact bytes of manifest.json"
FINGERPRINT_OF = "SHA-256 (hex) of the raw 32-byte Ed25519 public key"
CHUNK = 1 << 20
PHOTO_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}

ClipFiles = Callable[[Incident], list[Path]]


class EvidenceError(Exception):
    """Evidence cannot be signed or exported."""


class EvidenceKeyError(EvidenceError):
    """The signing key file cannot be read or is not an Ed25519 private key."""


# --- the signing key ---------------------------------------------------------------------


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """The installation's Ed25519 key, with its public half ready to hand out."""

    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.public)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def load_or_create_key(data_dir: Path) -> SigningKey:
    """The key in ``data_dir``, created (mode 0600) if there is none; never overwritten.
    Raises EvidenceKeyError naming the file when it is there but unusable."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _create(path)
    try:
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        raise EvidenceKeyError(f"{path}: cannot read the evidence signing key: {err}") from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise EvidenceKeyError(
            f"{path}: not a usable PEM private key ({err}). It signs this installation's "
            "evidence bundles, so GridHub does not replace it: restore it from a backup, "
            "or move it away to have a new key made (bundles signed before keep verifying "
            "against the old public key only)") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise EvidenceKeyError(f"{path}: a {type(key).__name__.lstrip('_')} key, not an "
                               "Ed25519 key; restore the installation's key or move it away")
    if mode & 0o077:
        log.warning("evidence: %s is readable by others (mode %o); chmod 600 it", path, mode)
    return SigningKey(private=key, path=path)


def _create(path: Path) -> None:
    """Write a new key next to ``path`` and link it into place: a key file is either absent
    or complete, and of two processes starting at once, the first one's key wins."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # made by another process meanwhile: that one is the key
        log.info("evidence: created the signing key %s", path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- the service: key and clip hook on a running hub ------------------------------------------


def default_clip_files(data_dir: Path) -> ClipFiles:
    """The clip the incident record names (``clip_path`` field or attribute), if it is a
    file inside ``data_dir``; nothing else is ever read."""
    root = data_dir.resolve()

    def clip_files(inc: Incident) -> list[Path]:
        named = getattr(inc, "clip_path", None) or inc.attributes.get("clip_path")
        if not isinstance(named, str | Path) or not str(named):
            return []
        path = (root / named).resolve()
        if not path.is_relative_to(root):
            log.warning("evidence: incident %s names a clip outside the data folder: %s",
                        inc.id, named)
            return []
        return [path] if path.is_file() else []

    return clip_files


class EvidenceService:
    """Holds the signing key of a running hub (loaded at start: a bad key stops the start)
    and the clip hook the recorder sets."""

    def __init__(self, data_dir: Path, store: Store | None = None) -> None:
        self.data_dir = data_dir
        self.store = store
        self.clip_files: ClipFiles = default_clip_files(data_dir)
        self.installation_id: str | None = None  # from the store, at start
        self._key: SigningKey | None = None

    @classmethod
    def from_state(cls, state: HubState) -> EvidenceService:
        """Service factory for ``create_app(services=[...])``."""
        return cls(state.settings.data_dir, state.store)

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            raise EvidenceError("the evidence service has not started")
        return self._key

    async def start(self) -> None:
        import asyncio

        self._key = await asyncio.to_thread(load_or_create_key, self.data_dir)
        if self.store is not None:
            self.installation_id = (await self.store.installation())["id"]
            await self._register()
        log.info("evidence: signing key %s (fingerprint %s)", self._key.path,
                 self._key.fingerprint)

    async def _register(self) -> None:
        """Put this hub's public key in the installation's key set (the store's documents,
        scope ``KEY_SET``), once: hubs sharing a store each sign with their own key, and
        ``GET /api/evidence/key`` lists them all."""
        assert self.store is not None and self._key is not None
        fp = self._key.fingerprint
        if await self.store.get_doc(KEY_SET, fp) is None:
            from hub.settings import node_id

            await self.store.put_doc(KEY_SET, fp, {
                "fingerprint": fp, "public_key_pem": self._key.public_pem.decode(),
                "node": node_id(self.data_dir),
                "registered_at": datetime.now(UTC).isoformat(timespec="seconds")})

    async def installation_keys(self) -> list[dict[str, Any]]:
        """The installation's public keys (every hub that has run on this store), oldest
        first; just this hub's key without a store."""
        if self.store is None:
            return [{"fingerprint": self.key.fingerprint, "node": None, "registered_at": None,
                     "public_key_pem": self.key.public_pem.decode()}]
        docs = list((await self.store.list_docs(KEY_SET)).values())
        return sorted(docs, key=lambda d: (d.get("registered_at") or "", d["fingerprint"]))

    async def stop(self) -> None:
        pass


def find_evidence(state: HubState) -> EvidenceService | None:
    """The running EvidenceService of an app, if it was started with one."""
    return next((s for s in state.services if isinstance(s, EvidenceService)), None)


# --- what goes into a bundle -------------------------------------------------------------------


async def timeline_rows(store: Store, incident_id: str) -> list[dict[str, Any]]:
    """The incident's timeline exactly as stored and hashed (``at`` as stored text, the
    previous hash and the hash), so anyone can recompute the chain."""
    tl = t.timeline.c
    rows = await store.read(lambda conn: conn.execute(
        sa.select(tl.seq, tl.at, tl.actor, tl.action, tl.from_state, tl.to_state, tl.detail,
                  tl.prev_hash, tl.hash).where(tl.incident_id == incident_id)
        .order_by(tl.seq)).all())
    return [{"seq": r[0], "at": r[1], "actor": r[2], "action": r[3], "from_state": r[4],
             "to_state": r[5], "detail": json.loads(r[6]), "prev_hash": r[7], "hash": r[8]}
            for r in rows]


@dataclass
class Member:
    """One file of a bundle: bytes in memory, or a file on disk (read in chunks)."""

    path: str
    data: bytes | None = None
    file: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


async def incident_members(store: Store, inc: Incident, timeline: list[dict[str, Any]],
                           clips: Iterable[Path]) -> list[Member]:
    """incident.json, timeline.json, snapshot and frame, photos and clips of ``inc``."""
    members = [
        Member("incident.json", _json(inc.model_dump(mode="json")), meta={"kind": "incident"}),
        Member("timeline.json", _json({
            "incident_id": inc.id, "genesis": GENESIS,
            "hashing": "hash = sha256(prev_hash + canonical JSON of {incident, seq, at, "
                       "actor, action, from_state, to_state, detail}; sorted keys, no spaces)",
            "entries": timeline}), meta={"kind": "timeline", "entries": len(timeline)}),
    ]
    for table, name, kind in ((t.snapshots, "snapshots/snapshot.jpg", "snapshot"),
                              (t.frames, "snapshots/frame.jpg", "frame")):
        row = await store.read(functools.partial(_first, sa.select(
            table.c.at, table.c.jpeg).where(table.c.incident_id == inc.id)))
        if row is not None:
            members.append(Member(name, bytes(row[1]), meta={"kind": kind, "at": row[0]}))
    p = t.photos.c
    photos = await store.read(lambda conn: conn.execute(
        sa.select(p.id, p.at, p.by, p.content_type, p.sha256, p.data)
        .where(p.incident_id == inc.id).order_by(p.at, p.id)).all())
    for pid, at, by, ctype, digest, data in photos:
        if pid not in inc.photos:
            continue
        members.append(Member(
            f"photos/{_safe(pid)}.{PHOTO_EXT.get(ctype, 'bin')}", bytes(data),
            meta={"kind": "photo", "photo_id": pid, "content_type": ctype, "uploaded_at": at,
                  "uploaded_by": by, "sha256_at_upload": digest}))
    taken: set[str] = set()
    for clip in clips:
        name = _safe(clip.name) or "clip"
        stem, dot, ext = name.rpartition(".")
        n = 1
        while f"clips/{name}" in taken:
            n += 1
            name = f"{stem}-{n}.{ext}" if dot else f"{name}-{n}"
        taken.add(f"clips/{name}")
        # recorded_as: the name the recorder's timeline entry (``clip``) gives it, with the
        # SHA-256 taken when it was cut
        members.append(Member(f"clips/{name}", file=clip,
                              meta={"kind": "clip", "recorded_as": clip.name}))
    return members


def _first(stmt: Any, conn: Connection) -> Any:
    return conn.execute(stmt).first()


def custody(inc: Incident, timeline: list[dict[str, Any]], exported: dict[str, Any],
            camera_source: Callable[[str], str | None]) -> dict[str, Any]:
    """Who or what recorded the incident, who handled it (from the timeline), who exported
    it, when and why."""
    cameras = [c for c in [inc.camera_id] if c]
    for e in timeline:
        actor = str(e["actor"])
        if actor.startswith("detector:") and actor[9:] not in cameras:
            cameras.append(actor[9:])
    return {
        "recorded": {
            "source": inc.source, "reporter": inc.reporter, "reports": inc.reports,
            "cameras": [{"id": c, "name": inc.camera_name if c == inc.camera_id else None,
                         "source": camera_source(c)} for c in cameras],
            "zone": inc.zone, "started_at": _iso(inc.started_at),
            "last_seen_at": _iso(inc.last_seen_at), "clip_start": _iso(inc.clip_start),
            "clip_end": _iso(inc.clip_end),
        },
        "handled": [{k: e[k] for k in ("seq", "at", "actor", "action", "from_state",
                                       "to_state")} for e in timeline],
        "exported": exported,
    }


def write_bundle(out: IO[bytes], members: list[Member], manifest: dict[str, Any],
                 key: SigningKey) -> dict[str, Any]:
    """Write the bundle to ``out`` (seekable): the members, public_key.pem, then
    manifest.json (``manifest`` completed with every file's size and SHA-256) and its
    signature. Members are stored uncompressed. Returns the manifest."""
    when = _zip_time(manifest.get("exported_at"))
    files: list[dict[str, Any]] = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for m in [*members, Member(PUBLIC_KEY, key.public_pem, meta={"kind": "public_key"})]:
            size, digest = _add(zf, m, when)
            files.append({"path": m.path, "size": size, "sha256": digest, **m.meta})
        manifest = {**manifest, "files": files}
        body = json.dumps(manifest, ensure_ascii=False, indent=2).encode()
        _add(zf, Member(MANIFEST, body), when)
        _add(zf, Member(SIGNATURE, key.sign(body)), when)
    return manifest


def _add(zf: zipfile.ZipFile, m: Member, when: tuple[int, int, int, int, int, int]
         ) -> tuple[int, str]:
    info = zipfile.ZipInfo(m.path, date_time=when)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    h = hashlib.sha256()
    if m.data is not None:
        zf.writestr(info, m.data)
        h.update(m.data)
        return len(m.data), h.hexdigest()
    assert m.file is not None
    size = 0
    with m.file.open("rb") as src:
        info.file_size = os.fstat(src.fileno()).st_size
        with zf.open(info, "w", force_zip64=info.file_size > (1 << 30)) as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                h.update(chunk)
                size += len(chunk)
    return size, h.hexdigest()


def exporter(user: User) -> dict[str, Any]:
    return {"username": user.username, "name": user.name, "role": user.role}


def bundle_name(incident_id: str, at: datetime) -> str:
    return f"evidence-{_safe(incident_id)}-{at.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}.zip"


def _json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=2).encode()


def _safe(name: str) -> str:
    """A file name made of letters, digits, ``.``, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:120]


def _iso(v: datetime | None) -> str | None:
    return v.astimezone(UTC).isoformat() if v is not None else None


def _zip_time(at: Any) -> tuple[int, int, int, int, int, int]:
    try:
        d = datetime.fromisoformat(str(at)).astimezone(UTC)
    except ValueError:
        d = datetime.now(UTC)
    return (max(d.year, 1980), d.month, d.day, d.hour, d.minute, d.second)
