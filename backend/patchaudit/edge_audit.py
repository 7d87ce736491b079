"""The public entry points for site "edges": ``pa.audit(..., site="edges")``,
``pa.verify(..., site="edges")``, ``pa.faithfulness`` / ``pa.circuit_curve`` on edge circuits
(METHODS.md, "Edges"). The estimators themselves are ``estimators/edges.py``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from . import defaults
from .estimators import circuits as K
from .estimators import edges as E
from .estimators import reliability as R
from .estimators.core import Cancelled, Cost, Problem, Tracker, make_problem, memory_plan
from .report import Report
from .tasks.metrics import METRICS
from .tasks.pairs import PromptPairs, TokenPairs

#: The methods an edge audit runs: atp = EAP, hvp = the HVP-corrected edge, ig = EAP-IG
#: (inputs), ap = edge patching.
EDGE_METHODS = ("atp", "hvp", "ig", "ap")
EDGE_METHOD_NAMES = {
    "atp": "EAP",
    "hvp": "HVP-corrected edge",
    "ig": "EAP-IG (inputs)",
    "ap": "edge patching",
}


def edge_problem(
    model, pairs, metric: str, direction: str, memory_budget_mb=None, hvp_mode=None
) -> tuple[Problem, TokenPairs, E.Graph]:
    for kind, v, allowed in (
        ("metric", metric, METRICS),
        ("direction", direction, ("noising", "denoising")),
    ):
        if v not in allowed:
            raise ValueError(f"unknown {kind} {v!r}: choose one of {', '.join(allowed)}")
    if not isinstance(pairs, PromptPairs | TokenPairs):
        raise ValueError("pairs must be a PromptPairs (from_task, from_text or from_tokens)")
    g = E.graph(model)
    tp = pairs if isinstance(pairs, TokenPairs) else pairs.tokenize(model)
    budget = None if memory_budget_mb is None else float(memory_budget_mb)
    # the problem's site only sizes the residual-stream capture (one per layer)
    p = make_problem(model, tp, "heads", metric, direction, budget, hvp_mode)
    return p, tp, g


def _edge_base(
    p: Problem, g: E.Graph, base: Any, tracker: Tracker, need_grad: bool, signs=None
) -> tuple[E.EdgeBase, torch.Tensor | None, bool]:
    if isinstance(base, E.EdgeBase) and (base.has_grad or not need_grad):
        if len(base.graph.keys) != len(g.keys):
            raise ValueError("the cached edge base belongs to another model")
        p.targets = type(p.targets)(
            p.targets.answer_ids, p.targets.wrong_ids, p.targets.last_pos, base.ref_logprobs
        )
        return base, None, True
    tracker.phase = "base" if signs is None else "base + hvp"
    eb, y = E.edge_base(p, g, tracker, grad=need_grad, signs=signs)
    tracker.report(1.0)
    return eb, y, False


def audit_edges(
    model,
    pairs,
    metric: str,
    direction: str,
    methods: Sequence[str],
    hvp_probes: int,
    ig_steps: int,
    seed: int,
    tau: float,
    progress=None,
    should_stop=None,
    base: Any = None,
    memory_budget_mb=None,
    bound_scale: float | None = None,
    circuit_k: int | None = None,
    model_name: str = "model",
    hvp_mode: str | None = None,
    task: str | None = None,
) -> Report:
    """Every requested edge estimate for every edge, with the reliability, error bound and
    flags per edge (the screen's interval rule; edges were never calibrated, so the
    uncalibrated rule applies and ``report.calibration["why"]`` says so)."""
    bad = [m for m in methods if m not in EDGE_METHODS]
    if bad:
        raise ValueError(
            f"method {bad[0]!r} has no edge version: site 'edges' takes "
            + ", ".join(f"{m} ({EDGE_METHOD_NAMES[m]})" for m in EDGE_METHODS)
        )
    p, tp, g = edge_problem(model, pairs, metric, direction, memory_budget_mb, hvp_mode)
    torch.manual_seed(seed)
    steps = ["base", *methods]
    state = {"i": 0}
    tracker = Tracker(should_stop=should_stop)
    if progress is not None:
        tracker.progress = lambda ph, f, n: progress(ph, (state["i"] + f) / len(steps), n)
    tracker.check()
    need_grad = any(m != "ap" for m in methods)
    signs = E.rademacher_edges(g, hvp_probes, seed) if "hvp" in methods else None
    if base is not None and not isinstance(base, E.EdgeBase):
        base = None  # a node base cannot serve edges
    eb, y, cached = _edge_base(p, g, base, tracker, need_grad, signs if base is None else None)
    base_cost = Cost() if cached else eb.cost
    values: dict[str, torch.Tensor] = {}
    costs: dict[str, Cost] = {}
    q = q_se = None
    stopped: Cancelled | None = None
    order = sorted(methods, key=lambda m: (m == "ap", m == "ig", m != "atp"))
    try:
        for i, m in enumerate(order, start=1):
            state["i"] = i
            tracker.phase = m
            tracker.check()
            start, t1 = Cost.of(tracker), time.perf_counter()
            if m == "atp":
                values[m] = E.eap(eb).cpu()
            elif m == "hvp":
                if y is None:  # a cached base: the probes need their own forward and backward
                    y = _hvp_on_cached(p, g, eb, hvp_probes, seed, tracker)
                yc = y.cpu()
                q = yc.mean(0)
                q_se = K_se(yc)
                values[m] = E.eap(eb).cpu() + q / 2
            elif m == "ig":
                values[m] = E.eap_ig(p, eb, ig_steps, tracker).cpu()
            elif m == "ap":
                got = E.patch_edges(p, eb, list(range(g.n_edges)), tracker)
                values[m] = torch.tensor([got[i] for i in range(g.n_edges)], dtype=torch.float64)
            costs[m] = Cost.since(tracker, start, time.perf_counter() - t1)
            tracker.report(1.0)
    except Cancelled as exc:
        methods = [m for m in methods if m in values]
        if not methods:
            raise
        stopped = exc
    if "hvp" in values and not cached:  # the probes rode on the base pass
        costs["hvp"] = costs["hvp"] + eb.probe_cost
    report = Report(
        site="edges",
        metric=metric,
        direction=direction,
        methods=list(methods),
        labels=edge_labels(g),
        scores={m: values[m].detach().cpu().float() for m in methods},
        tau=tau,
        metric_base=float(eb.f_base.mean()),
        metric_src=float(eb.f_src.mean()),
        settings={
            "hvp_probes": hvp_probes,
            "ig_steps": ig_steps,
            "seed": seed,
            "n_pairs": len(tp),
            "n_pos": int(tp.clean.shape[1]),
            "model": model_name,
            "bound_scale": bound_scale,
            "base_cached": cached,
            "n_edges": g.n_edges,
        },
        base=eb,  # type: ignore[arg-type]
        edges=list(g.keys),
    )
    report.cost["base"] = {
        **base_cost.as_dict(),
        "cached": cached,
        "note": "served from the activation cache: no pass run"
        if cached
        else "2 forwards (clean, corrupted) + 1 backward: every receiver's gradient at once",
    }
    notes = {
        "atp": "EAP: read off the base pass (<delta_u, dF/dx_v> for every edge at once)",
        "hvp": f"{hvp_probes} Rademacher probes over the edges, every receiver at once: one "
        "double backward each on the base pass's graph",
        "ig": f"{ig_steps} EAP-IG steps on the batch axis: forwards + backwards over "
        f"{ig_steps}x the rows",
        "ap": f"{g.n_edges} patched edge-forwards, batched by receiver layer (copies on the "
        "batch axis, resuming at the receiver's layer)",
    }
    for m in methods:
        own = costs.get(m, Cost())
        report.cost[m] = {
            **(own + base_cost).as_dict(),
            "cached": cached and own.passes == 0,
            "note": notes[m],
        }
    report.cost["plan"] = memory_plan(p)
    if "ap" in values:
        report.verified = {k: float(v) for k, v in zip(g.keys, values["ap"].tolist(), strict=True)}
    report.material_threshold = R.MATERIAL_SHARE * abs(report.total_effect)
    a1 = values.get("atp")
    if a1 is None and ("hvp" in values or "ig" in values):
        a1 = E.eap(eb).cpu()
    from .audit import screen_info

    report.screen = screen_info(
        a1.float() if a1 is not None else None,
        report.total_effect,
        metric,
        direction,
        "hvp" if q is not None else None,
    )
    if q is not None and a1 is not None:
        _assess(
            report,
            a1.float(),
            q.float(),
            q_se,
            metric,
            direction,
            tau,
            bound_scale,
            circuit_k,
            model_name,
            task,
        )
    if stopped is not None:
        report.partial = True
        stopped.partial = report  # type: ignore[attr-defined]
        raise stopped
    if progress is not None:
        progress("done", 1.0, tracker.passes)
    return report


def K_se(y: torch.Tensor) -> torch.Tensor:
    from .estimators.core import se_of_mean

    return se_of_mean(y)


def _hvp_on_cached(
    p: Problem, g: E.Graph, eb: E.EdgeBase, probes: int, seed: int, tracker: Tracker
) -> torch.Tensor:
    """The probes on a cached base: the base forward and backward again, with create_graph."""
    fresh, y = E.edge_base(p, g, tracker, grad=True, signs=E.rademacher_edges(g, probes, seed))
    assert y is not None
    return y


def _assess(
    report: Report,
    a1: torch.Tensor,
    q: torch.Tensor,
    q_se: torch.Tensor | None,
    metric: str,
    direction: str,
    tau: float,
    bound_scale: float | None,
    circuit_k: int | None,
    model_name: str,
    task: str | None,
) -> None:
    """Reliability, error bound, materiality and flags per edge: the screen's interval rule
    (``reliability.assess_calibrated``) with the edge calibration, which falls back to the
    uncalibrated rule (and says so) since no edge calibration was ever measured."""
    cal = defaults.flag_calibration(model_name, "edges", metric, direction, task, False)
    if bound_scale is not None:
        cal.scale, cal.why = float(bound_scale), f"scale {bound_scale:g} given by the caller"
    shown = a1 + q / 2
    report.estimate_method = "hvp"
    feasible = R.feasible_range(metric, report.metric_base)
    vanishes = bool((report.screen or {}).get("first_order_vanishes"))
    u = R.uncertainty(a1, q, q_se, None)
    trust = R.assess_calibrated(a1, shown, u, report.total_effect, cal, feasible, None, vanishes)
    rho = R.score(R.ratio(a1, q))
    if tau > 0:
        trust.reasons["reliability"] = trust.material & (rho < tau)
        trust.flags = R.any_reason(trust.reasons)
    report.reliability = rho
    report.error_bound, report.flags = trust.error_bound, trust.flags
    report.material, report.flag_reasons = trust.material, trust.reasons
    report.interval = (trust.lower, trust.upper)
    report.deferred = trust.deferred
    report.material_threshold = trust.material_threshold
    report.cutoff = R.circuit_cutoff(shown, circuit_k)
    report.q, report.q_se, report.reliability_source = q, q_se, "hvp"
    report.calibration = {
        "key": cal.key,
        "calibrated": cal.calibrated,
        "scale": cal.scale,
        "kappa": cal.kappa,
        "estimate": "hvp",
        "unexplained": trust.unexplained,
        "why": cal.why
        + ("" if cal.calibrated else "; edges: the uncalibrated rule (no edge calibration)"),
        "saturation": "not run for edges (the saturation-aware estimate is a node method)",
    }


def edge_labels(g: E.Graph) -> dict:
    """What the graph view needs to place the edges: senders and receivers with their layer
    and kind, in the order of the model's computation."""
    return {
        "row_name": "edge",
        "col_name": "edge",
        "rows": [],
        "cols": [],
        "n_layers": g.n_layers,
        "n_heads": g.n_heads,
        "n_kv_heads": g.n_kv_heads,
        "parallel": g.parallel,
        "senders": [{"key": s.key, "layer": s.layer} for s in g.senders],
        "receivers": [
            {"key": r.key, "layer": r.layer if r.kind != "logits" else g.n_layers, "kind": r.kind}
            for r in g.receivers
        ],
    }


