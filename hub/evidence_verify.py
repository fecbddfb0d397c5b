"""Checking an evidence bundle (``gridhub verify``), without the hub or its store.

A bundle holds when: it is a readable ZIP; ``manifest.sig`` is a valid Ed25519 signature
of ``manifest.json`` by the bundle's ``public_key.pem`` (and that key is the trusted one,
when one is given); the manifest names that key's fingerprint; every file the manifest
lists is there with its size and SHA-256, and nothing else is; the timeline's hash chain
is intact and ends with the export; each photo still has the hash it had when uploaded,
and each clip the hash the recorder put into the timeline when it cut it.

The bytes of each member are read straight from the ZIP (members are stored), so a
changed byte shows as a SHA-256 mismatch as well as a CRC-32 one, and the report names
the member. :func:`verify_bundle` returns a :class:`Verification`; :func:`render` turns
it into the lines the command prints.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.chain import GENESIS, entry_hash

# The bundle format (hub.evidence writes it; kept here so that checking a bundle imports
# nothing of the hub but the hash chain).
FORMAT = "gridhub-evidence/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()

CHUNK = 1 << 20
KEEP = {MANIFEST, SIGNATURE, PUBLIC_KEY, "timeline.json", "incident.json"}
KEEP_LIMIT = 64 << 20  # the files read into memory are small; a huge one is suspect
UNLISTED_OK = {MANIFEST, SIGNATURE}


class KeyFileError(Exception):
    """The trusted key given is not an Ed25519 public key."""


PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def load_public_keys(pem: bytes, what: str) -> list[Ed25519PublicKey]:
    """Every public key in ``pem`` (one, or several one after the other: the keys of an
    installation whose hubs each sign with their own); at least one."""
    blocks = PEM_BLOCK.findall(pem)
    if not blocks:
        raise KeyFileError(f"{what}: not a PEM public key (no BEGIN PUBLIC KEY block in it)")
    return [load_public_key(b, what) for b in blocks]


def load_public_key(pem: bytes, what: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"{what}: not a PEM public key ({err})") from err
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{what}: a {type(key).__name__.lstrip('_')}, not an Ed25519 key")
    return key


@dataclass
class Check:
    name: str  # a member's path, or "signature", "key", "bundle"
    ok: bool
    note: str
    checked: bool = True  # False: could not be checked (no readable manifest)


@dataclass
class Verification:
    bundle: Path
    checks: list[Check] = field(default_factory=list)
    fingerprint: str | None = None  # of the bundle's public key
    trusted: list[str] | None = None  # fingerprints of the --key keys, when given
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok and c.checked for c in self.checks)

    @property
    def failing(self) -> list[str]:
        return list(dict.fromkeys(c.name for c in self.checks if not c.ok))

    def add(self, name: str, ok: bool, note: str, checked: bool = True) -> None:
        self.checks.append(Check(name, ok, note, checked))


@dataclass
class _Read:
    size: int = 0
    sha256: str = ""
    data: bytes | None = None
    error: str | None = None  # unreadable: headers, truncation, decompression
    crc_ok: bool = True


def verify_bundle(bundle: Path, trusted_pem: bytes | None = None) -> Verification:
    """Check everything that can be checked; never raises for a bad bundle.
    ``trusted_pem``: one or more PEM public keys, the bundle's key must be one of them."""
    v = Verification(bundle)
    trusted = load_public_keys(trusted_pem, "the trusted key") \
        if trusted_pem is not None else None
    if trusted is not None:
        v.trusted = [fingerprint(k) for k in trusted]
    try:
        zf = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        v.add("bundle", False, f"not a readable ZIP file ({err})")
        return v
    with zf, bundle.open("rb") as raw:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        read: dict[str, _Read] = {}
        for info in infos:
            if names.count(info.filename) > 1:
                v.add(info.filename, False, f"appears {names.count(info.filename)} times in "
                      "the ZIP")
            read[info.filename] = _read(zf, raw, info)
    _check(v, read, trusted)
    return v


