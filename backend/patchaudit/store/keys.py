"""Every Redis key (and RQ queue name) the service uses, in one place.

All keys live under the ``pa:`` prefix so a shared Redis can host other applications.
RQ keeps its own keys under ``rq:`` (queue ``patchaudit``).
"""

from __future__ import annotations

PREFIX = "pa"

#: RQ queue the API enqueues on and workers listen to.
QUEUE_NAME = "patchaudit"
#: RQ queue of the interactive job kinds (verify, inspect, ...: ``JobKind.interactive``), served
#: by each worker's interactive lane so they never wait behind long jobs.
INTERACTIVE_QUEUE_NAME = "patchaudit-interactive"
#: ... and of the interactive kinds the lane serves first (``JobKind.first``: a click's verify).
FIRST_QUEUE_NAME = "patchaudit-first"

#: Hash per analysis: request, status, progress, result, error, job ids, timestamps.
ANALYSIS = f"{PREFIX}:analysis:"
#: Hash per analysis: "L.H" -> activation-patching value (click-to-verify / fix results).
VERIFIED = f"{PREFIX}:verified:"
#: Set per analysis: "L.H" components whose verify job has not finished yet.
PENDING = f"{PREFIX}:pending:"
#: List per analysis: one JSON record per finished verify / fix run (components, forwards).
VERIFICATIONS = f"{PREFIX}:verifications:"
#: Hash per analysis: ranking ("atp", "hvp:signed", ...) -> circuit curve JSON (issue 12).
CIRCUITS = f"{PREFIX}:circuits:"
#: Hash per analysis: "L.C" -> JSON record of an inspected component (issue 11):
#: {"status": queued|running|done|failed, "job_id", "detail" (ComponentDetail.to_dict), "error"}.
COMPONENTS = f"{PREFIX}:components:"
#: Hash per analysis: "L.C" -> JSON list of every pair's activation-patching value (kept from
#: the batched patched forward of a verify / fix run; their mean is the VERIFIED value).
VERIFIED_PAIRS = f"{PREFIX}:verified_pairs:"
#: String per request hash: the analysis id that already holds this request's result.
DEDUP = f"{PREFIX}:dedup:"
#: String per RQ job id: set when a user asked to cancel; polled by the engine's should_stop.
CANCEL = f"{PREFIX}:cancel:"
#: Set per analysis: ids of its RQ jobs (analysis, verify, fix) not finished yet.
JOBS = f"{PREFIX}:jobs:"
#: Sorted set of every analysis id by creation time.
ANALYSES_INDEX = f"{PREFIX}:analyses"

#: Activation cache index: hash cache key -> bytes, sorted set cache key -> last use time.
CACHE_SIZES = f"{PREFIX}:cache:sizes"
CACHE_LRU = f"{PREFIX}:cache:lru"
CACHE_LOCK = f"{PREFIX}:cache:lock"
#: Counters of cache hits / misses (diagnostics, /healthz).
CACHE_STATS = f"{PREFIX}:cache:stats"

#: Short lock taken by the worker's startup / periodic sweep of abandoned jobs.
SWEEP_LOCK = f"{PREFIX}:sweep:lock"


def analysis(analysis_id: str) -> str:
    return ANALYSIS + analysis_id


def verified(analysis_id: str) -> str:
    return VERIFIED + analysis_id


def pending(analysis_id: str) -> str:
    return PENDING + analysis_id


def dedup(request_hash: str) -> str:
    return DEDUP + request_hash


def cancel(job_id: str) -> str:
    return CANCEL + job_id


def jobs(analysis_id: str) -> str:
    return JOBS + analysis_id


def components(analysis_id: str) -> str:
    return COMPONENTS + analysis_id


def verified_pairs(analysis_id: str) -> str:
    return VERIFIED_PAIRS + analysis_id


def verifications(analysis_id: str) -> str:
    return VERIFICATIONS + analysis_id


# -- admission control and fair scheduling (worker/admission.py) ------------------------------

#: Sorted set per client: its outstanding (queued or running) job ids, scored by cost.
ADMISSION = f"{PREFIX}:admission:"
#: Short lock per client while a submission is checked and queued.
ADMISSION_LOCK = f"{PREFIX}:admission:lock:"
#: Hash job id -> fair-queueing start tag; the queue is kept in start-tag order.
FAIR_TAGS = f"{PREFIX}:fair:tags"
#: Hash client -> the finish tag (start + cost) of its last queued job.
FAIR_LAST = f"{PREFIX}:fair:last"
#: String: the virtual time (start tag of the job at the head of the queue when last seen).
FAIR_VTIME = f"{PREFIX}:fair:vtime"


def admission(client: str) -> str:
    return ADMISSION + client


def admission_lock(client: str) -> str:
    return ADMISSION_LOCK + client


def circuits(analysis_id: str) -> str:
    return CIRCUITS + analysis_id


# -- members, notes, retention (issue 20) ------------------------------------------------------

#: Sorted set per member: the ids of the analyses they own, by creation time.
OWNED = f"{PREFIX}:analyses:owner:"
#: Hash per analysis: "L.C" -> JSON note {label, text, author, created_at, updated_at}.
NOTES = f"{PREFIX}:notes:"
#: Short lock taken by the retention prune (one worker prunes at a time).
PRUNE_LOCK = f"{PREFIX}:prune:lock"


def owned(member: str) -> str:
    return OWNED + member


def notes(analysis_id: str) -> str:
    return NOTES + analysis_id
