"""Edges: the computational graph of senders and receivers, and the edge estimators
(METHODS.md, "Edges"). Pure tensor code over a TransformerBridge.

Senders: the token embedding ("emb": the residual stream entering block 0, token and position
embeddings together), every head's output in the residual stream ("L.H": ``attn.hook_result``,
the head's z through its own W_O) and every MLP's output ("mL"). Receivers: every head's query,
key and value input ("L.H.q", "L.G.k", "L.G.v"), every MLP's input ("mL") and the logits
("logits": the input of the final norm). Under grouped-query attention a key / value receiver
is one KV head G (the projection the model really computes once for the heads of its group:
perturbing its input changes the keys or values every head of the group reads); a query
receiver is always one head.

Receivers read their own copy of the residual stream: x_v = the sum of its senders' outputs
(+ biases), before v's norm (the bridge's split-qkv fork: ``hook_q_input`` /
``hook_k_input`` / ``hook_v_input`` [batch, pos, heads, d_model], ``hook_mlp_in``,
``ln_final.hook_in``). An edge u -> v exists where u's output reaches v's input through the
residual stream: u written at an earlier layer, or by the attention of v's own layer when v is
that layer's MLP in a sequential block; in a parallel block (NeoX ``use_parallel_residual``)
attention and MLP both read the block's input, so neither feeds the other.

Edge u -> v, noising: F(eps_v = delta_u) - F(0), delta_u = out_u(corrupted) - out_u(clean)
added to v's copy only, everything downstream recomputed. EAP = <delta_u, dF/dx_v>;
EAP-IG (inputs) = <delta_u, mean_k dF/dx_v at the input embedding moved (k + 1/2)/K of the
way to the source's>; HVP-corrected = EAP + 1/2 delta_u^T H_v delta_u, the quadratic form by
Rademacher probes over the edges on the receivers' inputs (every receiver at once, one double
backward per probe).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..tasks.metrics import MetricTargets, per_copy, per_example
from .base import _reference
from .forward import chunks, run, tile
from .prefix import Prefix, prefix_forward, shared_prefix_len, suffix_targets
from .problem import Cost, Problem, Tracker

KINDS = ("q", "k", "v")


# ------------------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class Receiver:
    key: str  # "L.H.q", "L.G.k", "mL", "logits"
    hook: str  # the hook whose tensor is this receiver's copy of the residual stream
    slot: int | None  # the head / KV head axis index in that tensor (None: [batch, pos, d])
    layer: int  # the block a patched forward resumes at
    read: int  # when it reads the residual stream (senders written before reach it)
    head: int | None = None  # the head (q) or KV head (k, v)
    kind: str = ""  # "q", "k", "v", "mlp", "logits"


@dataclass(frozen=True)
class Sender:
    key: str  # "emb", "L.H", "mL"
    hook: str
    slot: int | None
    layer: int  # -1 for the embedding
    write: int


@dataclass
class Graph:
    """The senders, receivers and edges of one model (``graph(model)``)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    has_mlp: bool
    parallel: bool
    senders: list[Sender]
    receivers: list[Receiver]
    adjacency: Tensor  # [n_senders, n_receivers] bool
    edges: list[tuple[int, int]]  # (sender index, receiver index), in key order
    keys: list[str]
    index: dict[str, int] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def key(self, u: int, v: int) -> str:
        return f"{self.senders[u].key}->{self.receivers[v].key}"

    def parse(self, keys: Sequence[str]) -> list[int]:
        """Edge indices of ``keys`` ("0.1->1.0.k"); a clear error names a key that is no
        edge of this model."""
        out = []
        for k in keys:
            i = self.index.get(str(k).strip()) if isinstance(k, str) else None
            if i is None:
                raise ValueError(
                    f"{k!r} is not an edge of this model: an edge is 'sender->receiver', sender "
                    f"'emb', 'L.H' or 'mL', receiver 'L.H.q', 'L.H.k', 'L.H.v' "
                    f"(k / v per KV head under grouped-query attention), 'mL' or 'logits', "
                    f"with the sender before the receiver (e.g. {self.keys[0]!r}); this model "
                    f"has {self.n_layers} layers x {self.n_heads} heads"
                )
            out.append(i)
        return out

    def components(self, edge_idx: Sequence[int]) -> dict[str, Any]:
        """The node set an edge set implies: heads ([layer, head]) and MLP layers that send or
        receive along one of the edges (a KV receiver under grouped-query attention brings
        every head of its group), and whether the embedding / the logits take part."""
        heads: set[tuple[int, int]] = set()
        mlps: set[int] = set()
        emb = logits = False
        group = max(1, self.n_heads // max(1, self.n_kv_heads))
        for i in edge_idx:
            u, v = self.edges[i]
            s, r = self.senders[u], self.receivers[v]
            if s.key == "emb":
                emb = True
            elif s.key.startswith("m"):
                mlps.add(s.layer)
            else:
                heads.add((s.layer, int(s.slot or 0)))
            if r.kind == "logits":
                logits = True
            elif r.kind == "mlp":
                mlps.add(r.layer)
            elif r.kind == "q" or group == 1:
                heads.add((r.layer, int(r.head or 0)))
            else:
                for h in range(int(r.head or 0) * group, (int(r.head or 0) + 1) * group):
                    heads.add((r.layer, h))
        return {
            "heads": [list(h) for h in sorted(heads)],
            "mlps": sorted(mlps),
            "embedding": emb,
            "logits": logits,
        }


def _cfg(model, name: str, default: Any = None) -> Any:
    return getattr(model.cfg, name, default)


def graph(model) -> Graph:
    """The edge graph of ``model`` (a TransformerBridge with the split-qkv fork)."""
    if not hasattr(model, "set_use_split_qkv_input"):
        raise ValueError(
            "edges need a TransformerBridge model (its split-qkv fork gives every head's "
            "query, key and value input its own copy of the residual stream)"
        )
    blocks = list(getattr(model, "blocks", []))
    post = bool(blocks) and any(hasattr(blocks[0], n) for n in ("ln1_post", "ln2_post"))
    if post or _cfg(model, "use_normalization_before_and_after", False):
        raise ValueError(
            "edges are not supported on models that normalise each block's output before "
            "adding it to the residual stream (Gemma-2's post-norms): a head's output there is "
            "not additive in the residual stream"
        )
    nl, nh = int(model.cfg.n_layers), int(model.cfg.n_heads)
    nkv = int(_cfg(model, "n_key_value_heads", None) or nh)
    has_mlp = not bool(_cfg(model, "attn_only", False))
    parallel = bool(_cfg(model, "parallel_attn_mlp", False))
    return build_graph(nl, nh, nkv, has_mlp, parallel)


def build_graph(nl: int, nh: int, nkv: int, has_mlp: bool, parallel: bool) -> Graph:
    """The edge graph of a model of this shape (``graph``)."""
    senders = [Sender("emb", "blocks.0.hook_resid_pre", None, -1, -1)]
    receivers: list[Receiver] = []
    for layer in range(nl):
        t_attn = 2 * layer
        t_mlp = 2 * layer + (0 if parallel else 1)
        senders += [
            Sender(f"{layer}.{h}", f"blocks.{layer}.attn.hook_result", h, layer, t_attn)
            for h in range(nh)
        ]
        if has_mlp:
            senders.append(Sender(f"m{layer}", f"blocks.{layer}.hook_mlp_out", None, layer, t_mlp))
        for kind in KINDS:
            n = nh if kind == "q" else nkv
            receivers += [
                Receiver(
                    f"{layer}.{h}.{kind}",
                    f"blocks.{layer}.hook_{kind}_input",
                    h,
                    layer,
                    t_attn,
                    h,
                    kind,
                )
                for h in range(n)
            ]
        if has_mlp:
            receivers.append(
                Receiver(
                    f"m{layer}", f"blocks.{layer}.hook_mlp_in", None, layer, t_mlp, None, "mlp"
                )
            )
    receivers.append(Receiver("logits", "ln_final.hook_in", None, nl - 1, 2 * nl, None, "logits"))
    write = torch.tensor([s.write for s in senders])
    read = torch.tensor([r.read for r in receivers])
    adj = write[:, None] < read[None, :]
    edges = [(int(u), int(v)) for u, v in adj.nonzero().tolist()]
    keys = [f"{senders[u].key}->{receivers[v].key}" for u, v in edges]
    g = Graph(nl, nh, nkv, has_mlp, parallel, senders, receivers, adj, edges, keys)
    g.index = {k: i for i, k in enumerate(keys)}
    return g


@contextlib.contextmanager
def edge_mode(
    model, split: bool = True, result: bool = True, mlp_in: bool = True
) -> Iterator[None]:
    """The bridge's split-qkv input fork (every head's q and every KV head's k / v input its
    own copy of the residual stream: ``split``), per-head output (``hook_result``: ``result``)
    and MLP-input hook (``mlp_in``), switched on for the duration (and restored after). A
    forward without a q / k / v receiver or sender capture leaves the first two off: they cost
    a copy of the residual stream per head."""
    cfg = model.cfg
    names = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")
    before = {n: bool(getattr(cfg, n, False)) for n in names}
    model.set_use_split_qkv_input(bool(split))
    model.set_use_attn_result(bool(result))
    model.set_use_hook_mlp_in(bool(mlp_in))
    try:
        yield
    finally:
        model.set_use_split_qkv_input(before["use_split_qkv_input"])
        model.set_use_attn_result(before["use_attn_result"])
        model.set_use_hook_mlp_in(before["use_hook_mlp_in"])


# ------------------------------------------------------------------ hooks and layouts


def _hook_groups(g: Graph, items: Sequence[Any]) -> dict[str, list[int]]:
    """hook name -> the indices (into ``items``) of the senders / receivers it carries."""
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault(it.hook, []).append(i)
    return out


def _capture_hooks(
    g: Graph, store: dict[str, Tensor], detach: bool = True
) -> list[tuple[str, Callable]]:
    """Hooks keeping every sender hook's tensor in ``store`` (by hook name)."""
    hooks = []
    for name in _hook_groups(g, g.senders):

        def keep(act, hook, name=name):
            store[name] = act.detach() if detach else act
            return act

        hooks.append((name, keep))
    return hooks


def _stack_senders(g: Graph, store: dict[str, Tensor], n0: int = 0) -> Tensor:
    """[n_senders, rows, pos, d_model] from the captured hook tensors."""
    parts = []
    for s in g.senders:
        t = store[s.hook]
        t = t[:, :, s.slot] if s.slot is not None else t
        parts.append(t[:, n0:])
    return torch.stack(parts)


def _receiver_view(t: Tensor, r: Receiver) -> Tensor:
    return t[:, :, r.slot] if r.slot is not None else t


# --------------------------------------------------------------------------- the base


@dataclass
class EdgeBase:
    """Sender outputs on the base run, their deltas (source - base) and, with a gradient,
    dF/dx_v for every receiver; the base run's residual stream for patched forwards to resume
    from. Positions before ``n0`` (a shared prefix) are left out of ``out`` and ``delta``."""

    graph: Graph
    out: Tensor  # [n_senders, batch, pos - n0, d_model]
    delta: Tensor  # [n_senders, batch, pos - n0, d_model]
    grad: Tensor | None  # [n_receivers, batch, pos, d_model]
    f_base: Tensor
    f_src: Tensor
    ref_logprobs: Tensor | None = None
    resid: list[Tensor] | None = None
    n0: int = 0
    prefix: Prefix | None = field(default=None, repr=False)
    cost: Cost = field(default_factory=Cost)
    key: str = ""
    # the HVP probes that rode on this base pass (double backwards and their seconds)
    probe_cost: Cost = field(default_factory=Cost)

    @property
    def has_grad(self) -> bool:
        return self.grad is not None

    @property
    def nbytes(self) -> int:
        ts = [self.out, self.delta, *([self.grad] if self.grad is not None else [])]
        ts += list(self.resid or [])
        return sum(t.numel() * t.element_size() for t in ts)

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {
            "out": self.out,
            "delta": self.delta,
            "f_base": self.f_base,
            "f_src": self.f_src,
        }
        if self.grad is not None:
            out["grad"] = self.grad
        if self.ref_logprobs is not None:
            out["ref_logprobs"] = self.ref_logprobs
        for i, r in enumerate(self.resid or []):
            out[f"resid.{i}"] = r
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def save(self, path: str) -> None:
        """Safetensors, as ``BaseCache.save`` (``BaseCache.load`` reads either kind back)."""
        import json

        from safetensors.torch import save_file

        g = self.graph
        shape = [g.n_layers, g.n_heads, g.n_kv_heads, int(g.has_mlp), int(g.parallel)]
        meta = {"key": self.key, "kind": "edges", "graph": json.dumps(shape), "n0": str(self.n0)}
        save_file(self.tensors(), path, metadata=meta)

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], meta: dict[str, str]) -> EdgeBase:
        import json

        nl, nh, nkv, mlp, par = json.loads(meta["graph"])
        n = sum(1 for k in t if k.startswith("resid."))
        return cls(
            build_graph(int(nl), int(nh), int(nkv), bool(mlp), bool(par)),
            t["out"],
            t["delta"],
            t.get("grad"),
            t["f_base"],
            t["f_src"],
            t.get("ref_logprobs"),
            resid=[t[f"resid.{i}"] for i in range(n)] if n else None,
            n0=int(meta.get("n0", "0")),
            key=meta.get("key", ""),
        )