def _read(zf: zipfile.ZipFile, raw: IO[bytes], info: zipfile.ZipInfo) -> _Read:
    """Size, SHA-256 and (for the small files the checks need) the bytes of one member;
    ``error`` says how it is damaged (CRC, headers, truncation)."""
    keep = info.filename in KEEP and info.file_size <= KEEP_LIMIT
    h, out, crc, size = hashlib.sha256(), bytearray(), 0, 0
    r = _Read()
    try:
        if info.flag_bits & 0x1:
            return _Read(error="encrypted: not a GridHub bundle member")
        if info.compress_type == zipfile.ZIP_STORED:
            raw.seek(info.header_offset)
            head = raw.read(30)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                return _Read(error="damaged: its local header is not where the ZIP "
                             "directory says")
            n, m = struct.unpack("<HH", head[26:30])
            name = raw.read(n)
            if name.decode("utf-8" if info.flag_bits & 0x800 else "cp437",
                           "replace") != info.orig_filename:
                return _Read(error="damaged: its local header names another file")
            raw.seek(m, 1)
            left = info.compress_size
            while left > 0:
                chunk = raw.read(min(CHUNK, left))
                if not chunk:
                    r.error = f"truncated: {left} byte(s) missing"
                    break
                left -= len(chunk)
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
                h.update(chunk)
                if keep:
                    out += chunk
            r.crc_ok = crc == info.CRC
        else:  # not how GridHub writes bundles, but a re-packed bundle may still verify
            with zf.open(info) as f:
                while chunk := f.read(CHUNK):
                    size += len(chunk)
                    h.update(chunk)
                    if keep:
                        out += chunk
    except zipfile.BadZipFile as err:
        if "CRC" in str(err):
            r.crc_ok = False
        else:
            r.error = f"damaged: {err}"
    except (zlib.error, EOFError, OSError, NotImplementedError) as err:
        r.error = f"damaged: {err}"
    r.size, r.sha256 = size, h.hexdigest()
    r.data = bytes(out) if keep and r.error is None else None
    return r


def _check(v: Verification, read: dict[str, _Read],
           trusted: list[Ed25519PublicKey] | None) -> None:
    # The key inside the bundle, and whether it is the trusted one.
    bundle_key: Ed25519PublicKey | None = None
    pem = read.get(PUBLIC_KEY)
    if pem is not None and pem.data is not None:
        try:
            bundle_key = load_public_key(pem.data, PUBLIC_KEY)
            v.fingerprint = fingerprint(bundle_key)
        except KeyFileError as err:
            v.add(PUBLIC_KEY, False, str(err))
    key = bundle_key
    if trusted is not None and v.trusted is not None:
        if v.fingerprint in v.trusted:
            v.add("key", True, f"the bundle's key is the trusted key {v.fingerprint}")
            key = trusted[v.trusted.index(v.fingerprint)]
        else:  # the signature is then checked with a trusted key (and fails)
            if v.fingerprint is not None:
                v.add("key", False, f"signed with key {v.fingerprint}, not "
                      + ("the trusted key " if len(v.trusted) == 1
                         else "one of the trusted keys ") + ", ".join(v.trusted))
            key = trusted[0]

    # The manifest and its signature.
    manifest: dict[str, Any] | None = None
    mread, sread = read.get(MANIFEST), read.get(SIGNATURE)
    if mread is None:
        v.add(MANIFEST, False, "missing")
    elif mread.data is not None:
        try:
            doc = json.loads(mread.data.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} manifest")
            if not isinstance(doc.get("files"), list):
                raise ValueError("no list of files")
            manifest = v.manifest = doc
        except (ValueError, UnicodeDecodeError) as err:
            v.add(MANIFEST, False, f"unreadable: {err}")
    if sread is None:
        v.add(SIGNATURE, False, "missing")
    elif sread.data is not None and len(sread.data) != 64:
        v.add(SIGNATURE, False, f"{len(sread.data)} bytes, not a 64-byte Ed25519 signature")
    if key is None:
        v.add("signature", False, "cannot be checked: no usable public key")
    elif mread is None or sread is None or mread.data is None or sread.data is None:
        v.add("signature", False, f"cannot be checked: {MANIFEST} or {SIGNATURE} unreadable")
    else:
        try:
            key.verify(sread.data, mread.data)
            v.add("signature", True, f"{SIGNATURE} is a valid signature of {MANIFEST} by key "
                  f"{fingerprint(key)}")
        except InvalidSignature:
            v.add("signature", False, f"{SIGNATURE} does not verify over {MANIFEST} with "
                  f"key {fingerprint(key)}: one of them was changed, or another key signed it")
    if manifest is not None and key is not None and \
            manifest.get("key_fingerprint") != fingerprint(key):
        v.add("key", False, f"the manifest names key {manifest.get('key_fingerprint')}, "
              f"not {fingerprint(key)}")

    # Every member: listed, intact, as the manifest says.
    listed: dict[str, dict[str, Any]] = {}
    for f in (manifest or {}).get("files", []):
        if isinstance(f, dict) and isinstance(f.get("path"), str):
            listed[f["path"]] = f
    crc = "; its CRC-32 does not match either: the bytes changed after the ZIP was made"
    for name, r in read.items():
        if r.error is not None:
            v.add(name, False, r.error)
            continue
        if name in UNLISTED_OK:
            if not r.crc_ok:
                v.add(name, False, "damaged: CRC-32 mismatch (the bytes changed after the "
                      "ZIP was made)")
            elif not any(c.name == name for c in v.checks):
                v.add(name, True, f"{r.size} bytes, readable")
            continue
        if manifest is None:
            v.add(name, r.crc_ok, f"{r.size} bytes, not checked: no readable manifest"
                  + ("" if r.crc_ok else crc), checked=False)
            continue
        f = listed.get(name)
        if f is None:
            v.add(name, False, "not listed in the manifest (added to the bundle)")
        elif f.get("size") != r.size:
            v.add(name, False, f"{r.size} bytes, the manifest says {f.get('size')}")
        elif f.get("sha256") != r.sha256:
            v.add(name, False, f"SHA-256 {r.sha256} differs from the manifest's "
                  f"{f.get('sha256')}" + ("" if r.crc_ok else crc))
        elif not r.crc_ok:
            v.add(name, False, "its bytes match the manifest but not the CRC-32 in the ZIP "
                  "directory: the ZIP was damaged")
        elif not any(c.name == name for c in v.checks):
            v.add(name, True, f"{r.size} bytes, SHA-256 {r.sha256}")
    for name in listed:
        if name not in read:
            v.add(name, False, "listed in the manifest but missing from the bundle")
    if manifest is not None:
        _contents(v, manifest, read)


