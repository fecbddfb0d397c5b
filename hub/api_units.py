"""Units and grids API: where the patrol units are, and the grid polygons to draw them on.

``GET /api/units``         every configured unit: last fix, grid cell, online, trail length
``GET /api/units/{id}``    one unit with its trail (404 unknown unit)
``GET /api/grids``         the grid tree as a GeoJSON FeatureCollection

Bearer auth as in :mod:`hub.api`. Department users get 403 on units; patrol users see
only their own unit. Mount with :func:`mount_units` (``create_app(routers=[...])``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, Field

from hub.api import Me, St
from hub.app import HubState
from hub.config import GridLevel
from hub.models import User
from hub.telemetry import UnknownUnit
from hub.units import UnitDetail, UnitOut, UnitService, find_unit_service, may_see_units

router = APIRouter(tags=["units"])


class GridProperties(BaseModel):
    id: str
    name: str
    level: GridLevel
    parent: str | None
    contact: str | None = None


class GridFeature(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: str
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon (lon, lat).")
    properties: GridProperties


class GridCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[GridFeature]


def _service(state: HubState) -> UnitService:
    svc = find_unit_service(state)
    if svc is None:
        raise HTTPException(503, "unit tracking is not running on this hub")
    return svc


def _check_role(user: User) -> None:
    if user.role == "department":
        raise HTTPException(403, "role department cannot see patrol units")


@router.get("/api/units", response_model=list[UnitOut])
async def list_units(state: St, user: Me) -> list[UnitOut]:
    """Configured patrol units with their last fix, grid cell and online flag."""
    _check_role(user)
    cases = await state.incidents.unit_cases()
    return [u.model_copy(update={"cases": cases.get(u.id, [])})
            for u in _service(state).units() if may_see_units(user, u.id)]


class UnitName(BaseModel):
    id: str
    name: str


@router.get("/api/units/names", response_model=list[UnitName])
async def unit_names(state: St, user: Me) -> list[UnitName]:
    """Every configured patrol unit's id and name, for any signed-in user (a department's
    console names the units working its cases; positions stay with /api/units)."""
    return [UnitName(id=u.id, name=u.name) for u in state.site.units]


@router.get("/api/units/{unit_id}", response_model=UnitDetail)
async def get_unit(state: St, user: Me, unit_id: str) -> UnitDetail:
    """One unit with its recent trail (oldest first)."""
    _check_role(user)
    if not may_see_units(user, unit_id):
        raise HTTPException(404, f"no unit {unit_id[:64]!r}")
    try:
        return _service(state).unit_detail(unit_id)
    except UnknownUnit as err:
        raise HTTPException(404, f"no unit {unit_id[:64]!r}") from err


@router.get("/api/grids", response_model=GridCollection, tags=["reference"])
async def grids(state: St, user: Me) -> GridCollection:
    """Every grid node as a GeoJSON Feature (properties id, name, level, parent, contact)."""
    return GridCollection(features=[
        GridFeature(
            id=g.id, geometry=g.polygon,
            properties=GridProperties(
                id=g.id, name=g.name, level=g.level, parent=g.parent, contact=g.contact
            ),
        )
        for g in state.site.grids
    ])


def mount_units(app: FastAPI) -> None:
    """Add the units and grids endpoints to the app."""
    app.include_router(router)
