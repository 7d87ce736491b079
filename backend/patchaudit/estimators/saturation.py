"""The saturation-aware estimate ``sat`` (METHODS.md, "Saturation"): the network downstream
of a component linearised, except that every attention softmax and the metric itself are
evaluated exactly.

A softmax row that puts ~1 on one key has a Jacobian ~0, and so do its higher derivatives: a
component whose effect runs through such a row gets A1 ~ 0 and q ~ 0, and no Taylor
correction can see it (AtP*'s failure mode 1, Kramar et al. 2024). ``sat`` pushes delta_c
forward as a tangent (one forward-mode pass over the base run), and at every attention
replaces the pattern's linear change J dS by its exact change softmax(S + dS) - softmax(S),
where dS is the tangent reaching that head's pre-softmax scores (through the exact pattern
changes of earlier heads). The logits' tangent dL then gives

    sat_c = m(L + dL_c) - m(L)

(the metric evaluated exactly: it sees a saturated prob_diff and gives KL noising a value where
A1 = 0). With every softmax and the metric linearised this is A1 exactly (a test).

Which head saturates c's effect: with dm/dA_d the ordinary gradient of the metric at head d's
pattern (one backward), head d's share is <softmax(S_d + dS_d) - A_d - J_d dS_d, dm/dA_d>, the
part of its pattern change that no derivative sees.

Cost: one forward + one backward (dm/dA at every pattern) and one forward-mode pass per chunk
of components of a layer (copies on the batch axis), resumed at the component's layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ..tasks.metrics import per_copy
from .core import BaseCache, Problem, Tracker, chunks, skip_blocks, suffix_targets, tile
from .forward import _hooks
from .sites import component_mask


@dataclass
class Saturation:
    values: Tensor  # sat_c, [n_layers, n_comp]
    # per component and downstream head: the part of the head's exact pattern change that
    # its linearisation misses, weighted by dm/dA: [n_layers, n_comp, n_att_layers, n_heads]
    nonlinear: Tensor
    # sat with the metric linearised at the logits (exact softmaxes only)
    linear_metric: Tensor | None = None

    def top_heads(self, layer: int, comp: int, k: int = 3) -> list[tuple[int, int, float]]:
        """The downstream heads whose exact softmax departs most from its linearisation for
        this component: (layer, head, share), largest |share| first, zeros left out."""
        nl = self.nonlinear[layer, comp]
        flat = nl.flatten()
        order = flat.abs().argsort(descending=True)[:k]
        nh = nl.shape[1]
        return [(int(i) // nh, int(i) % nh, float(flat[i])) for i in order if flat[i] != 0]


def attention_hook_names(model) -> list[tuple[str, str]]:
    """(scores, pattern) hook names per layer; a clear error where the model has none."""
    hd = getattr(model, "hook_dict", {})
    names = []
    for i in range(int(model.cfg.n_layers)):
        s, a = f"blocks.{i}.attn.hook_attn_scores", f"blocks.{i}.attn.hook_pattern"
        if s not in hd or a not in hd:
            raise ValueError(
                "the saturation-aware estimate (sat) needs the attention scores and pattern "
                f"hooks ({s}, {a}); this model does not expose them"
            )
        names.append((s, a))
    return names


def _softmax(x: Tensor) -> Tensor:
    return torch.softmax(x.to(torch.promote_types(x.dtype, torch.float32)), -1)


def pattern_grads(p: Problem, tracker: Tracker) -> list[Tensor]:
    """dm/dA_d at every attention pattern of the base run (one forward, one backward)."""
    names = attention_hook_names(p.model)
    pats: list[Tensor | None] = [None] * len(names)

    def keep(act, hook, i):
        out = act if act.requires_grad else act.detach().requires_grad_(True)
        pats[i] = out
        return out

    hooks = [(an, lambda act, hook, i=i: keep(act, hook, i)) for i, (_, an) in enumerate(names)]
    with torch.enable_grad():
        f = p.copies_metric(p.model.run_with_hooks(p.base_tokens, fwd_hooks=hooks)).sum()
        tracker.fwd(1)
        live = [x for x in pats if x is not None]
        if len(live) != len(names):
            raise ValueError("the attention pattern hooks did not fire: sat needs them")
        g = torch.autograd.grad(f, live, allow_unused=True)
        tracker.bwd(1)
    return [
        (gi if gi is not None else torch.zeros_like(a)).detach()
        for gi, a in zip(g, live, strict=True)
    ]


def _chunk(
    p: Problem,
    base: BaseCache,
    names: list[tuple[str, str]],
    layer: int,
    comps: list[int],
    grad_a: list[Tensor] | None,
    exact_softmax: bool,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One forward-mode pass of ``len(comps)`` copies of the base run, copy k carrying the
    tangent delta of component ``comps[k]`` of ``layer``: the metric's exact and linearised
    change, and per downstream head the missed (exact minus linear) pattern term."""
    k, b = len(comps), p.batch
    d = base.delta[layer]
    idx = torch.tensor(comps, device=d.device).repeat_interleave(b)
    tangent = tile(d, k) * component_mask(p.site, idx, d)
    scores: dict[int, tuple[Tensor, Tensor | None]] = {}
    n_heads = int(p.model.cfg.n_heads)
    miss = (
        torch.zeros(k, len(names), n_heads, device=d.device, dtype=acc)
        if grad_a is not None
        else None
    )

    def on_scores(act, hook, i):
        scores[i] = fwAD.unpack_dual(act)[:2]
        return act

    def on_pattern(act, hook, i):
        prim, lin = fwAD.unpack_dual(act)[:2]
        s, ds = scores.pop(i)
        if ds is None or not exact_softmax:
            return act
        change = _softmax(s + ds) - _softmax(s)
        if miss is not None and grad_a is not None and lin is not None:  # noqa: SIM102
            m = ((change - lin.to(acc)) * tile(grad_a[i], k).to(acc)).sum((2, 3))
            miss[:, i] = m.view(k, b, -1).sum(1)
        return fwAD.make_dual(prim, change.to(prim.dtype))

    hooks: list[tuple[str, Callable]] = []
    for i, (sn, an) in enumerate(names):
        hooks.append((sn, partial(on_scores, i=i)))
        hooks.append((an, partial(on_pattern, i=i)))
    start = layer if p.can_resume and base.resid is not None else None
    x = tile(base.resid[layer], k) if base.resid is not None and start is not None else None
    x = tile(p.base_tokens, k) if x is None else x
    with torch.no_grad(), fwAD.dual_level(), contextlib.ExitStack() as stack:
        eps: list[Tensor | None] = [None] * p.site.n_layers
        eps[layer] = fwAD.make_dual(torch.zeros_like(tangent), tangent)
        kw: dict[str, Any] = {}
        if start is not None:
            kw["start_at_layer"] = start
            if start:
                stack.enter_context(skip_blocks(p.model, start))
        targets, last = suffix_targets(p, k, 0)
        all_hooks = hooks + _hooks(p, eps=eps, last_only=last)
        logits = p.model.run_with_hooks(x, fwd_hooks=all_hooks, **kw)
        lg, dlg = fwAD.unpack_dual(logits)[:2]
        lg = lg.to(acc)
        dlg = torch.zeros_like(lg) if dlg is None else dlg.to(acc)
        f0 = per_copy(p.metric, lg, targets)
        v_exact = per_copy(p.metric, lg + dlg, targets) - f0
        with torch.enable_grad():  # <dm/dlogits, dL>
            lg_ = lg.detach().requires_grad_(True)
            gm = torch.autograd.grad(per_copy(p.metric, lg_, targets).sum(), lg_)[0]
        v_lin = (gm * dlg).sum(tuple(range(1, gm.dim()))).view(k, b).sum(1)
    return v_exact, v_lin, miss


