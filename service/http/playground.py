"""The playground page at ``/ui``: plain HTML/JS/CSS shipped in the package, no CDN.

The page talks only to the public API (``/v1/models``, ``/predict``,
``/embed``), so it adds no way to reach the server that a client lacks.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from fusionserve.service.errors import ModelNotFound

#: file name -> media type of each asset the page loads.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "wav.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _asset(name: str) -> bytes:
    return resources.files("fusionserve.service.http").joinpath("ui", name).read_bytes()


def playground_router() -> APIRouter:
    router = APIRouter(tags=["playground"])
    cache = {name: _asset(name) for name in ASSETS}

    def page(name: str) -> Response:
        return Response(cache[name], media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    @router.get("/ui", summary="Playground: try a model in the browser", response_class=HTMLResponse)
    async def ui() -> Response:
        return page("index.html")

    @router.get("/ui/{asset}", include_in_schema=False)
    async def asset(asset: str) -> Response:
        if asset not in cache or asset == "index.html":
            raise ModelNotFound(f"no playground asset {asset!r}")
        return page(asset)

    return router