def _eps(g: Graph, p: Problem, rows: int, like: Tensor) -> dict[str, Tensor]:
    """A zero perturbation (requires grad) for every receiver hook: [rows, pos, (heads,) d]."""
    b, pos = rows, int(p.base_tokens.shape[1])
    d = int(like.shape[-1])
    out = {}
    for name, idx in _hook_groups(g, g.receivers).items():
        r = g.receivers[idx[0]]
        shape = (b, pos, len(idx), d) if r.slot is not None else (b, pos, d)
        out[name] = torch.zeros(shape, dtype=like.dtype, device=like.device, requires_grad=True)
    return out


def _add_hooks(eps: dict[str, Tensor]) -> list[tuple[str, Callable]]:
    def add(act, hook, name=None):
        return act + eps[name].view(act.shape)

    return [(name, lambda act, hook, name=name: add(act, hook, name)) for name in eps]


def _grads_to_receivers(g: Graph, grads: dict[str, Tensor], rows: slice) -> Tensor:
    """[n_receivers, rows, pos, d] from per-hook gradients."""
    return torch.stack([_receiver_view(grads[r.hook][rows], r) for r in g.receivers])


def _to_hooks(g: Graph, t: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``_grads_to_receivers``: [n_receivers, rows, pos, d] -> per-hook
    tensors shaped as ``like``."""
    out = {}
    for name, idx in _hook_groups(g, g.receivers).items():
        part = t[idx]  # [n, rows, pos, d]
        out[name] = part.permute(1, 2, 0, 3) if like[name].dim() == 4 else part[0]
    return out


def edge_scores(g: Graph, delta: Tensor, vecs: Tensor) -> Tensor:
    """<delta_u, vecs_v> for every edge: [n_edges] (vecs: [n_receivers, batch, pos, d]),
    accumulated in float32 at least."""
    acc = torch.promote_types(delta.dtype, torch.float32)
    dm = delta.reshape(delta.shape[0], -1).to(acc)
    vm = vecs.reshape(vecs.shape[0], -1).to(acc)
    full = dm @ vm.T  # [n_senders, n_receivers]
    u = torch.tensor([e[0] for e in g.edges], dtype=torch.long, device=full.device)
    v = torch.tensor([e[1] for e in g.edges], dtype=torch.long, device=full.device)
    return full[u, v]


def edge_base(
    p: Problem,
    g: Graph,
    tracker: Tracker | None = None,
    grad: bool = True,
    signs: Tensor | None = None,
) -> tuple[EdgeBase, Tensor | None]:
    """The edge base pass: the source forward (sender outputs) and the base forward with one
    backward, which gives dF/dx_v for every receiver at once. With ``signs`` ([P, n_edges]
    Rademacher) the HVP probes ride on its graph (``edge_hvp``): returns y [P, n_edges].
    Without ``grad`` no backward: 2 forwards (through the shared prefix where there is one).

    The receivers' gradients come from the plain forward (no per-head copy of the residual
    stream through the network): a zero perturbation at every head's q / k / v
    (``attn.hook_q|k|v``), every MLP input and the final norm's input; a q / k / v receiver's
    gradient is then that head's projection and the block's first norm pulled back by hand at
    the block's input (``_Local``: the same numbers as the split-qkv fork, at the cost of a
    per-layer norm over [batch, pos, heads, d_model] instead of a forked network)."""
    tracker = tracker or Tracker()
    t0 = time.perf_counter()
    if not grad:  # patching needs the sender outputs only: no split fork
        with edge_mode(p.model, split=False, mlp_in=False):
            return _base_nograd(p, g, tracker, t0), None
    with edge_mode(p.model, split=False):
        src: dict[str, Tensor] = {}
        with torch.no_grad():
            lg_src = run(p, p.src_tokens, extra_hooks=_capture_hooks(g, src))
        tracker.fwd(1)
        base: dict[str, Tensor] = {}
        resid: list[Tensor | None] = [None] * g.n_layers
        like = src[g.senders[0].hook]
        eps = _site_eps(p, g, p.batch, like)
        with torch.enable_grad():
            lg = run(
                p,
                p.base_tokens,
                resid_capture=resid,
                extra_hooks=_capture_hooks(g, base) + _add_hooks(eps),
            )
            tracker.fwd(1)
            lg_base = lg.detach()
            ref = _reference(p, lg_base, lg_src)
            f = p.copies_metric(lg).sum()
            names = list(eps)
            gs = torch.autograd.grad(f, [eps[n] for n in names], create_graph=signs is not None)
            tracker.bwd(1)
            gd = dict(zip(names, gs, strict=True))
            local = [_Local(p.model, g, layer, resid[layer]) for layer in range(g.n_layers)]  # type: ignore[arg-type]
            G = _receiver_grads(g, local, {n: x.detach() for n, x in gd.items()})
            out_src, out_base = _stack_senders(g, src), _stack_senders(g, base)
            delta = out_src - out_base
            cost = Cost(2, 1, time.perf_counter() - t0, 2, 1)
            y = None
            probe_cost = Cost()
            if signs is not None:
                t1 = time.perf_counter()
                y = edge_hvp(g, gd, eps, local, delta, signs, tracker)
                n = int(signs.shape[0])
                probe_cost = Cost(0, n, time.perf_counter() - t1, 0, n)
        with torch.no_grad():
            fb = per_example(p.metric, lg_base, p.targets)
            fs = per_example(p.metric, lg_src.detach(), p.targets)
    eb = EdgeBase(
        g,
        out_base,
        delta,
        G,
        fb,
        fs,
        ref,
        resid=[r for r in resid if r is not None] if p.can_resume else None,
        cost=cost,
        probe_cost=probe_cost,
    )
    return eb, y


def _site_eps(p: Problem, g: Graph, rows: int, like: Tensor) -> dict[str, Tensor]:
    """Zero perturbations (requiring grad) at the plain forward's gradient sites: every
    layer's q, k, v ([rows, pos, heads, d_head]), MLP input and the final norm's input."""
    pos = int(p.base_tokens.shape[1])
    d = int(like.shape[-1])
    dh = int(p.model.cfg.d_head)

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, dtype=like.dtype, device=like.device, requires_grad=True)

    out = {}
    for layer in range(g.n_layers):
        for kind in KINDS:
            n = g.n_heads if kind == "q" else g.n_kv_heads
            out[f"blocks.{layer}.attn.hook_{kind}"] = zeros(rows, pos, n, dh)
        if g.has_mlp:
            out[f"blocks.{layer}.hook_mlp_in"] = zeros(rows, pos, d)
    out["ln_final.hook_in"] = zeros(rows, pos, d)
    return out


class _Local:
    """One block's q / k / v receivers: z -> ln1(z) @ W_{Q|K|V}[r] for every receiver r at
    once (z: [batch, pos, R, d_model], R = heads + 2 KV heads), at the block's input x."""

    def __init__(self, model, g: Graph, layer: int, x: Tensor):
        a = model.blocks[layer].attn
        self.w = torch.cat([a.W_Q, a.W_K, a.W_V], 0).detach().to(x.dtype)  # [R, d, d_head]
        self.ln = model.blocks[layer].ln1.original_component
        self.layer, self.nh, self.nkv = layer, g.n_heads, g.n_kv_heads
        self.r = g.n_heads + 2 * g.n_kv_heads
        self.x = x.detach()

    def fn(self, z: Tensor) -> Tensor:
        return torch.einsum("bsrd,rde->bsre", self.ln(z), self.w)

    def point(self) -> Tensor:
        b, s, d = self.x.shape
        return self.x[:, :, None, :].expand(b, s, self.r, d).clone().requires_grad_(True)

    def sites(self, gd: dict[str, Tensor]) -> Tensor:
        """The q / k / v sites' tensors of this layer side by side: [batch, pos, R, d_head]."""
        L = self.layer
        return torch.cat([gd[f"blocks.{L}.attn.hook_{k}"] for k in KINDS], 2)

    def split(self, t: Tensor) -> dict[str, Tensor]:
        L, nh, nkv = self.layer, self.nh, self.nkv
        return {
            f"blocks.{L}.attn.hook_q": t[:, :, :nh],
            f"blocks.{L}.attn.hook_k": t[:, :, nh : nh + nkv],
            f"blocks.{L}.attn.hook_v": t[:, :, nh + nkv :],
        }

    def vjp(self, gq: Tensor) -> Tensor:
        """J^T gq: the receivers' gradients at the block's input, [batch, pos, R, d]."""
        with torch.enable_grad():
            z = self.point()
            return torch.autograd.grad(self.fn(z), z, gq)[0]

    def jvp(self, t: Tensor) -> Tensor:
        """J t: the change of q / k / v when receiver r's input moves by t[:, :, r]."""
        return torch.func.jvp(self.fn, (self.x[:, :, None, :].expand_as(t).contiguous(),), (t,))[1]

    def hvp(self, gq: Tensor, h: Tensor, t: Tensor) -> Tensor:
        """J^T h + the norm's own curvature along t weighted by gq: the receivers' part of
        [Hess F t] (h: [Hess of F in q / k / v] applied to the pushed-forward tangent)."""
        with torch.enable_grad():
            z = self.point()
            a = self.fn(z)
            g1 = torch.autograd.grad(a, z, gq, create_graph=True)[0]
            out = torch.autograd.grad(a, z, h, retain_graph=True)[0]
            if g1.requires_grad:
                out = out + torch.autograd.grad(g1, z, t)[0]
        return out


