"""Admission control and fair scheduling for every job the API queues.

- A cost estimate per job (``estimate_cost``: pair-token passes / 16) is checked before
  queueing: one job over ``max_job_cost`` is refused (422, "make it smaller").
- Per client (API token or address): at most ``max_client_jobs`` outstanding (queued or
  running) jobs and ``max_client_cost`` summed cost; globally ``max_queued_jobs`` queued. Over a
  limit: ``Refused`` (429 + Retry-After). Outstanding jobs are read from RQ's own job status, so
  a finished, failed, cancelled or vanished job frees its slot without any bookkeeping.
- Fair queueing (start-time fair queueing on the RQ list): each job gets a start tag
  ``max(virtual time, client's last finish tag)`` (its finish tag adds its cost; the virtual
  time is the head job's start tag) and is placed before the first queued job with a larger
  start tag. A client that queued 16 large jobs does not make another client's small
  job wait behind all of them: it runs next.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RQStatus

from ..store import keys

#: Components assumed when the model's shape is unknown before it is loaded (GPT-2 small).
COMPONENTS_GUESS = 144
#: Tokens per prompt assumed for a built-in task.
TASK_TOKENS = 20

_DONE = {RQStatus.FINISHED, RQStatus.FAILED, RQStatus.CANCELED, RQStatus.STOPPED}

#: Place a just-queued job by its fair tag (atomic; a job a worker already took is left alone).
_PLACE = """
local id, client, cost = ARGV[1], ARGV[2], tonumber(ARGV[3])
local v = tonumber(redis.call('GET', KEYS[4]) or '0')
local head = redis.call('LINDEX', KEYS[1], 0)
if head then
  local t = tonumber(redis.call('HGET', KEYS[2], head) or '')
  if t and t > v then v = t end
end
local last = tonumber(redis.call('HGET', KEYS[3], client) or '0')
local tag = math.max(v, last)
redis.call('SET', KEYS[4], tostring(v))
redis.call('HSET', KEYS[3], client, tostring(tag + cost))
redis.call('HSET', KEYS[2], id, tostring(tag))
if redis.call('LREM', KEYS[1], 1, id) == 0 then return -1 end
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for _, other in ipairs(ids) do
  local t = tonumber(redis.call('HGET', KEYS[2], other) or '0')
  if t > tag then
    redis.call('LINSERT', KEYS[1], 'BEFORE', other, id)
    return tag
  end
