"""The worker: an RQ SimpleWorker that runs jobs in its own process (no fork: CUDA and the
loaded models stay put), with a heartbeat thread so a dead worker's job is noticed quickly
and retried once by another worker (or by this one after a restart)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from ..store import keys

log = logging.getLogger(__name__)


def refusal(job: Job) -> str | None:
    """Why a worker must not run ``job`` (None: it may): its function, or one of its
    callbacks, is not a registered job function (``jobs.JOB_FUNCTIONS``)."""
    from .jobs import is_job_function

    try:
        name = job.func_name
    except Exception as e:  # undecodable job data
        return f"unreadable job ({type(e).__name__})"
    if not is_job_function(name):
        return f"{str(name)[:120]!r} is not a patchaudit job function"
    for attr in ("success", "failure", "stopped"):
        cb = getattr(job, f"_{attr}_callback_name", None)
        if cb and not is_job_function(cb):
            return f"its {attr} callback {str(cb)[:120]!r} is not a patchaudit job function"
    return None


class PatchauditWorker(SimpleWorker):
    """SimpleWorker with a short, heart-beaten execution TTL.

    RQ's SimpleWorker registers a running job for ``job_timeout + 60`` seconds, so a job of a
    killed worker would sit "started" for up to an hour. Here the execution is registered for
    ``execution_ttl`` seconds and a background thread renews it every third of that while the
    job runs. When a worker dies (kill -9, lost machine) its executions expire; the next sweep
    of the StartedJobRegistry, by any live worker (at start-up and every
    ``maintenance_interval``), retries the job once (``Retry(max=1)``) or fails it.
    """

    def __init__(
        self,
        *args: Any,
        execution_ttl: int = 30,
        retention: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        self.execution_ttl = max(2, int(execution_ttl))
        self.retention = retention  # prunes old analyses at each maintenance tick

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.execution_ttl

    def execute_job(self, job: Job, queue: Queue) -> None:
        reason = refusal(job)
        if reason:
            self.refuse_job(job, queue, reason)
            return
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(
            target=self._keep_alive, args=(job, execution, stop), name="pa-heartbeat", daemon=True
        )
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join(timeout=5)
        self.set_state(WorkerStatus.IDLE)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """RQ's dequeue, except that a job whose stored fields cannot be read is set aside
        (``discard_unreadable``) instead of ending the worker."""
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except Exception as e:
                job_id, queue = getattr(e, "job_id", None), getattr(e, "queue", None)
                if job_id is None or queue is None:
                    raise
                self.discard_unreadable(str(job_id), queue, f"unreadable job ({e!r:.200})")

    def discard_unreadable(self, job_id: str, queue: Queue, reason: str) -> None:
        """Take a job that cannot be decoded out of the queue, logged with the reason; its
        stored hash is kept aside for a week (``patchaudit:unreadable:<id>``) to inspect."""
        log.error("discarding job %s: %s", job_id, reason)
        aside = f"patchaudit:unreadable:{job_id}"
        with self.connection.pipeline() as p:
            p.lrem(queue.intermediate_queue_key, 0, job_id)
            p.lrem(queue.key, 0, job_id)
            p.zrem(queue.started_job_registry.key, job_id)
            p.execute()
        try:
            self.connection.rename(Job.key_for(job_id), aside)
            self.connection.expire(aside, 7 * 24 * 3600)
        except Exception:  # no hash left to keep
            log.debug("nothing kept of job %s", job_id, exc_info=True)
        self.set_state(WorkerStatus.IDLE)

    def refuse_job(self, job: Job, queue: Queue, reason: str) -> None:
        """Fail a job that is not one of ours without importing or calling anything it names
        (no callbacks, no retry)."""
        try:
            job.func_name  # noqa: B018 - RQ's bookkeeping below reads it
        except Exception:
            self.discard_unreadable(job.id, queue, reason)
            return
        log.error("refusing job %s: %s", job.id, reason)
        for attr in ("success", "failure", "stopped"):
            setattr(job, f"_{attr}_callback_name", None)
            setattr(job, f"_{attr}_callback", None)
        job.retries_left = 0
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        self.handle_job_failure(job, queue, exc_string=f"RefusedJob: {reason}", execution=execution)
        self.set_state(WorkerStatus.IDLE)

    def _keep_alive(self, job: Job, execution: Any, stop: threading.Event) -> None:
        interval = max(0.5, self.execution_ttl / 3)
        while not stop.wait(interval):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:  # Redis briefly away: the next beat tries again
                log.debug("heartbeat failed", exc_info=True)

    def clean_registries(self) -> None:
        self.sweep_abandoned()
        super().clean_registries()
        if self.retention is not None:
            try:
                self.retention()
            except Exception:
                log.warning("retention prune failed", exc_info=True)

    def sweep_abandoned(self) -> None:
        """Retry (once) or fail the jobs of dead workers. Runs at start-up and at every
        maintenance tick; a short lock keeps two workers from requeueing the same job. A job
        whose worker was a process of this machine that is gone (kill -9) is abandoned now,
        without waiting for its execution to expire: a restarted worker retries it at once."""
        lock = f"{keys.SWEEP_LOCK}:{','.join(q.name for q in self.queues)}"
        if not self.connection.set(lock, self.name, nx=True, ex=10):
            return
        try:
            from rq.registry import StartedJobRegistry

            for queue in self.queues:
                # the failure callbacks run under this worker's death penalty (the lane thread
                # times them with a timer: SIGALRM reaches the main thread only)
                registry = StartedJobRegistry(
                    queue=queue,
                    job_class=queue.job_class,
                    serializer=queue.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
                expire_dead_local(self.connection, registry)
                registry.cleanup(exception_handlers=self._exc_handlers)
        except Exception:
            log.warning("sweep of abandoned jobs failed", exc_info=True)
        finally:
            self.connection.delete(lock)


def pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def dead_local_worker(conn: Any, worker_name: str | None) -> bool:
    """Whether ``worker_name`` was a worker process of this machine that no longer exists
    (its Redis record names this host and a pid that is gone)."""
    import os
    import socket

    if not worker_name:
        return False
    raw = conn.hmget(f"rq:worker:{worker_name}", ["hostname", "pid"])
    host, pid = (v.decode() if isinstance(v, bytes) else v for v in raw)
    if not host or not pid or host != socket.gethostname():
        return False
    try:
        n = int(pid)
    except ValueError:
        return False
    return n != os.getpid() and not pid_alive(n)


def expire_dead_local(conn: Any, registry: Any) -> list[str]:
    """Mark the started executions of dead local workers as expired (so ``cleanup`` handles
    them now); returns their job ids."""
    out = []
    for member, _ in conn.zscan_iter(registry.key):
        m = member.decode() if isinstance(member, bytes) else str(member)
        job_id = m.split(":", 1)[0]
        name = conn.hget(f"rq:job:{job_id}", "worker_name")
        if dead_local_worker(conn, name.decode() if isinstance(name, bytes) else name):
            conn.zadd(registry.key, {member: 1}, xx=True)
            out.append(job_id)
    return out