def _receiver_grads(g: Graph, local: list[_Local], gd: dict[str, Tensor]) -> Tensor:
    """[n_receivers, batch, pos, d]: q / k / v receivers from their block's pull-back, MLP
    inputs and the logits' input straight from their sites."""
    parts: list[Tensor] = []
    for layer in range(g.n_layers):
        ga = local[layer].vjp(local[layer].sites(gd))  # [B, S, R, d]
        parts.extend(ga.permute(2, 0, 1, 3).unbind(0))
        if g.has_mlp:
            parts.append(gd[f"blocks.{layer}.hook_mlp_in"])
    parts.append(gd["ln_final.hook_in"])
    return torch.stack(parts)


def _base_nograd(p: Problem, g: Graph, tracker: Tracker, t0: float) -> EdgeBase:
    """Source and base forwards without autograd (``fast`` kernels, as the patched forwards
    take): after a shared prefix run once where there is one."""
    n0 = shared_prefix_len(p)
    resid: list[Tensor | None] = [None] * g.n_layers
    src: dict[str, Tensor] = {}
    base: dict[str, Tensor] = {}
    pre = None
    with torch.no_grad():
        if n0:
            head_resid: list[Tensor | None] = [None] * g.n_layers
            pre = prefix_forward(p, n0, tracker, resid_capture=head_resid)
            targets, last = suffix_targets(p, 2, n0)
            both: dict[str, Tensor] = {}
            tokens = torch.cat([p.src_tokens[:, n0:], p.base_tokens[:, n0:]])
            lg = run(
                p,
                tokens,
                resid_capture=resid,
                last_only=last,
                past=pre.tiled(2, p.batch, tokens.device),
                fast=True,
                extra_hooks=_capture_hooks(g, both),
            )
            tracker.fwd(2)
            b = p.batch
            lg_src, lg_base = lg[:b], lg[b:]
            src = {k: v[:b] for k, v in both.items()}
            base = {k: v[b:] for k, v in both.items()}
            ref = _reference(p, lg_base, lg_src, targets.last_pos)
            targets = MetricTargets(targets.answer_ids, targets.wrong_ids, targets.last_pos, ref)
            fb = per_example(p.metric, lg_base, targets)
            fs = per_example(p.metric, lg_src, targets)
            full_resid = [
                torch.cat([h, t[b:]], 1)  # type: ignore[index]
                for h, t in zip(head_resid, resid, strict=True)
                if h is not None
            ]
        else:
            lg_src = run(p, p.src_tokens, fast=True, extra_hooks=_capture_hooks(g, src))
            lg_base = run(
                p,
                p.base_tokens,
                resid_capture=resid if p.can_resume else None,
                fast=True,
                extra_hooks=_capture_hooks(g, base),
            )
            tracker.fwd(1, n=2)
            ref = _reference(p, lg_base, lg_src)
            fb = per_example(p.metric, lg_base, p.targets)
            fs = per_example(p.metric, lg_src, p.targets)
            full_resid = [r for r in resid if r is not None] if p.can_resume else []
    out_src, out_base = _stack_senders(g, src), _stack_senders(g, base)
    eb = EdgeBase(
        g,
        out_base,
        out_src - out_base,
        None,
        fb,
        fs,
        ref,
        resid=full_resid or None,
        n0=n0,
        prefix=pre,
        cost=Cost(2 if not n0 else 1, 0, time.perf_counter() - t0, 2, 0),
    )
    return eb


