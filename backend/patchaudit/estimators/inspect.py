"""One component in detail: its estimate on every prompt pair, split over token positions, and
(heads) its attention pattern. Pure tensor code on a :class:`Problem` and its cached base pass.

Per pair. The batch metric is the mean over pairs, so the base gradient of pair b is
(1/B) dm_b / d eps_b: the pair's own first-order estimate is B <g_{c,b}, delta_{c,b}> and
the mean over pairs is the map's value exactly (no new pass: it is read off the base cache).

Per position. <g_c, delta_c> is a sum over token positions; its terms are the per-position
first-order values (rows sum to the per-pair value exactly). The second-order term
q_c = delta_c^T [H v]_c is split the same way, position p taking delta_{c,p} . [H v]_{c,p}
(the quadratic form's rows: position p also carries its cross terms with the other
positions); these rows sum to the per-pair q exactly.

Second order per pair. The same tangents as the map (the same Rademacher probes for
``hvp``, the one-hot of the component for ``hvp_exact``, the all-ones probe for
``hvp_joint``) in one forward with create_graph and one double backward per tangent, with
the batch sum left out; the mean over pairs equals the map's q (pairs do not interact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from .core import BaseCache, Problem, Tracker, run
from .reliability import score
from .sites import component_mask

FIRST_ORDER = ("atp",)
SECOND_ORDER = ("hvp_exact", "hvp", "hvp_joint")  # preference order for the reliability
INSPECT_METHODS = (*FIRST_ORDER, *SECOND_ORDER)


@dataclass
class PairDetail:
    """Tensors of one component (B pairs, P positions); everything on the CPU."""

    per_pair: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)
    per_position: dict[str, Float[Tensor, "batch pos"]] = field(default_factory=dict)
    q: dict[str, Float[Tensor, " batch"]] = field(default_factory=dict)
    q_per_position: dict[str, Float[Tensor, "batch pos"]] = field(default_factory=dict)


def _mask(p: Problem, comp: int, like: Tensor) -> Tensor:
    """One-hot of component ``comp`` for every row of ``like`` ([batch, pos, ...])."""
    idx = torch.full((like.shape[0],), int(comp), dtype=torch.long, device=like.device)
    return component_mask(p.site, idx, like)


def _by_position(p: Problem, x: Tensor, comp: int) -> Float[Tensor, "batch pos"]:
    """Sum of ``x`` ([batch, pos, ...]) over everything but the batch and position axes,
    restricted to component ``comp``."""
    return (x * _mask(p, comp, x)).flatten(2).sum(-1)  # [batch, pos, rest] -> [batch, pos]


def first_order_pairs(p: Problem, base: BaseCache) -> Float[Tensor, "batch n_layers n_comp"]:
    """Every component's first-order estimate on every pair alone (B <g_b, delta_b>)."""
    return (
        torch.stack([p.site.dot(g, d) for g, d in zip(base.grad, base.delta, strict=True)], dim=1)
        * p.batch
    )  # [batch, n_layers, n_comp]


def first_order_positions(
    p: Problem, base: BaseCache, layer: int, comp: int
) -> Float[Tensor, "batch pos"]:
    """B <g_{c,b,pos}, delta_{c,b,pos}>: rows sum to the per-pair first-order value."""
    g, d = base.grad[layer], base.delta[layer]
    return _by_position(p, g * d, comp) * p.batch


def tangents(
    p: Problem, method: str, layer: int, comp: int, probes: int, seed: int
) -> tuple[Tensor, str]:
    """The map's tangents for ``method`` that touch component (layer, comp), and how their
    rows combine: "mean" (probes), "sum" (one row)."""
    from .methods import second_order_signs

    signs, combine = second_order_signs(p, method, probes, seed)
    if combine in ("exact", "sum") and method != "hvp_joint":  # one-hot rows: keep c's own
        onehot = torch.zeros(1, *p.site.shape)
        onehot[0, layer, comp] = 1.0
        return onehot, "sum"
    return signs, combine


def second_order_positions(
    p: Problem,
    base: BaseCache,
    layer: int,
    comp: int,
    signs: Float[Tensor, "k n_layers n_comp"],
    tracker: Tracker,
) -> Float[Tensor, "k batch pos"]:
    """y[k, b, pos] = s_kc delta_{c,b,pos} . [H_b v_k]_{c,b,pos} (times B): the second-order
    term of tangent k on pair b, split over positions. One forward with create_graph and one
    double backward per tangent (only the component's layer is differentiated twice). Only
    the layers the tangents touch get a perturbation; where the model can resume mid-network
    the forward starts at the first of them from the cached residual stream (for a one-hot
    tangent: at the component's own layer)."""
    delta = base.delta
    k_all = int(signs.shape[0])
    d_l = delta[layer]
    acc = torch.promote_types(d_l.dtype, torch.float32)
    out = torch.zeros(k_all, p.batch, d_l.shape[1], dtype=acc, device=d_l.device)
    active = [li for li in range(p.site.n_layers) if bool(signs[:, li].ne(0).any())]
    eps: list[Tensor | None] = [
        torch.zeros_like(d).requires_grad_(True) if li in active else None
        for li, d in enumerate(delta)
    ]
    leaves = [e for e in eps if e is not None]
    start = min(active)
    with torch.enable_grad():
        if p.can_resume and base.resid is not None and start > 0:
            lg = run(p, base.resid[start], eps=eps, start_at_layer=start)
        else:
            lg = run(p, p.base_tokens, eps=eps)
        f = p.copies_metric(lg).sum()
        tracker.fwd(1)
        g = dict(zip(active, torch.autograd.grad(f, leaves, create_graph=True), strict=True))
        tracker.bwd(1)
        for k in range(k_all):
            tracker.check()
            s = signs[k].to(d_l.device, d_l.dtype)  # [n_layers, n_comp]
            if float(s[layer, comp]) == 0.0:
                continue
            inner = torch.zeros((), device=d_l.device, dtype=d_l.dtype)
            for li, gl in g.items():
                inner = inner + (gl * delta[li] * p.site.expand(s[li][None])).sum()  # <g, v_k>
            if not inner.requires_grad:  # F is linear in eps: the Hessian is 0
                continue
            e_l = eps[layer]
            assert e_l is not None  # the component's own sign is not 0: its layer is active
            (hv,) = torch.autograd.grad(inner, [e_l], retain_graph=k < k_all - 1, allow_unused=True)
            tracker.bwd(1)
            if hv is None:
                continue
            out[k] = s[layer, comp] * _by_position(p, hv * d_l, comp) * p.batch
    return out


