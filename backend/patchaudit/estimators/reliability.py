"""Reliability score, error bound, materiality and flags (METHODS.md, pure tensor math)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Why a component is flagged (``Reliability.reasons``), in this order:
#: reliability: rho < tau; sign: sign(A1) != sign(A2); cutoff: A2 +- e straddles the circuit
#: cut-off; unbounded: the error bound is infinite or missing; atp_error: the interval
#: A2 +- e, clipped to the metric's feasible range, admits an AtP error above
#: ``ATP_ERROR_LIMIT`` (50%) of the true effect, or lies outside that range.
REASONS = ("reliability", "sign", "cutoff", "unbounded", "atp_error")
ATP_ERROR_LIMIT = 0.5
MATERIAL_SHARE = 0.01
#: The first-order term "vanishes" when all of |A1| together stay below this share of the
#: total effect (KL noising: exactly 0; a saturated prob_diff / logprob noising: ~1e-3).
VANISH_SHARE = 0.01


@dataclass
class Reliability:
    ratio: Tensor  # r_c
    score: Tensor  # rho_c = 1 / (1 + r_c)
    error_bound: Tensor  # e_c (inf where unbounded)
    material: Tensor  # bool
    flags: Tensor  # bool
    cutoff: float  # the circuit cut-off on |A2|
    reasons: dict[str, Tensor] | None = None  # REASONS -> bool mask (flagged components only)
    material_threshold: float = 0.0  # 1% of |total effect|


def ratio(a1: Tensor, q: Tensor) -> Tensor:
    """r_c = |q_c / 2| / max(|A1_c|, floor), floor = 1e-3 max_c |A1_c| + 1e-12."""
    floor = 1e-3 * a1.abs().max() + 1e-12
    return (q / 2).abs() / torch.clamp(a1.abs(), min=floor)


def score(r: Tensor) -> Tensor:
    return 1.0 / (1.0 + r)


def error_bound(q: Tensor, r: Tensor, q_se: Tensor | None = None, scale: float = 1.0) -> Tensor:
    """e_c = |q_c/2| r_c / (1 - r_c) for r_c < 1, else inf; with probes add 2 standard errors
    of q_c / 2 (= one standard error of q_c). ``scale`` is the calibration factor."""
    half = (q / 2).abs()
    e = torch.where(
        r < 1, half * r / torch.clamp(1 - r, min=1e-12), torch.full_like(r, float("inf"))
    )
    if q_se is not None:
        e = e + q_se
    return e * scale


def material(
    a1: Tensor,
    a2: Tensor,
    total_effect: float,
    share: float = MATERIAL_SHARE,
    e: Tensor | None = None,
) -> Tensor:
    """Material unless ruled out: max(|A1|, |A2|) >= 1% of |m(x) - m(x~)|, or (with the error
    bound ``e``) |A2| + e does not stay below it. An infinite or missing (NaN) bound never rules
    a component out, so a vanishing first-order term cannot hide a large effect."""
    thr = share * abs(total_effect)
    out = torch.maximum(a1.abs(), a2.abs()) >= thr
    if e is not None:
        out = out | ~((a2.abs() + e) < thr)  # inf / NaN bound: the comparison is False
    return out


def first_order_vanishes(
    a1: Tensor, total_effect: float, metric: str | None = None, direction: str | None = None
) -> bool:
    """True where the screen cannot rank by A1: KL noising (the clean run minimises
    KL(clean || patched), so its gradient is 0 there) or, measured, sum_c |A1_c| below 1% of
    the total effect (a saturated base run: prob_diff / logprob noising on a confident model)."""
    if metric == "kl" and direction == "noising":
        return True
    total = abs(total_effect)
    return total > 0 and float(a1.nan_to_num(0.0).abs().sum()) < VANISH_SHARE * total


def circuit_cutoff(a2: Tensor, k: int | None = None) -> float:
    """The circuit is the top-k components by |A2| (k = 10% of them, at least 1); the cut-off
    lies midway between the k-th and the (k+1)-th largest |A2|."""
    v = a2.abs().flatten().sort(descending=True).values
    n = v.numel()
    k = max(1, round(0.1 * n)) if k is None else max(1, min(int(k), n))
    if k >= n:
        return float(v[-1]) / 2
    return float((v[k - 1] + v[k]) / 2)


def feasible_range(metric: str, m_base: float) -> tuple[float, float]:
    """Where the true effect Delta = m(patched) - m(base) can lie, from the metric's own range:
    prob_diff in [-1, 1], logprob <= 0, kl >= 0; logit_diff is unbounded."""
    inf = float("inf")
    if metric == "prob_diff":
        return (-1.0 - m_base, 1.0 - m_base)
    if metric == "logprob":
        return (-inf, -m_base)
    if metric == "kl":
        return (-m_base, inf)
    return (-inf, inf)


def worst_atp_error(
    a1: Tensor, a2: Tensor, e: Tensor, feasible: tuple[float, float] = (-math.inf, math.inf)
) -> Tensor:
    """The largest relative AtP error |A1 - x| / |x| over the true values x the screen allows:
    the interval A2 +- e clipped to the metric's feasible range. inf when that set holds 0 or
    is empty (the interval lies outside what the metric can reach)."""
    lo = torch.clamp(a2 - e, min=feasible[0])
    hi = torch.clamp(a2 + e, max=feasible[1])

    def rel(x: Tensor) -> Tensor:
        return (a1 - x).abs() / x.abs()

    worst = torch.maximum(rel(lo), rel(hi))
    inside_zero = (lo <= 0) & (hi >= 0)
    empty = ~(lo <= hi)
    return torch.where(inside_zero | empty, torch.full_like(worst, math.inf), worst)


def flag_reasons(
    a1: Tensor,
    a2: Tensor,
    rho: Tensor,
    e: Tensor,
    is_material: Tensor,
    tau: float,
    cutoff: float,
    feasible: tuple[float, float] = (-math.inf, math.inf),
) -> dict[str, Tensor]:
    """Each reason's mask, already restricted to material components (REASONS)."""
    mag = a2.abs()
    unbounded = ~torch.isfinite(e)
    worst = worst_atp_error(a1, a2, e, feasible)
    return {
        "reliability": is_material & (rho < tau),
        "sign": is_material & (torch.sign(a1) != torch.sign(a2)),
        "cutoff": is_material & (mag - e < cutoff) & (mag + e > cutoff),
        "unbounded": is_material & unbounded,
        "atp_error": is_material & ~unbounded & ~(worst <= ATP_ERROR_LIMIT),
    }


