"""FastAPI dependencies, as ``Annotated[..., Depends()]`` aliases."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import redis
from fastapi import Depends, Header, Request
from rq import Queue

from ..settings import Settings
from ..store import ActivationCache, AnalysisStore
from ..worker.admission import Admission, Refused
from .errors import ApiError


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


def presented_token(authorization: str | None = None, x_api_token: str | None = None) -> str | None:
    """The token a request carries (``X-API-Token``, else ``Authorization: Bearer``); an empty
    header counts as absent."""
    given = (x_api_token or "").strip() or None
    if given is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip() or None
    return given


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
    check_token(settings, presented_token(authorization, x_api_token))


WriteAccess = Annotated[None, Depends(require_write_token)]


def client_id(request: Request) -> str:
    """Who a request counts against for admission: its token (hashed), else its address."""
    token = presented_token(
        request.headers.get("authorization"), request.headers.get("x-api-token")
    )
    if token:
        return "t:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return "a:" + (request.client.host if request.client else "unknown")


class Gate:
    """The admission path every job-queuing endpoint goes through::

        with gate.admit(estimate_cost(request)) as record:
            job_id = enqueue(...)
            record(job_id)

    Over a limit it raises ApiError 429 (with Retry-After) or 422 (one job too large)."""

    def __init__(self, admission: Admission, client: str) -> None:
        self.admission = admission
        self.client = client

    @contextmanager
    def admit(self, cost: int) -> Iterator[Callable[[str], None]]:
        try:
            with self.admission.admit(self.client, cost) as record:
                yield record
        except Refused as e:
            headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
            raise ApiError(e.status, e.message, headers=headers) from None


def get_gate(request: Request) -> Gate:
    return Gate(request.app.state.admission, client_id(request))


GateDep = Annotated[Gate, Depends(get_gate)]


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
