"""``patchaudit worker``: run jobs from the queue (any number of machines, one Redis)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("patchaudit.worker")


#: Set for the workers `serve` starts: they ask Linux for SIGTERM when `serve` dies.
PARENT_ENV = "_PATCHAUDIT_PARENT_PID"

#: The longest pause between two attempts to reach a lost store (the worker never gives up).
MAX_RECONNECT_WAIT_S = 4.0


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

    from ..store import AnalysisStore
    from ..store.redis_conn import connect, redacted
    from ..store.retention import pruner
    from .queue import get_queue, lane_queues
    from .runtime import Runtime, WorkerConfig, set_runtime
    from .worker import PatchauditWorker

    os.umask(0o077)  # cache files and logs this worker writes are the user's only
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

    conn = connect(settings.redis_url)
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
            connect(settings.redis_url),
            settings.job_timeout_s,
            f"{name}.lane",
            **common,
        )
    else:  # no lane thread: interactive jobs first, from the same loop
        queues = [*lane_queues(conn, settings.job_timeout_s), queue]
    log.info(
        "worker %s listening on %s (%s), %d torch threads, interactive lane %s",
        name,
        ", ".join(q.name for q in queues),
        redacted(settings.redis_url),
        threads,
        "on" if lane is not None else "off",
    )
    try:
        work_forever(
            lambda n: PatchauditWorker(
                queues,
                connection=conn,
                name=n,
                retention=pruner(AnalysisStore(conn), rt.cache, settings),
                **common,
            ),
            name,
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


def work_forever(make: Callable[[str], Any], name: str, **work_kwargs: Any) -> None:
    """Run the RQ worker ``make(name)`` until it ends as asked (a stop request, ``burst``,
    ``max_jobs``). When it stops otherwise -- the store unreachable, the disk full, RQ's loop
    quitting on an error -- wait (0.5 s doubling to MAX_RECONNECT_WAIT_S) and start a fresh one
    (``<name>.r<n>``: the old registration may still be there), for as long as it takes: a
    restarted store or freed space brings the worker back by itself."""
    from ..store.redis_conn import outage

    attempt = 0  # names the fresh workers
    pause = 0.5
    while True:
        worker = make(name if attempt == 0 else f"{name}.r{attempt}")
        worker.max_connection_wait_time = MAX_RECONNECT_WAIT_S  # RQ's idle loop: 60 s
        t0 = time.monotonic()
        try:
            worker.work(**work_kwargs)
            if (
                getattr(worker, "_stop_requested", False)
                or work_kwargs.get("burst")
                or work_kwargs.get("max_jobs")
            ):
                return
            reason = "its loop quit (the error is logged above)"
        except Exception as e:
            found = outage(e)
            if found is None:
                raise
            reason = found
        if time.monotonic() - t0 > 60:  # it ran a while: a new outage starts the pauses again
            pause = 0.5
        attempt += 1
        log.error("%s: %s; again in %.1f s (attempt %d)", worker.name, reason, pause, attempt)
        time.sleep(pause)
        pause = min(MAX_RECONNECT_WAIT_S, pause * 2)


if __name__ == "__main__":  # python -m patchaudit.worker.cli
    sys.exit(main(sys.argv[1:]))
