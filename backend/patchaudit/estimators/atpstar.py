"""AtP* (Kramár, Lieberum, Shah and Nanda 2024): the two fixes of attribution patching.

- ``atp_star``, the QK fix: a query or key reaches the metric only through its head's attention
  pattern, where AtP linearises the softmax (and, on Gemma-2, the attention-logit soft-cap) and
  so misses a saturated head. The fix recomputes the pattern of the patched component's layer
  exactly, with that component's query or key patched in, and contracts its change with the
  gradient of the metric with respect to the pattern at the base run:
  ``sum_{head, query, key} dm/dA (A(patched) - A(base))``. Exact where everything downstream of
  the pattern is linear. On the other sites (head outputs, MLPs, the residual stream, values) it
  is AtP.
- ``graddrop``, for cancellation between paths: for each layer l, AtP with the gradient through
  layer l's contribution to the residual stream dropped (a stop-gradient on its attention and
  MLP outputs, the only paths from the block into the residual stream); the score is the mean
  over pairs of ``1/(L-1) sum_l |AtP_{-l}|`` (the paper's combination: the absolute value per
  prompt pair, summed over the L layers, over L - 1). A magnitude, never negative.

Pure tensor code on a :class:`Problem` and its base pass, with the passes counted on the
``Tracker``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .compat import takes_stop_at_layer
from .forward import chunks, tile
from .problem import Problem, Tracker
from .sites import component_mask

QK_SITES = ("q", "k")


@dataclass
class GradDropTerms:
    """The terms of GradDrop: ``terms[l]`` is AtP with layer l's residual contribution
    stop-gradiented (the batch mean, signed: [n_layers, n_comp]); ``per_pair_abs[l]`` the mean
    over pairs of its per-pair absolute value."""

    terms: Tensor  # [n_drop_layers, n_layers, n_comp]
    per_pair_abs: Tensor  # [n_drop_layers, n_layers, n_comp]


def _pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def pattern_grad(p: Problem, tracker: Tracker) -> tuple[list[Tensor], list[Tensor]]:
    """The attention pattern of every layer on the base run, A[l] [batch, head, query, key],
    and dm/dA[l] (the batch metric's gradient; one forward and one backward)."""
    n = p.site.n_layers
    eps = [None] * n
    pats: list[Tensor | None] = [None] * n

    def hook(act: Tensor, hook, layer: int) -> Tensor:  # noqa: ANN001
        e = torch.zeros_like(act, requires_grad=True)
        eps[layer] = e  # type: ignore[call-overload]
        pats[layer] = act.detach()
        return act + e

    hooks = [(_pattern_name(i), _bind(hook, i)) for i in range(n)]
    with torch.enable_grad():
        lg = p.model.run_with_hooks(p.base_tokens, fwd_hooks=hooks)
        tracker.fwd(1)
        if any(e is None for e in eps):
            raise ValueError(
                "atp_star needs the attention pattern hooks (blocks.L.attn.hook_pattern)"
            )
        f = p.copies_metric(lg).sum()
        grads = torch.autograd.grad(f, eps, allow_unused=True)  # type: ignore[arg-type]
        tracker.bwd(1)
    out = [
        torch.zeros_like(a) if g is None else g.detach()  # type: ignore[union-attr]
        for g, a in zip(grads, pats, strict=True)
    ]
    return [a for a in pats if a is not None], out


def _bind(fn: Callable, layer: int) -> Callable:
    return lambda act, hook: fn(act, hook, layer)


def qk_fix(p: Problem, base, atp_values: Tensor, tracker: Tracker) -> Tensor:
    """The QK fix on the q / k sites ([n_layers, n_comp]); ``atp_values`` elsewhere. Per layer,
    the components ride on the batch axis of one forward of that layer's block alone (from the
    cached residual stream where the model can resume), the pattern captured after it."""
    if p.site.name not in QK_SITES:
        return atp_values
    pats, grads = pattern_grad(p, tracker)
    nl, nc = p.site.shape
    acc = torch.promote_types(base.f_base.dtype, torch.float32)
    out = torch.zeros(nl, nc, dtype=acc)
    stop = takes_stop_at_layer(p.model)
    work = [(layer, lo, hi) for layer in range(nl) for lo, hi in chunks(nc, p.max_copies)]
    for j, (layer, lo, hi) in enumerate(work):
        tracker.check()
        k = hi - lo
        a_src = base.a_src[layer]
        idx = torch.arange(lo, hi, device=a_src.device).repeat_interleave(p.batch)  # [k*batch]
        mask = component_mask(p.site, idx, a_src) > 0
        value = tile(a_src, k)
        cap: list[Tensor] = []

        def patch(act: Tensor, hook, mask=mask, value=value) -> Tensor:  # noqa: ANN001
            return torch.where(mask, value.view(act.shape), act)

        def keep(act: Tensor, hook, cap: list[Tensor] = cap) -> Tensor:  # noqa: ANN001
            cap.append(act.detach())
            return act

        hooks = [(p.site.hook_names[layer], patch), (_pattern_name(layer), keep)]
        kw: dict = {"stop_at_layer": layer + 1} if stop else {}
        x = tile(p.base_tokens, k)
        if stop and p.can_resume and base.resid is not None:
            x, kw["start_at_layer"] = tile(base.resid[layer], k), layer
        with torch.inference_mode():
            p.model.run_with_hooks(x, fwd_hooks=hooks, **kw)
        tracker.fwd(k)
        d_pat = cap[0].to(acc) - tile(pats[layer], k).to(acc)  # [k*batch, head, q, key]
        contrib = (d_pat * tile(grads[layer], k).to(acc)).sum(dim=(1, 2, 3))  # [k*batch]
        out[layer, lo:hi] = contrib.view(k, p.batch).sum(1).cpu()  # grads carry the 1/batch
        tracker.report((j + 1) / len(work))
    return out


def graddrop_terms(p: Problem, base, tracker: Tracker) -> GradDropTerms:
    """AtP with layer l's residual-stream contribution stop-gradiented, for every layer l: the
    L variants ride as copies on the batch axis (copy j drops layer j), chunked to the memory
    budget; one forward and one backward per chunk."""
    model = p.model
    n_drop = int(model.cfg.n_layers)
    names = getattr(model, "hook_dict", {})
    for layer in range(n_drop):
        for h in (f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"):
            if h not in names:
                raise ValueError(f"graddrop needs the hook {h} (a block's residual contribution)")
    nl, nc = p.site.shape
    delta = base.delta
    acc = torch.promote_types(delta[0].dtype, torch.float32)
    terms = torch.zeros(n_drop, nl, nc, dtype=acc)
    absm = torch.zeros(n_drop, nl, nc, dtype=acc)
    parts = chunks(n_drop, p.max_copies)
    for j, (lo, hi) in enumerate(parts):
        tracker.check()
        k = hi - lo
        rows = torch.arange(k * p.batch, device=delta[0].device) // p.batch + lo  # drop layer
        eps = [torch.zeros_like(tile(d, k), requires_grad=True) for d in delta]

        def add(act: Tensor, hook, layer: int, eps: list[Tensor] = eps) -> Tensor:  # noqa: ANN001
            return act + eps[layer].view(act.shape)

        def drop(act: Tensor, hook, layer: int, rows: Tensor = rows) -> Tensor:  # noqa: ANN001
            m = (rows == layer).view(-1, *([1] * (act.dim() - 1)))
            return torch.where(m, act.detach(), act)

        hooks = [(name, _bind(add, i)) for i, name in enumerate(p.site.hook_names)]
        for layer in range(lo, hi):
            hooks.append((f"blocks.{layer}.hook_attn_out", _bind(drop, layer)))
            hooks.append((f"blocks.{layer}.hook_mlp_out", _bind(drop, layer)))
        with torch.enable_grad():
            lg = model.run_with_hooks(tile(p.base_tokens, k), fwd_hooks=hooks)
            tracker.fwd(k)
            f = p.copies_metric(lg).sum()
            grads = torch.autograd.grad(f, eps, allow_unused=True)
            tracker.bwd(k)
        for layer, (g, d) in enumerate(zip(grads, delta, strict=True)):
            if g is None:
                continue
            # per pair: batch * <g_row, delta> (the batch metric's gradient carries 1/batch)
            prod = p.site.dot(g.detach(), tile(d, k)).view(k, p.batch, nc) * p.batch
            terms[lo:hi, layer] = prod.mean(1).cpu()
            absm[lo:hi, layer] = prod.abs().mean(1).cpu()
        tracker.report((j + 1) / len(parts))
    return GradDropTerms(terms, absm)


def graddrop_score(t: GradDropTerms) -> Tensor:
    """The paper's combination: mean over pairs of 1/(L-1) sum_l |AtP_{-l}| ([n_layers, n_comp];
    with a single layer, the one term)."""
    n = int(t.per_pair_abs.shape[0])
    return t.per_pair_abs.sum(0) / max(n - 1, 1)
