"""The interactive lane: jobs a person waits for (a click's verify, a drill-down, "why", an edge
check: kinds with ``interactive=True``) never wait behind analyses, fixes or circuits.

Each worker process runs two RQ workers on one set of resident models:

- the main worker (the process's main thread) takes the long jobs from the ``patchaudit``
  queue;
- the lane worker (a thread, ``<name>.lane``) takes the interactive jobs from the
  ``patchaudit:interactive`` queue.

They share the models, so they must not run a pass at the same time (a TransformerBridge's
hooks and kernel switches are module state, and two jobs would fight for the same cores).
``Lane`` is the turnstile: a long job holds the model and, at every point between two passes
(where the engine polls for cancellation, ``JobProgress.should_stop``), gives it up to any
interactive job that waits; it resumes when the lane is empty. A click therefore waits at most
the rest of one pass of the long job, on the model that is already resident, with every core.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: After an interactive job ends, a long job waits this long before taking the model back when
#: the same page is likely to ask again (the drill-down its panel requests after the verify).
LINGER_S = 0.3


class Lane:
    """Who runs on the worker's models now: the long job or the interactive lane.

    ``long_job()`` wraps a long job; ``yield_point()`` (between its passes) parks it while
    interactive jobs wait or run; ``interactive()`` wraps an interactive job (it waits until the
    long job is parked or between jobs). Without a lane thread every call is free."""

    def __init__(self, linger_s: float = LINGER_S) -> None:
        self._cond = threading.Condition()
        self._long_running = False  # a long job holds the model (not parked)
        self._waiting = 0  # interactive jobs waiting for the model
        self._interactive = 0  # interactive jobs running
        self._released_at = 0.0
        self.linger_s = float(linger_s)
        self.parks = 0  # how often a long job gave way (tests and logs)
        self.parked_s = 0.0

    @contextlib.contextmanager
    def long_job(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(self._lane_idle)
            self._long_running = True
        try:
            yield
        finally:
            with self._cond:
                self._long_running = False
                self._cond.notify_all()

    def _lane_idle(self) -> bool:
        return self._waiting == 0 and self._interactive == 0

    def _may_resume(self) -> bool:
        if not self._lane_idle():
            return False
        return time.monotonic() - self._released_at >= self.linger_s

    def yield_point(self) -> None:
        """Called by a long job between two passes: parks while the lane has work."""
        with self._cond:
            if not self._long_running or self._lane_idle():
                return
            t0 = time.monotonic()
            self._long_running = False
            self._cond.notify_all()
            while not self._may_resume():
                # wake for the end of the linger too
                left = self.linger_s - (time.monotonic() - self._released_at)
                self._cond.wait(timeout=max(0.01, left) if self._lane_idle() else None)
            self._long_running = True
            self.parks += 1
            self.parked_s += time.monotonic() - t0

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._long_running)
            finally:
                self._waiting -= 1
            self._interactive += 1
        try:
            yield
        finally:
            with self._cond:
                self._interactive -= 1
                self._released_at = time.monotonic()
                self._cond.notify_all()

    def state(self) -> dict[str, Any]:
        with self._cond:
            return {
                "long_running": self._long_running,
                "waiting": self._waiting,
                "interactive": self._interactive,
                "parks": self.parks,
            }


def cpu_cores() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def torch_threads(setting: int | None, workers: int) -> int:
    """Intra-op threads of one worker: the setting, else the cores shared evenly among the
    workers of this machine (at least 1), so N workers never oversubscribe the cores."""
    if setting:
        return max(1, int(setting))
    return max(1, cpu_cores() // max(1, int(workers)))


def cap_torch_threads(threads: int) -> None:
    """Cap torch's intra-op and inter-op pools (inter-op only before its first use)."""
    import torch

    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(max(1, min(int(threads), 2)))
    except RuntimeError:  # already started (set once per process)
        log.debug("inter-op threads already set", exc_info=True)


def lane_worker_class() -> type:
    """The RQ worker of the lane thread: a ``PatchauditWorker`` (heartbeats, refusal of foreign
    jobs, sweep of abandoned jobs) that installs no signal handlers (the main thread owns them)
    and times jobs out with a timer instead of SIGALRM (signals reach the main thread only)."""
    from rq.timeouts import TimerDeathPenalty

    from .worker import PatchauditWorker

    class LaneWorker(PatchauditWorker):
        death_penalty_class = TimerDeathPenalty

        def _install_signal_handlers(self) -> None:
            return None

    return LaneWorker


def start_lane(conn: Any, job_timeout_s: int, name: str, **worker_kwargs: Any) -> Any:
    """Start the interactive lane of this worker process: an RQ worker on the interactive queue,
    in a daemon thread. Returns the RQ worker (``register_death`` it on the way out)."""
    from .queue import lane_queues

    cls = lane_worker_class()
    worker = cls(lane_queues(conn, job_timeout_s), connection=conn, name=name, **worker_kwargs)

    def make(n: str) -> Any:  # a fresh one after a store outage (cli.work_forever)
        return worker if n == name else cls(worker.queues, connection=conn, name=n, **worker_kwargs)

    def run() -> None:
        # an outage, or RQ's loop quitting on an error: cli.work_forever starts a fresh lane
        # worker (a new name: the old registration may linger) with backoff; anything else
        # it raises: start again here, with backoff, for as long as the process lives
        from .cli import work_forever

        backoff = 1.0
        restarts = 0
        while True:
            t0 = time.monotonic()
            try:
                work_forever(
                    make, name if not restarts else f"{name}.x{restarts}", logging_level=None
                )
            except Exception:  # logged; the process's main worker goes on
                log.exception("the interactive lane stopped")
            restarts += 1
            if time.monotonic() - t0 > 60:
                backoff = 1.0
            log.warning("the interactive lane restarts in %.0f s", backoff)
            time.sleep(backoff)
            backoff = min(30.0, backoff * 2)

    threading.Thread(target=run, name="pa-lane", daemon=True).start()
    return worker
