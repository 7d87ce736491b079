"""The estimators of METHODS.md, as thin specialisations of the kernels in ``core``.

Each returns an :class:`Estimate`: one number per component ([n_layers, n_comp]), in the
metric's units, plus the second-order term q (and its standard error) where there is one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .core import (
    BaseCache,
    Cost,
    Problem,
    Tracker,
    grad_hvp,
    onehots,
    patch_components,
    rademacher,
    se_of_mean,
)

METHODS = (
    "ap",
    "atp",
    "hvp",
    "hvp_joint",
    "hvp_exact",
    "sat",
    "ig",
    "mhvp",
    "atp_star",
    "graddrop",
)
SECOND_ORDER = ("hvp_exact", "hvp", "hvp_joint")  # preference order for the reliability


@dataclass
class Estimate:
    values: Tensor  # [n_layers, n_comp]
    cost: Cost
    q: Tensor | None = None  # second-order term, [n_layers, n_comp]
    q_se: Tensor | None = None  # its standard error over probes
    detail: Any = None  # method-specific extras (sat: the ``Saturation`` with its heads)


def _timed(tracker: Tracker, phase: str, fn: Callable[[], Estimate]) -> Estimate:
    tracker.phase = phase
    start, t0 = Cost.of(tracker), time.perf_counter()
    est = fn()
    est.cost = Cost.since(tracker, start, time.perf_counter() - t0)
    return est


def atp(p: Problem, base: BaseCache, tracker: Tracker | None = None) -> Estimate:
    """A1_c = <g_c, delta_c>: read off the base pass, no extra pass."""
    vals = torch.stack(
        [
            p.site.dot(g, d).sum(0)  # [n_comp]
            for g, d in zip(base.grad, base.delta, strict=True)
        ]
    )
    return Estimate(vals, Cost())


def second_order_signs(
    p: Problem, method: str, probes: int = 8, seed: int = 0
) -> tuple[Tensor, str]:
    """The tangents of each second-order method and how their rows combine into q:
    hvp: P Rademacher probes, averaged (the exact diagonal when N <= P: it costs no more);
    hvp_joint: the single all-ones probe; hvp_exact: one one-hot tangent per component."""
    if method == "hvp":
        if probes <= 0:
            raise ValueError(f"hvp_probes must be a positive integer, got {probes}")
        if p.n_components <= probes:
            return onehots(p.site.shape), "exact"
        return rademacher(probes, p.site.shape, seed), "mean"
    if method == "hvp_joint":
        return torch.ones(1, *p.site.shape), "sum"
    if method == "hvp_exact":
        return onehots(p.site.shape), "sum"
    raise ValueError(f"{method!r} is not a second-order method")


def from_tangents(p: Problem, base: BaseCache, y: Tensor, combine: str) -> Estimate:
    """q from the rows y[k] of the tangents, and A2 = A1 + q / 2."""
    a1 = atp(p, base).values
    se: Tensor | None
    if combine == "mean":
        q, se = y.mean(0), se_of_mean(y)
    else:  # one-hot tangents (each row holds one component's exact term) or a single probe
        q = y.sum(0)
        se = torch.zeros_like(q) if combine == "exact" else None
    return Estimate(a1 + q / 2, Cost(), q=q, q_se=se)


def second_order(
    p: Problem,
    base: BaseCache,
    method: str,
    probes: int = 8,
    seed: int = 0,
    tracker: Tracker | None = None,
) -> Estimate:
    tracker = tracker or Tracker()

    def go() -> Estimate:
        signs, combine = second_order_signs(p, method, probes, seed)
        _, y = grad_hvp(p, base, torch.zeros(signs.shape[0]), signs, tracker)
        assert y is not None
        return from_tangents(p, base, y, combine)

    return _timed(tracker, method, go)


def hvp_exact(p: Problem, base: BaseCache, tracker: Tracker | None = None) -> Estimate:
    """Exact q_c: one tangent delta_c e_c per component, chunked on the batch axis."""
    return second_order(p, base, "hvp_exact", tracker=tracker)


def hvp_joint(p: Problem, base: BaseCache, tracker: Tracker | None = None) -> Estimate:
    """q from the single probe v = sum_c delta_c (biased by the cross terms)."""
    return second_order(p, base, "hvp_joint", tracker=tracker)


def hvp(
    p: Problem, base: BaseCache, probes: int = 8, seed: int = 0, tracker: Tracker | None = None
) -> Estimate:
    """q from P Rademacher probes on the batch axis of one double-backward pass; unbiased,
    with the standard error over probes. When N <= P the exact diagonal is used."""
    return second_order(p, base, "hvp", probes, seed, tracker)


def sat(p: Problem, base: BaseCache, tracker: Tracker | None = None) -> Estimate:
    """The saturation-aware estimate: the delta pushed forward linearly, every attention
    softmax and the metric evaluated exactly (``saturation``)."""
    from .saturation import saturation

    tracker = tracker or Tracker()

    def go() -> Estimate:
        s = saturation(p, base, tracker)
        return Estimate(s.values, Cost(), detail=s)

    return _timed(tracker, "sat", go)


def ig(p: Problem, base: BaseCache, steps: int = 16, tracker: Tracker | None = None) -> Estimate:
    """Integrated gradients on the joint path eps = t delta, midpoint rule with K steps."""
    if steps <= 0:
        raise ValueError(f"ig_steps must be a positive integer, got {steps}")
    tracker = tracker or Tracker()

    def go() -> Estimate:
        ts = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
        phi, _ = grad_hvp(p, base, ts, None, tracker)
        return Estimate(phi.mean(0), Cost())

    return _timed(tracker, "ig", go)


def mhvp(p: Problem, base: BaseCache, steps: int = 2, tracker: Tracker | None = None) -> Estimate:
    """Multi-step HVP: corrected trapezoid rule on the joint path, K segments,
    h [phi(0)/2 + phi(t_1) + ... + phi(1)/2] - (h^2/12) (phi'(1) - phi'(0))."""
    if steps <= 0:
        raise ValueError(f"mhvp_steps must be a positive integer, got {steps}")
    tracker = tracker or Tracker()

    def go() -> Estimate:
        h = 1.0 / steps
        ends = torch.tensor([0.0, 1.0])
        phi_end, dphi = grad_hvp(p, base, ends, torch.ones(2, *p.site.shape), tracker)
        assert dphi is not None
        total = (phi_end[0] + phi_end[1]) / 2
        if steps > 1:
            inner = torch.arange(1, steps, dtype=torch.float32) * h
            phi_in, _ = grad_hvp(p, base, inner, None, tracker)
            total = total + phi_in.sum(0)
        return Estimate(h * total - (h * h / 12) * (dphi[1] - dphi[0]), Cost())

    return _timed(tracker, "mhvp", go)


def ap(
    p: Problem,
    base: BaseCache,
    components: list[tuple[int, int]] | None = None,
    tracker: Tracker | None = None,
) -> Estimate:
    """Activation patching, batched by layer. Unpatched components are NaN."""
    tracker = tracker or Tracker()

    def go() -> Estimate:
        comps = components
        if comps is None:
            comps = [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]
        # float32, or float64 for a float64 model (as the metric)
        dt = torch.promote_types(base.f_base.dtype, torch.float32)
        vals = torch.full(p.site.shape, float("nan"), dtype=dt)
        for (layer, c), v in patch_components(p, base, comps, tracker).items():
            vals[layer, c] = v
        return Estimate(vals, Cost())

    return _timed(tracker, "ap", go)


def atp_star(p: Problem, base: BaseCache, tracker: Tracker | None = None) -> Estimate:
    """AtP*'s QK fix (``atpstar``): on the q and k sites the patched layer's attention pattern
    recomputed exactly, its change contracted with dm/dA; AtP on every other site."""
    from .atpstar import qk_fix

    tracker = tracker or Tracker()

    def go() -> Estimate:
        return Estimate(qk_fix(p, base, atp(p, base).values, tracker), Cost())

    return _timed(tracker, "atp_star", go)


def graddrop(p: Problem, base: BaseCache, tracker: Tracker | None = None) -> Estimate:
    """AtP*'s GradDrop (``atpstar``): the mean over pairs of 1/(L-1) sum_l |AtP with layer l's
    residual contribution stop-gradiented| (a magnitude); the signed terms in ``detail``."""
    from .atpstar import graddrop_score, graddrop_terms

    tracker = tracker or Tracker()

    def go() -> Estimate:
        t = graddrop_terms(p, base, tracker)
        return Estimate(graddrop_score(t), Cost(), detail=t)

    return _timed(tracker, "graddrop", go)