def _contents(v: Verification, manifest: dict[str, Any], read: dict[str, _Read]) -> None:
    """What the files say agrees: the timeline's hash chain holds and ends with this export;
    the record is this incident; each photo has the hash recorded when it was uploaded, each
    clip the hash recorded when the recorder cut it."""
    tl = read.get("timeline.json")
    iid = manifest.get("incident_id")
    entries: list[dict[str, Any]] = []
    if tl is not None and tl.data is not None and _intact(v, "timeline.json"):
        try:
            doc = json.loads(tl.data)
            entries = list(doc["entries"])
            prev = GENESIS
            for e in entries:
                body = {k: e[k] for k in ("seq", "at", "actor", "action", "from_state",
                                          "to_state", "detail")}
                if e["prev_hash"] != prev or entry_hash(prev, str(iid), body) != e["hash"]:
                    raise ValueError(f"hash chain broken at entry #{e['seq']}")
                prev = e["hash"]
            exported = (manifest.get("custody") or {}).get("exported") or {}
            last = entries[-1] if entries else {}
            if (last.get("action") != "export" or last.get("seq") != exported.get("timeline_seq")
                    or last.get("actor") != (manifest.get("exported_by") or {}).get("username")
                    or (last.get("detail") or {}).get("reason") != manifest.get("reason")):
                raise ValueError("does not end with this export (who, why) as the manifest "
                                 "says")
            _replace(v, "timeline.json", True, f"hash chain of {len(entries)} entries "
                     "intact, ending with this export")
        except (ValueError, KeyError, TypeError, IndexError) as err:
            _replace(v, "timeline.json", False, f"{err}")
    inc = read.get("incident.json")
    if inc is not None and inc.data is not None and _intact(v, "incident.json"):
        try:
            if json.loads(inc.data).get("id") != iid:
                _replace(v, "incident.json", False, f"is not incident {iid}")
        except (ValueError, AttributeError) as err:
            _replace(v, "incident.json", False, f"unreadable: {err}")
    uploads = {(e.get("detail") or {}).get("photo"): (e.get("detail") or {}).get("sha256")
               for e in entries if e.get("action") == "photo"}
    cuts = {str((e.get("detail") or {}).get("file", "")).rsplit("/", 1)[-1]:
            (e.get("detail") or {}).get("sha256") for e in entries if e.get("action") == "clip"}
    for f in manifest.get("files", []):
        if not isinstance(f, dict) or f.get("kind") not in ("photo", "clip"):
            continue
        if f["kind"] == "photo":
            recorded = {f.get("sha256_at_upload"), uploads.get(f.get("photo_id"))} - {None}
            when = "when it was uploaded"
        else:
            recorded = {cuts.get(str(f.get("recorded_as")))} - {None}
            when = "when the recorder cut it (the timeline's clip entry)"
        if recorded and recorded != {f.get("sha256")} and _intact(v, str(f.get("path"))):
            _replace(v, str(f.get("path")), False, f"its SHA-256 is not the one recorded {when}")


