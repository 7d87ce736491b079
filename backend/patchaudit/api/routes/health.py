"""/healthz: Redis and worker liveness."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Response
from rq import Worker

from ..deps import CacheDep, QueueDep, RedisDep, SettingsDep
from ..errors import free_bytes
from ..schemas import CacheStats, Health

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


def live_workers(conn, queue, max_age_s: float) -> int:  # noqa: ANN001
    """Workers on our queue whose last heartbeat is recent (a killed worker's registry entry
    outlives it by its TTL; its heartbeat does not)."""
    now = datetime.now(UTC)
    n = 0
    for w in Worker.all(connection=conn, queue=queue):
        hb = w.last_heartbeat
        if hb is None:
            continue
        if hb.tzinfo is None:
            hb = hb.replace(tzinfo=UTC)
        if (now - hb).total_seconds() <= max_age_s:
            n += 1
    return n


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Redis unreachable"}},
    summary="Redis and worker liveness",
)
def healthz(
    response: Response, settings: SettingsDep, conn: RedisDep, queue: QueueDep, cache: CacheDep
) -> Health:
    try:
        conn.ping()
    except Exception as e:
        response.status_code = 503
        return Health(
            status="down",
            redis=False,
            workers=0,
            auth_required=settings.auth_required,
            message=f"Redis unreachable: {e}",
        )
    workers = live_workers(conn, queue, settings.worker_ttl_s + 15)
    try:
        stats = CacheStats.model_validate(cache.stats())
    except Exception:  # pragma: no cover
        stats = None
    message = "" if workers else "no worker is running: start `patchaudit worker`"
    free = free_bytes(settings.data_dir)
    disk_full = free is not None and free < settings.min_free_bytes
    if free is not None and disk_full:
        message = (
            f"the disk holding {settings.data_dir} is full ({free // 2**20} MiB free, "
            f"{settings.min_free_bytes // 2**20} MiB needed): new work is refused (507) until "
            "space is freed"
        )
    return Health(
        status="ok" if workers and not disk_full else "degraded",
        redis=True,
        workers=workers,
        queued=queue.count,
        cache=stats,
        auth_required=settings.auth_required,
        message=message,
    )
