"""Rules every response follows, whatever the route (new routes inherit them without edits):

- ``HostCheck``: a Host header that is not an accepted name gets 400 (DNS rebinding: a web page
  that rebinds its own name to 127.0.0.1 sends ``Host: evil.example``).
- ``SecurityHeaders``: a Content-Security-Policy without third-party origins,
  ``X-Content-Type-Options: nosniff``, ``frame-ancestors 'none'`` (+ ``X-Frame-Options``) and
  ``Referrer-Policy: no-referrer`` (``/a/{id}`` links are capabilities).
- ``/docs``: Swagger UI from the installed ``swagger-ui-bundle-v2`` package, started by a local
  script (no CDN, no inline script).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def host_name(host_header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1`` (lower case)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


async def _json(send: Any, status: int, message: str, detail: str) -> None:
    body = json.dumps({"detail": detail, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """ASGI middleware: 400 unless the Host header names an accepted host (``names``; an empty
    set accepts any)."""

    def __init__(self, app: Any, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self.names:
            host = next((v for k, v in scope.get("headers", []) if k == b"host"), None)
            name = host_name(host.decode("latin-1")) if host is not None else ""
            if name not in self.names:
                await _json(
                    send,
                    400,
                    "this server does not answer to that host name: add it to "
                    "PATCHAUDIT_ALLOWED_HOSTS if it is yours",
                    "host not allowed",
                )
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: the security headers on every HTTP response (routes may not drop them)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._names = {k for k, _ in SECURITY_HEADERS}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k not in self._names]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- local API docs -------------------------------------------------------------------------

docs_router = APIRouter(include_in_schema=False)

DOCS_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")

_DOCS_HTML = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>patchaudit API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head><body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body></html>
"""

_DOCS_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
"""


@lru_cache(maxsize=1)
def swagger_ui_dir() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


@docs_router.get("/docs")
def docs_page() -> Response:
    if swagger_ui_dir() is None:  # pragma: no cover
        return HTMLResponse(
            "<!doctype html><title>patchaudit API</title><p>Swagger UI is not installed "
            '(pip install swagger-ui-bundle-v2); the OpenAPI document is at <a href="/openapi.json">'
            "/openapi.json</a>.</p>"
        )
    return HTMLResponse(_DOCS_HTML)


@docs_router.get("/docs/assets/init.js")
def docs_init() -> Response:
    return Response(_DOCS_INIT, media_type="text/javascript")


@docs_router.get("/docs/assets/{name}")
def docs_asset(name: str) -> Response:
    root = swagger_ui_dir()
    if name not in DOCS_ASSETS or root is None or not (root / name).is_file():
        return Response(status_code=404)
    media = {"css": "text/css", "js": "text/javascript", "png": "image/png"}[name.rsplit(".")[-1]]
    return FileResponse(
        root / name, media_type=media, headers={"Cache-Control": "public, max-age=86400"}
    )


def install(app: FastAPI, host_names: frozenset[str]) -> None:
    """Local docs, then the middleware (added last = outermost: the Host check answers first,
    and its 400 carries the security headers too)."""
    app.include_router(docs_router)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HostCheck, names=host_names)