def pair_reliability(
    a1_pairs: Float[Tensor, "batch n_layers n_comp"],
    a1: Float[Tensor, " batch"],
    q: Float[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """rho on each pair alone: r_b = |q_b / 2| / max(|A1_b|, floor_b), with the floor of the
    pair's own map, floor_b = 1e-3 max_c |A1_{b,c}| + 1e-12 (METHODS.md)."""
    floor = 1e-3 * a1_pairs.abs().flatten(1).max(1).values + 1e-12
    r = (q / 2).abs() / torch.maximum(a1.abs(), floor)
    return score(r)


def inspect_component(
    p: Problem,
    base: BaseCache,
    layer: int,
    comp: int,
    methods: tuple[str, ...] = ("atp", "hvp"),
    probes: int = 8,
    seed: int = 0,
    tracker: Tracker | None = None,
) -> PairDetail:
    """Per-pair and per-position values of component (layer, comp) for ``methods`` (atp from
    the base cache; the second-order ones with one extra forward + double backwards), and the
    per-pair reliability from the best second-order method present."""
    tracker = tracker or Tracker()
    out = PairDetail()
    a1_pos = first_order_positions(p, base, layer, comp)  # [batch, pos]
    a1 = a1_pos.sum(1)
    out.per_pair["atp"], out.per_position["atp"] = a1, a1_pos
    for m in methods:
        if m not in INSPECT_METHODS:
            raise ValueError(f"inspect computes {', '.join(INSPECT_METHODS)} per pair, not {m!r}")
        if m in FIRST_ORDER:
            continue
        signs, combine = tangents(p, m, layer, comp, probes, seed)
        y = second_order_positions(p, base, layer, comp, signs, tracker)  # [k, batch, pos]
        q_pos = y.mean(0) if combine == "mean" else y.sum(0)
        out.q_per_position[m], out.q[m] = q_pos, q_pos.sum(1)
        out.per_position[m] = a1_pos + q_pos / 2
        out.per_pair[m] = a1 + out.q[m] / 2
    source = next((m for m in SECOND_ORDER if m in out.q), None)
    if source is not None:
        out.per_pair["reliability"] = pair_reliability(
            first_order_pairs(p, base), a1, out.q[source]
        )
    for d in (out.per_pair, out.per_position, out.q, out.q_per_position):
        for k in list(d):
            d[k] = d[k].detach().cpu()
    return out


def ap_pairs(
    p: Problem, base: BaseCache, layer: int, comp: int, tracker: Tracker | None = None
) -> Float[Tensor, " batch"]:
    """Activation patching of one component, per pair: one patched forward (from the cached
    residual stream at the layer where the model allows it)."""
    from .core import patch_components

    per_pair: dict[tuple[int, int], Tensor] = {}
    patch_components(p, base, [(layer, comp)], tracker or Tracker(), per_pair=per_pair)
    return per_pair[(layer, comp)]


def attention(
    p: Problem, base: BaseCache, layer: int, head: int, tracker: Tracker | None = None
) -> dict[str, Float[Tensor, "batch query key"]]:
    """The head's attention pattern (``blocks.L.attn.hook_pattern``) on the base and the source
    prompts, keyed "clean" / "corrupted". The base run resumes at block L from the cached
    residual stream where the model allows it; each run stops after block L."""
    tracker = tracker or Tracker()
    name = f"blocks.{layer}.attn.hook_pattern"

    def pattern(tokens: Tensor, resid: Tensor | None) -> Tensor:
        cap: list[Tensor] = []

        def keep(act: Tensor, hook) -> Tensor:  # noqa: ANN001
            cap.append(act[:, head].detach())  # [batch, head_index, q, k] -> [batch, q, k]
            return act

        kwargs: dict = {"stop_at_layer": layer + 1}
        x = tokens
        if resid is not None:
            x, kwargs["start_at_layer"] = resid, layer
        with torch.no_grad():
            p.model.run_with_hooks(x, fwd_hooks=[(name, keep)], **kwargs)
        tracker.fwd(1)
        if not cap:
            raise ValueError(f"the model has no {name} hook: no attention pattern to show")
        return cap[0].float().cpu()

    resid = base.resid[layer] if p.can_resume and base.resid is not None else None
    on_base = pattern(p.base_tokens, resid)
    on_src = pattern(p.src_tokens, None)
    if p.direction == "noising":
        return {"clean": on_base, "corrupted": on_src}
    return {"clean": on_src, "corrupted": on_base}
