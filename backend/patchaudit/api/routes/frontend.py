"""The front end: GET / (new analysis), GET /a/{id} (a shared result), GET /compare, /static/*.

Plotly.js is served from the installed ``plotly`` Python package, never from a CDN."""

from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from ..deps import SettingsDep, StoreDep

router = APIRouter(include_in_schema=False)

_ID = re.compile(r"^[0-9a-f]{32}$")


@lru_cache(maxsize=1)
def plotly_js_path() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def _page(title: str, body: str, status: int) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title></head><body><h1>{html.escape(title)}</h1><p>{body}</p>"
        '<p><a href="/">New analysis</a> &middot; <a href="/docs">API docs</a></p></body></html>',
        status_code=status,
    )


def _file(settings: SettingsDep, name: str) -> Response:
    path = settings.frontend_path / name
    if not path.is_file():
        return _page(
            "patchaudit",
            f"The API is running, but the front end file {html.escape(name)} is missing from "
            f"{html.escape(str(settings.frontend_path))} (PATCHAUDIT_FRONTEND_DIR).",
            503,
        )
    return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/")
def index(settings: SettingsDep) -> Response:
    return _file(settings, "index.html")


@router.get("/a/{analysis_id}")
def analysis_page(analysis_id: str, settings: SettingsDep, store: StoreDep) -> Response:
    if not _ID.match(analysis_id) or not store.exists(analysis_id):
        return _page("Analysis not found", "No analysis has this link: check it.", 404)
    return _file(settings, "analysis.html")


@router.get("/compare")
def compare_page(settings: SettingsDep) -> Response:
    """Two analyses side by side (``?a=ID&b=ID``): the page reads both through the API."""
    return _file(settings, "compare.html")


@router.get("/static/plotly.min.js")
def plotly_js() -> Response:
    return FileResponse(
        plotly_js_path(),
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )
