"""A synthetic analysis result (the REST contract's shape) for front-end tests.

The numbers follow METHODS.md (ratio, reliability, error bound, material, cut-off, flags and
their reasons, as the server writes them) so the page's flags at another tau (the server's
tau-free reasons, reliability < tau moved) agree with METHODS.md's rule.
"""

from __future__ import annotations

import math

import numpy as np


def synthetic_result(
    n_layers: int = 48, n_heads: int = 25, seed: int = 0, tau: float = 0.5
) -> dict:
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(-2.0, 1.2, size=(n_layers, n_heads)))
    atp = rng.normal(size=(n_layers, n_heads)) * scale
    q = (
        rng.normal(size=(n_layers, n_heads))
        * scale
        * rng.uniform(0.0, 1.6, size=(n_layers, n_heads))
    )
    hvp = atp + q / 2
    floor = 1e-3 * np.abs(atp).max() + 1e-12
    r = np.abs(q / 2) / np.maximum(np.abs(atp), floor)
    rho = 1 / (1 + r)
    with np.errstate(divide="ignore"):
        bound = np.where(r < 1, np.abs(q / 2) * r / np.maximum(1 - r, 1e-12), np.inf)
    total = float(2 * np.abs(hvp).max())  # material: >= 2% of the largest
    material = np.maximum(np.abs(atp), np.abs(hvp)) >= 0.01 * total
    mags = np.sort(np.abs(hvp).ravel())[::-1]
    k = max(1, round(0.1 * mags.size))
    cutoff = float((mags[k - 1] + mags[k]) / 2)
    straddle = (np.abs(hvp) - bound < cutoff) & (np.abs(hvp) + bound > cutoff)
    sign = np.sign(atp) != np.sign(hvp)
    flags = material & ((rho < tau) | sign | straddle)
    # why each is flagged, as the server writes it (its tau-free reasons are what the page keeps)
    reasons = [
        [
            [
                code
                for code, on in (
                    ("reliability", rho[i, j] < tau),
                    ("sign", sign[i, j]),
                    ("unbounded", straddle[i, j] and np.isinf(bound[i, j])),
                    ("cutoff", straddle[i, j] and not np.isinf(bound[i, j])),
                )
                if on
            ]
            if flags[i, j]
            else []
            for j in range(n_heads)
        ]
        for i in range(n_layers)
    ]

    def js(m: np.ndarray) -> list:
        return [
            [None if (isinstance(v, float) and math.isinf(v)) else v for v in row]
            for row in m.tolist()
        ]

    return {
        "site": "heads",
        "metric": "logit_diff",
        "direction": "noising",
        "methods": ["atp", "hvp"],
        "labels": {
            "rows": list(range(n_layers)),
            "cols": list(range(n_heads)),
            "row_name": "layer",
            "col_name": "head",
        },
        "scores": {"atp": js(atp), "hvp": js(hvp)},
        "reliability": js(rho),
        "error_bound": js(bound),
        "flags": flags.tolist(),
        "flag_reasons": reasons,
        "material": material.tolist(),
        "reliability_source": "hvp",
        "verified": {
            f"{i}.{j}": float(hvp[i, j] * 1.1) for i, j in ((0, 0), (n_layers // 2, n_heads // 3))
        },
        "cost": {
            "atp": {"forward": 2, "backward": 1, "seconds": 0.05},
            "hvp": {"forward": 0, "backward": 2, "seconds": 0.12},
        },
        "tau": tau,
        "cutoff": cutoff,
    }


def synthetic_analysis(analysis_id: str, **kw) -> dict:
    result = synthetic_result(**kw)
    return {
        "id": analysis_id,
        "status": "done",
        "progress": {"phase": "done", "fraction": 1.0},
        "request": {
            "model": "synthetic-48x25",
            "task": "ioi",
            "n_pairs": 8,
            "seed": 0,
            "pairs": None,
            "site": "heads",
            "metric": "logit_diff",
            "direction": "noising",
            "methods": ["atp", "hvp"],
            "hvp_probes": 8,
            "ig_steps": 16,
        },
        "result": result,
        "error": None,
        "pending": [],
    }