# ------------------------------------------------------------------------ estimators


def eap(eb: EdgeBase) -> Tensor:
    """EAP: <delta_u, dF/dx_v> for every edge (read off the base pass)."""
    assert eb.grad is not None, "EAP needs a base with the gradient"
    d = eb.delta
    if eb.n0:  # the gradient covers every position; the deltas the ones after the prefix
        return edge_scores(eb.graph, d, eb.grad[:, :, eb.n0 :])
    return edge_scores(eb.graph, d, eb.grad)


def rademacher_edges(g: Graph, probes: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (probes, g.n_edges), generator=gen) * 2 - 1).float()


def edge_hvp(
    g: Graph,
    grads: dict[str, Tensor],
    eps: dict[str, Tensor],
    local: list[_Local],
    delta: Tensor,
    signs: Tensor,
    tracker: Tracker,
) -> Tensor:
    """y[k, e] = s_k[e] <delta_u, [H T_k]_v> for the probe T_k: x_v moves by
    sum_{u -> v} s_k[u -> v] delta_u at every receiver at once; one double backward per probe
    on the graph of ``grads`` (taken with create_graph), plus each block's small pull-back.
    Unbiased for the edge's own quadratic form delta_u^T H_v delta_u."""
    k_all = int(signs.shape[0])
    acc = torch.promote_types(delta.dtype, torch.float32)
    dev = delta.device
    u = torch.tensor([e[0] for e in g.edges], dtype=torch.long, device=dev)
    v = torch.tensor([e[1] for e in g.edges], dtype=torch.long, device=dev)
    n_s, n_r = len(g.senders), len(g.receivers)
    dm = delta.reshape(n_s, -1)
    y = torch.zeros(k_all, g.n_edges, device=dev, dtype=acc)
    names = list(eps)
    # receiver index ranges of each block's q / k / v receivers, its MLP and the logits
    per = g.n_heads + 2 * g.n_kv_heads + int(g.has_mlp)
    gq = [loc.sites({n: x.detach() for n, x in grads.items()}) for loc in local]
    for k in range(k_all):
        tracker.check()
        s = torch.zeros(n_s, n_r, device=dev, dtype=delta.dtype)
        s[u, v] = signs[k].to(dev, delta.dtype)
        tang = (s.T @ dm).view(n_r, *delta.shape[1:])  # [n_receivers, batch, pos, d]
        site_t: dict[str, Tensor] = {}
        t_attn = []
        for layer, loc in enumerate(local):
            lo = layer * per
            ta = tang[lo : lo + loc.r].permute(1, 2, 0, 3)  # [B, S, R, d]
            t_attn.append(ta)
            site_t.update(loc.split(loc.jvp(ta)))
            if g.has_mlp:
                site_t[f"blocks.{layer}.hook_mlp_in"] = tang[lo + loc.r]
        site_t["ln_final.hook_in"] = tang[-1]
        inner = torch.zeros((), device=dev, dtype=acc)
        for n in names:
            inner = inner + (grads[n].to(acc) * site_t[n].to(acc)).sum()
        hv: Sequence[Tensor | None]
        if inner.requires_grad:
            hv = torch.autograd.grad(
                inner, [eps[n] for n in names], retain_graph=k < k_all - 1, allow_unused=True
            )
        else:  # F is linear in the sites
            hv = [None] * len(names)
        tracker.bwd(1)
        hd = {
            n: (h.detach() if h is not None else torch.zeros_like(eps[n]))
            for n, h in zip(names, hv, strict=True)
        }
        parts: list[Tensor] = []
        for layer, loc in enumerate(local):
            ht = loc.hvp(gq[layer], loc.sites(hd), t_attn[layer])  # [B, S, R, d]
            parts.extend(ht.permute(2, 0, 1, 3).unbind(0))
            if g.has_mlp:
                parts.append(hd[f"blocks.{layer}.hook_mlp_in"])
        parts.append(hd["ln_final.hook_in"])
        HT = torch.stack(parts)
        y[k] = signs[k].to(dev, acc) * edge_scores(g, delta, HT)
        tracker.report((k + 1) / k_all)
    return y


