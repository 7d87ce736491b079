"""RQ job functions: run an analysis, verify components, fix every flagged component, build
a circuit curve, inspect one component.

Each function is the body of one job kind (``service.kinds``: its enqueue arguments by name and
what the analysis becomes when the job is cancelled, fails or is lost); ``job_kind`` wraps it
in the one error handling every job shares. Jobs take only ids and small JSON (the queue uses
JSON serialisation); everything else is read from Redis. Progress goes to the job's meta
({phase, fraction, passes}) and to the analysis. Cancellation is cooperative: the engine polls
``should_stop`` (a Redis flag per job) between chunks and raises ``pa.Cancelled``. Errors are
stored as {type, message, traceback}; the API shows type and message only. A job whose worker
died (abandoned) is retried once by RQ (``Retry(max=1)``, see ``worker.PatchauditWorker``); an
error raised by the job is not retried.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from ..component_keys import component_key, key_order, parse_component_key
from ..estimators.core import Cancelled
from ..serial import json_safe
from ..service import kinds as K
from ..service.contract import (
    CircuitInfo,
    ComponentRecord,
    FixInfo,
    NormalisedRequest,
    Verification,
    n_components,
    stored,
    stored_result,
)
from ..store import JobStatus, cache_key
from .runtime import Runtime, get_runtime

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# the registry of job functions: workers run nothing else
# ----------------------------------------------------------------------------------------

#: Every function a worker may run for a job (or as a job's callback), by the import path RQ
#: stores ("patchaudit.worker.jobs.run_analysis"). A job naming anything else is refused.
JOB_FUNCTIONS: dict[str, Callable[..., Any]] = {}

_F = TypeVar("_F", bound=Callable[..., Any])


def job_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def job_function(fn: _F) -> _F:
    """Register ``fn`` as a job function (one line per new job kind)::

        @job_function
        def run_circuit(analysis_id: str, ranking: str) -> dict: ...

    Functions in other modules under ``patchaudit.worker`` register the same way; the worker
    imports such a module (never one outside ``patchaudit.worker``) when a job names it."""
    JOB_FUNCTIONS[job_name(fn)] = fn
    return fn


def is_job_function(name: str | None) -> bool:
    if not name:
        return False
    if name in JOB_FUNCTIONS:
        return True
    module, _, attr = name.rpartition(".")
    if not module.startswith("patchaudit.worker.") or not attr.isidentifier():
        return False
    import importlib

    try:  # a project module that registers its functions when imported
        importlib.import_module(module)
    except ImportError:
        return False
    return name in JOB_FUNCTIONS


class JobCancelled(Cancelled):
    """Raised by the progress reporter's test delay when a cancel flag is seen (a
    ``pa.Cancelled``, so the engine keeps the methods that completed)."""


# ----------------------------------------------------------------------------------------
# progress and cancellation
# ----------------------------------------------------------------------------------------


#: Phases that are not computation on the model (no estimate of the time left from them).
SETUP_PHASES = frozenset({"queued", "requeued", "starting", "load_model"})


class JobProgress:
    """``progress(phase, fraction, passes)`` for the engine: writes the job meta and (for the
    analysis job) the analysis's progress, at most every ``min_interval_s`` within a phase:
    {phase, fraction, passes, passes_total (an estimate: passes / fraction), eta_s (the
    computation's time so far scaled by what is left), elapsed_s}.

    A long job's ``should_stop`` and progress calls (between two passes) are also where it gives
    the model to the interactive lane (``lane_yield``, see ``worker.lane``).
    When ``PATCHAUDIT_TEST_JOB_DELAY_S`` is set it sleeps that long at each new phase (tests
    use it to kill or cancel a job mid-way); production keeps it 0."""

    def __init__(
        self,
        rt: Runtime,
        analysis_id: str,
        job_id: str | None,
        mirror: bool,
        min_interval_s: float = 0.25,
        lane_yield: Callable[[], None] | None = None,
    ) -> None:
        self.rt = rt
        self.analysis_id = analysis_id
        self.job_id = job_id
        self.mirror = mirror
        self.min_interval_s = min_interval_s
        self.delay_s = float(rt.config.test_job_delay_s)
        self.lane_yield = lane_yield
        self._phase: str | None = None
        self._last = 0.0
        self.passes = 0
        self.phase: str | None = None  # the phase now (a timeout names it)
        self._t0: float | None = None  # when the computation (after set-up) started
        self._f0 = 0.0

    def should_stop(self) -> bool:
        if self.lane_yield is not None:
            self.lane_yield()
        return bool(self.job_id) and self.rt.store.cancel_requested(self.job_id)  # type: ignore[arg-type]

    def check(self) -> None:
        if self.should_stop():
            raise JobCancelled("cancelled by request")

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def __call__(self, phase: str, fraction: float, passes: int = 0) -> None:
        if self.lane_yield is not None and phase not in SETUP_PHASES:
            self.lane_yield()
        now = time.monotonic()
        new_phase = phase != self._phase
        self.passes = int(passes)
        self.phase = phase
        if self._t0 is None and phase not in SETUP_PHASES:
            self._t0, self._f0 = now, float(fraction)
        if not new_phase and fraction < 1.0 and now - self._last < self.min_interval_s:
            return
        self._phase, self._last = phase, now
        self._write(phase, fraction, passes)
        if new_phase and self.delay_s > 0 and phase != "done":
            self.sleep(self.delay_s)

    def estimate(self, fraction: float, passes: int) -> dict[str, Any]:
        """passes_total and eta_s (None until a little of the computation is done)."""
        if self._t0 is None or fraction >= 1.0:
            return {
                "passes_total": passes if fraction >= 1.0 else None,
                "eta_s": 0.0 if fraction >= 1.0 else None,
            }
        done = float(fraction) - self._f0
        spent = time.monotonic() - self._t0
        if done < 0.02 or spent < 0.2:
            return {"passes_total": None, "eta_s": None}
        left = max(0.0, 1.0 - float(fraction))
        total = int(round(passes / fraction)) if fraction > 0.05 and passes else None
        return {"passes_total": total, "eta_s": round(spent * left / done, 1)}

    def _write(self, phase: str, fraction: float, passes: int) -> None:
        progress: dict[str, Any] = {
            "phase": phase,
            "fraction": float(fraction),
            "passes": int(passes),
            **self.estimate(fraction, passes),
            "elapsed_s": round(time.monotonic() - self._t0, 1) if self._t0 is not None else 0.0,
            "updated_at": time.time(),
        }
        job = get_current_job()
        if job is not None:
            try:
                job.meta.update(progress)
                job.save_meta()
            except Exception:  # progress is best effort
                log.debug("could not save job meta", exc_info=True)
        if self.mirror:
            extra = {k: v for k, v in progress.items() if k not in ("phase", "fraction", "passes")}
            self.rt.store.set_progress(self.analysis_id, phase, fraction, passes, **extra)


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def error_info(
    exc: BaseException, rt: Runtime | None = None, phase: str | None = None
) -> dict[str, str]:
    """{type, message, traceback} of an exception, with a message a person can act on (a
    timeout names the phase the job was in)."""
    if isinstance(exc, JobTimeoutException):
        limit = rt.config.job_timeout_s if rt else "the"
        during = f" (stopped during {phase})" if phase else ""
        return {
            "type": "JobTimeout",
            "message": f"the job ran longer than its {limit} s limit{during} "
            "(PATCHAUDIT_JOB_TIMEOUT_S): use fewer pairs or methods, or raise the limit",
            "traceback": traceback.format_exc(),
        }
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return {
        "type": exc.__class__.__name__,
        "message": message[:2000],
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def build_pairs(request: NormalisedRequest) -> Any:
    """The engine's PromptPairs for a normalised request (task, text pairs or token pairs)."""
    import torch

    import patchaudit as pa

    if request.tokens:
        t = request.tokens
        return pa.PromptPairs.from_tokens(
            torch.tensor(t.clean, dtype=torch.long),
            torch.tensor(t.corrupted, dtype=torch.long),
            torch.tensor(t.answer, dtype=torch.long),
            torch.tensor(t.wrong, dtype=torch.long),
        )
    if request.pairs:
        ps = request.pairs
        return pa.PromptPairs.from_text(
            clean=[p.clean for p in ps],
            corrupted=[p.corrupted for p in ps],
            answers=[p.answer for p in ps],
            wrong=[p.wrong for p in ps],
        )
    kwargs: dict[str, Any] = {"n": int(request.n_pairs), "seed": int(request.seed)}
    if request.corruption:
        kwargs["corruption"] = request.corruption
    assert request.task is not None  # normalise() requires a task without pairs or tokens
    return pa.PromptPairs.from_task(request.task, **kwargs)


def _prepare(
    rt: Runtime, request: NormalisedRequest, progress: JobProgress | None = None
) -> tuple[Any, Any, str]:
    """(model, token pairs, cache key) of a request. A model not yet resident on this worker
    is loaded with its progress reported (phase "load_model": a large model takes minutes)."""
    import patchaudit as pa
    from patchaudit.estimators.compat import load_progress
    from patchaudit.models import fingerprint

    name = request.model
    if progress is not None and not rt.models.resident(name):
        with load_progress(lambda f: progress("load_model", f, 0)):
            model = rt.models.get(name)
    else:
        model = rt.models.get(name)
    tp = build_pairs(request).tokenize(model)
    n_pos = int(tp.clean.shape[1])
    if n_pos > rt.config.max_tokens:
        raise ValueError(
            f"the prompts have {n_pos} tokens, over the limit of {rt.config.max_tokens} "
            "(PATCHAUDIT_MAX_TOKENS): shorten them"
        )
    bkey = pa.base_key(request.model, tp, request.site, request.metric, request.direction)
    # the weights' fingerprint: a replaced model never reads the activations of the one before
    return model, tp, cache_key([bkey, fingerprint(name)])


def _pair_texts(
    model: Any, request: NormalisedRequest, tp: Any, limit: int = 64
) -> list[dict[str, str]]:
    """The prompts the analysis ran on, as text (task sets are generated, so the page could not
    show them otherwise); token-level sets are decoded with the model's tokenizer."""
    pairs = build_pairs(request)
    if pairs.clean:
        return pairs.to_records()[:limit]
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return []
    out = []
    for i in range(min(len(tp), limit)):
        last = int(tp.last_pos[i]) + 1
        out.append(
            {
                "clean": tok.decode(tp.clean[i, :last].tolist()),
                "corrupted": tok.decode(tp.corrupted[i, :last].tolist()),
                "answer": tok.decode([int(tp.answer_ids[i])]),
                "wrong": tok.decode([int(tp.wrong_ids[i])]),
            }
        )
    return out


def _load_base(rt: Runtime, key: str | None) -> Any:
    import patchaudit as pa

    device = rt.config.device
    return rt.cache.get(key, lambda path: pa.BaseCache.load(str(path), device=device))


def _save_base(rt: Runtime, key: str, base: Any) -> None:
    if base is None or not base.has_grad:  # a patching-only base: the screens need the gradient
        return
    if not hasattr(base, "save"):  # an edge analysis's base stays in its job
        return
    try:
        rt.cache.put(key, lambda path: base.save(str(path)))
    except Exception:  # the cache is an optimisation: never fail a job on it
        log.warning("could not write cache entry %s", key, exc_info=True)


def _result_of(
    rt: Runtime, report: Any, base: Any, key: str, model: Any, req: NormalisedRequest, tp: Any
) -> dict[str, Any]:
    """The stored result of a report (its base pass cached when it was computed here)."""
    if base is None:
        _save_base(rt, key, report.base)
    weight = next(model.parameters())
    out = report.to_dict()
    if req.site == "edges" and out.get("edges") is None:
        out["edges"] = [str(e) for e in report.edges]  # the 1-D scores' order
    return stored_result(
        out,
        cache_hit=base is not None,
        pairs=_pair_texts(model, req, tp),
        runtime={  # where and in what precision the worker ran the model
            "device": str(weight.device),
            "dtype": str(weight.dtype).replace("torch.", ""),
        },
    )


def _no_retry() -> None:
    """An error raised by the job itself is deterministic: do not let RQ retry it."""
    job = get_current_job()
    if job is not None:
        job.retries_left = 0


def _current_job_id() -> str | None:
    job = get_current_job()
    return job.id if job is not None else None


# ----------------------------------------------------------------------------------------
# the one wrapper: error handling, status writes and clean-up for every job kind
# ----------------------------------------------------------------------------------------


@dataclass
class JobContext:
    """What a job body gets: the runtime, its analysis and job ids, its arguments by name,
    and (set by the body) where a cancelled job's partial result goes."""

    rt: Runtime
    analysis_id: str
    job_id: str | None
    args: dict[str, Any]
    keep_partial: Callable[[Any], None] | None = None
    interactive: bool = False
    last_progress: JobProgress | None = None

    @property
    def store(self) -> Any:
        return self.rt.store

    def progress(self, mirror: bool = False) -> JobProgress:
        lane = getattr(self.rt, "lane", None)
        give_way = lane.yield_point if lane is not None and not self.interactive else None
        self.last_progress = JobProgress(
            self.rt, self.analysis_id, self.job_id, mirror=mirror, lane_yield=give_way
        )
        return self.last_progress

    @property
    def phase(self) -> str | None:
        return self.last_progress.phase if self.last_progress is not None else None

    def analysis(self, what: str) -> Any:
        """The finished analysis this job works on (ValueError when it has no result)."""
        rec = self.store.get(self.analysis_id)
        if rec is None or rec.result is None:
            raise ValueError(f"analysis {self.analysis_id} has no result to {what}")
        return rec


def job_kind(kind: K.JobKind) -> Callable[[_F], _F]:
    """Register ``body(ctx, **arguments)`` as the job function of ``kind``, inside the one
    error handling every job shares: a cancelled job (``pa.Cancelled``) keeps its partial
    result when the body said where (``ctx.keep_partial``), else ``kind.cancelled`` writes its
    state; an error is recorded by ``kind.failed`` and not retried; a worker going down
    (SystemExit, KeyboardInterrupt) records nothing (RQ retries the job); every job ends with
    ``kind.released`` and leaves the analysis's active jobs."""

    def register(body: _F) -> _F:
        @functools.wraps(body)
        def run(analysis_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            a = kind.arguments((analysis_id, *args), kwargs)
            rt = get_runtime()
            ctx = JobContext(rt, analysis_id, _current_job_id(), a, interactive=kind.interactive)
            lane = getattr(rt, "lane", None)
            turn = (
                contextlib.nullcontext()
                if lane is None
                else lane.interactive()
                if kind.interactive
                else lane.long_job()
            )
            try:
                with turn:  # the models are this job's (see worker.lane)
                    return body(ctx, **{k: a[k] for k in kind.params if k in a})
            except Cancelled as exc:  # JobCancelled too
                partial = getattr(exc, "partial", None)
                if partial is not None and ctx.keep_partial is not None:
                    ctx.keep_partial(partial)  # keep the methods that completed
                else:
                    kind.cancelled(rt.store, analysis_id, a)
                log.info(
                    "%s job of %s cancelled%s",
                    kind.name,
                    analysis_id,
                    " (partial result)" if partial is not None else "",
                )
                return {"status": "cancelled"}
            except Exception as exc:  # JobTimeoutException too
                kind.failed(rt.store, analysis_id, a, error_info(exc, rt, ctx.phase))
                log.exception("%s job of %s failed", kind.name, analysis_id)
                _no_retry()
                raise
            finally:
                kind.released(rt.store, analysis_id, a)
                if ctx.job_id:
                    rt.store.remove_job(analysis_id, ctx.job_id)

        if job_name(run) != kind.function:
            raise RuntimeError(f"job kind {kind.name} names {kind.function}, not {job_name(run)}")
        job_function(run)
        return run  # type: ignore[return-value]

    return register


# ----------------------------------------------------------------------------------------
# the job kinds
# ----------------------------------------------------------------------------------------


@job_kind(K.ANALYSIS)
def run_analysis(ctx: JobContext) -> dict[str, Any]:
    """Audit one analysis's request and store the result (JSON) in Redis."""
    import patchaudit as pa

    rt, store, analysis_id = ctx.rt, ctx.store, ctx.analysis_id
    rec = store.get(analysis_id)
    if rec is None:
        log.warning("analysis %s vanished before it ran", analysis_id)
        return {"status": "missing"}
    if rec.status.finished:
        return {"status": rec.status.value}
    progress = ctx.progress(mirror=True)
    req = NormalisedRequest.model_validate(rec.request)
    progress.check()
    store.set_status(analysis_id, JobStatus.RUNNING, error=None)
    progress("starting", 0.0, 0)  # "load_model" only while a model actually loads (_prepare)
    model, tp, key = _prepare(rt, req, progress)
    base = _load_base(rt, key)
    ctx.keep_partial = lambda partial: store.set_partial(
        analysis_id, _result_of(rt, partial, base, key, model, req, tp), key
    )
    report = pa.audit(
        model,
        tp,
        site=req.site,
        metric=req.metric,
        direction=req.direction,
        methods=tuple(req.methods),
        hvp_probes=req.hvp_probes,
        ig_steps=req.ig_steps,
        seed=int(req.seed),
        tau=req.tau,
        progress=progress,
        should_stop=progress.should_stop,
        base=base,
        memory_budget_mb=rt.config.memory_budget_mb,
    )
    store.set_result(analysis_id, _result_of(rt, report, base, key, model, req, tp), key)
    log.info("analysis %s done (cache %s)", analysis_id, "hit" if base is not None else "miss")
    return {"status": "done"}


def _verify(
    ctx: JobContext, components: list[str], kind: str
) -> tuple[dict[str, float | None], dict[str, Any], bool]:
    import patchaudit as pa

    rt = ctx.rt
    rec = ctx.analysis("verify")
    req = NormalisedRequest.model_validate(rec.request)
    progress = ctx.progress()
    progress.check()
    progress(kind, 0.0, 0)
    model, tp, key = _prepare(rt, req, progress)
    base = _load_base(rt, rec.cache_key or key)
    edges = req.site == "edges"  # edge keys go to the engine as they are
    res = pa.verify(
        model,
        tp,
        edges_or_components(components, edges),
        site=req.site,
        metric=req.metric,
        direction=req.direction,
        base=base,
        progress=progress,
        should_stop=progress.should_stop,
        memory_budget_mb=rt.config.memory_budget_mb,
        keep_gradient=True,  # a recomputed base goes back into the cache for later screens
    )
    if base is None:
        _save_base(rt, key, getattr(res, "base", None))
    values = json_safe({_key(c): float(v) for c, v in res.values.items()})
    _keep_pair_values(rt, ctx.analysis_id, getattr(res, "per_pair", None) or {})
    cost = dict(res.cost)
    return values, cost, base is not None


def _keep_pair_values(rt: Runtime, analysis_id: str, per_pair: dict[Any, Any]) -> None:
    """Keep every pair's ap value of the verified components (the batched patched forward
    computed them), and add them to component details already stored."""
    pairs = {_key(c): json_safe(v) for c, v in per_pair.items()}
    if not pairs:
        return
    rt.store.add_verified_pairs(analysis_id, pairs)
    for k, vals in pairs.items():
        rec = rt.store.get_component(analysis_id, k)
        if rec is None or rec.get("status") != JobStatus.DONE.value:
            continue
        detail = rec["detail"]
        finite = [x for x in vals if x is not None]
        detail["per_pair"]["ap"] = vals
        detail["verified"] = sum(finite) / len(finite) if finite else None
        detail["map_value"]["ap"] = detail["verified"]
        rt.store.set_component(analysis_id, k, rec)


def edges_or_components(keys: list[str], edges: bool) -> Any:
    """What ``pa.verify`` takes: edge keys as they are, components as (layer, comp)."""
    return list(keys) if edges else [list(parse_component_key(c)) for c in keys]


def _key(c: Any) -> str:
    """The stored key of an engine key: an edge key as it is, a component (layer, comp) as
    "L.C"."""
    return c if isinstance(c, str) else component_key(c)


def _sorted_keys(values: dict[str, Any]) -> list[str]:
    return sorted(values, key=key_order)


@job_kind(K.VERIFY)
def run_verify(ctx: JobContext, components: list[str]) -> dict[str, Any]:
    """Activation patching of the given components ("L.H" keys) of a finished analysis."""
    values, cost, hit = _verify(ctx, components, "verify")
    ctx.store.add_verified(ctx.analysis_id, values)
    run = Verification(
        kind="verify",
        components=_sorted_keys(values),
        forwards=int(cost.get("forward", 0)),
        backwards=int(cost.get("backward", 0)),
        seconds=float(cost.get("seconds", 0.0)),
        cache_hit=hit,
    )
    ctx.store.append_verification(ctx.analysis_id, stored(run))
    return {"status": "done", "forwards": run.forwards}


@job_kind(K.FIX)
def run_fix(ctx: JobContext, components: list[str]) -> dict[str, Any]:
    """Screen-Flag-Fix step 3: activation patching of every flagged component, with its cost
    against a full activation-patching sweep (one patched forward per component)."""
    from ..audit import sweep_comparison

    rec = ctx.store.get(ctx.analysis_id)
    result = (rec.result if rec else None) or {}
    values, cost, hit = _verify(ctx, components, "fix")
    ctx.store.add_verified(ctx.analysis_id, values)
    cmp = sweep_comparison(cost, len(values), n_components(result), result.get("cost") or {})
    fix = FixInfo(  # like with like (FixResult): component forwards, batched passes, seconds
        **cmp,
        status=JobStatus.DONE,
        components=_sorted_keys(values),
        backwards=int(cost.get("backward", 0)),
        cache_hit=hit,
    )
    ctx.store.update(ctx.analysis_id, fix=stored(fix))
    run = Verification(
        kind="fix",
        components=fix.components,
        forwards=fix.fix_batch_passes,
        backwards=fix.backwards,
        seconds=fix.fix_seconds,
        cache_hit=hit,
    )
    ctx.store.append_verification(ctx.analysis_id, stored(run))
    return {"status": "done", "forwards": fix.fix_forwards, "passes": fix.fix_batch_passes}


@job_kind(K.CIRCUIT)
def run_circuit(
    ctx: JobContext, ranking: str, sizes: list[int] | None = None, absolute: bool = True
) -> dict[str, Any]:
    """The circuit curve of one ranking (a method's scores) of a finished analysis: faithfulness
    of its top-k components for each size (one batched pass on the cached base), stored as
    ``result.circuits[ranking]`` (``ranking:signed`` for a signed ranking)."""
    import patchaudit as pa

    rt = ctx.rt
    key, start = K.circuit_entry(ctx.args)
    rec = ctx.analysis("build circuits from")
    scores = (rec.result.get("scores") or {}).get(ranking)
    if scores is None:
        raise ValueError(f"this analysis has no {ranking!r} scores")
    entry = {**start, "status": JobStatus.RUNNING.value}
    ctx.store.set_circuit(ctx.analysis_id, key, entry)
    req = NormalisedRequest.model_validate(rec.request)
    progress = ctx.progress()
    progress.check()
    progress("circuit", 0.0, 0)
    model, tp, ckey = _prepare(rt, req, progress)
    base = _load_base(rt, rec.cache_key or ckey)
    nan = float("nan")
    if req.site == "edges":  # 1-D over result.edges; the circuits are edge sets
        ranked: Any = [nan if v is None else v for v in scores]
    else:
        ranked = [[nan if v is None else v for v in row] for row in scores]
    curve = pa.circuit_curve(
        model,
        tp,
        ranked,
        site=req.site,
        metric=req.metric,
        direction=req.direction,
        sizes=sizes,
        absolute=absolute,
        base=base,
        progress=progress,
        should_stop=progress.should_stop,
        memory_budget_mb=rt.config.memory_budget_mb,
        keep_gradient=True,  # a recomputed base goes back into the cache
    )
    if base is None:
        _save_base(rt, ckey, curve.base)
    out = curve.to_dict()
    if req.site == "edges":  # the edge keys themselves
        out["order"] = [str(e) for e in curve.order]
    done = CircuitInfo.model_validate(
        {**entry, **out, "status": JobStatus.DONE, "cache_hit": base is not None}
    )
    ctx.store.set_circuit(ctx.analysis_id, key, stored(done))
    return {"status": "done", "forwards": int(curve.cost.get("forward", 0))}


#: Pairs whose attention pattern a stored component detail keeps (the first ones): the
#: pattern is [pairs, pos, pos] per prompt, the rest of the detail [pairs] or [pairs, pos].
INSPECT_ATTENTION_PAIRS = 32


@job_kind(K.INSPECT)
def run_inspect(ctx: JobContext, key: str) -> dict[str, Any]:
    """One component of a finished analysis in detail (``pa.inspect``: per pair, per position,
    attention), stored with the analysis under ``key`` ("L.C") so later requests and share
    links read it without recomputing. Uses the cached base pass and, for a verified component,
    every pair's ap value kept by the verify run (else one patched forward)."""
    import patchaudit as pa
    from patchaudit.estimators.inspect import INSPECT_METHODS

    rt, store, analysis_id = ctx.rt, ctx.store, ctx.analysis_id
    rec = ctx.analysis("inspect")
    running = ComponentRecord(status=JobStatus.RUNNING, job_id=ctx.job_id)
    store.set_component(analysis_id, key, running.stored())
    req = NormalisedRequest.model_validate(rec.request)
    progress = ctx.progress()
    progress("inspect", 0.0, 0)  # the page's job list shows it running
    component: tuple[int, int] = (0, 0)
    if req.site == "edges":  # a graph node: its own site's detail ("L.H" a head, "mL" an MLP)
        site = "mlp" if key.startswith("m") else "heads"
        component = parse_component_key(key[1:] if site == "mlp" else key, site)
        req = req.model_copy(update={"site": site})
        model, tp, ckey = _prepare(rt, req)
        base = _load_base(rt, ckey)  # a node analysis's base of the same pairs, if cached
    else:
        component = parse_component_key(key)
        model, tp, ckey = _prepare(rt, req)
        base = _load_base(rt, rec.cache_key or ckey)
    settings = rec.result.get("settings") or {}
    verified = {**(rec.result.get("verified") or {}), **rec.verified}
    pair_ap: Any = store.verified_pairs(analysis_id, key)
    if pair_ap is not None and any(x is None for x in pair_ap):
        pair_ap = None
    if pair_ap is None and verified.get(key) is not None:
        pair_ap = float(verified[key])  # verified by an audit with ap: patch it again
    detail = pa.inspect(
        model,
        tp,
        component,
        site=req.site,
        metric=req.metric,
        direction=req.direction,
        methods=tuple(m for m in req.methods if m in INSPECT_METHODS) or ("atp",),
        base=base,
        verified_ap=pair_ap,
        hvp_probes=settings.get("hvp_probes") or req.hvp_probes,
        seed=int(req.seed),
        attention_pairs=INSPECT_ATTENTION_PAIRS,
        memory_budget_mb=rt.config.memory_budget_mb,
    )
    out = detail.to_dict()
    out["settings"]["cache_hit"] = base is not None
    done = ComponentRecord(status=JobStatus.DONE, detail=out)
    store.set_component(analysis_id, key, done.stored())
    log.info("inspected %s of %s in %.2f s", key, analysis_id, detail.cost["seconds"])
    return {"status": "done", "seconds": detail.cost["seconds"]}


#: The most flagged components the model-wide "why" view diagnoses (least reliable first).
WHY_FLAGGED_MAX = 24


def _flagged_all(result: dict[str, Any]) -> list[list[int]]:
    """Every flagged component of a stored result (verified or not), least reliable first."""
    flags = result.get("flags") or []
    rel = result.get("reliability") or []
    out = []
    for i, row in enumerate(flags):
        for j, f in enumerate(row):
            if f:
                r = rel[i][j] if i < len(rel) and j < len(rel[i]) else None
                out.append((1.0 if r is None else float(r), [i, j]))
    return [c for _, c in sorted(out)]


@job_kind(K.WHY)
def run_why(ctx: JobContext, key: str) -> dict[str, Any]:
    """Why AtP is wrong for one component ("L.C"), or for the flagged components of the
    analysis ("flagged"): ``pa.diagnose`` on the cached base pass, stored with the analysis
    under "why:<key>" so later requests and share links read it without recomputing."""
    import patchaudit as pa

    rt, store, analysis_id = ctx.rt, ctx.store, ctx.analysis_id
    skey = K.why_key(key)
    rec = ctx.analysis("why")
    running = ComponentRecord(status=JobStatus.RUNNING, job_id=ctx.job_id)
    store.set_component(analysis_id, skey, running.stored())
    req = NormalisedRequest.model_validate(rec.request)
    progress = ctx.progress()
    progress("diagnose", 0.0, 0)
    model, tp, ckey = _prepare(rt, req)
    comps = (
        _flagged_all(rec.result or {})[:WHY_FLAGGED_MAX]
        if key == "flagged"
        else [list(parse_component_key(key))]
    )
    out: dict[str, Any]
    if comps:
        base = _load_base(rt, rec.cache_key or ckey)
        d = pa.diagnose(
            model,
            tp,
            comps,
            site=req.site,
            metric=req.metric,
            direction=req.direction,
            base=base,
            progress=progress,
            should_stop=progress.should_stop,
            memory_budget_mb=rt.config.memory_budget_mb,
        )
        out = d.to_dict()
        seconds = float(d.cost.get("seconds", 0.0))
    else:
        out = {
            "site": req.site,
            "metric": req.metric,
            "direction": req.direction,
            "components": [],
            "cost": {},
        }
        seconds = 0.0
    out["key"] = key
    out["n_layers"] = len((rec.result or {}).get("labels", {}).get("rows") or [])
    done = ComponentRecord(status=JobStatus.DONE, detail=out)
    store.set_component(analysis_id, skey, done.stored())
    log.info("diagnosed %s of %s in %.2f s", key, analysis_id, seconds)
    return {"status": "done", "seconds": seconds}


# ----------------------------------------------------------------------------------------
# abandoned jobs
# ----------------------------------------------------------------------------------------


@job_function
def on_job_failure(job: Any, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """RQ failure callback. Errors raised by a job are already recorded by the job; this
    handles a job abandoned by a dead worker: requeued once (``kind.requeued``), then failed
    with a clear message (``kind.lost``)."""
    from rq.exceptions import AbandonedJobError

    if exc_type is not AbandonedJobError and not isinstance(exc_value, AbandonedJobError):
        return
    from ..store import AnalysisStore

    kind = K.kind_of(job)
    if kind is None:
        return
    try:
        args = kind.of_job(job)
    except TypeError:
        log.warning("job %s (%s) has arguments its kind does not take", job.id, kind.name)
        return
    analysis_id = args.get("analysis_id")
    if not analysis_id:
        return
    store = AnalysisStore(connection)
    retrying = bool(job.retries_left and job.retries_left > 0)
    log.warning(
        "job %s (%s) abandoned by its worker; %s",
        job.id,
        kind.name,
        "retrying" if retrying else "giving up",
    )
    if retrying:
        try:  # the page shows "retrying" for this job until a worker takes it again
            job.meta.update({"phase": "retrying", "fraction": 0.0, "attempt": 2})
            job.save_meta()
        except Exception:
            log.debug("could not mark job %s retrying", job.id, exc_info=True)
        kind.requeued(store, analysis_id, args)
        return
    kind.lost(store, analysis_id, args, kind.lost_error)
    kind.released(store, analysis_id, args)
    store.remove_job(analysis_id, job.id)
