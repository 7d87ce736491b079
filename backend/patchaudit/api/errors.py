"""One JSON error shape for every failure: ``{"detail": ..., "message": "..."}``.
A raw traceback never reaches the browser."""

from __future__ import annotations

import logging
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
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("Redis unreachable: %s", exc)
        return JSONResponse(
            {
                "detail": "storage unavailable",
                "message": "the result store (Redis) is unreachable; try again in a moment",
            },
            status_code=503,
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {
                "detail": "internal error",
                "message": f"internal error ({exc.__class__.__name__}); "
                "the server log has the details",
            },
            status_code=500,
        )


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