end
redis.call('RPUSH', KEYS[1], id)
return tag
"""


class Refused(Exception):
    """A job the server will not queue now: ``status`` (429 or 422), a message, Retry-After."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def _seq_len(request: dict[str, Any]) -> int:
    if request.get("tokens"):
        return max(1, len(request["tokens"]["clean"][0]))
    if request.get("pairs"):
        return max(1, max(len(p["clean"]) for p in request["pairs"]) // 3)
    return TASK_TOKENS


def method_passes(request: dict[str, Any], n_components: int = COMPONENTS_GUESS) -> int:
    """Forward-or-backward passes (per pair) an analysis costs, by method."""
    probes = int(request.get("hvp_probes") or 8)
    steps = int(request.get("ig_steps") or 16)
    per = {
        "atp": 1,
        "hvp": 3 * probes,
        "hvp_joint": 3 * probes,
        "mhvp": 3 * probes,
        "hvp_exact": 3 * n_components,
        "ig": 2 * steps,
        "ap": n_components,
        "atp_star": 2 + n_components,  # dm/dA, then one block per q / k component
        "graddrop": 2 * 12,  # one backward per layer (a layer count guess) and its forward
    }
    return 3 + sum(per.get(m, 1) for m in request.get("methods") or [])


def estimate_cost(
    request: dict[str, Any], kind: str = "analysis", n_components: int | None = None
) -> int:
    """The cost of one job in pair-token passes / 16: ``n_pairs x tokens x passes / 16``.
    ``analysis``: the methods' passes; ``verify``/``fix``: one patched forward per component."""
    n_pairs = int(request.get("n_pairs") or 1)
    tokens = _seq_len(request)
    passes = 2 + (n_components or 1) if kind != "analysis" else method_passes(request)
    return max(1, math.ceil(n_pairs * tokens * passes / 16))


class Admission:
    """The one admission path: ``with admission.admit(client, cost) as record: ...``."""

    def __init__(
        self,
        conn: redis.Redis,
        queue: Queue,
        *,
        max_job_cost: int,
        max_client_jobs: int,
        max_client_cost: int,
        max_queued_jobs: int,
    ) -> None:
        self.conn, self.queue = conn, queue
        self.max_job_cost = max_job_cost
        self.max_client_jobs = max_client_jobs
        self.max_client_cost = max_client_cost
        self.max_queued_jobs = max_queued_jobs
        self._place = conn.register_script(_PLACE)

    @classmethod
    def from_settings(cls, conn: redis.Redis, queue: Queue, s: Any) -> Admission:
        return cls(
            conn,
            queue,
            max_job_cost=s.max_job_cost,
            max_client_jobs=s.max_client_jobs,
            max_client_cost=s.max_client_cost,
            max_queued_jobs=s.max_queued_jobs,
        )

    def outstanding(self, client: str) -> dict[str, int]:
        """The client's queued or running jobs (job id -> cost); forgets finished ones."""
        key = keys.admission(client)
        raw: Any = self.conn.zrange(key, 0, -1, withscores=True)
        entries: dict[str, int] = {
            (k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw
        }
        if not entries:
            return {}
        jobs = Job.fetch_many(list(entries), connection=self.conn, serializer=self.queue.serializer)
        gone = [
            jid
            for jid, job in zip(entries, jobs, strict=True)
            if job is None or job.get_status(refresh=False) in _DONE
        ]
        if gone:
            self.conn.zrem(key, *gone)
            self.conn.hdel(keys.FAIR_TAGS, *gone)
        return {jid: c for jid, c in entries.items() if jid not in gone}

    @contextmanager
    def admit(self, client: str, cost: int) -> Iterator[Callable[[str], None]]:
        """Check the limits for one more job of ``cost`` from ``client`` (raises Refused) and
        yield ``record(job_id)``, to call once the job is queued (it takes its fair place)."""
        if cost > self.max_job_cost:
            raise Refused(
                422,
                f"this job's estimated cost ({cost:,}) is over the per-job limit "
                f"({self.max_job_cost:,}, PATCHAUDIT_MAX_JOB_COST): use fewer pairs, shorter "
                "prompts, fewer probes/steps or fewer methods",
            )
        with self.conn.lock(keys.admission_lock(client), timeout=10, blocking_timeout=5):
            jobs = self.outstanding(client)
            if (
                len(jobs) >= self.max_client_jobs
                or sum(jobs.values()) + cost > self.max_client_cost
            ):
                raise Refused(
                    429,
                    f"you have {len(jobs)} jobs queued or running (limits: "
                    f"{self.max_client_jobs} jobs, cost {self.max_client_cost:,}); "
                    "wait for some to finish",
                    retry_after=min(120, 5 + 5 * len(jobs)),
                )
            if self.queue.count >= self.max_queued_jobs:
                raise Refused(
                    429,
                    f"the server has {self.queue.count} jobs queued; try again shortly",
                    retry_after=60,
                )
            yield lambda job_id: self.record(client, job_id, cost)

    def record(self, client: str, job_id: str, cost: int) -> None:
        self.conn.zadd(keys.admission(client), {job_id: cost})
        from .queue import lane_queue_key

        # an interactive job (verify, inspect, ...) takes its fair place in its own queue
        qkey = lane_queue_key(self.queue, job_id) or self.queue.key
        self._place(
            keys=[qkey, keys.FAIR_TAGS, keys.FAIR_LAST, keys.FAIR_VTIME],
            args=[job_id, client, cost],
        )
