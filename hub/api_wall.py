"""Per-user video wall layouts: ``GET`` and ``PUT /api/me/wall-layout``.

A layout is the grid size (1, 4, 9 or 16 tiles) and, per tile, the id of the camera or
patrol unit it shows (or null). It is stored per user in the store's documents
(scope ``wall_layouts``, key the username). Source ids are not checked against the
cameras: cameras and units come and go at run time, and the wall shows an unknown id
as such. A user without a saved layout gets 4 tiles with the first enabled cameras
(run-time additions included).
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hub.api import Me, St

log = logging.getLogger(__name__)
router = APIRouter()

SCOPE = "wall_layouts"


class WallLayout(BaseModel):
    """The tiles of one user's video wall."""

    model_config = ConfigDict(extra="forbid")
    tiles: Literal[1, 4, 9, 16] = Field(description="Grid size: 1, 4 (2x2), 9 or 16 tiles.")
    sources: list[str | None] = Field(
        default_factory=list, max_length=16,
        description="Per tile, left to right and top to bottom: a camera or patrol unit id, "
                    "or null for an empty tile. At most `tiles` entries; missing ones are "
                    "empty.",
    )

    @model_validator(mode="after")
    def _fits(self) -> WallLayout:
        if len(self.sources) > self.tiles:
            raise ValueError(f"{len(self.sources)} sources for {self.tiles} tiles")
        for s in self.sources:
            if s is not None and not (0 < len(s) <= 128 and s.isprintable()):
                raise ValueError(f"bad source id {s!r}: 1 to 128 printable characters")
        self.sources = self.sources + [None] * (self.tiles - len(self.sources))
        return self


def default_layout(camera_ids: list[str]) -> WallLayout:
    first = camera_ids[:4]
    return WallLayout(tiles=4, sources=[*first, *[None] * (4 - len(first))])


@router.get("/api/me/wall-layout", response_model=WallLayout, tags=["wall"])
async def get_layout(state: St, user: Me) -> WallLayout:
    """The signed-in user's wall layout (a default one if they never saved theirs)."""
    doc = await state.store.get_doc(SCOPE, user.username)
    if doc is not None:
        try:
            return WallLayout.model_validate(doc)
        except ValidationError as err:
            log.warning("wall layout of %s unreadable, using the default: %s",
                        user.username, err)
    return default_layout([c.id for c in state.camera_registry.all() if c.enabled])


@router.put("/api/me/wall-layout", response_model=WallLayout, tags=["wall"])
async def put_layout(state: St, user: Me, body: WallLayout) -> WallLayout:
    """Save the signed-in user's wall layout (422 for anything but the shape above)."""
    await state.store.put_doc(SCOPE, user.username, body.model_dump(mode="json"))
    log.info("wall layout of %s saved (%d tiles)", user.username, body.tiles)
    return body


def mount_wall_api(app: FastAPI) -> None:
    """Add the wall layout endpoints to the app (a ``routers`` entry of ``create_app``)."""
    app.include_router(router)
