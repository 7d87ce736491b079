"""``patchaudit worker``: run jobs from the queue (any number of machines, one Redis)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Any

log = logging.getLogger("patchaudit.worker")


#: Set for the workers `serve` starts: they ask Linux for SIGTERM when `serve` dies.
PARENT_ENV = "_PATCHAUDIT_PARENT_PID"


def exit_with_parent() -> None:
    """Called by a worker at start-up: when ``serve`` dies without cleaning up (SIGKILL), the
    worker gets SIGTERM (Linux PR_SET_PDEATHSIG) instead of running on as an orphan."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover
        return
    if os.getppid() != int(parent):  # serve died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patchaudit worker",
        description="Run patchaudit jobs (analyses, verify, fix) from the Redis queue. "
        "Settings come from PATCHAUDIT_* environment variables; flags override them.",
    )
    p.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL / $PATCHAUDIT_REDIS_URL)")
    p.add_argument("--data-dir", help="data directory (activation cache under cache/)")
    p.add_argument("--name", help="worker name (default: host.pid)")
    p.add_argument("--device", help="torch device, e.g. cuda:0 (default: cuda if present)")
    p.add_argument(
        "--preload",
        action="append",
        default=None,
        metavar="MODEL",
        help="load this model before taking jobs (repeatable)",
    )
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--max-jobs", type=int, default=None, help="quit after this many jobs")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_with_parent()
    from ..settings import settings_from_cli

    try:
        settings = settings_from_cli(
            redis_url=args.redis_url,
            data_dir=args.data_dir,
            device=args.device,
            log_level=args.log_level,
        )
    except ValueError as e:
        sys.stderr.write(f"patchaudit worker: invalid settings: {e}\n")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s",
    )
    if not settings.redis_url:
        sys.stderr.write(
            "patchaudit worker: no Redis. Set REDIS_URL (or PATCHAUDIT_REDIS_URL, or "
            "--redis-url); `patchaudit serve` starts workers with its own Redis.\n"
        )
        return 2

    import redis

    from ..store import AnalysisStore
    from ..store.redis_conn import redacted
    from ..store.retention import pruner
    from .queue import get_queue, lane_queues
    from .runtime import Runtime, WorkerConfig, set_runtime
    from .worker import PatchauditWorker

    config = WorkerConfig.from_settings(settings)
    from .lane import cap_torch_threads, start_lane, torch_threads

    threads = torch_threads(config.torch_threads, config.workers)
    cap_torch_threads(threads)  # N workers never oversubscribe the cores
    rt = Runtime(config)
    set_runtime(rt)
    for name in args.preload or settings.preload_models:
        try:
            rt.models.get(name)
        except Exception as e:
            log.error("could not preload %s: %s", name, e)

    conn = redis.Redis.from_url(settings.redis_url)
    queue = get_queue(conn, settings.job_timeout_s)
    name = args.name or f"{socket.gethostname()}.{os.getpid()}"
    common: dict[str, Any] = {
        "worker_ttl": settings.worker_ttl_s,
        "maintenance_interval": settings.maintenance_interval_s,
        "execution_ttl": settings.execution_ttl_s,
        "default_result_ttl": 7 * 24 * 3600,
    }
    queues = [queue]
    lane = None
    if config.interactive_lane and not args.burst:
        # the interactive lane (worker.lane): verify / drill-down never wait behind long jobs
        lane = start_lane(
            redis.Redis.from_url(settings.redis_url),
            settings.job_timeout_s,
            f"{name}.lane",
            **common,
        )
    else:  # no lane thread: interactive jobs first, from the same loop
        queues = [*lane_queues(conn, settings.job_timeout_s), queue]
    worker = PatchauditWorker(
        queues,
        connection=conn,
        name=name,
        retention=pruner(AnalysisStore(conn), rt.cache, settings),
        **common,
    )
    log.info(
        "worker %s listening on %s (%s), %d torch threads, interactive lane %s",
        worker.name,
        ", ".join(q.name for q in queues),
        redacted(settings.redis_url),
        threads,
        "on" if lane is not None else "off",
    )
    try:
        worker.work(
            burst=args.burst,
            max_jobs=args.max_jobs,
            logging_level=settings.log_level.upper(),
        )
    finally:
        if lane is not None:
            try:
                lane.register_death()
            except Exception:  # Redis away: its registration expires by itself
                log.debug("could not unregister the lane worker", exc_info=True)
    return 0


if __name__ == "__main__":  # python -m patchaudit.worker.cli
    sys.exit(main(sys.argv[1:]))
