"""Serves the console pages and their static files from this package (no CDN)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


PAGES = {
    "/": "index.html",  # incidents: list, detail, dispatch, accept
    "/wall": "wall.html",  # video wall of live feeds
    "/map": "map.html",  # grids and patrol units
    "/patrol": "patrol.html",  # a patrol tablet: publish video (WHIP) and GPS; its dispatches
    "/report": "report.html",  # grid staff's phone: report a problem with a photo and position
    "/replay": "replay.html",  # recorded video of 1-4 cameras around an incident, in sync
}


def _page(path: Path) -> Callable[[], Awaitable[FileResponse]]:
    # A closure, not a default argument: FastAPI would expose that as a query parameter.
    async def serve() -> FileResponse:
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return serve


def mount_console(app: FastAPI) -> None:
    """Add the console pages and ``/static`` to the app."""
    for route, page in PAGES.items():
        app.add_api_route(route, _page(STATIC / page), methods=["GET"], include_in_schema=False)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