def verify_edges(
    model,
    pairs,
    edges: Sequence[str],
    metric: str = "logit_diff",
    direction: str = "noising",
    base: Any = None,
    progress=None,
    should_stop=None,
    memory_budget_mb=None,
    keep_gradient: bool = False,
):
    """Edge patching of the given edges ("0.1->1.0.k"). With a cached edge base each
    receiver layer's edges cost one batched patched forward and nothing else."""
    from .audit import VerifyResult

    if isinstance(edges, str):
        edges = [edges]
    p, _, g = edge_problem(model, pairs, metric, direction, memory_budget_mb)
    idx = g.parse(list(edges))
    tracker = Tracker(progress=progress, should_stop=should_stop)
    t0 = time.perf_counter()
    eb, _, _ = _edge_base(p, g, base, tracker, keep_gradient)
    tracker.phase = "verify"
    f0, t1 = tracker.forward, time.perf_counter()
    pp: dict[int, torch.Tensor] = {}
    got = E.patch_edges(p, eb, sorted(set(idx)), tracker, pp) if idx else {}
    now = time.perf_counter()
    cost = {
        **Cost.of(tracker).as_dict(),
        "seconds": now - t0,
        "patch_passes": tracker.forward - f0,
        "patch_seconds": now - t1,
        "prefix_forward": tracker.prefix,
    }
    values = {g.keys[i]: v for i, v in got.items()}
    per_pair = {g.keys[i]: v for i, v in pp.items()}
    return VerifyResult(values, cost, eb, per_pair)  # type: ignore[arg-type]


