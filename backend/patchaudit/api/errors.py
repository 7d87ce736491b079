"""One JSON error shape for every failure: ``{"detail": ..., "message": "..."}``.
A raw traceback never reaches the browser."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a message a person can act on."""

    def __init__(
        self,
        status_code: int,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.detail = detail if detail is not None else message
        self.headers = headers


def _loc(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "request"


def validation_message(errors: list[dict[str, Any]]) -> str:
    msgs = []
    for e in errors[:10]:
        msg = str(e.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        msgs.append(f"{_loc(e.get('loc', ()))}: {msg}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(msgs) + more


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            {"detail": jsonable_encoder(exc.detail), "message": exc.message},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(
            {"detail": jsonable_encoder(errors), "message": validation_message(errors)},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"nothing at {request.url.path}"
        return JSONResponse(
            {"detail": jsonable_encoder(exc.detail), "message": message},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("Redis unreachable: %s", exc)
        return JSONResponse(*STORE_DOWN, headers={"Retry-After": "2"})

    # Any other exception: CatchAll (installed innermost, so the security headers and the
    # keep-alive connection survive). This handler is Starlette's last resort for an error
    # raised outside it (in a middleware).
    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        body, status = error_body(exc, request.method, request.url.path)
        return JSONResponse(body, status_code=status)

    app.add_middleware(CatchAll)
    settings = getattr(app.state, "settings", None)
    if settings is not None and getattr(settings, "min_free_bytes", 0) > 0:
        app.add_middleware(DiskGuard, directory=settings.data_dir, min_free=settings.min_free_bytes)


STORE_DOWN: tuple[dict[str, str], int] = (
    {
        "detail": "storage unavailable",
        "message": "the result store (Redis) is unreachable; try again in a moment",
    },
    503,
)

DISK_FULL: tuple[dict[str, str], int] = (
    {
        "detail": "insufficient storage",
        "message": "the disk holding the data directory is full: nothing new can be stored "
        "until space is freed (the service resumes by itself then)",
    },
    507,
)


def error_body(exc: BaseException, method: str, path: str) -> tuple[dict[str, str], int]:
    """The JSON body and status for an exception no route handled: 507 for a full disk, 503
    for a store outage, else 500 (logged with its traceback; the message names only its
    type)."""
    from ..store.redis_conn import disk_full, outage

    if disk_full(exc):
        log.error("disk full on %s %s: %s", method, path, exc)
        return DISK_FULL
    if outage(exc):
        log.error("Redis unreachable on %s %s: %s", method, path, exc)
        return STORE_DOWN
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return (
        {
            "detail": "internal error",
            "message": f"internal error ({exc.__class__.__name__}); the server log has the details",
        },
        500,
    )


class CatchAll:
    """ASGI middleware, innermost of ours: an exception no route handled becomes the JSON error
    (500, or 507 / 503, see ``error_body``) here, inside ``SecurityHeaders``, so it carries the
    security headers, and it is not re-raised, so the server keeps the connection alive."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # part of the response is out: nothing sound to add
                raise
            import json

            body, status = error_body(exc, scope.get("method", ""), scope.get("path", ""))
            raw = json.dumps(body).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
            ]
            if status == 503:
                headers.append((b"retry-after", b"2"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": raw})


class BodySizeLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get 413 (by Content-Length, or while
    streaming when it is absent)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_bytes:
                        await self._reject(send)
                        return
                except ValueError:
                    pass
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        import json

        body = json.dumps(
            {
                "detail": "request body too large",
                "message": f"the request body is over the {self.max_bytes}-byte limit "
                "(PATCHAUDIT_MAX_BODY_BYTES): send fewer pairs",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(StarletteHTTPException):
    """Raised while streaming a body over the limit (FastAPI passes HTTPExceptions through)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            f"the request body is over the {max_bytes}-byte limit (PATCHAUDIT_MAX_BODY_BYTES): "
            "send fewer pairs",
        )


def free_bytes(directory: Path) -> int | None:
    """Bytes a non-root process may still write on the file system of ``directory`` (None when
    it cannot be read)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return int(st.f_bavail * st.f_frsize)


class DiskGuard:
    """ASGI middleware: while the data directory's disk has less than ``min_free`` bytes
    left, requests that store something (POST / PUT / PATCH / DELETE under /api/) get 507
    with a message instead of failing half-way; reads keep working. The free space is read
    at most once a second, so the service resumes by itself as soon as space is freed."""

    def __init__(self, app: Any, directory: Path, min_free: int) -> None:
        self.app = app
        self.directory = Path(directory)
        self.min_free = int(min_free)
        self._checked = 0.0
        self._full = False

    def full(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            free = free_bytes(self.directory)
            self._full = free is not None and free < self.min_free
            self._checked = now
        return self._full

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") in ("POST", "PUT", "PATCH", "DELETE")
            and str(scope.get("path", "")).startswith("/api/")
            and self.full()
        ):
            import json

            body, status = DISK_FULL
            raw = json.dumps(body).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode()),
                        (b"retry-after", b"30"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": raw})
            return
        await self.app(scope, receive, send)
