"""Analyses in Redis: request, status, progress, result (JSON), errors, verified values.

Everything here is small (per-component numbers); Redis keeps it durably with AOF.
An analysis id is 128 random bits (``secrets.token_hex(16)``): the id is a capability URL.
The same normalised request maps to the existing analysis (``request_hash``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from ..component_keys import component_key, key_order, parse_component_key  # noqa: F401  (re-exported)
from . import keys
from .status import RETRYABLE, JobStatus

#: Compare-and-set of the dedup pointer: set KEYS[1] to ARGV[2] when it is unset or equals
#: ARGV[1] (the id of a failed / cancelled analysis being replaced); return the winner.
_CAS_DEDUP = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return cur
"""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def request_hash(normalised_request: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a normalised request."""
    return hashlib.sha256(canonical_json(normalised_request).encode()).hexdigest()


def new_id() -> str:
    """128 random bits, hex."""
    return secrets.token_hex(16)


@dataclass
class Analysis:
    """One analysis as stored (decoded)."""

    id: str
    status: JobStatus
    request: dict[str, Any]
    request_hash: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    verified: dict[str, float | None] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    fix: dict[str, Any] | None = None
    circuits: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache_key: str | None = None
    job_id: str | None = None
    owner: str | None = None
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


_JSON_FIELDS = ("request", "progress", "result", "error", "fix")


#: Delete KEYS[1] when it holds ARGV[1] (a dedup pointer to the analysis being deleted).
_DEL_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class AnalysisStore:
    """Analyses in Redis (one hash per analysis plus a verified hash and a pending set)."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    # -- creation / dedup -------------------------------------------------------------

    def create_or_get(
        self, request: dict[str, Any], model_id: str = "", owner: str | None = None
    ) -> tuple[str, bool]:
        """Return (id, existed). A new analysis starts ``queued``, owned by ``owner``; the same
        request returns the id of the analysis that already holds it (whoever owns it), unless
        that one failed or was cancelled. ``model_id`` (the weights' fingerprint) enters the
        key, not the stored request: the same request on replaced weights is a new analysis."""
        h = request_hash({"request": request, "model_id": model_id} if model_id else request)
        dedup_key = keys.dedup(h)
        current = self._text(self.r.get(dedup_key))
        replace = ""
        if current is not None:
            existing = self.status(current)
            if existing is not None and existing not in RETRYABLE:
                return current, True
            replace = current
        analysis_id = new_id()
        now = time.time()
        with self.r.pipeline() as p:
            p.hset(
                keys.analysis(analysis_id),
                mapping={
                    "id": analysis_id,
                    "status": JobStatus.QUEUED.value,
                    "request": canonical_json(request),
                    "request_hash": h,
                    "progress": canonical_json({"phase": "queued", "fraction": 0.0, "passes": 0}),
                    "created_at": repr(now),
                    "updated_at": repr(now),
                    "owner": owner or "",
                },
            )
            p.zadd(keys.ANALYSES_INDEX, {analysis_id: now})
            if owner:
                p.zadd(keys.owned(owner), {analysis_id: now})
            p.execute()
        winner = self._text(self.r.eval(_CAS_DEDUP, 1, dedup_key, replace, analysis_id))
        if winner != analysis_id:  # another request won the race: drop ours
            self.delete(analysis_id)
            return str(winner), True
        return analysis_id, False

    def delete(self, analysis_id: str) -> None:
        """Remove every key of an analysis: record, verified values, components, circuits,
        notes, its place in the indexes and its dedup pointer (when it points here)."""
        owner, h = (
            self._text(v) for v in self.r.hmget(keys.analysis(analysis_id), "owner", "request_hash")
        )
        with self.r.pipeline() as p:
            p.delete(keys.analysis(analysis_id), keys.verified(analysis_id))
            p.delete(keys.pending(analysis_id), keys.jobs(analysis_id))
            p.delete(keys.verifications(analysis_id), keys.circuits(analysis_id))
            p.delete(keys.components(analysis_id), keys.verified_pairs(analysis_id))
            p.delete(keys.notes(analysis_id))
            p.zrem(keys.ANALYSES_INDEX, analysis_id)
            if owner:
                p.zrem(keys.owned(owner), analysis_id)
            if h:
                p.eval(_DEL_IF, 1, keys.dedup(h), analysis_id)
            p.execute()

    # -- reads ------------------------------------------------------------------------

    def exists(self, analysis_id: str) -> bool:
        return bool(self.r.exists(keys.analysis(analysis_id)))

    def status(self, analysis_id: str) -> JobStatus | None:
        raw = self._text(self.r.hget(keys.analysis(analysis_id), "status"))
        return JobStatus(raw) if raw else None

    def get(self, analysis_id: str) -> Analysis | None:
        with self.r.pipeline() as p:
            p.hgetall(keys.analysis(analysis_id))
            p.hgetall(keys.verified(analysis_id))
            p.smembers(keys.pending(analysis_id))
            p.lrange(keys.verifications(analysis_id), 0, -1)
            p.hgetall(keys.circuits(analysis_id))
            p.hgetall(keys.notes(analysis_id))
            raw, verified, pending, runs, circuits, notes = p.execute()
        if not raw:
            return None
        d = {self._text(k): self._text(v) for k, v in raw.items()}
        decoded: dict[str, Any] = {}
        for name in _JSON_FIELDS:
            if d.get(name):
                decoded[name] = json.loads(d[name])
        ver: dict[str, float | None] = {}
        for k, v in verified.items():
            val = json.loads(self._text(v))
            ver[self._text(k)] = None if val is None else float(val)
        return Analysis(
            id=d["id"],
            status=JobStatus(d["status"]),
            request=decoded.get("request", {}),
            request_hash=d.get("request_hash", ""),
            progress=decoded.get("progress") or {},
            result=decoded.get("result"),
            error=decoded.get("error"),
            verified=dict(sorted(ver.items(), key=lambda kv: key_order(kv[0]))),
            pending=sorted((self._text(x) for x in pending), key=key_order),
            verifications=[json.loads(self._text(x)) for x in runs],
            fix=decoded.get("fix"),
            circuits={
                self._text(k): json.loads(self._text(v)) for k, v in sorted(circuits.items())
            },
            cache_key=d.get("cache_key") or None,
            job_id=d.get("job_id") or None,
            owner=d.get("owner") or None,
            notes={
                self._text(k): json.loads(self._text(v))
                for k, v in sorted(
                    notes.items(), key=lambda kv: parse_component_key(self._text(kv[0]))
                )
            },
            created_at=float(d.get("created_at") or 0.0),
            updated_at=float(d.get("updated_at") or 0.0),
        )

    # -- writes -----------------------------------------------------------------------

    def update(self, analysis_id: str, **fields: Any) -> None:
        """Set fields (JSON fields are encoded, the status is validated)."""
        mapping: dict[Any, Any] = {"updated_at": repr(time.time())}
        for name, value in fields.items():
            if name == "status":
                mapping[name] = JobStatus(value).value
            elif name in _JSON_FIELDS:
                mapping[name] = canonical_json(value)
            elif value is None:
                mapping[name] = ""
            else:
                mapping[name] = str(value)
        self.r.hset(keys.analysis(analysis_id), mapping=mapping)

    def set_status(self, analysis_id: str, status: JobStatus, **fields: Any) -> None:
        self.update(analysis_id, status=status, **fields)

    def set_progress(
        self, analysis_id: str, phase: str, fraction: float, passes: int = 0, **extra: Any
    ) -> dict[str, Any]:
        """Progress {phase, fraction, passes} and any estimate (passes_total, eta_s, ...)."""
        progress = {
            **extra,
            "phase": phase,
            "fraction": float(max(0.0, min(1.0, fraction))),
            "passes": passes,
        }
        self.r.hset(keys.analysis(analysis_id), "progress", canonical_json(progress))
        return progress

    def set_result(self, analysis_id: str, result: dict[str, Any], cache_key: str | None) -> None:
        self.update(
            analysis_id,
            status=JobStatus.DONE,
            result=result,
            error=None,
            cache_key=cache_key or "",
            progress={"phase": "done", "fraction": 1.0, "passes": _passes(result)},
        )

    def set_partial(self, analysis_id: str, result: dict[str, Any], cache_key: str | None) -> None:
        """A cancelled analysis that keeps the methods it completed (``result["partial"]``)."""
        self.update(
            analysis_id,
            status=JobStatus.CANCELLED,
            result={**result, "partial": True},
            cache_key=cache_key or "",
        )

    def set_error(self, analysis_id: str, error: dict[str, Any]) -> None:
        """``error`` = {type, message, traceback}; the API shows only type and message."""
        self.update(analysis_id, status=JobStatus.FAILED, error=error)

    def add_verified(self, analysis_id: str, values: dict[str, float | None]) -> None:
        if values:
            self.r.hset(
                keys.verified(analysis_id),
                mapping={k: canonical_json(v) for k, v in values.items()},
            )

    def add_pending(self, analysis_id: str, components: list[str]) -> None:
        if components:
            self.r.sadd(keys.pending(analysis_id), *components)

    def remove_pending(self, analysis_id: str, components: list[str]) -> None:
        if components:
            self.r.srem(keys.pending(analysis_id), *components)

    def append_verification(self, analysis_id: str, entry: dict[str, Any]) -> None:
        """Append one verify run's record (components, forwards, cache_hit, seconds)."""
        self.r.rpush(keys.verifications(analysis_id), canonical_json(entry))

    def set_circuit(self, analysis_id: str, ranking: str, entry: dict[str, Any]) -> None:
        """Store one ranking's circuit curve (or its queued / failed state)."""
        self.r.hset(keys.circuits(analysis_id), ranking, canonical_json(entry))

    def get_circuit(self, analysis_id: str, ranking: str) -> dict[str, Any] | None:
        raw = self.r.hget(keys.circuits(analysis_id), ranking)
        return json.loads(self._text(raw)) if raw else None

    # -- inspected components (issue 11) ------------------------------------------------

    def claim_component(self, analysis_id: str, key: str, job_id: str) -> bool:
        """Mark component ``key`` queued for job ``job_id`` unless a record exists already."""
        rec = canonical_json({"status": JobStatus.QUEUED.value, "job_id": job_id})
        return bool(self.r.hsetnx(keys.components(analysis_id), key, rec))

    def set_component(self, analysis_id: str, key: str, record: dict[str, Any]) -> None:
        self.r.hset(keys.components(analysis_id), key, canonical_json(record))

    def get_component(self, analysis_id: str, key: str) -> dict[str, Any] | None:
        raw = self.r.hget(keys.components(analysis_id), key)
        return None if raw is None else json.loads(self._text(raw))

    def drop_component(self, analysis_id: str, key: str) -> None:
        self.r.hdel(keys.components(analysis_id), key)

    def component_keys(self, analysis_id: str) -> list[str]:
        return sorted(
            (self._text(k) for k in self.r.hkeys(keys.components(analysis_id))),
            key=key_order,
        )

    def add_verified_pairs(self, analysis_id: str, values: dict[str, list[float | None]]) -> None:
        """Every pair's ap value of verified components ("L.C" -> [pairs])."""
        if values:
            self.r.hset(
                keys.verified_pairs(analysis_id),
                mapping={k: canonical_json(v) for k, v in values.items()},
            )

    def verified_pairs(self, analysis_id: str, key: str) -> list[float | None] | None:
        raw = self.r.hget(keys.verified_pairs(analysis_id), key)
        return None if raw is None else json.loads(self._text(raw))

    # -- listing ------------------------------------------------------------------------

    def list_summaries(
        self, offset: int, limit: int, owner: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first: id, status, owner, request fields a list shows, timestamps (no
        results); only ``owner``'s analyses when given."""
        index = keys.owned(owner) if owner else keys.ANALYSES_INDEX
        ids = [self._text(x) for x in self.r.zrevrange(index, offset, offset + limit - 1)]
        if not ids:
            return []
        fields = ("status", "request", "created_at", "updated_at", "owner")
        with self.r.pipeline() as p:
            for i in ids:
                p.hmget(keys.analysis(i), *fields)
            rows = p.execute()
        out = []
        for analysis_id, row in zip(ids, rows, strict=True):
            status, request, created, updated, owner_ = (self._text(v) for v in row)
            if status is None:  # deleted meanwhile
                continue
            out.append(
                {
                    "id": analysis_id,
                    "owner": owner_ or None,
                    "status": JobStatus(status),
                    "request": json.loads(request) if request else {},
                    "created_at": float(created or 0.0),
                    "updated_at": float(updated or 0.0),
                }
            )
        return out

    # -- jobs and cancellation ----------------------------------------------------------

    def add_job(self, analysis_id: str, job_id: str) -> None:
        self.r.sadd(keys.jobs(analysis_id), job_id)

    def remove_job(self, analysis_id: str, job_id: str) -> None:
        self.r.srem(keys.jobs(analysis_id), job_id)

    def active_jobs(self, analysis_id: str) -> list[str]:
        return sorted(self._text(x) for x in self.r.smembers(keys.jobs(analysis_id)))

    def request_cancel(self, job_id: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r.set(keys.cancel(job_id), "1", ex=ttl_s)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.cancel(job_id)))

    # -- helpers ----------------------------------------------------------------------

    def count(self, owner: str | None = None) -> int:
        return int(self.r.zcard(keys.owned(owner) if owner else keys.ANALYSES_INDEX))

    # -- notes on components (issue 20) ---------------------------------------------------

    def set_note(self, analysis_id: str, key: str, note: dict[str, Any]) -> None:
        self.r.hset(keys.notes(analysis_id), key, canonical_json(note))

    def get_note(self, analysis_id: str, key: str) -> dict[str, Any] | None:
        raw = self.r.hget(keys.notes(analysis_id), key)
        return None if raw is None else json.loads(self._text(raw))

    def delete_note(self, analysis_id: str, key: str) -> None:
        self.r.hdel(keys.notes(analysis_id), key)

    # -- retention (issue 20) -------------------------------------------------------------

    def prune_candidates(
        self, now: float, max_age_s: float | None, max_analyses: int | None
    ) -> list[str]:
        """The analyses a retention limit removes, oldest first: every one created more than
        ``max_age_s`` ago, then the oldest until at most ``max_analyses`` remain. Queued and
        running analyses (or any with a live job) are never removed; they still count."""
        rows: Any = self.r.zrange(keys.ANALYSES_INDEX, 0, -1, withscores=True)
        total = len(rows)
        out: list[str] = []
        for raw, created in rows:
            old = max_age_s is not None and float(created) <= now - max_age_s
            over = max_analyses is not None and total - len(out) > max_analyses
            if not (old or over):
                break  # the rest are newer
            analysis_id = self._text(raw)
            live = self.status(analysis_id) in (JobStatus.QUEUED, JobStatus.RUNNING)
            if live or self.r.scard(keys.jobs(analysis_id)):
                continue
            out.append(analysis_id)
        return out

    @staticmethod
    def _text(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode()
        return value


def _passes(result: dict[str, Any]) -> int:
    cost = result.get("cost") or {}
    total = 0
    for c in cost.values():
        if isinstance(c, dict):
            total += int(c.get("forward", 0) or 0) + int(c.get("backward", 0) or 0)
    return total
