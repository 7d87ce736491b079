"""Circuits and faithfulness (METHODS.md, "Circuits and faithfulness"; MIB's node-level
counterfactual patching).

A circuit is a boolean keep-mask over the site's components ([n_layers, n_comp]). The base run
(the clean prompts for noising) is run with every component *not* kept replaced by its source
(corrupted) activation; m(C) is the batch metric. m(all) is the base run itself, m(empty) the run
with every component replaced. f(C) = (m(C) - m(empty)) / (m(all) - m(empty)).

Many circuits ride the batch axis of one forward (copy-major, chunked to the memory budget); a
chunk whose circuits keep every component of the first layers resumes at the first layer that
is patched, from the cached residual stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..tasks.metrics import per_copy
from .core import (
    BaseCache,
    Problem,
    Tracker,
    chunks,
    patched_forward,
    prefix_cache,
    suffix_patch,
    tile,
)

#: MIB's circuit sizes for large maps, in percent of the components
MIB_PERCENTS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
#: maps with at most this many components get every size k = 0..N by default
EVERY_K_MAX = 64


def circuit_metrics(
    p: Problem,
    base: BaseCache,
    keep: Bool[Tensor, "k n_layers n_comp"],
    tracker: Tracker,
) -> Float[Tensor, " k"]:
    """m(C) of every circuit ``keep[k]``: the base run with every component outside the
    circuit set to its source activation (one batched forward per chunk of circuits)."""
    k_all = int(keep.shape[0])
    dev = base.a_src[0].device
    keep = keep.to(dev, torch.bool)
    out = torch.zeros(k_all, device=dev, dtype=torch.float64)
    parts = chunks(k_all, p.max_copies)
    # the shared prefix runs once: every patched forward computes only the later positions
    pre = prefix_cache(p, base, tracker) if p.shortcuts else None
    n0 = pre.length if pre is not None else 0
    for j, (lo, hi) in enumerate(parts):
        tracker.check()
        kk = keep[lo:hi]  # [k, n_layers, n_comp]
        k = hi - lo
        patch: dict[int, tuple[Tensor, Tensor]] = {}
        for layer in range(p.site.n_layers):
            drop = ~kk[:, layer]  # [k, n_comp]
            if not bool(drop.any()):
                continue
            a_src = base.a_src[layer]
            rows = drop.to(a_src.dtype).repeat_interleave(p.batch, 0)  # [k*batch, n_comp]
            mask = p.site.expand(rows) > 0  # broadcastable to [k*batch, pos, ...]
            patch[layer] = suffix_patch(mask, tile(a_src, k), n0)
        with torch.no_grad():
            logits, targets = patched_forward(p, base, patch, k, pre)
            out[lo:hi] = per_copy(p.metric, logits, targets).to(out.dtype)
        tracker.fwd(k)
        tracker.report((j + 1) / len(parts))
    return out


@dataclass
class FaithfulnessValues:
    """m(C) of each circuit, m(all), m(empty) and f(C) (tensors [k] and floats)."""

    m: Tensor  # [k]
    m_all: float
    m_empty: float
    f: Tensor  # [k]


def faithfulness(
    p: Problem,
    base: BaseCache,
    keep: Bool[Tensor, "k n_layers n_comp"],
    tracker: Tracker,
) -> FaithfulnessValues:
    """f of every circuit; the empty circuit rides on the same pass. Circuits that keep every
    component are the base run (f = 1 exactly); circuits that keep none are m(empty) (f = 0)."""
    keep = keep.to(torch.bool)
    full = keep.flatten(1).all(1)
    empty = ~keep.flatten(1).any(1)
    full, empty = full.cpu(), empty.cpu()
    rest = ~full & ~empty
    todo = torch.cat([torch.zeros(1, *keep.shape[1:], dtype=torch.bool), keep.cpu()[rest]])
    ms = circuit_metrics(p, base, todo, tracker).cpu()  # m(empty) first, then the rest
    m_empty = float(ms[0])
    m_all = float(base.f_base.double().mean())
    m = torch.full((keep.shape[0],), m_all, dtype=torch.float64)
    m[rest] = ms[1:]
    m[empty] = m_empty
    d = m_all - m_empty
    f = (m - m_empty) / d if d != 0 else torch.full_like(m, float("nan"))
    f[full] = 1.0
    f[empty] = 0.0
    return FaithfulnessValues(m, m_all, m_empty, f)


def rank_components(
    scores: Float[Tensor, "n_layers n_comp"], absolute: bool = True, orient: float = 1.0
) -> list[int]:
    """Flat component indices, most important first: by |score| (absolute) or by
    ``orient * score`` (signed; ``orient`` = sign(m(empty) - m(all)), so that the components
    that move the metric towards the fully patched run come first). Ties keep index order."""
    s = scores.detach().double().flatten().cpu()
    s = torch.nan_to_num(s, nan=0.0)
    key = s.abs() if absolute else orient * s
    return torch.argsort(-key, stable=True).tolist()


def default_sizes(n: int) -> list[int]:
    """Every k for small maps; MIB's 0.1 .. 100 % of the components for large ones (rounded,
    at least 1), with 0 and n."""
    if n <= EVERY_K_MAX:
        return list(range(n + 1))
    ks = {0, n} | {max(1, round(n * pc / 100)) for pc in MIB_PERCENTS}
    return sorted(ks)


def check_sizes(sizes: Sequence[Any] | None, n: int) -> list[int]:
    """The sizes of a curve: sorted, unique, with 0 and n (f = 0 and 1 by definition)."""
    if sizes is None:
        return default_sizes(n)
    out = {0, n}
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int | float) or int(s) != s:
            raise ValueError(f"circuit sizes are whole numbers of components, got {s!r}")
        if not 0 <= int(s) <= n:
            raise ValueError(f"circuit size {int(s)} is outside 0..{n} (the map's components)")
        out.add(int(s))
    return sorted(out)


def topk_masks(order: Sequence[int], sizes: Sequence[int], shape: tuple[int, int]) -> Tensor:
    """[len(sizes), n_layers, n_comp] keep-masks of the top-k components of ``order``."""
    n = shape[0] * shape[1]
    masks = torch.zeros(len(sizes), n, dtype=torch.bool)
    idx = torch.tensor(list(order), dtype=torch.long)
    for i, k in enumerate(sizes):
        masks[i, idx[:k]] = True
    return masks.view(len(sizes), *shape)


def trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    """Area under y(x) by the trapezoid rule (x ascending)."""
    return float(
        sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1) if len(x) > 1)
    )


def curve_areas(fractions: Sequence[float], f: Sequence[float]) -> tuple[float, float]:
    """CPR (area under f) and CMD (area of |1 - f|) over the fraction kept."""
    f = [float("nan") if v is None else float(v) for v in f]
    return trapezoid(fractions, f), trapezoid(fractions, [abs(1.0 - v) for v in f])


def smallest_reaching(sizes: Sequence[int], f: Sequence[float], level: float) -> int | None:
    """The smallest size whose faithfulness is at least ``level`` (None: none)."""
    for k, v in zip(sizes, f, strict=True):
        if v is not None and not math.isnan(v) and v >= level:
            return int(k)
    return None