def saturation(
    p: Problem,
    base: BaseCache,
    tracker: Tracker | None = None,
    exact_softmax: bool = True,
    exact_metric: bool = True,
    attribute: bool = True,
) -> Saturation:
    """sat_c for every component (module docstring). ``exact_softmax`` / ``exact_metric``
    False linearise those too (then sat = A1: the test of the construction); ``attribute``
    False skips the dm/dA backward that names the saturating heads."""
    tracker = tracker or Tracker()
    names = attention_hook_names(p.model)
    n_att = len(names)
    grad_a = pattern_grads(p, tracker) if attribute else None
    nl, nc = p.site.n_layers, p.site.n_comp
    d0 = base.delta[0]
    acc = torch.promote_types(d0.dtype, torch.float32)
    n_heads = int(p.model.cfg.n_heads)
    values = torch.zeros(nl, nc, device=d0.device, dtype=acc)
    lin_metric = torch.zeros_like(values)
    nonlinear = torch.zeros(nl, nc, n_att, n_heads, device=d0.device, dtype=acc)
    work = [
        (layer, list(range(lo, hi))) for layer in range(nl) for lo, hi in chunks(nc, p.max_copies)
    ]
    for j, (layer, comps) in enumerate(work):
        tracker.check()
        v_exact, v_lin, miss = _chunk(p, base, names, layer, comps, grad_a, exact_softmax, acc)
        tracker.fwd(len(comps))
        values[layer, comps] = v_exact if exact_metric else v_lin
        lin_metric[layer, comps] = v_lin
        if miss is not None:
            nonlinear[layer, comps] = miss
        tracker.report((j + 1) / max(1, len(work)))
    return Saturation(values, nonlinear, lin_metric)