def _intact(v: Verification, name: str) -> bool:
    return any(c.name == name and c.ok for c in v.checks)


def _replace(v: Verification, name: str, ok: bool, note: str) -> None:
    for c in v.checks:
        if c.name == name:
            c.ok, c.note = ok, note
            return
    v.add(name, ok, note)


def render(v: Verification) -> list[str]:
    """The report ``gridhub verify`` prints: key, a line per file, custody, the verdict."""
    lines = [f"bundle: {v.bundle}"]
    if v.fingerprint:
        lines.append(f"key fingerprint (SHA-256 of the public key): {v.fingerprint}")
    if v.trusted is None:
        lines.append("NO TRUSTED KEY GIVEN (--key): the signature was checked with the key "
                     "inside the bundle, which shows the bundle is unchanged since it was "
                     "signed, not who signed it. Compare the fingerprint above with the "
                     "installation's (GET /api/evidence/key, or a copy you hold), or pass "
                     "--key.")
    else:
        lines.append(f"trusted key{'s' if len(v.trusted) > 1 else ''} (--key): "
                     + ", ".join(v.trusted))
    lines.append("")
    for c in v.checks:
        mark = "OK" if c.ok and c.checked else "--" if c.ok else "FAIL"
        lines.append(f"{mark:<4}  {c.name}: {c.note}")
    m = v.manifest
    if m is not None:
        signed = next((c.ok for c in v.checks if c.name == "signature"), False)
        lines += ["", "chain of custody" + ("" if signed else " (from a manifest whose "
                                            "signature did NOT verify)") + ":"]
        cu = m.get("custody") or {}
        lines.append(f"  installation: {m.get('installation_id')}, site: {m.get('site')}, "
                     f"incident: {m.get('incident_id')}")
        rec = cu.get("recorded") or {}
        cams = ", ".join(f"{c.get('id')} ({c.get('source') or 'unknown source'})"
                         for c in rec.get("cameras") or [])
        lines.append(f"  recorded: {rec.get('source')}" + (f" by camera {cams}" if cams else "")
                     + (f", reported by {rec['reporter']}" if rec.get("reporter") else "")
                     + f", from {rec.get('started_at')} to {rec.get('last_seen_at')}")
        for e in cu.get("handled") or []:
            move = (f" ({e.get('from_state') or ''} -> {e.get('to_state')})".replace(
                "( ->", "(->") if e.get("from_state") != e.get("to_state") else "")
            lines.append(f"  #{e.get('seq')} {e.get('at')} {e.get('actor')}: "
                         f"{e.get('action')}{move}")
        ex = cu.get("exported") or {}
        lines.append(f"  exported by {ex.get('username')} ({ex.get('name')}, {ex.get('role')}) "
                     f"at {ex.get('at')} from {ex.get('from')}, reason: {ex.get('reason')!r}")
    lines.append("")
    if v.ok:
        lines.append(f"VERIFIED: {len(v.checks)} checks passed"
                     + ("" if v.trusted else " (no trusted key given)"))
    else:
        lines.append(f"FAILED: {', '.join(v.failing)}")
    return lines
