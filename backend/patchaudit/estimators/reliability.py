"""Reliability score, error bound, materiality and flags (METHODS.md, pure tensor math)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Reliability:
    ratio: Tensor  # r_c
    score: Tensor  # rho_c = 1 / (1 + r_c)
    error_bound: Tensor  # e_c (inf where unbounded)
    material: Tensor  # bool
    flags: Tensor  # bool
    cutoff: float  # the circuit cut-off on |A2|


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


def material(a1: Tensor, a2: Tensor, total_effect: float, share: float = 0.01) -> Tensor:
    """max(|A1|, |A2|) >= 1% of |m(x) - m(x~)|."""
    return torch.maximum(a1.abs(), a2.abs()) >= share * abs(total_effect)


def circuit_cutoff(a2: Tensor, k: int | None = None) -> float:
    """The circuit is the top-k components by |A2| (k = 10% of them, at least 1); the cut-off
    lies midway between the k-th and the (k+1)-th largest |A2|."""
    v = a2.abs().flatten().sort(descending=True).values
    n = v.numel()
    k = max(1, round(0.1 * n)) if k is None else max(1, min(int(k), n))
    if k >= n:
        return float(v[-1]) / 2
    return float((v[k - 1] + v[k]) / 2)


def flags(
    a1: Tensor, a2: Tensor, rho: Tensor, e: Tensor, is_material: Tensor, tau: float, cutoff: float
) -> Tensor:
    """Unreliable: material and (rho < tau, or a sign flip, or A2 +- e straddles the cut-off)."""
    sign_flip = torch.sign(a1) != torch.sign(a2)
    mag = a2.abs()
    straddle = (mag - e < cutoff) & (mag + e > cutoff)
    return is_material & ((rho < tau) | sign_flip | straddle)


def assess(
    a1: Tensor,
    q: Tensor,
    total_effect: float,
    tau: float,
    q_se: Tensor | None = None,
    bound_scale: float = 1.0,
    circuit_k: int | None = None,
) -> Reliability:
    a2 = a1 + q / 2
    r = ratio(a1, q)
    rho = score(r)
    e = error_bound(q, r, q_se, bound_scale)
    mat = material(a1, a2, total_effect)
    cut = circuit_cutoff(a2, circuit_k)
    return Reliability(r, rho, e, mat, flags(a1, a2, rho, e, mat, tau, cut), cut)
