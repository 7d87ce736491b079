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


def require_write_token(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> None:
    """Writes need the API token when one is configured (``Authorization: Bearer <token>`` or
    ``X-API-Token: <token>``); reads by link stay open."""
    expected = settings.token
    if not expected:
        return
    given = x_api_token
    if given is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "this server needs an API token for changes: send 'Authorization: Bearer <token>' "
            "or 'X-API-Token: <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


WriteAccess = Annotated[None, Depends(require_write_token)]


def require_list_access(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> None:
    """Listing every analysis reveals their ids (capabilities): API-token holders only, or
    everyone when the server runs without a token on a loopback address."""
    from .settings import is_loopback

    if settings.token:
        require_write_token(settings, authorization, x_api_token)
    elif not is_loopback(settings.host):
        raise ApiError(
            403, "listing analyses needs an API token on a server reachable beyond this machine"
        )


ListAccess = Annotated[None, Depends(require_list_access)]