def _edge_masks(g: E.Graph, keep: Any) -> tuple[torch.Tensor, bool]:
    """[k, n_edges] keep masks from one edge circuit (a list of edge keys), a list of them,
    or a bool tensor ([n_edges] or [k, n_edges])."""
    if isinstance(keep, torch.Tensor):
        t = keep.to(torch.bool)
        single = t.dim() == 1
        t = t[None] if single else t
        if t.dim() != 2 or t.shape[1] != g.n_edges:
            raise ValueError(f"an edge keep mask has {g.n_edges} entries, got {tuple(t.shape)}")
        return t, single
    if isinstance(keep, str) or not isinstance(keep, Sequence):
        raise ValueError("keep is an edge circuit (a list of edge keys) or a list of them")
    items = list(keep)
    single = all(isinstance(x, str) for x in items)
    circuits = [items] if single else items
    masks = torch.zeros(len(circuits), g.n_edges, dtype=torch.bool)
    for i, circ in enumerate(circuits):
        if isinstance(circ, str) or not isinstance(circ, Sequence):
            raise ValueError(f"circuit {i} is not a list of edge keys")
        masks[i, g.parse(list(circ))] = True
    return masks, single


def faithfulness_edges(
    model,
    pairs,
    keep,
    metric="logit_diff",
    direction="noising",
    base=None,
    progress=None,
    should_stop=None,
    memory_budget_mb=None,
    keep_gradient=False,
):
    """Faithfulness of an edge circuit in MIB's convention: every edge not in it patched."""
    from .circuits import Faithfulness, _cost

    p, _, g = edge_problem(model, pairs, metric, direction, memory_budget_mb)
    masks, single = _edge_masks(g, keep)
    tracker = Tracker(progress=progress, should_stop=should_stop)
    t0 = time.perf_counter()
    eb, _, _ = _edge_base(p, g, base, tracker, keep_gradient)
    tracker.phase = "faithfulness"
    m, m_all, m_empty, f = E.faithfulness(p, eb, masks, tracker)
    circuits = [[g.keys[i] for i in row.nonzero().flatten().tolist()] for row in masks]
    ml, fl = m.tolist(), f.tolist()
    return Faithfulness(
        ml[0] if single else ml,
        m_all,
        m_empty,
        fl[0] if single else fl,
        circuits,  # type: ignore[arg-type]
        _cost(tracker, t0),
        eb,  # type: ignore[arg-type]
    )


