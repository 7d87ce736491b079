"""The shared prefix: the positions every pair's two prompts share run once, and patched
forwards resume from their key/value cache."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ..tasks.metrics import MetricTargets
from .compat import cache_kwarg, fresh_layers, new_cache, tiled_layers
from .forward import _hooks, shortcut_kernels
from .problem import Problem, Tracker


@dataclass
class Prefix:
    """The base run's key/value cache (a Hugging Face cache) over the first ``length``
    positions, which the clean and the corrupted prompts of every pair share."""

    length: int
    cache: Any
    _tiled: dict[int, Any] = field(default_factory=dict, repr=False)

    def copies(self, rows: Tensor) -> Any:
        """A fresh cache whose batch rows are ``rows`` of this one (a forward extends it)."""
        c = copy.deepcopy(self.cache)
        c.batch_select_indices(rows)
        return c

    def tiled(self, k: int, batch: int, device: torch.device) -> Any:
        """A fresh cache of ``k`` copies of the batch (copy-major), as ``copies``. For a layered
        DynamicCache the tiled tensors are built once per k and each call hands out new cache
        and layer objects over them (a forward extends a layer by concatenation, which leaves
        the shared tensors as they are)."""
        rows = torch.arange(batch, device=device).repeat(k)
        if not tiled_layers(self.cache):
            return self.copies(rows)
        if k not in self._tiled:
            self._tiled[k] = self.copies(rows)
        return fresh_layers(self._tiled[k])


def shared_prefix_len(p: Problem) -> int:
    """How many leading positions every pair's two prompts share (and every metric position
    follows): no patch changes any activation there in a causal model. 0 without shortcuts,
    where the model cannot take a key/value cache (not a TransformerBridge), or where the
    prefix is too short to be worth one (under 2 positions or 1/8 of the prompt)."""
    if not p.shortcuts or not p.can_resume:
        return 0
    diff = p.base_tokens != p.src_tokens
    n_pos = int(diff.shape[1])
    first = torch.where(diff.any(1), diff.int().argmax(1), n_pos)
    n = min(int(first.min()), int(p.targets.last_pos.min()), n_pos - 1)
    # a prefix of one or two tokens (a shared BOS) saves less than the cache costs
    return n if n >= max(2, n_pos // 8) else 0


def _last_position(act: Tensor, hook: Any) -> Tensor:
    # contiguous: a strided slice sends a half-precision CPU matmul down a path that copies
    # the whole unembedding matrix (a 64 MiB peak for a 32k x 512 bf16 W_U)
    return act[:, -1:].contiguous()


def prefix_forward(
    p: Problem,
    n: int,
    tracker: Tracker,
    capture: list[Tensor | None] | None = None,
    resid_capture: list[Tensor | None] | None = None,
) -> Prefix:
    """One forward of the first ``n`` positions of the base run (the same tokens as the
    source run's there): their key/value cache, and (as ``run``) the site activations and
    residual streams of those positions in ``capture`` / ``resid_capture``."""
    hooks = _hooks(p, capture=capture, resid_capture=resid_capture)
    if p.can_cut:  # no metric reads the prefix: unembed one position only
        hooks.append(("unembed.hook_in", _last_position))
    cache = new_cache(p.model)  # filled by the forward (None: the bridge returns one)
    with torch.no_grad(), cache_kwarg(p.model), shortcut_kernels(p):
        if cache is not None:
            p.model.run_with_hooks(
                p.base_tokens[:, :n], fwd_hooks=hooks, cache=cache, use_cache=True
            )
        else:
            _, cache = p.model.run_with_hooks(
                p.base_tokens[:, :n], fwd_hooks=hooks, return_type="logits_and_cache"
            )
    tracker.prefix += 1
    return Prefix(n, cache)


def suffix_targets(p: Problem, k: int, n0: int) -> tuple[MetricTargets, Tensor | None]:
    """For a forward of ``k`` copies of the positions after the first ``n0``: the metric
    targets that read its logits, and (where the model allows the cut) the one position per
    row to unembed (``run``'s ``last_only``; the targets then read position 0)."""
    if p.can_cut:  # the metric reads one position per row: unembed only that one
        last = p.targets.last_pos.repeat(k) - n0
        return replace(p.targets, last_pos=torch.zeros_like(p.targets.last_pos)), last
    if n0:
        return replace(p.targets, last_pos=p.targets.last_pos - n0), None
    return p.targets, None