def eap_ig(p: Problem, eb: EdgeBase, steps: int, tracker: Tracker) -> Tensor:
    """EAP-IG (Hanna et al. 2024, the inputs variant): the input embedding moves from the base
    run's to the source run's, the receivers' gradients are averaged over K midpoints
    t = (k + 1/2)/K, and each edge scores <delta_u, mean_t dF/dx_v(t)>. K forwards and
    backwards on the batch axis (chunked to the memory budget)."""
    g = eb.graph
    ts = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    d_emb = eb.delta[0]  # [batch, pos - n0, d]
    n0 = eb.n0
    acc_g: Tensor | None = None
    parts = chunks(steps, p.max_copies)
    with edge_mode(p.model, result=False):
        for j, (lo, hi) in enumerate(parts):
            tracker.check()
            k = hi - lo
            t = ts[lo:hi].to(d_emb.device, d_emb.dtype).repeat_interleave(p.batch)
            shift = tile(d_emb, k) * t[:, None, None]  # [k*batch, pos - n0, d]
            if n0:
                shift = torch.cat([torch.zeros_like(shift[:, :n0]).expand(-1, n0, -1), shift], 1)

            def move(act, hook, shift=shift):
                return act + shift

            eps = _eps(g, p, k * p.batch, d_emb)
            with torch.enable_grad():
                lg = run(
                    p,
                    tile(p.base_tokens, k),
                    extra_hooks=[("blocks.0.hook_resid_pre", move), *_add_hooks(eps)],
                )
                f = p.copies_metric(lg).sum()
                names = list(eps)
                gs = torch.autograd.grad(f, [eps[n] for n in names])
            tracker.fwd(k)
            tracker.bwd(k)
            G = _grads_to_receivers(g, dict(zip(names, gs, strict=True)), slice(None))
            G = G.view(G.shape[0], k, p.batch, *G.shape[2:]).sum(1)
            acc_g = G if acc_g is None else acc_g + G
            tracker.report((j + 1) / len(parts))
    assert acc_g is not None
    return edge_scores(g, eb.delta, acc_g[:, :, n0:] / steps)


