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

__all__ = ["JOB_FUNCS", "ON_FAILURE", "enqueue", "get_queue", "new_job_id"]


def get_queue(conn: redis.Redis, job_timeout_s: int = 3600) -> Queue:
    return Queue(
        keys.QUEUE_NAME,
        connection=conn,
        serializer=JSONSerializer,
        default_timeout=job_timeout_s,
    )


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
    queue.enqueue(
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
