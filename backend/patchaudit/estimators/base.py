"""The base pass (clean and corrupted activations and the gradient at eps = 0) and the
activations and gradients it keeps (``BaseCache``); the HVP double backward on its graph."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float
from torch import Tensor

from ..tasks.metrics import MetricTargets, per_example
from .forward import run, tile
from .prefix import Prefix, prefix_forward, shared_prefix_len, suffix_targets
from .problem import Cost, Problem, Tracker, model_device


@dataclass
class BaseCache:
    """Activations and gradients of one (model, tokens, site, direction, metric).

    ``a_base[l]`` is the activation of layer l on the run that gets patched (clean for
    noising), ``a_src[l]`` the activation patched in, ``grad[l]`` = dF/d eps_l at eps = 0.
    """

    a_base: list[Tensor]
    a_src: list[Tensor]
    grad: list[Tensor]
    f_base: Float[Tensor, " batch"]  # per-pair metric of the base run
    f_src: Float[Tensor, " batch"]  # per-pair metric of the source run
    ref_logprobs: Tensor | None = None  # clean log-probs at the last position (kl)
    # the base run's residual stream entering every block: patched forwards resume there
    resid: list[Tensor] | None = None
    key: str = ""
    cost: Cost = field(default_factory=Cost)
    # the base run's key/value cache over the shared prefix (built on first use, never saved)
    prefix: Prefix | None = field(default=None, repr=False, compare=False)

    @property
    def has_grad(self) -> bool:
        """False for a base taken without the backward (activation patching needs none)."""
        return len(self.grad) == len(self.a_base)

    @property
    def delta(self) -> list[Tensor]:
        return [s - b for s, b in zip(self.a_src, self.a_base, strict=True)]

    @property
    def nbytes(self) -> int:
        ts = [*self.a_base, *self.a_src, *self.grad, self.f_base, self.f_src, *(self.resid or [])]
        if self.ref_logprobs is not None:
            ts.append(self.ref_logprobs)
        return sum(t.numel() * t.element_size() for t in ts)

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"f_base": self.f_base, "f_src": self.f_src}
        for i, (b, s) in enumerate(zip(self.a_base, self.a_src, strict=True)):
            out[f"a_base.{i}"], out[f"a_src.{i}"] = b, s
        for i, g in enumerate(self.grad):
            out[f"grad.{i}"] = g
        if self.ref_logprobs is not None:
            out["ref_logprobs"] = self.ref_logprobs
        for i, r in enumerate(self.resid or []):
            out[f"resid.{i}"] = r
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors(), path, metadata={"key": self.key})

    @classmethod
    def load(cls, path: str, device: str | torch.device | None = None) -> BaseCache:
        """A saved base; an edge base (``EdgeBase.save``) comes back as an ``EdgeBase``."""
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if device is not None:
            t = {k: v.to(device) for k, v in t.items()}
        if meta.get("kind") == "edges":
            from .edges import EdgeBase

            return EdgeBase.from_tensors(t, meta)  # type: ignore[return-value]
        n = sum(1 for k in t if k.startswith("a_base."))
        return cls(
            a_base=[t[f"a_base.{i}"] for i in range(n)],
            a_src=[t[f"a_src.{i}"] for i in range(n)],
            grad=[t[f"grad.{i}"] for i in range(n)] if "grad.0" in t else [],
            f_base=t["f_base"],
            f_src=t["f_src"],
            ref_logprobs=t.get("ref_logprobs"),
            resid=[t[f"resid.{i}"] for i in range(n)] if "resid.0" in t else None,
            key=meta.get("key", ""),
        )


def compute_base(p: Problem, tracker: Tracker | None = None, grad: bool = True) -> BaseCache:
    """Source forward (activations), base forward with eps = 0 (activations) and one backward
    (gradient): the shared first step of every estimator. Cost 2 forwards + 1 backward.
    With ``grad=False`` the backward is left out (activation patching needs no gradient):
    2 forwards, and a base whose ``has_grad`` is False."""
    if not grad:
        return _base_without_grad(p, tracker or Tracker())
    return compute_base_fused(p, tracker)[0]


def _reference(
    p: Problem, lg_base: Tensor, lg_src: Tensor, last_pos: Tensor | None = None
) -> Tensor:
    """The clean log-probs at the last position (the kl metric's reference), set on
    ``p.targets`` before any metric is taken. ``last_pos``: where that position lies in
    these logits (the targets' own by default)."""
    clean_lg = lg_base if p.direction == "noising" else lg_src
    idx = torch.arange(p.batch, device=clean_lg.device)
    pos = p.targets.last_pos if last_pos is None else last_pos
    ref = clean_lg[idx, pos].detach()
    ref = ref.to(torch.promote_types(ref.dtype, torch.float32)).log_softmax(-1)
    p.targets = MetricTargets(p.targets.answer_ids, p.targets.wrong_ids, p.targets.last_pos, ref)
    return ref


def _base_without_grad(p: Problem, tracker: Tracker) -> BaseCache:
    t0 = time.perf_counter()
    n0 = shared_prefix_len(p)
    if n0:
        return _base_through_prefix(p, tracker, t0, n0)
    n = p.site.n_layers
    src: list[Tensor | None] = [None] * n
    cap: list[Tensor | None] = [None] * n
    resid: list[Tensor | None] = [None] * n
    with torch.no_grad():
        lg_src = run(p, p.src_tokens, capture=src, fast=True)
        lg_base = run(
            p,
            p.base_tokens,
            capture=cap,
            resid_capture=resid if p.can_resume else None,
            fast=True,
        )
        tracker.fwd(1, n=2)
        ref = _reference(p, lg_base, lg_src)
        fb = per_example(p.metric, lg_base, p.targets)
        fs = per_example(p.metric, lg_src, p.targets)
    base_resid = [r for r in resid if r is not None] if p.can_resume else None
    return BaseCache(
        [c for c in cap if c is not None],
        [a for a in src if a is not None],
        [],
        fb,
        fs,
        ref,
        resid=base_resid or None,
        cost=Cost(2, 0, time.perf_counter() - t0, 2, 0),
    )


def _base_through_prefix(p: Problem, tracker: Tracker, t0: float, n0: int) -> BaseCache:
    """``_base_without_grad`` with the shared prefix (``n0`` positions) run once: one forward
    of the prefix (which the patched forwards then reuse as their key/value cache) and one of
    the two suffixes, source and base as two copies on the batch axis. The activations and
    residual streams it keeps are those of every position, as the plain pass's (a prefix is
    only shared where the model can resume, so the residual streams are always kept)."""
    n, b = p.site.n_layers, p.batch
    head: list[Tensor | None] = [None] * n
    head_resid: list[Tensor | None] = [None] * n
    pre = prefix_forward(p, n0, tracker, head, head_resid)
    tail: list[Tensor | None] = [None] * n
    tail_resid: list[Tensor | None] = [None] * n
    targets, last = suffix_targets(p, 2, n0)
    with torch.no_grad():
        tokens = torch.cat([p.src_tokens[:, n0:], p.base_tokens[:, n0:]])  # [2*batch, pos-n0]
        lg = run(
            p,
            tokens,
            capture=tail,
            resid_capture=tail_resid,
            last_only=last,
            past=pre.tiled(2, b, tokens.device),
            fast=True,
        )
        tracker.fwd(2)
        lg_src, lg_base = lg[:b], lg[b:]
        ref = _reference(p, lg_base, lg_src, targets.last_pos)
        targets = replace(targets, ref_logprobs=ref)  # targets were taken before the reference
        fb = per_example(p.metric, lg_base, targets)
        fs = per_example(p.metric, lg_src, targets)

    def joined(heads: list, tails: list, rows: slice) -> list[Tensor]:
        return [torch.cat([h, t[rows]], 1) for h, t in zip(heads, tails, strict=True)]

    base = BaseCache(
        joined(head, tail, slice(b, None)),
        joined(head, tail, slice(None, b)),
        [],
        fb,
        fs,
        ref,
        resid=joined(head_resid, tail_resid, slice(b, None)),
        cost=Cost(1, 0, time.perf_counter() - t0, 2, 0),
    )
    base.prefix = pre
    return base


def compute_base_fused(
    p: Problem, tracker: Tracker | None = None, signs: Tensor | None = None
) -> tuple[BaseCache, Tensor | None]:
    """The base pass; with ``signs`` ([k, n_layers, n_comp]) it also carries the HVP tangents
    v_k = sum_c signs[k, c] delta_c at eps = 0 (the fused screen: the base forward is taken
    with create_graph, so the second-order term costs double backwards on top of AtP).
    Returns the base and y (as ``grad_hvp``), or None without signs."""
    tracker = tracker or Tracker()
    t0 = time.perf_counter()
    n = p.site.n_layers
    src: list[Tensor | None] = [None] * n
    with torch.no_grad():
        lg_src = run(p, p.src_tokens, capture=src)
    tracker.fwd(1)
    tracker.check()  # between two passes: a cancel (or the service's interactive lane) may act
    a_src = [a.detach() for a in src if a is not None]
    k = 1
    if signs is not None and p.hvp_mode == "tile" and signs.shape[0] <= p.max_copies:
        k = int(signs.shape[0])  # the tangents ride on the batch axis of this very pass
    cap: list[Tensor | None] = [None] * n
    resid: list[Tensor | None] = [None] * n
    eps = [torch.zeros_like(tile(a, k), requires_grad=True) for a in a_src]
    with torch.enable_grad():
        lg = run(
            p,
            tile(p.base_tokens, k),
            eps=eps,
            capture=cap,
            resid_capture=resid if p.can_resume else None,
        )
        tracker.fwd(k)
        lg_base = lg[: p.batch].detach()
        ref = _reference(p, lg_base, lg_src)
        f = p.copies_metric(lg)  # [k]
        g = torch.autograd.grad(f.sum(), eps, create_graph=signs is not None)
        tracker.bwd(k)
        tracker.check()
        a_base = [c[: p.batch].detach() for c in cap if c is not None]
        grads = [x[: p.batch].detach() for x in g]
        # what AtP alone costs (the base's own passes at one copy; the rest of this pass, the k - 1
        # copies the tangents ride on and the double backwards, counts for the fused method)
        cost = Cost(2, 1, time.perf_counter() - t0, 2, 1)
        y = None
        if signs is not None:
            delta = [s_ - b_ for s_, b_ in zip(a_src, a_base, strict=True)]
            y = hvp_from_graph(p, g, eps, delta, signs, k, tracker)
    with torch.no_grad():
        fb = per_example(p.metric, lg_base, p.targets)
        fs = per_example(p.metric, lg_src.detach(), p.targets)
    base_resid = [r[: p.batch] for r in resid if r is not None] if p.can_resume else None
    base = BaseCache(a_base, a_src, grads, fb, fs, ref, resid=base_resid or None, cost=cost)
    return base, y


def hvp_from_graph(
    p: Problem,
    g: Sequence[Tensor],
    eps: Sequence[Tensor],
    delta: Sequence[Tensor],
    signs: Tensor,
    copies: int,
    tracker: Tracker,
) -> Tensor:
    """Double backward(s) on a live graph, g = dF/d eps taken with create_graph on ``copies``
    copies of the batch. With copies == k (> 1) all k tangents ride on the batch axis of one
    pass; with copies == 1 each tangent takes one pass on the shared graph (retain_graph).
    Returns y[k, l, c] = signs[k, l, c] <delta_c, [Hess F v_k]_c>."""
    k_all = int(signs.shape[0])
    nl, nc = p.site.n_layers, p.site.n_comp
    dev, dt = delta[0].device, delta[0].dtype
    y = torch.zeros(k_all, nl, nc, device=dev, dtype=torch.promote_types(dt, torch.float32))
    tiled = copies == k_all and copies > 1
    groups = [list(range(k_all))] if tiled else [[i] for i in range(k_all)]
    for j, rows in enumerate(groups):
        tracker.check()
        s = signs[rows].to(dev, dt)  # [r, n_layers, n_comp]
        acc = torch.promote_types(dt, torch.float32)  # <g, v> accumulated in fp32 at least
        inner = torch.zeros((), device=dev, dtype=acc)
        for layer, (gl, d) in enumerate(zip(g, delta, strict=True)):
            # [r*batch, n_comp] on the batch axis, or [1, n_comp] broadcast over the batch
            sl = s[:, layer].repeat_interleave(p.batch, 0) if tiled else s[:, layer]
            v = (tile(d, copies) * p.site.expand(sl)).to(acc)
            inner = inner + (gl.to(acc) * v).sum()  # <g, v>
        hv: Sequence[Tensor | None]
        if inner.requires_grad:
            last = j == len(groups) - 1
            hv = torch.autograd.grad(inner, eps, retain_graph=not last, allow_unused=True)
        else:  # the gradient does not depend on eps: F is linear, the Hessian is 0
            hv = [None] * len(eps)
        tracker.bwd(copies)
        for layer, (h, d) in enumerate(zip(hv, delta, strict=True)):
            if h is None:  # the metric does not depend on this layer twice
                continue
            prod = p.site.dot(h, tile(d, copies)).view(copies, p.batch, nc).sum(1)
            y[rows, layer] = s[:, layer] * (prod if tiled else prod.sum(0, keepdim=True))
    return y


def attach_base(p: Problem, base: BaseCache) -> None:
    """Reuse a cached base: the metric targets need the clean reference distribution."""
    dev = model_device(p.model)
    for name in ("a_base", "a_src", "grad"):
        setattr(base, name, [t.to(dev) for t in getattr(base, name)])
    base.f_base, base.f_src = base.f_base.to(dev), base.f_src.to(dev)
    if base.ref_logprobs is not None:
        base.ref_logprobs = base.ref_logprobs.to(dev)
    if base.resid is not None:
        base.resid = [r.to(dev) for r in base.resid]
    p.targets = MetricTargets(
        p.targets.answer_ids, p.targets.wrong_ids, p.targets.last_pos, base.ref_logprobs
    )
