"""The RQ queue (JSON serialisation) and the one enqueue the API calls."""

from __future__ import annotations

import secrets
from typing import Any

import redis
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from ..service.kinds import KINDS, ON_FAILURE
from ..store import AnalysisStore, keys

#: Kinds of job and the function each runs (by import path, as RQ stores it); every one is a
#: registered job function (``jobs.JOB_FUNCTIONS``), the only ones workers run.
JOB_FUNCS = {name: kind.function for name, kind in KINDS.items()}

#: An abandoned job (its worker died) runs once more; errors raised by the job itself do not.
ABANDONED_RETRIES = 1
RESULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600

__all__ = [
    "JOB_FUNCS",
    "ON_FAILURE",
    "enqueue",
    "get_interactive_queue",
    "get_queue",
    "new_job_id",
    "queue_for",
]


def get_queue(conn: redis.Redis, job_timeout_s: int = 3600) -> Queue:
    return Queue(
        keys.QUEUE_NAME,
        connection=conn,
        serializer=JSONSerializer,
        default_timeout=job_timeout_s,
    )


def get_interactive_queue(
    conn: redis.Redis, job_timeout_s: int = 3600, first: bool = False
) -> Queue:
    """The queue of the interactive job kinds (served by every worker's interactive lane);
    ``first``: the one the lane serves before it (``JobKind.first``)."""
    return Queue(
        keys.FIRST_QUEUE_NAME if first else keys.INTERACTIVE_QUEUE_NAME,
        connection=conn,
        serializer=JSONSerializer,
        default_timeout=job_timeout_s,
    )


def lane_queues(conn: redis.Redis, job_timeout_s: int = 3600) -> list[Queue]:
    """The interactive lane's queues, in the order it serves them."""
    return [get_interactive_queue(conn, job_timeout_s, first) for first in (True, False)]


def queue_for(queue: Queue, kind: str) -> Queue:
    """The queue a job of ``kind`` goes to: an interactive one for an interactive kind, else
    ``queue`` (the long-job queue)."""
    spec = KINDS[kind]
    if spec.interactive:
        return get_interactive_queue(queue.connection, queue._default_timeout or 3600, spec.first)
    return queue


def new_job_id(kind: str, analysis_id: str) -> str:
    return f"{kind}-{analysis_id}-{secrets.token_hex(4)}"


def enqueue(
    queue: Queue,
    store: AnalysisStore,
    kind: str,
    analysis_id: str,
    *args: Any,
    job_timeout_s: int,
    job_id: str | None = None,
    **params: Any,
) -> str:
    """Enqueue one job of ``kind`` for an analysis, its arguments by name (``params``, or in
    the kind's order), and record it among the analysis's active jobs."""
    spec = KINDS[kind]
    kwargs = spec.arguments((analysis_id, *args), params)
    job_id = job_id or new_job_id(kind, analysis_id)
    store.add_job(analysis_id, job_id)
    queue_for(queue, kind).enqueue(
        spec.function,
        args=(),
        kwargs=kwargs,
        job_id=job_id,
        job_timeout=job_timeout_s,
        retry=Retry(max=ABANDONED_RETRIES),
        on_failure=Callback(ON_FAILURE),
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        description=f"patchaudit {kind} {analysis_id}",
        meta={"kind": kind, "analysis_id": analysis_id, "phase": "queued", "fraction": 0.0},
    )
    return job_id


def lane_queue_key(queue: Queue, job_id: str) -> str | None:
    """The Redis key of the interactive queue a job id (``kind-analysis-hex``) went to, or
    None for a long job."""
    kind = job_id.split("-", 1)[0]
    spec = KINDS.get(kind)
    return queue_for(queue, kind).key if spec is not None and spec.interactive else None


def _what(args: dict[str, Any]) -> str:
    comps = args.get("components")
    if comps:
        shown = ", ".join(str(c) for c in list(comps)[:6])
        return shown + (f" (+{len(comps) - 6})" if len(comps) > 6 else "")
    for name in ("key", "ranking"):
        if args.get(name) is not None:
            return str(args[name])
    return ""


def job_states(conn: redis.Redis, store: AnalysisStore, analysis_id: str) -> list[dict[str, Any]]:
    """The state of every job of an analysis not finished yet, for the page: queued, running
    (phase, fraction, passes, passes_total, eta_s), retrying (its worker stopped and it runs
    once more: shown as soon as the worker is gone, not when its heartbeat expires), or
    worker_lost (it will not run again; the kind's failure record says so)."""
    import time

    from rq.job import Job
    from rq.job import JobStatus as RQStatus

    from ..service.kinds import kind_of
    from .worker import dead_local_worker

    ids = sorted(store.active_jobs(analysis_id))
    if not ids:
        return []
    out = []
    for job_id, job in zip(
        ids, Job.fetch_many(ids, connection=conn, serializer=JSONSerializer), strict=True
    ):
        if job is None:
            continue
        kind = kind_of(job)
        meta = dict(job.meta or {})
        status = job.get_status(refresh=False)
        state = "running" if status == RQStatus.STARTED else "queued"
        if status in (RQStatus.FINISHED, RQStatus.FAILED, RQStatus.CANCELED, RQStatus.STOPPED):
            continue
        # a job is retried only when its worker died (ABANDONED_RETRIES): its second run
        retried = job.retries_left is not None and job.retries_left < ABANDONED_RETRIES
        attempt = 2 if retried else 1
        if state == "queued" and (retried or meta.get("phase") == "retrying"):
            state = "retrying"
        if state == "running":
            q = get_queue(conn)
            if kind is not None and kind.interactive:
                q = get_interactive_queue(conn, first=kind.first)
            reg = q.started_job_registry
            scores = [s for _, s in conn.zscan_iter(reg.key, match=f"{job_id}:*")]
            expired = bool(scores) and max(scores) <= time.time()
            if expired or dead_local_worker(conn, job.worker_name):
                left = job.retries_left or 0
                state = "retrying" if left > 0 else "worker_lost"
        args: dict[str, Any] = {}
        if kind is not None:
            try:
                args = kind.of_job(job)
            except TypeError:
                args = {}
        out.append(
            {
                "id": job_id,
                "kind": kind.name if kind else str(meta.get("kind", "")),
                "status": state,
                "interactive": bool(kind and kind.interactive),
                "phase": "retrying" if state == "retrying" else str(meta.get("phase", state)),
                "fraction": float(meta.get("fraction") or 0.0) if state == "running" else 0.0,
                "passes": int(meta.get("passes") or 0),
                "passes_total": meta.get("passes_total") if state == "running" else None,
                "eta_s": meta.get("eta_s") if state == "running" else None,
                "attempt": attempt,
                "what": _what(args),
            }
        )
    return out
