"""Routing: which department(s) should handle an incident of a type in a grid cell.

Today: the departments whose ``handles`` list the type, in configuration order. Grid
scoping of departments and the nearest patrol unit come with the workflow issue.
"""

from __future__ import annotations

from hub.config import Site


def suggest_departments(site: Site, incident_type: str, grid_id: str | None) -> list[str]:
    """Department ids to suggest, best first."""
    return [d.id for d in site.departments if incident_type in d.handles]
