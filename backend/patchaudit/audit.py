"""The public entry points: ``audit``, ``verify`` and ``screen_flag_fix``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import defaults
from .estimators import methods as M
from .estimators import reliability as R
from .estimators.core import (
    BaseCache,
    Cancelled,
    Cost,
    Problem,
    ProgressFn,
    StopFn,
    Tracker,
    attach_base,
    compute_base,
    compute_base_fused,
    make_problem,
    memory_plan,
    model_device,
    patch_components,
)
from .estimators.sites import SITES
from .report import Report
from .tasks.metrics import METRICS
from .tasks.pairs import PromptPairs, TokenPairs


def _check_choice(kind: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}: choose one of {', '.join(allowed)}")


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _problem(
    model, pairs, site, metric, direction, memory_budget_mb, hvp_mode=None, methods=None
) -> tuple[Problem, TokenPairs]:
    _check_choice("site", site, SITES)
    _check_choice("metric", metric, METRICS)
    _check_choice("direction", direction, ("noising", "denoising"))
    if not isinstance(pairs, PromptPairs | TokenPairs):
        raise ValueError("pairs must be a PromptPairs (from_task, from_text or from_tokens)")
    tp = pairs if isinstance(pairs, TokenPairs) else pairs.tokenize(model)
    p = make_problem(
        model,
        tp,
        site,
        metric,
        direction,
        None if memory_budget_mb is None else float(memory_budget_mb),  # 512 is a budget too
        hvp_mode,
        methods=methods,  # the memory plan is per method (what each pass really holds)
    )
    return p, tp


def base_key(model_name: str, tp: TokenPairs, site: str, metric: str, direction: str) -> str:
    """The cache key of a base pass: (model, tokens, site, direction, metric)."""
    return f"{model_name}|{tp.key()}|{site}|{direction}|{metric}"


def _model_name(model) -> str:
    name = getattr(model, "patchaudit_name", None)
    if name:
        return str(name)
    return str(getattr(model.cfg, "model_name", None) or getattr(model.cfg, "name", "model"))


def _get_base(
    p: Problem,
    base: BaseCache | None,
    tracker: Tracker,
    signs: torch.Tensor | None = None,
    phase: str = "base",
    need_grad: bool = True,
) -> tuple[BaseCache, torch.Tensor | None, bool]:
    """A cached base (attached to the problem) or a fresh base pass; with ``signs`` the pass
    also carries those HVP tangents (the fused screen). Without ``need_grad`` (activation
    patching alone) a fresh pass skips the backward; a cached base without a gradient is not
    used where one is needed. Returns (base, y, cached)."""
    if base is not None and (base.has_grad or not need_grad):
        attach_base(p, base)
        return base, None, True
    tracker.phase = phase
    tracker.report(0.0)  # the base pass is under way (it can be the longest phase)
    if not need_grad and signs is None:
        b, y = compute_base(p, tracker, grad=False), None
    else:
        b, y = compute_base_fused(p, tracker, signs)
    tracker.report(1.0)
    return b, y, False


def audit(
    model,
    pairs: PromptPairs | TokenPairs,
    site: str = "heads",
    metric: str = "logit_diff",
    direction: str = "noising",
    methods: Sequence[str] | None = None,
    hvp_probes: int | None = None,
    ig_steps: int | None = None,
    mhvp_steps: int | None = None,
    seed: int = 0,
    tau: float | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    base: BaseCache | None = None,
    memory_budget_mb: float | None = None,
    bound_scale: float | None = None,
    circuit_k: int | None = None,
    model_name: str | None = None,
    hvp_mode: str | None = None,
) -> Report:
    """Every requested estimate for every component of ``site``, with the reliability score,
    error bound, materiality and flags (METHODS.md)."""
    if methods is None:
        methods = ("atp", "hvp") if site == "edges" else default_screen(model)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("no methods given: choose any of " + ", ".join(M.METHODS))
    for m in methods:
        _check_choice("method", m, M.METHODS)
    dev = model_device(model).type
    hvp_probes = _positive_int(
        "hvp_probes", defaults.hvp_probes(dev) if hvp_probes is None else hvp_probes
    )
    ig_steps = _positive_int(
        "ig_steps", defaults.load()["ig_steps"] if ig_steps is None else ig_steps
    )
    mhvp_steps = _positive_int(
        "mhvp_steps", defaults.load()["mhvp_steps"] if mhvp_steps is None else mhvp_steps
    )
    tau = defaults.tau() if tau is None else float(tau)  # 0: no rho-based reason by default
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    model_name = model_name or _model_name(model)
    if site == "edges":  # the edge graph: EAP, EAP-IG, the corrected edge, edge patching
        from .edge_audit import audit_edges

        return audit_edges(
            model, pairs, metric, direction, methods, hvp_probes, ig_steps, seed, tau,
            progress, should_stop, base, memory_budget_mb, bound_scale, circuit_k,
            model_name, hvp_mode, task_name(pairs),
        )  # fmt: skip
    p, tp = _problem(model, pairs, site, metric, direction, memory_budget_mb, hvp_mode, methods)
    torch.manual_seed(seed)

    steps = ["base", *methods]
    state = {"i": 0}
    tracker = Tracker(should_stop=should_stop)
    if progress is not None:
        tracker.progress = lambda ph, f, n: progress(ph, (state["i"] + f) / len(steps), n)
    tracker.check()
    ests: dict[str, M.Estimate] = {}
    # The fused screen: without a cached base, the first second-order method rides on the base
    # pass itself (its forward is taken with create_graph), so it costs its double backwards
    # on top of AtP and no extra forward.
    fused = next((m for m in methods if m in M.SECOND_ORDER), None) if base is None else None
    signs = None
    if fused is not None:
        signs, combine = M.second_order_signs(p, fused, hvp_probes, seed)
        if p.hvp_mode == "tile" and signs.shape[0] > p.max_copies:
            fused = signs = None  # too many tangents for one pass: the chunked kernel does it
    t0 = time.perf_counter()
    phase = "base" if fused is None else f"base + {fused}"
    need_grad = any(m != "ap" for m in methods)
    b, y, cached = _get_base(p, base, tracker, signs, phase, need_grad)
    base_cost = Cost() if cached else b.cost
    if fused is not None and y is not None:
        est = M.from_tangents(p, b, y, combine)
        extra_s = time.perf_counter() - t0 - b.cost.seconds
        est.cost = Cost.since(tracker, b.cost, extra_s)
        ests[fused] = est
    b.key = base_key(model_name, tp, site, metric, direction)

    stopped: Cancelled | None = None
    # cheapest first, ap last: a cancel keeps as much as possible
    order = sorted(methods, key=lambda m: (m == "ap", m in ("ig", "mhvp"), m == "sat", m != "atp"))
    try:
        for i, m in enumerate(order, start=1):
            state["i"] = i
            tracker.phase = m
            tracker.check()
            if m in ests:
                pass
            elif m == "atp":
                ests[m] = M.atp(p, b, tracker)
            elif m in M.SECOND_ORDER:
                ests[m] = M.second_order(p, b, m, hvp_probes, seed, tracker)
            elif m == "sat":
                ests[m] = M.sat(p, b, tracker)
            elif m == "ig":
                ests[m] = M.ig(p, b, steps=ig_steps, tracker=tracker)
            elif m == "mhvp":
                ests[m] = M.mhvp(p, b, steps=mhvp_steps, tracker=tracker)
            elif m == "ap":
                ests[m] = M.ap(p, b, tracker=tracker)
            elif m == "atp_star":
                ests[m] = M.atp_star(p, b, tracker)
            elif m == "graddrop":
                ests[m] = M.graddrop(p, b, tracker)
            tracker.report(1.0)
    except Cancelled as exc:  # keep the methods that completed: exc.partial is their report
        if "atp" in methods and "atp" not in ests and b.has_grad:
            # AtP is the base pass's gradient itself (no pass of its own): keep it with the
            # second-order method computed in the same (fused) pass
            ests["atp"] = M.atp(p, b, Tracker())
        methods = [m for m in methods if m in ests]
        if not methods:
            raise
        stopped = exc

    report = Report(
        site=site,
        metric=metric,
        direction=direction,
        methods=methods,
        labels=site_labels(p, tp, model),
        scores={m: ests[m].values.detach().cpu() for m in methods},
        tau=tau,
        metric_base=float(b.f_base.mean()),
        metric_src=float(b.f_src.mean()),
        settings={
            "hvp_probes": hvp_probes,
            "ig_steps": ig_steps,
            "mhvp_steps": mhvp_steps,
            "seed": seed,
            "n_pairs": len(tp),
            "n_pos": int(tp.clean.shape[1]),
            "model": model_name,
            "bound_scale": bound_scale,
            "base_cached": cached,
        },
        base=b,
    )
    report.cost["base"] = {
        **base_cost.as_dict(),
        "cached": cached,
        "note": cost_note("base", b.cost, cached, p.site.n_layers * p.site.n_comp),
    }
    for m in methods:
        own = ests[m].cost
        report.cost[m] = {
            **(own + base_cost).as_dict(),
            "cached": cached and own.forward + own.backward == 0,
            "note": cost_note(
                m,
                own,
                cached,
                p.site.n_layers * p.site.n_comp,
                hvp_probes=hvp_probes,
                ig_steps=ig_steps,
                mhvp_steps=mhvp_steps,
                fused=m == fused,
            ),
        }
    report.cost["plan"] = memory_plan(p)  # the chunking chosen up front
    if "ap" in ests:
        v = ests["ap"].values
        report.verified = {
            (i, j): float(v[i, j]) for i in range(v.shape[0]) for j in range(v.shape[1])
        }
    source = next((m for m in M.SECOND_ORDER if m in ests), None)
    screened = source is not None or "sat" in ests
    a1 = M.atp(p, b).values.detach().cpu() if screened or "atp" in ests else None
    report.material_threshold = R.MATERIAL_SHARE * abs(report.total_effect)
    report.screen = screen_info(a1, report.total_effect, metric, direction, source)
    if screened:
        assert a1 is not None
        q = se = None
        if source is not None:
            assert ests[source].q is not None
            q = ests[source].q.detach().cpu()  # type: ignore[union-attr]
            q_se = ests[source].q_se
            se = q_se.detach().cpu() if q_se is not None else None
        sat_est = ests.get("sat")
        sat_v = sat_est.values.detach().cpu() if sat_est is not None else None
        cal = defaults.flag_calibration(
            model_name, site, metric, direction, task_name(pairs), sat_v is not None
        )
        if bound_scale is not None:  # the caller's scale replaces the calibrated one
            cal.scale, cal.why = float(bound_scale), f"scale {bound_scale:g} given by the caller"
        if cal.estimate == "sat" and sat_v is not None:
            shown, report.estimate_method = sat_v, "sat"
        elif q is not None:
            shown, report.estimate_method = a1 + q / 2, source
        else:
            assert sat_v is not None
            shown, report.estimate_method = sat_v, "sat"
        feasible = R.feasible_range(metric, report.metric_base)
        vanishes = bool(report.screen.get("first_order_vanishes"))
        u = R.uncertainty(a1, q, se, sat_v)
        share = None
        if sat_est is not None and sat_est.detail is not None:
            share = sat_est.detail.nonlinear.detach().cpu().abs().flatten(2).amax(2)
        trust = R.assess_calibrated(
            a1, shown, u, report.total_effect, cal, feasible, share, vanishes, sat=sat_v
        )
        rho = R.score(R.ratio(a1, q)) if q is not None else None
        if tau > 0 and rho is not None:  # the optional extra reason: rho below the caller's tau
            trust.reasons["reliability"] = trust.material & (rho < tau)
            trust.flags = R.any_reason(trust.reasons)
        report.reliability = rho
        report.error_bound, report.flags = trust.error_bound, trust.flags
        report.material, report.flag_reasons = trust.material, trust.reasons
        report.interval = (trust.lower, trust.upper)
        report.deferred = trust.deferred
        report.material_threshold = trust.material_threshold
        report.cutoff = R.circuit_cutoff(shown, circuit_k)
        report.q, report.q_se, report.reliability_source = q, se, source
        report.calibration = {
            "key": cal.key,
            "calibrated": cal.calibrated,
            "scale": cal.scale,
            "kappa": cal.kappa,
            "estimate": report.estimate_method,
            "unexplained": trust.unexplained,
            "why": cal.why,
        }
        if sat_est is not None and sat_est.detail is not None:
            report.saturation = saturation_heads(sat_est.detail, trust.reasons["saturation"])
    if stopped is not None:
        report.partial = True
        stopped.partial = report  # type: ignore[attr-defined]
        raise stopped
    if progress is not None:
        progress("done", 1.0, tracker.passes)
    return report


def default_screen(model) -> tuple[str, ...]:
    """The default screen: AtP, the HVP correction and, where the model exposes its attention
    scores and patterns, the saturation-aware estimate."""
    from .estimators.saturation import attention_hook_names

    try:
        attention_hook_names(model)
    except ValueError:
        return ("atp", "hvp")
    return ("atp", "hvp", "sat")


def task_name(pairs) -> str | None:
    """The built-in task a PromptPairs was made from (None for the caller's own pairs)."""
    task = getattr(pairs, "task", None)
    return str(task["name"]) if isinstance(task, dict) and task.get("name") else None


def saturation_heads(detail, flagged: torch.Tensor) -> dict[str, list[dict]]:
    """For every component flagged for saturation, the downstream heads whose exact softmax
    departs most from its linearisation ("1.0" -> [{"layer", "head", "share"}, ...])."""
    out: dict[str, list[dict]] = {}
    for i, j in flagged.nonzero().tolist():
        out[f"{i}.{j}"] = [
            {"layer": li, "head": h, "share": v} for li, h, v in detail.top_heads(i, j, 3)
        ]
    return out


def site_labels(p: Problem, tp: TokenPairs, model) -> dict:
    """The site's axis labels; for resid also ``positions``: the token at each position
    (of the first clean prompt), so a component reads "L1 @3 'store'"."""
    labels = p.site.labels()
    if p.site.col_name == "position":
        tok = getattr(model, "tokenizer", None)
        ids = tp.clean[0].tolist()
        if tok is not None:
            labels["positions"] = [tok.decode([int(i)]) for i in ids]
        else:
            labels["positions"] = [str(i) for i in ids]
    return labels


def screen_info(
    a1: torch.Tensor | None,
    total_effect: float,
    metric: str,
    direction: str,
    source: str | None,
) -> dict:
    """What the screen (AtP + HVP) can say for this metric and direction (METHODS.md):
    ``informative`` is False where the first-order term vanishes at the base point."""
    if a1 is None:
        return {
            "informative": False,
            "first_order_vanishes": False,
            "message": "no screen ran (add atp and hvp to the methods to screen and flag)",
        }
    vanishes = R.first_order_vanishes(a1, total_effect, metric, direction)
    if not vanishes:
        msg = "AtP ranks the components; flags mark the estimates it cannot be trusted on."
        if source is None:
            msg += " Add hvp to the methods to score reliability and flag."
        return {"informative": True, "first_order_vanishes": False, "message": msg}
    share = float(a1.nan_to_num(0.0).abs().sum()) / max(abs(total_effect), 1e-30)
    if metric == "kl" and direction == "noising":
        why = (
            "KL noising: the clean run minimises KL(clean || patched), so the metric's gradient "
            "is 0 there and AtP is 0 for every component"
        )
    else:
        why = (
            f"{metric} {direction}: all AtP values together are {share:.2%} of the total effect "
            "(the base run is saturated: the model is already near-certain there)"
        )
    return {
        "informative": False,
        "first_order_vanishes": True,
        "message": f"The screen is uninformative here. {why}. AtP cannot rank components and "
        "none is ruled immaterial; the second-order term leads, so read the HVP map as a "
        "ranking hint, not a size, and verify with activation patching (ap).",
    }


def cost_note(
    method: str,
    cost: Cost,
    cached: bool,
    n_components: int,
    hvp_probes: int = 0,
    ig_steps: int = 0,
    mhvp_steps: int = 0,
    fused: bool = False,
) -> str:
    """Plain words for one cost entry: what a pass is here and why a count can be 0."""
    f, bw = cost.forward, cost.backward
    base = "the base pass came from the activation cache" if cached else "plus the base pass"
    if method == "base":
        if cached:
            return "served from the activation cache: no pass run"
        return (
            f"{f} batched forward(s) (clean and corrupted) + {bw} backward (the gradient at the "
            "base run)"
        )
    if method == "atp":
        return f"read off the base pass (<gradient, delta>): no pass of its own; {base}"
    if method == "hvp":
        rows = f"{hvp_probes} probes ride on the batch axis"
        if fused:
            return f"{rows} of the base pass itself: {bw} double backward(s) over {hvp_probes}x the rows, no extra forward"
        return f"{rows}: {f} batched forward(s) + {bw} double backward(s) over up to {hvp_probes}x the rows; {base}"
    if method in ("hvp_joint", "hvp_exact"):
        what = (
            "one joint probe"
            if method == "hvp_joint"
            else f"{n_components} tangents (one per component)"
        )
        return f"{what} on the batch axis: {f} batched forward(s) + {bw} double backward(s); {base}"
    if method == "ig":
        return (
            f"{ig_steps} IG steps ride on the batch axis: {f} batched forward(s) + {bw} batched "
            f"backward(s) over {ig_steps}x the rows; {base}"
        )
    if method == "mhvp":
        return (
            f"{mhvp_steps + 1} nodes ride on the batch axis: {f} batched forward(s) + {bw} "
            f"backward(s) (gradients and the HVP at both ends); {base}"
        )
    if method == "atp_star":
        return (
            f"the QK fix: 1 forward + 1 backward for dm/dA, then one block per layer with the "
            f"components on the batch axis: {f} forward(s) + {bw} backward(s) in all "
            f"(AtP, no pass of its own, outside the q / k sites); {base}"
        )
    if method == "graddrop":
        return (
            f"one backward per layer with its residual contribution dropped, the layers on the "
            f"batch axis: {f} forward(s) + {bw} backward(s); {base}"
        )
    if method == "ap":
        return (
            f"{n_components} patched component-forwards, batched into {f} forward pass(es) "
            f"(components of a layer ride on the batch axis); {base}"
        )
    return base


@dataclass
class VerifyResult:
    values: dict  # (layer, comp) -> ap; for edges, edge key -> edge patching
    cost: dict = field(default_factory=dict)
    base: BaseCache | None = field(default=None, repr=False)
    # every pair's own ap value (the same patched forwards compute them): component -> [batch]
    per_pair: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        vals = ", ".join(
            (k if isinstance(k, str) else f"L{k[0]}.{k[1]}") + f"={v:+.4g}"
            for k, v in list(self.values.items())[:6]
        )
        more = " ..." if len(self.values) > 6 else ""
        c = self.cost
        return (
            f"<VerifyResult {len(self.values)} components: {vals}{more} | "
            f"{c.get('forward', 0)} forward(s), {c.get('seconds', 0.0):.3f} s>"
        )


def sweep_comparison(fix_cost: dict, n_fixed: int, n_components: int, cost: dict) -> dict:
    """The fix against a full ap sweep, like with like: component forwards, batched forward
    passes (as the engine runs them) and seconds (the sweep's measured when ap ran with the
    analysis, else estimated from the fix's seconds per batched pass)."""
    full_passes = int(fix_cost.get("full_sweep_batch_passes", 0))
    fix_passes = int(fix_cost.get("patch_passes", fix_cost.get("forward", 0)))
    patch_s = float(fix_cost.get("patch_seconds", fix_cost.get("seconds", 0.0)))
    out: dict[str, Any] = {
        "fix_forwards": n_fixed,
        "full_sweep_forwards": n_components,
        "fix_batch_passes": int(fix_cost.get("forward", 0)),
        "full_sweep_batch_passes": full_passes,
        "fix_seconds": float(fix_cost.get("seconds", 0.0)),
    }
    if "ap" in cost:
        base_s = float((cost.get("base") or {}).get("seconds", 0.0))
        out["full_sweep_seconds"] = max(0.0, float(cost["ap"]["seconds"]) - base_s)
        out["full_sweep_seconds_estimated"] = False
    else:
        per_pass = patch_s / fix_passes if fix_passes else 0.0
        out["full_sweep_seconds"] = per_pass * full_passes if per_pass else None
        out["full_sweep_seconds_estimated"] = True
    return out


def verify(
    model,
    pairs: PromptPairs | TokenPairs,
    components: Sequence[Sequence[int]],
    site: str = "heads",
    metric: str = "logit_diff",
    direction: str = "noising",
    base: BaseCache | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    memory_budget_mb: float | None = None,
    keep_gradient: bool = False,
) -> VerifyResult:
    """Activation patching of the given components (Screen-Flag-Fix step 3). With a cached
    ``base`` each layer's components cost one batched patched forward and nothing else.
    Without one, the fresh base pass skips the backward (patching needs no gradient), unless
    ``keep_gradient``: then the returned base can serve later screens (the service caches it).
    With ``site="edges"`` the components are edge keys ("0.1->1.0.k") and this is edge
    patching (values keyed by the edge key)."""
    if site == "edges":
        from .edge_audit import verify_edges

        return verify_edges(
            model, pairs, components, metric, direction, base, progress,  # type: ignore[arg-type]
            should_stop, memory_budget_mb, keep_gradient,
        )  # fmt: skip
    planned = ("ap", "atp") if keep_gradient and base is None else ("ap",)
    p, _ = _problem(model, pairs, site, metric, direction, memory_budget_mb, methods=planned)
    comps = []
    for c in components:
        if len(c) != 2:
            raise ValueError(f"a component is [layer, index], got {list(c)!r}")
        i, j = int(c[0]), int(c[1])
        if not (0 <= i < p.site.n_layers and 0 <= j < p.site.n_comp):
            raise ValueError(
                f"component [{i}, {j}] is outside the {p.site.n_layers} x {p.site.n_comp} {site} map"
            )
        comps.append((i, j))
    tracker = Tracker(progress=progress, should_stop=should_stop)
    t0 = time.perf_counter()
    b, _, _ = _get_base(p, base, tracker, need_grad=keep_gradient)
    tracker.phase = "verify"
    per_pair: dict[tuple[int, int], torch.Tensor] = {}
    f0, t1 = tracker.forward, time.perf_counter()
    values = patch_components(p, b, sorted(set(comps)), tracker, per_pair) if comps else {}
    now = time.perf_counter()
    cost = {
        **Cost.of(tracker).as_dict(),
        "seconds": now - t0,
        "patch_passes": tracker.forward - f0,  # batched patched forwards (no base pass)
        "patch_seconds": now - t1,
        # forwards of the shared prefix alone (the exact shortcut; not in "forward")
        "prefix_forward": tracker.prefix,
        # what a full sweep runs: each layer's components in chunks of max_copies
        "full_sweep_batch_passes": p.site.n_layers * -(-p.site.n_comp // max(1, p.max_copies)),
    }
    return VerifyResult(values, cost, b, per_pair)


@dataclass
class FixResult:
    estimates: torch.Tensor  # the corrected screen with flagged components replaced by ap
    verified: dict[tuple[int, int], float]
    flagged: list[tuple[int, int]]
    cost: dict
    fix_forwards: int  # patched component-forwards spent on the fix
    full_sweep_forwards: int  # what a full ap sweep costs (one per component)
    report: Report = field(repr=False)
    fix_batch_passes: int = 0  # batched forward passes the fix ran (with any base pass)
    full_sweep_batch_passes: int = 0  # batched patched forwards a full ap sweep runs
    fix_seconds: float = 0.0
    full_sweep_seconds: float | None = None  # measured when ap ran with the report
    full_sweep_seconds_estimated: bool = True

    def __repr__(self) -> str:
        from .report import summary

        sweep = (
            "?"
            if self.full_sweep_seconds is None
            else f"{self.full_sweep_seconds:.3f} s{' (est.)' if self.full_sweep_seconds_estimated else ''}"
        )
        return summary(
            self,
            f" | fixed {self.fix_forwards} of {self.full_sweep_forwards} component forwards, "
            f"{self.fix_batch_passes} vs {self.full_sweep_batch_passes} batched passes, "
            f"{self.fix_seconds:.3f} s vs {sweep}",
        )


def screen_flag_fix(
    model,
    pairs: PromptPairs | TokenPairs,
    site: str = "heads",
    metric: str = "logit_diff",
    direction: str = "noising",
    hvp_probes: int | None = None,
    seed: int = 0,
    tau: float | None = None,
    report: Report | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    memory_budget_mb: float | None = None,
    budget: int | None = None,
) -> FixResult:
    """Screen (atp + hvp + sat), flag, fix the flagged components with activation patching.
    ``budget`` caps how many components are verified (least reliable first)."""
    if report is None:
        report = audit(
            model,
            pairs,
            site,
            metric,
            direction,
            default_screen(model),
            hvp_probes=hvp_probes,
            seed=seed,
            tau=tau,
            progress=progress,
            should_stop=should_stop,
            memory_budget_mb=memory_budget_mb,
        )
    if report.flags is None or report.error_bound is None:
        raise ValueError(
            "screen_flag_fix needs a screened report: run audit with atp and hvp (or sat)"
        )
    # least trustworthy first: the widest interval relative to the estimate
    width = report.error_bound / report.estimate.abs().clamp_min(1e-30)
    flagged = [tuple(x) for x in report.flags.nonzero().tolist()]
    flagged.sort(key=lambda c: -float(width[c[0], c[1]]))
    if budget is not None:
        flagged = flagged[:budget]
    flagged_t = [(int(i), int(j)) for i, j in flagged]
    v = verify(
        model,
        pairs,
        flagged_t,
        site,
        metric,
        direction,
        base=report.base,
        should_stop=should_stop,
        memory_budget_mb=memory_budget_mb,
    )
    est = report.estimate.clone()
    for (i, j), val in v.values.items():
        est[i, j] = val
    report.verified.update(v.values)
    screen_cost = report.cost.get("hvp", report.cost.get("base", {}))
    cost = {"screen": screen_cost, "fix": v.cost}
    cmp = sweep_comparison(v.cost, len(flagged_t), int(est.numel()), report.cost)
    return FixResult(
        est,
        v.values,
        flagged_t,
        cost,
        cmp["fix_forwards"],
        cmp["full_sweep_forwards"],
        report,
        fix_batch_passes=cmp["fix_batch_passes"],
        full_sweep_batch_passes=cmp["full_sweep_batch_passes"],
        fix_seconds=cmp["fix_seconds"],
        full_sweep_seconds=cmp["full_sweep_seconds"],
        full_sweep_seconds_estimated=cmp["full_sweep_seconds_estimated"],
    )


def diagnose(
    model,
    pairs: PromptPairs | TokenPairs,
    components: Sequence[Sequence[int]],
    site: str = "heads",
    metric: str = "logit_diff",
    direction: str = "noising",
    base: BaseCache | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    memory_budget_mb: float | None = None,
):
    """Why AtP is wrong for each component: its exact second-order term q split by layer and
    kind of operation (attention scores, softmax, pattern x V, each normalisation, the MLP
    activation and gate, soft-caps, the metric), local against downstream, the remainder
    ap - A1 - q/2 and the saturation-aware estimate (METHODS.md, "The second-order term, split
    by operation"). Returns a :class:`~patchaudit.diagnosis.Diagnosis`."""
    from .component_keys import parse_component_key
    from .diagnosis import build

    p, _ = _problem(model, pairs, site, metric, direction, memory_budget_mb)
    if isinstance(components, str | int) or not len(components):
        raise ValueError("components must be a non-empty list of components, e.g. [(1, 0)]")
    comps: list[tuple[int, int]] = []
    for c in components:
        i, j = parse_component_key(c, site)
        if not (0 <= i < p.site.n_layers and 0 <= j < p.site.n_comp):
            raise ValueError(
                f"component [{i}, {j}] is outside the {p.site.n_layers} x {p.site.n_comp} {site} map"
            )
        if (i, j) not in comps:
            comps.append((i, j))
    tracker = Tracker(progress=progress, should_stop=should_stop)
    t0 = time.perf_counter()
    b, _, cached = _get_base(p, base, tracker)
    d = build(p, b, comps, tracker)
    d.cost = {
        **Cost.of(tracker).as_dict(),
        "seconds": time.perf_counter() - t0,
        "base_cached": cached,
        "note": (
            "base pass (unless cached), one forward + one backward for the gradient at every "
            "operation, one forward-mode pass per chunk of components with each operation's "
            "own second derivative, one patched forward per layer chunk (ap) and one "
            "forward-mode pass per layer chunk (sat)"
        ),
    }
    return d
