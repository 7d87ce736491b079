"""The shared machinery of every estimator: the perturbed forward, the base pass (clean and
corrupted activations and the gradient at eps = 0), pass counting, chunking, progress and
cancellation.

Perturbation form (METHODS.md): F(eps) = m(f(x) with a_c <- a_c + eps_c at every component).
The hooks add eps to the tensor the model consumes (``blocks.L.attn.hook_z`` for heads).
Copies of the batch ride on the batch axis (copy-major: row ``k * batch + b``).

The machinery lives in modules along its seams, all re-exported here: ``problem`` (the
problem, memory plan, pass counting), ``forward`` (hooks and ``run``), ``prefix`` (the shared
prefix's key/value cache), ``base`` (the base passes), ``patching`` (activation patching) and
``compat`` (every adaptation to transformers / TransformerBridge internals); this module keeps
the generic gradient / HVP kernel and the probe helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .base import BaseCache, attach_base, compute_base, compute_base_fused, hvp_from_graph
from .compat import cache_kwarg, cpu_kernels, skip_blocks
from .forward import chunks, run, shortcut_kernels, tile
from .patching import (
    patch_components,
    patched_forward,
    prefix_cache,
    suffix_patch,
    zero_delta,
)
from .prefix import Prefix, prefix_forward, shared_prefix_len, suffix_targets
from .problem import (
    DIRECTIONS,
    Cancelled,
    Cost,
    MemoryBudgetError,
    Problem,
    ProgressFn,
    StopFn,
    Tracker,
    bytes_per_copy,
    check_fits,
    copies_for_budget,
    make_problem,
    memory_budget_or_free,
    memory_plan,
    method_bytes,
    method_need_mb,
    model_device,
    planned_methods,
)

__all__ = [
    "BaseCache",
    "Cancelled",
    "Cost",
    "DIRECTIONS",
    "MemoryBudgetError",
    "Prefix",
    "Problem",
    "ProgressFn",
    "StopFn",
    "Tracker",
    "attach_base",
    "bytes_per_copy",
    "cache_kwarg",
    "check_fits",
    "chunks",
    "compute_base",
    "compute_base_fused",
    "copies_for_budget",
    "cpu_kernels",
    "grad_hvp",
    "hvp_from_graph",
    "make_problem",
    "memory_budget_or_free",
    "memory_plan",
    "planned_methods",
    "method_bytes",
    "method_need_mb",
    "model_device",
    "onehots",
    "patch_components",
    "patched_forward",
    "prefix_cache",
    "prefix_forward",
    "rademacher",
    "run",
    "se_of_mean",
    "shared_prefix_len",
    "shortcut_kernels",
    "skip_blocks",
    "suffix_patch",
    "suffix_targets",
    "tile",
    "zero_delta",
]


def grad_hvp(
    p: Problem,
    base: BaseCache,
    ts: Float[Tensor, " k"],
    signs: Float[Tensor, "k n_layers n_comp"] | None,
    tracker: Tracker,
) -> tuple[Float[Tensor, "k n_layers n_comp"], Float[Tensor, "k n_layers n_comp"] | None]:
    """The one generic kernel behind atp, hvp, hvp_joint, hvp_exact, ig and mhvp.

    Copy k of the batch runs at eps = ts[k] * delta (all components together). Returns
    phi[k, l, c] = <g_c(ts[k] delta), delta_c> and, when ``signs`` is given, with the tangent
    v_k = sum_c signs[k, c] delta_c, y[k, l, c] = signs[k, c] <delta_c, [Hess F(ts[k] delta) v_k]_c>
    computed by double backward (never a Hessian). Copies are chunked to the memory budget;
    in "loop" mode the tangents of one point share one graph instead of the batch axis.
    """
    k_all = int(ts.shape[0])
    delta = base.delta
    nl, nc = p.site.n_layers, p.site.n_comp
    acc = torch.promote_types(delta[0].dtype, torch.float32)
    phi = torch.zeros(k_all, nl, nc, device=delta[0].device, dtype=acc)
    y = torch.zeros(k_all, nl, nc, device=delta[0].device, dtype=acc) if signs is not None else None
    loop = signs is not None and p.hvp_mode == "loop"
    if loop:  # one graph per distinct point; its tangents one double backward each
        values = list(dict.fromkeys(float(x) for x in ts.tolist()))
        parts = [[k for k in range(k_all) if float(ts[k]) == t] for t in values]
    else:
        parts = [list(range(lo, hi)) for lo, hi in chunks(k_all, p.max_copies)]
    for j, rows in enumerate(parts):
        tracker.check()
        copies = 1 if loop else len(rows)
        t = ts[rows[:copies]].to(delta[0].device, delta[0].dtype)
        eps = []
        for d in delta:
            tt = t.repeat_interleave(p.batch).view(
                -1, *([1] * (d.dim() - 1))
            )  # [copies*batch, 1..]
            eps.append((tile(d, copies) * tt).detach().requires_grad_(True))
        with torch.enable_grad():
            f = p.copies_metric(run(p, tile(p.base_tokens, copies), eps=eps)).sum()
            tracker.fwd(copies)
            g = torch.autograd.grad(f, eps, create_graph=signs is not None)
            tracker.bwd(copies)
            for layer, (gl, d) in enumerate(zip(g, delta, strict=True)):
                prod = p.site.dot(gl.detach(), tile(d, copies))  # [copies*batch, n_comp]
                phi[rows, layer] = prod.view(copies, p.batch, nc).sum(1)  # broadcasts in loop mode
            if signs is not None:
                assert y is not None
                y[rows] = hvp_from_graph(p, g, eps, delta, signs[rows], copies, tracker)
        tracker.report((j + 1) / len(parts))
    return phi, y


def rademacher(k: int, shape: tuple[int, int], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (k, *shape), generator=g) * 2 - 1).float()


def onehots(shape: tuple[int, int], idx: Sequence[int] | None = None) -> Tensor:
    n = shape[0] * shape[1]
    idx = list(range(n)) if idx is None else list(idx)
    s = torch.zeros(len(idx), n)
    s[torch.arange(len(idx)), torch.tensor(idx, dtype=torch.long)] = 1.0
    return s.view(len(idx), *shape)


def se_of_mean(y: Tensor) -> Tensor:
    k = y.shape[0]
    if k < 2:
        return torch.zeros_like(y[0])
    return y.std(0, unbiased=True) / math.sqrt(k)
