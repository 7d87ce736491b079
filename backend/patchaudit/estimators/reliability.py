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
REASONS = (
    "reliability",
    "sign",
    "cutoff",
    "unbounded",
    "atp_error",
    "estimate_error",
    "saturation",
    "vanishing",
)
ATP_ERROR_LIMIT = 0.5
MATERIAL_SHARE = 0.01
#: The first-order term "vanishes" when all of |A1| together stay below this share of the
#: total effect (KL noising: exactly 0; a saturated prob_diff / logprob noising: ~1e-3).
VANISH_SHARE = 0.01
#: ``saturation``: a downstream softmax's exact change departs from its linearisation by at
#: least this share of the component's estimate (``saturation.Saturation.nonlinear``).
SATURATION_SHARE = 0.1
#: At most this share of an analysis's components is flagged: beyond it, the flagged ones
#: whose interval reaches least far (the smallest possible effect) are *deferred*: still shown
#: with their interval as uncertain, but not put first in line for verification.
FLAG_CAP = 0.35


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


# ----------------------------------------------------------------------------- calibrated flags


@dataclass
class Calibration:
    """How wide the screen's interval is for one (model family, site, metric, direction[,
    task]) and which estimate it is centred on, as ``make bench`` measured it
    (``defaults.json``, ``flag_calibration``): e_c = scale * (u_c + kappa |est_c|)."""

    scale: float = 1.0
    kappa: float = 0.5
    estimate: str = "hvp"  # the method whose values the interval is centred on (and shown)
    key: str = ""  # the calibration entry used ("" when none applies)
    calibrated: bool = False
    why: str = ""


@dataclass
class Trust:
    """The calibrated screen verdict for every component (METHODS.md, "Flags")."""

    estimate: Tensor  # the shown estimate (the calibration's method)
    uncertainty: Tensor  # u_c before the scale
    error_bound: Tensor  # e_c = scale (u_c + kappa |est_c|)
    lower: Tensor  # the interval, clipped to what the metric can reach
    upper: Tensor
    material: Tensor  # bool: the interval reaches the materiality line
    flags: Tensor  # bool
    reasons: dict[str, Tensor]
    material_threshold: float
    unexplained: float  # F: |total effect| / sum_c |est_c|, at least 1
    deferred: Tensor | None = None  # bool: would be flagged, but past FLAG_CAP (low stakes)


def uncertainty(a1: Tensor, q: Tensor | None, q_se: Tensor | None, sat: Tensor | None) -> Tensor:
    """u_c = |q_c / 2| + se(q_c) + |sat_c - A1_c|: what the second-order term, its probe noise
    and the exact downstream softmaxes move away from the first-order term."""
    u = torch.zeros_like(a1)
    if q is not None:
        u = u + (q / 2).abs()
    if q_se is not None:
        u = u + q_se.nan_to_num(0.0).abs()
    if sat is not None:
        u = u + (sat - a1).abs()
    return u


def assess_calibrated(
    a1: Tensor,
    estimate: Tensor,
    u: Tensor,
    total_effect: float,
    cal: Calibration,
    feasible: tuple[float, float] = (-math.inf, math.inf),
    softmax_share: Tensor | None = None,
    vanishes: bool = False,
    flag_cap: float = FLAG_CAP,
    sat: Tensor | None = None,
) -> Trust:
    """The calibrated flag rule. The interval est +- e, e = scale (u + (kappa + F - 1) |est|),
    where F = |total effect| / sum |est| (>= 1) is how much of the total effect the screen's
    estimates leave unexplained (a screen whose first-order term vanishes explains little, so
    its every estimate is uncertain by that factor), clipped to the metric's feasible range.
    Material: the interval reaches 1% of max(|total effect|, sum |est|). Flagged: material and
    the interval admits an AtP error, or an error of the shown estimate, above 50% (a sign it
    cannot tell counts as such), or some downstream softmax's exact change departs from its
    linearisation by at least ``SATURATION_SHARE`` of the saturation-aware estimate ``sat``
    (else of the shown one; ``softmax_share``: the largest such departure over the downstream
    heads; reason ``saturation``), or the first-order
    term vanishes for this metric and direction (``vanishing``). Past ``flag_cap`` of the
    components, the flagged ones whose interval reaches least far are deferred (saturation
    flags go first)."""
    est = estimate.nan_to_num(0.0)
    total = abs(float(total_effect))
    explained = float(est.abs().sum())
    f = max(1.0, total / explained) if explained > 0 else (math.inf if total > 0 else 1.0)
    rel = cal.kappa + (f - 1.0)
    e = cal.scale * (u + rel * est.abs()) if math.isfinite(rel) else torch.full_like(est, math.inf)
    lo = torch.clamp(est - e, min=feasible[0])
    hi = torch.clamp(est + e, max=feasible[1])
    line = MATERIAL_SHARE * max(total, explained)
    reach = torch.maximum(lo.abs(), hi.abs())
    mat = ~(reach < line) | (est.abs() >= line)
    worst_a1 = _worst(a1, lo, hi)
    worst_est = _worst(est, lo, hi)
    why = {k: torch.zeros_like(mat) for k in REASONS}
    why["atp_error"] = mat & ~(worst_a1 <= ATP_ERROR_LIMIT)
    why["estimate_error"] = mat & ~(worst_est <= ATP_ERROR_LIMIT)
    why["sign"] = mat & (lo <= 0) & (hi >= 0)
    if softmax_share is not None:
        ref = (sat if sat is not None else est).abs()
        why["saturation"] = mat & (softmax_share.abs() >= SATURATION_SHARE * ref)
    if vanishes:
        why["vanishing"] = mat.clone()
    flags = any_reason(why)
    deferred = torch.zeros_like(flags)
    limit = max(1, int(flag_cap * flags.numel()))
    if int(flags.sum()) > limit:
        stake = torch.maximum(lo.abs(), hi.abs()).nan_to_num(math.inf)
        stake = stake + torch.where(why["saturation"], math.inf, 0.0)  # the known failure first
        order = torch.where(flags, stake, torch.full_like(stake, -1.0)).flatten()
        keep = order.argsort(descending=True)[:limit]
        kept = torch.zeros(flags.numel(), dtype=torch.bool)
        kept[keep] = True
        kept = kept.view(flags.shape) & flags
        deferred = flags & ~kept
        flags = kept
        why = {k: v & flags for k, v in why.items()}
    return Trust(
        est,
        u,
        e,
        lo,
        hi,
        mat,
        flags,
        why,
        line,
        f if math.isfinite(f) else float("inf"),
        deferred,
    )


def _worst(x0: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The largest relative error |x0 - x| / |x| over x in [lo, hi] (inf where the interval
    holds 0 or is empty)."""
    w = torch.maximum((x0 - lo).abs() / lo.abs(), (x0 - hi).abs() / hi.abs())
    bad = ((lo <= 0) & (hi >= 0)) | ~(lo <= hi)
    return torch.where(bad, torch.full_like(w, math.inf), w)