def circuit_curve_edges(
    model,
    pairs,
    scores,
    metric="logit_diff",
    direction="noising",
    sizes=None,
    absolute=True,
    base=None,
    progress=None,
    should_stop=None,
    memory_budget_mb=None,
    keep_gradient=False,
):
    """The curve of the top-k edge circuits of a ranking (``scores``: 1-D over the edges),
    with CPR / CMD at edge level (MIB's sizes for large graphs)."""
    import numpy as np

    from .circuits import CircuitCurve, _cost

    p, _, g = edge_problem(model, pairs, metric, direction, memory_budget_mb)
    s = (
        scores.detach().cpu().double()
        if isinstance(scores, torch.Tensor)
        else torch.as_tensor(np.asarray(scores, dtype=np.float64))
    ).flatten()
    if s.numel() != g.n_edges:
        raise ValueError(f"scores have {s.numel()} entries, this model has {g.n_edges} edges")
    n = g.n_edges
    ks = K.check_sizes(sizes, n)
    tracker = Tracker(progress=progress, should_stop=should_stop)
    t0 = time.perf_counter()
    eb, _, _ = _edge_base(p, g, base, tracker, keep_gradient)
    tracker.phase = "circuit"
    orient = 1.0
    if not absolute:
        _, m_all0, m_empty0, _ = E.faithfulness(p, eb, torch.zeros(1, n, dtype=torch.bool), tracker)
        orient = 1.0 if m_empty0 >= m_all0 else -1.0
    order = K.rank_components(s[None], absolute, orient)
    masks = torch.zeros(len(ks), n, dtype=torch.bool)
    idx = torch.tensor(order, dtype=torch.long)
    for i, k in enumerate(ks):
        masks[i, idx[:k]] = True
    m, m_all, m_empty, f = E.faithfulness(p, eb, masks, tracker)
    fr = [k / n for k in ks]
    fl = f.tolist()
    cpr, cmd = K.curve_areas(fr, fl)
    return CircuitCurve(
        sizes=ks,
        fractions=fr,
        faithfulness=fl,
        m=m.tolist(),
        m_all=m_all,
        m_empty=m_empty,
        cpr=cpr,
        cmd=cmd,
        smallest_80=K.smallest_reaching(ks, fl, 0.8),
        smallest_90=K.smallest_reaching(ks, fl, 0.9),
        order=[g.keys[i] for i in order],  # type: ignore[misc]
        absolute=absolute,
        n_components=n,
        cost=_cost(tracker, t0),
        base=eb,  # type: ignore[arg-type]
    )
