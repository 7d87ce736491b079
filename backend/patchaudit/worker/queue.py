"""The RQ queue (JSON serialisation) and the enqueue helpers the API calls."""

from __future__ import annotations

import secrets

import redis
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from ..store import AnalysisStore, keys
from .jobs import (
    job_name,
    on_job_failure,
    run_analysis,
    run_circuit,
    run_fix,
    run_inspect,
    run_verify,
)

#: Kinds of job and the function each runs (by import path, as RQ stores it); every one is a
#: registered job function (``jobs.JOB_FUNCTIONS``), the only ones workers run.
JOB_FUNCS = {
    "analysis": job_name(run_analysis),
    "verify": job_name(run_verify),
    "fix": job_name(run_fix),
    "circuit": job_name(run_circuit),
    "inspect": job_name(run_inspect),
}
ON_FAILURE = job_name(on_job_failure)

#: An abandoned job (its worker died) runs once more; errors raised by the job itself do not.
ABANDONED_RETRIES = 1
RESULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600


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
    *args: object,
    job_timeout_s: int,
    job_id: str | None = None,
) -> str:
    """Enqueue one job for an analysis and record it among the analysis's active jobs."""
    job_id = job_id or new_job_id(kind, analysis_id)
    store.add_job(analysis_id, job_id)
    queue.enqueue(
        JOB_FUNCS[kind],
        analysis_id,
        *args,
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
