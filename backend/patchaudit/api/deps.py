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

from ..settings import LOCAL_MEMBER, Settings
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


def member_of(settings: Settings, given: str | None) -> str | None:
    """The member whose token ``given`` is, else None. Every member's token is compared, in
    constant time over SHA-256 digests (equal lengths), whichever matches: the time taken says
    nothing about which token, or how much of one, was right."""
    if not given:
        return None
    digest = hashlib.sha256(given.encode()).digest()
    found: str | None = None
    for name, token in settings.members.items():
        if secrets.compare_digest(digest, hashlib.sha256(token.encode()).digest()):
            found = name
    return found


def check_token(settings: Settings, given: str | None) -> str:
    """The member ``given`` belongs to; ``LOCAL_MEMBER`` on a token-less server (every local
    user is one client there, whatever token they send). Raises 401 when a token is needed and
    missing or wrong; the message says which."""
    if not settings.auth_required:
        return LOCAL_MEMBER
    if not given:
        raise ApiError(
            401,
            "API token missing: this server needs its API token for changes (send "
            "'Authorization: Bearer <token>' or 'X-API-Token: <token>')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    member = member_of(settings, given)
    if member is None:
        raise ApiError(
            401,
            "the API token is wrong: check it with whoever runs this server",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return member


def require_write_token(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> str:
    """Writes need a member's token when any is configured (``Authorization: Bearer <token>``
    or ``X-API-Token: <token>``); reads by link stay open. Returns the member (the writer)."""
    return check_token(settings, presented_token(authorization, x_api_token))


WriteAccess = Annotated[str, Depends(require_write_token)]
"""The member making a write (``LOCAL_MEMBER`` on a token-less server)."""


def client_id(request: Request) -> str:
    """Who a request counts against for admission: its member ("m:<name>"); on a token-less
    server every request is the one local client (a made-up token changes nothing); a request
    with no valid token on a server with members counts against its address."""
    settings: Settings = request.app.state.settings
    if not settings.auth_required:
        return "m:" + LOCAL_MEMBER
    token = presented_token(
        request.headers.get("authorization"), request.headers.get("x-api-token")
    )
    member = member_of(settings, token)
    if member is not None:
        return "m:" + member
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
) -> str:
    """Listing every analysis reveals their ids (capabilities): members only, or everyone
    (as the one local member) when the server runs without a token on a loopback address.
    Returns the member."""
    from .settings import is_loopback

    if settings.auth_required:
        return require_write_token(settings, authorization, x_api_token)
    if not is_loopback(settings.host):
        raise ApiError(
            403, "listing analyses needs an API token on a server reachable beyond this machine"
        )
    return LOCAL_MEMBER


ListAccess = Annotated[str, Depends(require_list_access)]


def require_owner(settings: Settings, owner: str | None, member: str, what: str) -> None:
    """403 unless ``member`` may ``what`` (cancel, delete) an analysis of ``owner``: its owner,
    anyone on a token-less server, any member for an analysis with no owner (made before
    members existed, or on a token-less server)."""
    if not settings.auth_required or not owner or owner == LOCAL_MEMBER or owner == member:
        return
    raise ApiError(403, f"this analysis belongs to {owner}: only its owner can {what} it")