# -------------------------------------------------------------------- edge patching


def _prefix(p: Problem, eb: EdgeBase, tracker: Tracker) -> Prefix | None:
    """The shared prefix's key/value cache for patched forwards (built once per base)."""
    if not p.shortcuts or not p.can_resume or eb.resid is None:
        return None
    n = shared_prefix_len(p)
    if n == 0:
        return None
    if eb.prefix is None or eb.prefix.length != n:
        eb.prefix = prefix_forward(p, n, tracker)
    return eb.prefix


def _suffix(eb: EdgeBase, t: Tensor, n0: int) -> Tensor:
    """A sender tensor [.., pos - eb.n0, d] cut to the positions after ``n0`` (>= eb.n0)."""
    return t[..., n0 - eb.n0 :, :]


def _patched_run(
    p: Problem,
    eb: EdgeBase,
    start: int,
    k: int,
    pre: Prefix | None,
    hooks: list[tuple[str, Callable]],
) -> tuple[Tensor, MetricTargets]:
    n0 = pre.length if pre is not None else 0
    targets, last = suffix_targets(p, k, n0)
    past = pre.tiled(k, p.batch, p.base_tokens.device) if pre is not None else None
    if p.can_resume and eb.resid is not None:
        resid = tile(eb.resid[start][:, n0:], k)
        lg = run(
            p, resid, start_at_layer=start, last_only=last, past=past, fast=True, extra_hooks=hooks
        )
    else:
        tokens = tile(p.base_tokens[:, n0:], k)
        lg = run(p, tokens, last_only=last, past=past, fast=True, extra_hooks=hooks)
    return lg, targets


