"""The perturbed forward: the hooks that add eps to, replace or capture each layer's
activation, and ``run``, which every pass goes through.

Perturbation form (METHODS.md): F(eps) = m(f(x) with a_c <- a_c + eps_c at every component).
The hooks add eps to the tensor the model consumes (``blocks.L.attn.hook_z`` for heads).
Copies of the batch ride on the batch axis (copy-major: row ``k * batch + b``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .compat import cache_forward_kwargs, cache_kwarg, cpu_kernels, skip_blocks
from .problem import Problem


def _hooks(
    p: Problem,
    eps: Sequence[Tensor | None] | None = None,
    replace: dict[int, tuple[Tensor, Tensor]] | None = None,
    capture: list[Tensor | None] | None = None,
    resid_capture: list[Tensor | None] | None = None,
    last_only: Tensor | None = None,
) -> list[tuple[str, Callable]]:
    """The forward hooks of ``run`` (its arguments of the same names)."""
    hooks: list[tuple[str, Callable]] = []
    if last_only is not None:
        rows = torch.arange(last_only.shape[0], device=last_only.device)

        def cut(act, hook):
            return act[rows, last_only][:, None]  # [rows, 1, d_model]

        hooks.append(("unembed.hook_in", cut))
    if resid_capture is not None:
        for layer in range(p.site.n_layers):

            def keep(act, hook, layer=layer):
                resid_capture[layer] = act.detach()
                return act

            hooks.append((f"blocks.{layer}.hook_resid_pre", keep))
    for layer, name in enumerate(p.site.hook_names):
        e = eps[layer] if eps is not None else None
        r = replace.get(layer) if replace is not None else None
        if e is None and r is None and capture is None:
            continue

        def hook(act, hook, layer=layer, e=e, r=r):
            if e is not None:
                act = act + e.view(act.shape)
            if r is not None:
                mask, value = r
                act = torch.where(mask, value.view(act.shape), act)
            if capture is not None:
                capture[layer] = act
            return act

        hooks.append((name, hook))
    return hooks


def run(
    p: Problem,
    tokens: Tensor,
    eps: Sequence[Tensor | None] | None = None,
    replace: dict[int, tuple[Tensor, Tensor]] | None = None,
    capture: list[Tensor | None] | None = None,
    resid_capture: list[Tensor | None] | None = None,
    start_at_layer: int | None = None,
    last_only: Tensor | None = None,
    past: Any = None,
    fast: bool = False,
    extra_hooks: Sequence[tuple[str, Callable]] = (),
) -> Tensor:
    """One forward of ``tokens`` ([copies*batch, pos]; with ``start_at_layer`` = L, the
    residual stream entering block L, [copies*batch, pos, d_model]).

    eps[l] is added to layer l's activation; replace[l] = (mask, value) sets
    act = where(mask, value, act); capture[l] receives layer l's activation and
    resid_capture[l] the residual stream entering block l. With ``last_only`` (one position
    per row) the unembedding input is cut to that position, so the
    unembedding runs on one position per row: logits [rows, 1, d_vocab]. With ``past`` (a
    Hugging Face cache of the positions before ``tokens``) only those later positions run.
    ``fast``: with the problem's shortcuts on, take ``cpu_kernels`` (the caller makes sure
    that the two runs whose activations make a delta take the same kernels, so a zero delta
    stays exactly zero). ``extra_hooks``: more (name, hook) pairs, run after these (the edge
    estimators' sender captures and receiver perturbations).
    """
    hooks = _hooks(p, eps, replace, capture, resid_capture, last_only) + list(extra_hooks)
    kw: dict[str, Any] = {}
    if start_at_layer is not None:
        kw["start_at_layer"] = start_at_layer
    with contextlib.ExitStack() as stack:
        if start_at_layer:
            stack.enter_context(skip_blocks(p.model, start_at_layer))
        if fast:
            stack.enter_context(shortcut_kernels(p))
        if past is None:
            return p.model.run_with_hooks(tokens, fwd_hooks=hooks, **kw)
        stack.enter_context(cache_kwarg(p.model))
        kw.update(cache_forward_kwargs(p.model, past))
        return p.model.run_with_hooks(tokens, fwd_hooks=hooks, **kw)


def shortcut_kernels(p: Problem) -> contextlib.AbstractContextManager:
    """``cpu_kernels`` where the problem's shortcuts are on, else nothing."""
    return cpu_kernels(p.model) if p.shortcuts else contextlib.nullcontext()


def tile(x: Tensor, copies: int) -> Tensor:
    """[batch, ...] -> [copies * batch, ...], copy-major."""
    return x.repeat(copies, *([1] * (x.dim() - 1)))


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    size = max(1, size)
    return [(i, min(n, i + size)) for i in range(0, n, size)]
