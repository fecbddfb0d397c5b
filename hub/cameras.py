"""The cameras of a running site: the configuration's, plus changes made at run time.

``cameras.yaml`` is the starting point. An admin can add, change and remove cameras
through the API while the hub runs; each change is stored (documents scope
``cameras``) before it is answered, so it survives a restart, and is broadcast on the
bus as :class:`CameraChanged` so the workers that own sources start, restart or stop
them. A stored change wins over the YAML for the same id; deleting a YAML camera
stores a tombstone (delete it from the YAML too to make that permanent and tidy).

Exceptions::

    CameraError
     +-- CameraExists      POST with an id already in use
     +-- UnknownCamera     PATCH/DELETE of an id that does not exist
     +-- InvalidCamera     the result would not be a valid camera (unknown grid, bad URL)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import ValidationError

from hub.bus import Bus, BusError
from hub.bus.messages import CameraChanged
from hub.config import CameraConfig, RtspSourceConfig, Site
from hub.store import Store

log = logging.getLogger(__name__)

SCOPE = "cameras"


class CameraError(Exception):
    """A camera change was refused."""


class CameraExists(CameraError):
    """The id is already in use."""


class UnknownCamera(CameraError):
    """No camera with that id."""


class InvalidCamera(CameraError):
    """The camera would be invalid."""


def _errors(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
    )


class CameraRegistry:
    """Effective camera list = YAML cameras overlaid with stored run-time changes."""

    def __init__(self, site: Site, store: Store, bus: Bus) -> None:
        self.site = site
        self.store = store
        self.bus = bus
        self._cams: dict[str, CameraConfig] = {c.id: c for c in site.cameras}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Apply stored changes over the YAML (call once at start)."""
        for cam_id, doc in (await self.store.list_docs(SCOPE)).items():
            if doc.get("deleted"):
                self._cams.pop(cam_id, None)
                continue
            try:
                self._cams[cam_id] = CameraConfig.model_validate(doc["camera"])
            except (ValidationError, KeyError) as err:
                # A stored camera that no longer validates (config grid removed, schema
                # change) is skipped, loudly; the rest of the site still starts.
                log.error("camera %s: stored change ignored: %s", cam_id, err)

    # --- reads -----------------------------------------------------------------------

    def all(self) -> list[CameraConfig]:
        return list(self._cams.values())

    def get(self, cam_id: str) -> CameraConfig | None:
        return self._cams.get(cam_id)

    # --- changes ---------------------------------------------------------------------

    def _check(self, cam: CameraConfig) -> None:
        if self.site.grid(cam.grid) is None:
            raise InvalidCamera(f"grid: unknown grid {cam.grid!r}")
        if self.site.unit(cam.id) is not None:
            raise InvalidCamera(f"id: {cam.id!r} is a patrol unit id")
        types = self.site.incident_type_ids()
        for zone in cam.zones:
            bad = [t for t in zone.rules if t not in types]
            if bad:
                raise InvalidCamera(f"zones.{zone.id}.rules: unknown incident type(s) {bad}")

    async def add(self, data: dict[str, Any]) -> CameraConfig:
        try:
            cam = CameraConfig.model_validate(data)
        except ValidationError as err:
            raise InvalidCamera(_errors(err)) from err
        async with self._lock:
            if cam.id in self._cams:
                raise CameraExists(f"camera {cam.id!r} already exists")
            self._check(cam)
            await self._save(cam)
        return cam

    async def update(self, cam_id: str, changes: dict[str, Any]) -> CameraConfig:
        """Change fields of a camera. ``url``, ``sub_url`` and ``transport`` change its RTSP
        source (merged here, under the lock, so concurrent changes do not undo each other)."""
        async with self._lock:
            old = self._cams.get(cam_id)
            if old is None:
                raise UnknownCamera(f"no camera {cam_id!r}")
            changes = dict(changes)
            src_keys = {"url", "sub_url", "transport"} & changes.keys()
            if src_keys:
                base = old.source.model_dump() if isinstance(old.source, RtspSourceConfig) else {}
                if "url" not in changes and not base:
                    raise InvalidCamera(f"camera {cam_id!r} is not an RTSP camera: give url too")
                changes["source"] = {**base, "type": "rtsp",
                                     **{k: changes.pop(k) for k in src_keys}}
            merged = {**old.model_dump(mode="json"), **changes, "id": cam_id}
            try:
                cam = CameraConfig.model_validate(merged)
            except ValidationError as err:
                raise InvalidCamera(_errors(err)) from err
            self._check(cam)
            await self._save(cam)
        return cam

    async def remove(self, cam_id: str) -> None:
        async with self._lock:
            if cam_id not in self._cams:
                raise UnknownCamera(f"no camera {cam_id!r}")
            await self.store.put_doc(SCOPE, cam_id, {"deleted": True})
            del self._cams[cam_id]
        log.info("camera %s: removed", cam_id)
        await self._announce(CameraChanged(camera_id=cam_id, camera=None))

    async def _save(self, cam: CameraConfig) -> None:
        await self.store.put_doc(SCOPE, cam.id, {"camera": cam.model_dump(mode="json")})
        self._cams[cam.id] = cam
        log.info("camera %s: saved (%s)", cam.id, cam.source.type)
        await self._announce(CameraChanged(camera_id=cam.id, camera=cam.model_dump(mode="json")))

    async def _announce(self, msg: CameraChanged) -> None:
        try:
            await self.bus.broadcast(msg)
        except BusError as err:  # stored already; workers pick it up when they restart
            log.warning("camera %s: change stored but not broadcast: %s", msg.camera_id, err)