def patch_edges(
    p: Problem,
    eb: EdgeBase,
    edge_idx: Sequence[int],
    tracker: Tracker,
    per_pair: dict[int, Tensor] | None = None,
) -> dict[int, float]:
    """Edge patching: for each edge u -> v, the base run with v's input moved by delta_u
    (x_v - out_u(base) + out_u(source)), everything else as in the base run and recomputed
    downstream; returns F(patched) - F(base). Edges of one receiver layer share forwards
    (copies on the batch axis, chunked to the memory budget) that resume at that layer from
    the cached residual stream, run only the positions after the shared prefix, and an edge
    whose sender's delta is zero everywhere is 0 without a forward."""
    g = eb.graph
    f0 = eb.f_base.mean()
    out: dict[int, float] = {}
    pre = _prefix(p, eb, tracker)
    n0 = pre.length if pre is not None else eb.n0
    zero = (eb.delta.flatten(1) == 0).all(1).tolist() if p.shortcuts else [False] * len(g.senders)
    # one group per receiver layer and kind of input (q / k / v take the split fork, which
    # the MLP inputs and the logits do not need)
    by_layer: dict[tuple[int, str], list[int]] = {}
    for e in edge_idx:
        u, v = g.edges[int(e)]
        if zero[u]:
            out[int(e)] = 0.0
            if per_pair is not None:
                per_pair[int(e)] = torch.zeros(p.batch, dtype=eb.f_base.dtype)
            continue
        r = g.receivers[v]
        kind = "attn" if r.kind in KINDS else r.kind
        by_layer.setdefault((r.layer, kind), []).append(int(e))
    work = [
        (layer, kind, es[lo:hi])
        for (layer, kind), es in sorted(by_layer.items())
        for lo, hi in chunks(len(es), p.max_copies)
    ]
    for j, (layer, kind, es) in enumerate(work):
        with edge_mode(p.model, split=kind == "attn", result=False, mlp_in=kind == "mlp"):
            tracker.check()
            k = len(es)
            plan: dict[str, list[tuple[int, int | None, int]]] = {}
            for c, e in enumerate(es):
                u, v = g.edges[e]
                r = g.receivers[v]
                plan.setdefault(r.hook, []).append((c, r.slot, u))
            hooks = [(name, _patch_hook(eb, items, k, p.batch, n0)) for name, items in plan.items()]
            with torch.inference_mode():
                lg, targets = _patched_run(p, eb, layer, k, pre, hooks)
                rows = per_example(p.metric, lg, targets).view(k, p.batch)
            tracker.fwd(k)
            for c, e in enumerate(es):
                out[e] = float(rows[c].mean() - f0)
                if per_pair is not None:
                    per_pair[e] = (rows[c] - eb.f_base).detach().cpu()
            tracker.report((j + 1) / len(work))
    return {e: out[e] for e in sorted(out)}


def _patch_hook(
    eb: EdgeBase, items: list[tuple[int, int | None, int]], k: int, batch: int, n0: int
) -> Callable:
    copies = torch.tensor([c for c, _, _ in items], dtype=torch.long)
    slots = [s for _, s, _ in items]
    vals = torch.stack([_suffix(eb, eb.delta[u], n0) for _, _, u in items])  # [m, B, S', d]

    def hook(act, hook):
        act = act.clone()
        if slots[0] is None:
            a = act.view(k, batch, *act.shape[1:])
            a[copies.to(act.device)] += vals.to(act.dtype)
        else:
            a = act.view(k, batch, *act.shape[1:])  # [k, B, S', H, d]
            sl = torch.tensor(slots, dtype=torch.long, device=act.device)
            a[copies.to(act.device), :, :, sl] += vals.to(act.dtype)
        return act

    return hook


# ------------------------------------------------------------------------ circuits


