"""Activation patching: one forward per layer with the patched components' copies on the
batch axis, resuming at the patched layer, after the shared prefix, skipping zero deltas."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..tasks.metrics import MetricTargets, per_example
from .base import BaseCache
from .forward import chunks, run, tile
from .prefix import Prefix, prefix_forward, shared_prefix_len, suffix_targets
from .problem import Problem, Tracker


def prefix_cache(p: Problem, base: BaseCache, tracker: Tracker) -> Prefix | None:
    """The base run's key/value cache over the shared prefix (one forward of the prefix
    alone, once per base), or None when there is no prefix to share."""
    n = shared_prefix_len(p)
    if n == 0:
        return None
    if base.prefix is None or base.prefix.length != n:
        base.prefix = prefix_forward(p, n, tracker)
    return base.prefix


def zero_delta(p: Problem, base: BaseCache, n_prefix: int = 0) -> Tensor:
    """[n_layers, n_comp] bool: components whose delta is zero at every position of every
    pair (their patch changes nothing: ap = 0 exactly). Resid positions inside the shared
    prefix count as zero (the two runs agree there)."""
    out = []
    for d in base.delta:
        nz = p.site.reduce((d != 0).to(d.dtype)).sum(0)  # [n_comp]
        if p.site.name == "resid" and n_prefix:
            nz[:n_prefix] = 0
        out.append(nz == 0)
    return torch.stack(out)


def suffix_patch(mask: Tensor, value: Tensor, n_prefix: int) -> tuple[Tensor, Tensor]:
    """A (mask, value) patch of [rows, pos, ...] cut to the positions after the prefix."""
    if not n_prefix:
        return mask, value
    return (mask[:, n_prefix:] if mask.shape[1] > 1 else mask), value[:, n_prefix:].contiguous()


def patch_components(
    p: Problem,
    base: BaseCache,
    components: Sequence[tuple[int, int]],
    tracker: Tracker,
    per_pair: dict[tuple[int, int], Tensor] | None = None,
) -> dict[tuple[int, int], float]:
    """Activation patching: for each component, one forward of the base run with that
    component's activation replaced by the source run's; returns F(patched) - F(base).
    With ``per_pair`` (a dict) it also keeps every pair's own value, m_b(patched) - m_b(base)
    ([batch] on the CPU; their mean is the returned value), which the same forward computes.
    Components of one layer share a forward (copies on the batch axis, chunked); where the
    model can resume mid-network, that forward starts at the layer from the cached residual
    stream (the blocks before it are untouched by the patch).

    Exact shortcuts (``p.shortcuts``): the positions every pair shares run once (a key/value
    cache, ``prefix_cache``) and each patched forward computes only the later ones; a
    component whose delta is zero everywhere gets ap = 0 without a forward."""
    from .sites import component_mask

    f0 = base.f_base.mean()
    out: dict[tuple[int, int], float] = {}
    pre = prefix_cache(p, base, tracker) if p.shortcuts else None
    n0 = pre.length if pre is not None else 0
    skip = zero_delta(p, base, n0).tolist() if p.shortcuts else None
    by_layer: dict[int, list[int]] = {}
    for layer, comp in components:
        layer, comp = int(layer), int(comp)
        if skip is not None and skip[layer][comp]:  # nothing to patch: ap = 0, no forward
            out[(layer, comp)] = 0.0
            if per_pair is not None:
                per_pair[(layer, comp)] = torch.zeros(p.batch, dtype=base.f_base.dtype)
            continue
        by_layer.setdefault(layer, []).append(comp)
    work = [
        (layer, comps[lo:hi])
        for layer, comps in sorted(by_layer.items())
        for lo, hi in chunks(len(comps), p.max_copies)
    ]
    for j, (layer, comps) in enumerate(work):
        tracker.check()
        k = len(comps)
        a_src = base.a_src[layer]
        idx = torch.tensor(comps, device=a_src.device).repeat_interleave(p.batch)  # [k*batch]
        mask = component_mask(p.site, idx, a_src) > 0  # broadcastable bool
        patch = {layer: suffix_patch(mask, tile(a_src, k), n0)}
        with torch.inference_mode():
            logits, targets = patched_forward(p, base, patch, k, pre)
            rows = per_example(p.metric, logits, targets).view(k, p.batch)  # [copies, batch]
            vals = rows.mean(1)  # per_copy
            if per_pair is not None:
                for c, r in zip(comps, (rows - base.f_base).detach().cpu(), strict=True):
                    per_pair[(layer, c)] = r
        tracker.fwd(k)
        for c, v in zip(comps, (vals - f0).tolist(), strict=True):
            out[(layer, c)] = float(v)
        tracker.report((j + 1) / len(work))
    return {key: out[key] for key in sorted(out)}


def patched_forward(
    p: Problem, base: BaseCache, patch: dict[int, tuple[Tensor, Tensor]], k: int, pre: Prefix | None
) -> tuple[Tensor, MetricTargets]:
    """One forward of ``k`` copies of the base run with ``patch`` (layer -> (mask, value), cut
    to the positions after the shared prefix ``pre``), and the metric targets that read its
    logits. It resumes at the first patched layer from the cached residual stream, runs only
    the positions after the prefix (its key/value cache) and unembeds only the metric's
    position where the model allows each."""
    n0 = pre.length if pre is not None else 0
    targets, last = suffix_targets(p, k, n0)
    past = pre.tiled(k, p.batch, p.base_tokens.device) if pre is not None else None
    start = min(patch) if patch else p.site.n_layers - 1
    if p.can_resume and base.resid is not None:  # (at layer 0 too: the embedding is cached)
        resid = tile(base.resid[start][:, n0:], k)  # [k*batch, pos - n0, d_model]
        logits = run(
            p, resid, replace=patch, start_at_layer=start, last_only=last, past=past, fast=True
        )
    else:
        tokens = tile(p.base_tokens[:, n0:], k)
        logits = run(p, tokens, replace=patch, last_only=last, past=past, fast=True)
    return logits, targets