def flags(
    a1: Tensor, a2: Tensor, rho: Tensor, e: Tensor, is_material: Tensor, tau: float, cutoff: float
) -> Tensor:
    """Unreliable: material and (rho < tau, or a sign flip, or A2 +- e straddles the cut-off,
    or the bound is infinite, or A2 +- e admits an AtP error above 50%)."""
    return any_reason(flag_reasons(a1, a2, rho, e, is_material, tau, cutoff))


def any_reason(why: dict[str, Tensor]) -> Tensor:
    masks = list(why.values())
    out = masks[0].clone()
    for m in masks[1:]:
        out = out | m
    return out


def assess(
    a1: Tensor,
    q: Tensor,
    total_effect: float,
    tau: float,
    q_se: Tensor | None = None,
    bound_scale: float = 1.0,
    circuit_k: int | None = None,
    feasible: tuple[float, float] = (-math.inf, math.inf),
) -> Reliability:
    a2 = a1 + q / 2
    r = ratio(a1, q)
    rho = score(r)
    e = error_bound(q, r, q_se, bound_scale)
    mat = material(a1, a2, total_effect, e=e)
    cut = circuit_cutoff(a2, circuit_k)
    why = flag_reasons(a1, a2, rho, e, mat, tau, cut, feasible)
    return Reliability(
        r,
        rho,
        e,
        mat,
        any_reason(why),
        cut,
        why,
        material_threshold=MATERIAL_SHARE * abs(total_effect),
    )
