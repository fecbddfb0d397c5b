"""Evidence endpoints: ``GET /api/evidence/key`` and ``POST /api/incidents/{id}/export``.

An export is an ``export`` action on the incident first (who, why, the bundle id and the
key fingerprint go into the hash-chained timeline, committed before anything is sent),
then the bundle (:mod:`hub.evidence`) is written to an unnamed temporary file in the data
folder and streamed from there: clips may be large, and nothing is left behind if the
client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import IO, Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hub.api import Me, St, _act, _origin
from hub.app import HubState
from hub.evidence import (
    CHUNK,
    FINGERPRINT_OF,
    SIGNATURE_ENCODING,
    EvidenceService,
    bundle_name,
    custody,
    exporter,
    find_evidence,
    incident_members,
    timeline_rows,
    write_bundle,
)
from hub.evidence_verify import FORMAT

log = logging.getLogger(__name__)
router = APIRouter()


class InstallationKey(BaseModel):
    fingerprint: str = Field(description=FINGERPRINT_OF + ".")
    public_key_pem: str
    node: str | None = Field(None, description="The data folder (hub) that signs with it.")
    registered_at: str | None = Field(None, description="When that hub first ran.")


class EvidenceKeyOut(BaseModel):
    algorithm: str = Field("Ed25519", description="Signature algorithm.")
    public_key_pem: str = Field(description="This hub's public key (PEM): the one its "
                                "exports are signed with.")
    fingerprint: str = Field(description=FINGERPRINT_OF + "; compare it out of band.")
    installation_id: str | None = Field(
        None, description="The installation the hub belongs to (named in every manifest).")
    installation_keys: list[InstallationKey] = Field(
        default_factory=list,
        description="Every hub of the installation signs with its own key (several hubs on "
        "one store); these are all of them. One hub: just its key. `gridhub verify --key` "
        "takes a file holding them all.")


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                             max_length=2000)] = Field(
        description="Why the evidence is exported (a court request, an internal review...); "
                    "recorded in the timeline and the manifest.")


def _service(state: HubState) -> EvidenceService:
    svc = find_evidence(state)
    if svc is None:
        raise HTTPException(503, "evidence export is not running on this hub")
    return svc


@router.get("/api/evidence/key", response_model=EvidenceKeyOut, tags=["evidence"])
async def evidence_key(state: St, user: Me) -> EvidenceKeyOut:
    """This hub's public evidence key and its fingerprint, and the keys of every hub of
    the installation (any signed-in user)."""
    svc = _service(state)
    keys = [InstallationKey.model_validate(k) for k in await svc.installation_keys()]
    return EvidenceKeyOut(public_key_pem=svc.key.public_pem.decode(),
                          fingerprint=svc.key.fingerprint, installation_id=svc.installation_id,
                          installation_keys=keys)


@router.post(
    "/api/incidents/{incident_id}/export", tags=["evidence"], response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}},
                     "description": "The signed evidence bundle (see docs/evidence.md)."},
               403: {"description": "not a reviewer or admin"},
               404: {"description": "no such incident (or not visible)"}},
)
async def export_incident(state: St, user: Me, incident_id: str, body: ExportBody,
                          request: Request) -> StreamingResponse:
    """Export the incident as a signed evidence bundle (reviewer, admin): the record, the
    whole timeline, snapshots, photos and clips, a manifest with every file's SHA-256 and
    the chain of custody, signed with the installation's key. The export is recorded in
    the timeline (who, why) before the bundle is sent; check it with ``gridhub verify``."""
    svc = _service(state)
    key = svc.key
    bundle_id = uuid.uuid4().hex
    inc = await _act(state, user, incident_id, "export", _origin(request), reason=body.reason,
                     bundle=bundle_id, key=key.fingerprint)
    timeline = await timeline_rows(state.store, inc.id)
    mine = next((e["seq"] for e in timeline if e["action"] == "export"
                 and e["detail"].get("bundle") == bundle_id), None)
    if mine is None:  # committed before we got here; missing means the store lost it
        raise HTTPException(500, "the export entry is not in the timeline")
    timeline = [e for e in timeline if e["seq"] <= mine]  # as of the export
    entry = timeline[-1]
    clips = await asyncio.to_thread(svc.clip_files, inc)
    members = await incident_members(state.store, inc, timeline, clips)

    def camera_source(cam_id: str) -> str | None:
        cam = state.camera_registry.get(cam_id)
        if cam is not None:
            return cam.source.type
        return "patrol" if state.site.unit(cam_id) is not None else None

    exported = {**exporter(user), "at": entry["at"], "reason": body.reason,
                "timeline_seq": entry["seq"], "from": entry["detail"].get("from")}
    manifest: dict[str, Any] = {
        "format": FORMAT, "bundle_id": bundle_id, "incident_id": inc.id,
        "installation_id": svc.installation_id, "site": state.site.site.name,
        "exported_by": exporter(user), "exported_at": entry["at"], "reason": body.reason,
        "key_algorithm": "Ed25519", "key_fingerprint": key.fingerprint,
        "fingerprint_of": FINGERPRINT_OF, "signature": SIGNATURE_ENCODING,
        "custody": custody(inc, timeline, exported, camera_source),
    }
    def scratch() -> IO[bytes]:  # unnamed, in the data folder: clips may not fit in /tmp
        state.settings.data_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryFile(mode="w+b", dir=state.settings.data_dir)

    out = await asyncio.to_thread(scratch)
    try:
        await asyncio.to_thread(write_bundle, out, members, manifest, key)
        size = await asyncio.to_thread(out.seek, 0, 2)
        await asyncio.to_thread(out.seek, 0)
    except BaseException:
        out.close()
        raise
    log.info("incident %s: evidence bundle %s exported by %s (%d files, %d bytes)", inc.id,
             bundle_id, user.username, len(members) + 1, size)
    name = bundle_name(inc.id, inc.updated_at)
    return StreamingResponse(_stream(out), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{name}"',
        "Content-Length": str(size), "Cache-Control": "no-store",
        "X-GridHub-Bundle": bundle_id, "X-GridHub-Key-Fingerprint": key.fingerprint})


async def _stream(out: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(out.read, CHUNK):
            yield chunk
    finally:
        out.close()  # unnamed: the file is gone with it


def mount_evidence(app: FastAPI) -> None:
    """Add the evidence endpoints to the app (the hub needs an EvidenceService)."""
    app.include_router(router)
