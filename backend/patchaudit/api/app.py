"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..settings import Settings
from ..store import ActivationCache, AnalysisStore
from ..store.redis_conn import connect, redacted
from ..worker.admission import Admission
from ..worker.queue import get_queue
from . import errors, security
from .routes import analyses, frontend, health, meta, team

log = logging.getLogger(__name__)

DESCRIPTION = """Which attribution-patching estimates to trust.

Submit an analysis (`POST /api/analyses`), poll it (`GET /api/analyses/{id}`), verify
components with activation patching (`POST .../verify`, `POST .../fix`), export CSV.
Writes need `Authorization: Bearer <token>` when the server has an API token; reads by link
stay open. Errors are `{"detail", "message"}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not settings.redis_url:
        raise ValueError("the API needs a Redis URL (REDIS_URL / PATCHAUDIT_REDIS_URL)")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.redis.close()

    app = FastAPI(
        title="patchaudit",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by security.docs_router from local Swagger UI assets
        redoc_url=None,
    )
    conn = connect(settings.redis_url)
    app.state.settings = settings
    app.state.redis = conn
    app.state.store = AnalysisStore(conn)
    app.state.queue = get_queue(conn, settings.job_timeout_s)
    app.state.admission = Admission.from_settings(conn, app.state.queue, settings)
    app.state.cache = ActivationCache(conn, settings.cache_dir, settings.cache_budget_bytes)

    errors.install(app)
    app.add_middleware(errors.BodySizeLimit, max_bytes=settings.max_body_bytes)
    security.install(app, settings.host_names)

    app.include_router(analyses.router)
    app.include_router(team.router)
    app.include_router(meta.router)
    app.include_router(health.router)
    app.include_router(frontend.router)  # /static/plotly.min.js before the /static mount
    app.mount(
        "/static",
        StaticFiles(directory=settings.frontend_path, check_dir=False),
        name="static",
    )
    log.debug("API created (Redis %s)", redacted(settings.redis_url))
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory patchaudit.api.app:create_app_from_env``."""
    return create_app(Settings())
