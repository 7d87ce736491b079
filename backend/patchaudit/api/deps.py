"""FastAPI dependencies, as ``Annotated[..., Depends()]`` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

import redis
from fastapi import Depends, Header, Request
from rq import Queue

from ..store import ActivationCache, AnalysisStore
from .errors import ApiError
from .settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


def get_store(request: Request) -> AnalysisStore:
    return request.app.state.store


def get_queue(request: Request) -> Queue:
    return request.app.state.queue


def get_cache(request: Request) -> ActivationCache:
    return request.app.state.cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
StoreDep = Annotated[AnalysisStore, Depends(get_store)]
QueueDep = Annotated[Queue, Depends(get_queue)]
CacheDep = Annotated[ActivationCache, Depends(get_cache)]


def sent_token(authorization: str | None, x_api_token: str | None) -> str | None:
    """The token of a request (``X-API-Token``, else ``Authorization: Bearer``), or None."""
    given = x_api_token
    if given is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
    return given or None


def check_token(settings: Settings, given: str | None) -> None:
    """Raise 401 unless no token is configured or ``given`` is the right one; the message says
    whether the token is missing or wrong."""
    expected = settings.token
    if not expected:
        return
    if not given:
        raise ApiError(
            401,
            "API token missing: this server needs its API token for changes (send "
            "'Authorization: Bearer <token>' or 'X-API-Token: <token>')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "the API token is wrong: check it with whoever runs this server",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def require_write_token(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> None:
    """Writes need the API token when one is configured (``Authorization: Bearer <token>`` or
    ``X-API-Token: <token>``); reads by link stay open."""
    check_token(settings, sent_token(authorization, x_api_token))


WriteAccess = Annotated[None, Depends(require_write_token)]