def circuit_metrics(p: Problem, eb: EdgeBase, keep: Tensor, tracker: Tracker) -> Tensor:
    """m(C) of every edge circuit ``keep[k]`` ([k, n_edges] bool), MIB's convention: every
    receiver reads, for each edge not in the circuit, its sender's source output in place of
    the output that sender has in this very run (x_v + sum_{u -> v not in C} (out_u(source)
    - out_u(now))). One batched forward per chunk of circuits."""
    g = eb.graph
    k_all = int(keep.shape[0])
    out = torch.zeros(k_all, dtype=torch.float64)
    pre = _prefix(p, eb, tracker)
    n0 = max(pre.length if pre is not None else 0, eb.n0)
    src_out = eb.out + eb.delta  # [n_senders, B, pos - eb.n0, d]
    u_idx = torch.tensor([e[0] for e in g.edges], dtype=torch.long)
    v_idx = torch.tensor([e[1] for e in g.edges], dtype=torch.long)
    s_groups = _hook_groups(g, g.senders)
    r_groups = _hook_groups(g, g.receivers)
    per = max(1, min(p.max_copies, 8))
    parts = chunks(k_all, per)
    with edge_mode(p.model):
        for j, (lo, hi) in enumerate(parts):
            tracker.check()
            k = hi - lo
            drop = torch.zeros(k, len(g.senders), len(g.receivers), dtype=torch.bool)
            drop[:, u_idx, v_idx] = ~keep[lo:hi].to(torch.bool)
            if not bool(drop.any()):
                out[lo:hi] = float(eb.f_base.double().mean())
                continue
            used = drop.any(0)  # [n_senders, n_receivers]
            start = min(g.receivers[v].layer for v in used.any(0).nonzero().flatten().tolist())
            if not (p.can_resume and eb.resid is not None):
                start = 0
            now: dict[str, Tensor] = {}
            hooks: list[tuple[str, Callable]] = []
            # senders are captured as they are written (those of the blocks a resumed forward
            # skips keep their base outputs); receivers read the differences of every sender
            # written before them
            for name, idx in s_groups.items():
                if g.senders[idx[0]].layer < start:
                    continue

                def cap(act, hook, name=name, now=now):
                    now[name] = act
                    return act

                hooks.append((name, cap))
            for name, ridx in r_groups.items():
                sub = drop[:, :, ridx]  # [k, n_senders, n_r]
                if bool(sub.any()):
                    hooks.append(
                        (name, _faith_hook(eb, src_out, now, sub, s_groups, ridx, k, p.batch, n0))
                    )
            with torch.no_grad():
                lg, targets = _patched_run(p, eb, start, k, pre, hooks)
                out[lo:hi] = per_copy(p.metric, lg, targets).double().cpu()
            tracker.fwd(k)
            tracker.report((j + 1) / len(parts))
    return out


def _faith_hook(
    eb: EdgeBase,
    src_out: Tensor,
    now: dict[str, Tensor],
    drop: Tensor,
    s_groups: dict[str, list[int]],
    ridx: list[int],
    k: int,
    batch: int,
    n0: int,
) -> Callable:
    """Receiver hook: add sum_u drop[c, u, r] (out_u(source) - out_u(now)) in copy c."""
    src_s = _suffix(eb, src_out, n0)  # [n_senders, B, S', d]
    base_s = _suffix(eb, eb.out, n0)
    groups = [(name, sidx, drop[:, sidx]) for name, sidx in s_groups.items()]
    groups = [(name, sidx, m) for name, sidx, m in groups if bool(m.any())]

    def hook(act, hook):
        shape = (k, batch, act.shape[1], len(ridx), act.shape[-1])
        extra = torch.zeros(shape, dtype=act.dtype, device=act.device)
        for name, sidx, m in groups:
            m = m.to(act.device, act.dtype)  # [k, n_s, n_r]
            src = src_s[sidx].to(act.dtype)  # [n_s, B, S', d]
            if name in now:
                cur = now[name].view(k, batch, *now[name].shape[1:])  # [k, B, S', (H,) d]
                if cur.dim() == 4:
                    cur = cur[:, :, :, None]
                diff = src.permute(1, 2, 0, 3)[None] - cur  # [k, B, S', n_s, d]
                extra += torch.einsum("kbsud,kur->kbsrd", diff, m)
            else:  # a sender of a block the forward skipped: its base output
                diff = (src - base_s[sidx].to(act.dtype)).permute(1, 2, 0, 3)  # [B, S', n_s, d]
                extra += torch.einsum("bsud,kur->kbsrd", diff, m)
        ex = extra.view(k * batch, act.shape[1], len(ridx), act.shape[-1])
        return act + ex if act.dim() == 4 else act + ex[:, :, 0]

    return hook


def faithfulness(
    p: Problem, eb: EdgeBase, keep: Tensor, tracker: Tracker
) -> tuple[Tensor, float, float, Tensor]:
    """(m, m_all, m_empty, f) of every edge circuit ``keep`` ([k, n_edges] bool); the empty
    circuit (every edge patched) rides on the same pass; full circuits are the base run."""
    keep = keep.to(torch.bool).cpu()
    full, empty = keep.all(1), ~keep.any(1)
    rest = ~full & ~empty
    todo = torch.cat([torch.zeros(1, keep.shape[1], dtype=torch.bool), keep[rest]])
    ms = circuit_metrics(p, eb, todo, tracker)
    m_empty = float(ms[0])
    m_all = float(eb.f_base.double().mean())
    m = torch.full((keep.shape[0],), m_all, dtype=torch.float64)
    m[rest] = ms[1:]
    m[empty] = m_empty
    d = m_all - m_empty
    f = (m - m_empty) / d if d != 0 else torch.full_like(m, float("nan"))
    f[full], f[empty] = 1.0, 0.0
    return m, m_all, m_empty, f
