"""The second-order term split by operation (METHODS.md, "The second-order term, split by
operation": the paper's diagnosis).

Along component c's own delta, F(t) = m(f(x) with a_c <- a_c + t delta_c) has

    q_c = F''(0) = sum over operations f:  <gbar_f, f''(u_f)[udot_f, udot_f]>

where u_f is f's input at the base point, udot_f the first-order tangent reaching it and gbar_f
the gradient of the metric at f's output. Linear operations (additions, views, linear layers,
the mask) contribute nothing; bilinear ones count when both factors move (QK^T: 2 qdot.kdot,
pattern x V, the gate product of gated MLPs); every other operation (softmax, normalisations,
activations, soft-caps, the metric's log-softmax) contributes its own share, and the shares add
up to q exactly (it is the chain rule, term by term).

How it is computed, on the real model and its real operations (no re-implementation of any
layer): a ``TorchFunctionMode`` sees every torch call the model makes.

1. gbar: one forward over the base batch with a zero eps (requiring grad) at every layer of the
   site and one backward to the outputs of every candidate operation (calls numbered in order).
2. udot and the shares: one forward-mode pass per chunk of components (copies on the batch
   axis, copy k carrying delta of component k as its tangent). At every call with a moving
   input the mode evaluates d^2/dt^2 <gbar, f(u + t udot)> at t = 0 for that call alone (two
   small backward passes through that one operation, per row of the batch, and per head where
   the operation is an attention's), and adds it to the operation's key.

Each call is named from the module that runs it: ``L3.attn.qk`` / ``L3.attn.softmax`` /
``L3.attn.pv`` / ``L3.attn.softcap`` (Gemma-2), ``L4.ln1`` (each normalisation by its own
name), ``L2.mlp.act`` / ``L2.mlp.gate``, ``ln_final``, ``logits.softcap`` (Gemma-2's final
soft-cap) and ``metric`` (the metric's own log-softmax / softmax).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..tasks.metrics import per_copy
from .core import BaseCache, Problem, Tracker, chunks, run, suffix_targets, tile
from .sites import component_mask

#: Calls linear (or affine) jointly in all their tensor arguments: no second derivative.
_LINEAR = frozenset(
    """
    __get__ add __add__ __radd__ __iadd__ sub __sub__ __rsub__ __isub__ neg __neg__ view
    view_as reshape reshape_as permute transpose t contiguous expand expand_as unsqueeze
    squeeze flatten unflatten split chunk unbind cat concat concatenate stack __getitem__
    index_select gather narrow select to type float double half bfloat16 clone detach repeat
    repeat_interleave masked_fill where sum mean cumsum dropout embedding size dim
    is_contiguous is_floating_point numel __len__ __setitem__ zeros_like ones_like full_like
    empty_like arange zeros ones full empty _set_grad_enabled le lt ge gt eq ne __eq__ __ne__
    __lt__ __le__ __gt__ __ge__ __bool__ item tolist new_zeros new_ones new_full new_empty
    new_tensor requires_grad_ diff roll flip tril triu movedim moveaxis swapaxes einsum_path
    pad __format__ __repr__ __hash__ data_ptr storage_offset stride get_device cpu cuda
    """.split()
)
#: Calls linear in each tensor argument separately: a second derivative only where two of
#: their arguments move (QK^T, pattern x V, the gate product).
_MULTILINEAR = frozenset(
    """
    mul __mul__ __rmul__ __imul__ matmul __matmul__ __rmatmul__ bmm mm einsum linear addmm
    baddbmm outer mv conv1d multiply
    """.split()
)
_DIVISION = frozenset({"div", "__truediv__", "true_divide", "divide", "__itruediv__"})
_SOFTMAX = frozenset({"softmax", "_softmax", "log_softmax"})

#: Hugging Face sub-module names -> the names used in the keys.
_PARTS = {
    "ln_1": "ln1",
    "input_layernorm": "ln1",
    "ln_2": "ln2",
    "pre_feedforward_layernorm": "ln2",
    "post_feedforward_layernorm": "ln2_post",
    "attn": "attn",
    "self_attn": "attn",
    "attention": "attn",
    "mlp": "mlp",
}
_ACT = re.compile(r"\.(act|act_fn|activation_fn|activation)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(?:_original_component\.)?([A-Za-z0-9_]+)$")

#: The kinds of operation, for the table and the page.
KINDS = (
    "attn.qk",
    "attn.softcap",
    "attn.softmax",
    "attn.pv",
    "attn.other",
    "norm",
    "mlp.act",
    "mlp.gate",
    "logits.softcap",
    "metric",
    "other",
)


def kind_of(key: str) -> str:
    """The kind of operation of a share key ("L3.attn.softmax" -> "attn.softmax", "L4.ln1"
    and "ln_final" -> "norm", "metric" -> "metric")."""
    rest = key.split(".", 1)[1] if re.match(r"^L\d+(H\d+)?\.", key) else key
    if rest in KINDS:
        return rest
    if "ln" in rest or "norm" in rest:
        return "norm"
    if rest.startswith("attn."):
        return "attn.other"
    if rest.startswith("mlp."):
        return "mlp.act"
    return "other"


def layer_of(key: str) -> int | None:
    m = re.match(r"^L(\d+)", key)
    return int(m.group(1)) if m else None


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", "") or "")


def _part_name(model, layer_part: str, block: Any) -> str:
    if layer_part == "post_attention_layernorm":
        # Gemma-2's sandwich norm after attention; elsewhere the norm before the MLP
        return "ln1_post" if hasattr(block, "pre_feedforward_layernorm") else "ln2"
    return _PARTS.get(layer_part, layer_part)


@dataclass
class _Ctx:
    layer: int | None = None
    part: str | None = None


class _Ops(TorchFunctionMode):
    """Numbers the candidate (non-linear) calls; in ``record`` mode keeps their outputs, in
    ``split`` mode adds each call's second-order share to its key."""

    def __init__(
        self,
        model,
        rows: int,
        n_heads: int,
        gbar: list[Tensor | None] | None = None,
        names: list[str] | None = None,
    ):
        super().__init__()
        self.rows, self.n_heads = rows, n_heads
        self.gbar, self.names = gbar, names
        self.outputs: list[Tensor | None] = []
        self.seen: list[str] = []
        self.shares: dict[str, Tensor] = {}
        self.heads: dict[str, Tensor] = {}
        self.metric = False
        self.stack: list[_Ctx | str] = []
        self.softmax_seen: set[int] = set()
        self.after_unembed = False
        self.acc = torch.float64
        self._handles: list[Any] = []
        self._install(model)

    # -- where a call happens ---------------------------------------------------------------

    def _install(self, model) -> None:
        mods = dict(model.named_modules())
        for name, mod in mods.items():
            ctx: _Ctx | str | None = None
            m = _BLOCK.match(name)
            if m and not m.group(2).startswith("hook") and m.group(2) != "_original_component":
                layer = int(m.group(1))
                block = mods.get(f"blocks.{layer}._original_component", mods.get(f"blocks.{layer}"))
                ctx = _Ctx(layer, _part_name(model, m.group(2), block))
            elif _ACT.search(name):
                ctx = "act"
            elif name in ("ln_final", "unembed"):
                ctx = _Ctx(None, name)
            if ctx is None:
                continue
            self._handles.append(mod.register_forward_pre_hook(self._push(ctx)))
            self._handles.append(mod.register_forward_hook(self._pop))

    def _push(self, ctx: _Ctx | str) -> Callable:
        def pre(mod, args):
            self.stack.append(ctx)
            if isinstance(ctx, _Ctx) and ctx.part == "attn" and ctx.layer is not None:
                self.softmax_seen.discard(ctx.layer)
            if isinstance(ctx, _Ctx) and ctx.part == "unembed":
                self.after_unembed = True

        return pre

    def _pop(self, mod, args, out):
        if self.stack:
            self.stack.pop()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _where(self) -> tuple[int | None, str | None, bool]:
        layer, part, act = None, None, False
        for c in reversed(self.stack):
            if c == "act":
                act = True
            elif isinstance(c, _Ctx):
                if part is None:
                    part = c.part
                if layer is None and c.layer is not None:
                    layer = c.layer
        return layer, part, act

    def _key(self, name: str, n_moving: int) -> tuple[str, int | None, bool]:
        """(key, layer, per-head) of a call."""
        if self.metric:
            return "metric", None, False
        layer, part, act = self._where()
        if part is None:
            if name == "tanh" and self.after_unembed:
                return "logits.softcap", None, False
            return f"other.{name}", None, False
        if layer is None:
            return part, None, False
        if part == "attn":
            if name in _SOFTMAX:
                self.softmax_seen.add(layer)
                kind = "attn.softmax"
            elif name == "tanh":
                kind = "attn.softcap"
            elif name in _MULTILINEAR and n_moving >= 2:
                kind = "attn.pv" if layer in self.softmax_seen else "attn.qk"
            else:
                kind = "attn.other"
            return f"L{layer}.{kind}", layer, True
        if part == "mlp":
            if act or not (name in _MULTILINEAR and n_moving >= 2):
                return f"L{layer}.mlp.act", layer, False
            return f"L{layer}.mlp.gate", layer, False
        return f"L{layer}.{part}", layer, False

    # -- the calls ----------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        if name in _LINEAR or not isinstance(out, Tensor):
            return out
        i = len(self.seen)
        self.seen.append(name)
        if self.gbar is None:  # record
            self.outputs.append(out if out.requires_grad else None)
            return out
        if self.names is not None and (i >= len(self.names) or self.names[i] != name):
            raise RuntimeError(
                "the model ran different operations in the gradient pass and the tangent pass "
                f"(call {i}: {name!r}); diagnose cannot match them"
            )
        self._share(i, func, name, args, kwargs, out)
        return out

    def _share(self, i: int, func, name: str, args, kwargs, out: Tensor) -> None:
        leaves, spec = tree_flatten((args, kwargs))
        moving = []
        for j, x in enumerate(leaves):
            if isinstance(x, Tensor) and fwAD.unpack_dual(x).tangent is not None:
                moving.append(j)
        n_moving = len(moving)
        linear = (
            not moving
            or (name in _MULTILINEAR and n_moving < 2)
            or (name in _DIVISION and moving == [0])  # x / const
        )
        if linear:
            self._key(name, n_moving)  # (a softmax still marks where pattern x V begins)
            return
        key, layer, attn = self._key(name, n_moving)
        assert self.gbar is not None
        g = self.gbar[i] if i < len(self.gbar) else None
        if g is None:
            return
        prims = [fwAD.unpack_dual(leaves[j]).primal for j in moving]
        per_head = attn and all(
            x.dim() == 4 and x.shape[0] == self.rows and x.shape[1] == self.n_heads for x in prims
        )
        shape = (self.rows, self.n_heads) if per_head else (self.rows,)
        tt = torch.zeros(shape, dtype=self.acc, device=out.device, requires_grad=True)
        with torch.enable_grad():
            d2 = self._second(func, leaves, spec, tt, per_head, name, out, g)
        if d2 is None:
            return
        d2 = d2.detach()
        rowwise = d2.sum(1) if per_head else d2
        self.shares[key] = self.shares.get(key, 0) + rowwise
        if per_head and layer is not None:
            kind = key.split(".", 1)[1]
            for h_ in range(self.n_heads):
                hk = f"L{layer}H{h_}.{kind}"
                self.heads[hk] = self.heads.get(hk, 0) + d2[:, h_]

    def _second(self, func, leaves, spec, tt, per_head, name, out, g) -> Tensor | None:
        """d^2/dt^2 <g, func(u + t udot)> at t = 0, per row (and head) of ``tt``."""
        new = list(leaves)
        for j in range(len(leaves)):
            x = leaves[j]
            if not isinstance(x, Tensor):
                continue
            prim, tan = fwAD.unpack_dual(x)[:2]
            if tan is None:
                new[j] = prim
                continue
            if prim.dim() == 0 or prim.shape[0] % self.rows:
                raise RuntimeError(
                    f"diagnose cannot split the call {name!r} by copy of the batch "
                    f"(shape {tuple(prim.shape)})"
                )
            r = prim.shape[0] // self.rows
            if per_head:
                scale = tt.view(self.rows, self.n_heads, 1, 1)
            else:
                scale = tt.repeat_interleave(r).view(-1, *([1] * (prim.dim() - 1)))
            new[j] = prim + scale.to(prim.dtype) * tan
        a, kw = tree_unflatten(new, spec)
        gg = g
        if gg.shape != out.shape:
            if gg.dim() == out.dim() and out.shape[0] % gg.shape[0] == 0:
                gg = tile(gg, out.shape[0] // gg.shape[0])
            else:
                raise RuntimeError(f"diagnose: gradient shape mismatch at {name!r}")
        y = func(*a, **kw)
        h = (y.to(self.acc) * gg.to(self.acc)).sum()
        (d1,) = torch.autograd.grad(h, tt, create_graph=True, allow_unused=True)
        if d1 is None or not d1.requires_grad:
            return None
        (d2,) = torch.autograd.grad(d1.sum(), tt, allow_unused=True)
        return d2


@dataclass
class Split:
    """Per component (in the order asked): q (the sum of its shares), the shares by key, and
    the attention shares by head ("L3H1.attn.softmax")."""

    components: list[tuple[int, int]]
    q: Tensor  # [n]
    shares: list[dict[str, float]] = field(default_factory=list)
    heads: list[dict[str, float]] = field(default_factory=list)


def _eps_zero(p: Problem, base: BaseCache) -> list[Tensor | None]:
    return [torch.zeros_like(d).requires_grad_(True) for d in base.delta]


def gradient_at_operations(p: Problem, base: BaseCache, tracker: Tracker) -> tuple[list, list]:
    """gbar at every candidate call of the base run (one forward, one backward)."""
    mode = _Ops(p.model, p.batch, int(p.model.cfg.n_heads))
    try:
        with torch.enable_grad():
            eps = _eps_zero(p, base)
            targets, last = suffix_targets(p, 1, 0)  # unembed the metric's position only
            with mode:
                logits = run(p, p.base_tokens, eps=eps, last_only=last)
                mode.metric = True
                f = per_copy(p.metric, logits, targets).sum()
            tracker.fwd(1)
            live = [(i, o) for i, o in enumerate(mode.outputs) if o is not None]
            grads = torch.autograd.grad(f, [o for _, o in live], allow_unused=True)
            tracker.bwd(1)
    finally:
        mode.remove()
    gbar: list[Tensor | None] = [None] * len(mode.outputs)
    for (i, _), gi in zip(live, grads, strict=True):
        # (an operation the metric does not depend on contributes nothing)
        gbar[i] = None if gi is None or not bool(gi.any()) else gi.detach()
    return gbar, mode.seen


def split_second_order(
    p: Problem,
    base: BaseCache,
    components: list[tuple[int, int]],
    tracker: Tracker | None = None,
) -> Split:
    """q of each component split by operation (module docstring)."""
    tracker = tracker or Tracker()
    gbar, names = gradient_at_operations(p, base, tracker)
    n_heads = int(p.model.cfg.n_heads)
    b = p.batch
    out = Split(list(components), torch.zeros(len(components), dtype=torch.float64))
    work = chunks(len(components), p.max_copies)
    for j, (lo, hi) in enumerate(work):
        tracker.check()
        chunk = components[lo:hi]
        k = len(chunk)
        eps: list[Tensor | None] = [None] * p.site.n_layers
        tangents: dict[int, Tensor] = {}
        for layer in sorted({c[0] for c in chunk}):
            d = base.delta[layer]
            idx = torch.tensor([c[1] if c[0] == layer else 0 for c in chunk], device=d.device)
            on = torch.tensor([1.0 if c[0] == layer else 0.0 for c in chunk], device=d.device)
            rowsel = on.repeat_interleave(b).to(d.dtype).view(-1, *([1] * (d.dim() - 1)))
            tangents[layer] = (
                tile(d, k) * component_mask(p.site, idx.repeat_interleave(b), d) * rowsel
            )
        mode = _Ops(p.model, k * b, n_heads, gbar=gbar, names=names)
        try:
            with torch.no_grad(), fwAD.dual_level():
                for layer, t in tangents.items():
                    eps[layer] = fwAD.make_dual(torch.zeros_like(t), t)
                targets, last = suffix_targets(p, k, 0)
                with mode:
                    logits = run(p, tile(p.base_tokens, k), eps=eps, last_only=last)
                    mode.metric = True
                    per_copy(p.metric, logits, targets)
        finally:
            mode.remove()
        tracker.fwd(k)
        tracker.bwd(k)  # the per-call second derivatives: about one backward's work
        for kk in range(k):
            rows = slice(kk * b, (kk + 1) * b)
            sh = {key: float(v[rows].sum()) for key, v in mode.shares.items()}
            hd = {key: float(v[rows].sum()) for key, v in mode.heads.items()}
            out.shares.append({key: v for key, v in sh.items() if v != 0.0})
            out.heads.append({key: v for key, v in hd.items() if v != 0.0})
            out.q[lo + kk] = sum(sh.values())
        tracker.report((j + 1) / max(1, len(work)))
    return out
