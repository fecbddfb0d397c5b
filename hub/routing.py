"""Routing: who should handle an incident of a type in a grid cell, and which patrol unit
is nearest.

Departments: the first ``workflow.routing`` rule for the type whose grids contain the
cell (joint dispatch: all its departments, the first leading); without a rule, the
departments that handle the type and serve the cell (``departments.yaml`` ``grids``), in
configuration order, the first leading. Patrol units: the nearest unit that is online,
not busy with another open case, and within ``unit_max_km``, by great-circle distance
from the incident's position to the unit's last GPS fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from hub.config import Site

EARTH_M = 6_371_008.8


@dataclass(frozen=True)
class UnitPosition:
    unit_id: str
    lat: float
    lon: float
    online: bool


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points, in metres (haversine)."""
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (math.sin((la2 - la1) / 2) ** 2
         + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2)
    return 2 * EARTH_M * math.asin(min(1.0, math.sqrt(h)))


def _in(site: Site, grid_id: str | None, subtrees: Iterable[str]) -> bool:
    subtrees = list(subtrees)
    if not subtrees:
        return True
    return grid_id is not None and bool(set(site.grid_ancestors(grid_id)) & set(subtrees))


def route(site: Site, incident_type: str, grid_id: str | None) -> tuple[list[str], bool]:
    """(department ids, lead first; whether to suggest a patrol unit)."""
    for rule in site.rules.workflow.routing:
        if rule.type == incident_type and _in(site, grid_id, rule.grids):
            return list(rule.departments), rule.unit
    deps = [d.id for d in site.departments
            if incident_type in d.handles and _in(site, grid_id, d.grids)]
    return deps[:1], True


def suggest_departments(site: Site, incident_type: str, grid_id: str | None) -> list[str]:
    """Department ids to suggest, the lead first."""
    return route(site, incident_type, grid_id)[0]


def nearest_unit(units: Iterable[UnitPosition], position: tuple[float, float] | None,
                 busy: set[str], max_km: float) -> str | None:
    """The nearest online, free unit within ``max_km`` of ``position`` (lat, lon)."""
    if position is None:
        return None
    best: tuple[float, str] | None = None
    for u in units:
        if not u.online or u.unit_id in busy:
            continue
        d = distance_m(position, (u.lat, u.lon))
        if d <= max_km * 1000 and (best is None or d < best[0]):
            best = (d, u.unit_id)
    return best[1] if best else None
