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
    if settings.auth_required:
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})
    # A token-less server: the open-server banner is part of the page from its first paint (a
    # banner added later by script would move what the user is aiming at); openserver.js finds
    # it there and adds nothing.
    text = path.read_text(encoding="utf-8")
    text = text.replace("</header>", "</header>\n" + OPEN_BANNER, 1)
    return HTMLResponse(text, headers={"Cache-Control": "no-cache"})


OPEN_BANNER = (
    '<div id="open-server-banner" class="open-server" role="note">This server has no API tokens: '
    "every user of this machine can read, start, cancel and delete its analyses. To give each "
    "member a name and their own analyses, start it with a tokens file (PATCHAUDIT_TOKENS_FILE, "
    "see docs/SECURITY.md).</div>"
)


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
