"""Sites: which activations form the components, and how to hook them.

A site names one hook per layer (the tensor the model really consumes) and two maps between
the activation of a layer and its components:

- ``reduce``: ``[copies, pos, ...] -> [copies, n_comp]`` sums an elementwise product over
  everything except the copy axis and the component axis;
- ``expand``: ``[copies, n_comp] -> broadcastable to [copies, pos, ...]`` spreads one number per
  component back over the activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

SITES = ("heads", "mlp", "resid", "q", "k", "v")
#: The per-head query / key / value sites: the vectors TransformerLens's ``hook_q`` /
#: ``hook_k`` / ``hook_v`` carry ([batch, pos, head, d_head]; keys and values per key/value head
#: where they are grouped, GQA), the tensors ``get_act_patch_attn_head_q/k/v_*`` patch.
QKV_SITES = ("q", "k", "v")


@dataclass(frozen=True)
class Site:
    name: str
    hook_names: tuple[str, ...]  # one per layer
    n_comp: int  # components per layer
    reduce: Callable[[Tensor], Tensor]
    expand: Callable[[Tensor], Tensor]
    row_name: str
    col_name: str

    def dot(self, a: Tensor, b: Tensor) -> Tensor:
        """``reduce(a * b)`` accumulated in float32 at least (bf16/fp16 activations and
        gradients are upcast first; float64 stays float64): [copies, n_comp]."""
        acc = torch.promote_types(a.dtype, torch.float32)
        return self.reduce(a.to(acc) * b.to(acc))

    @property
    def n_layers(self) -> int:
        return len(self.hook_names)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_layers, self.n_comp)

    def labels(self) -> dict:
        return {
            "rows": [str(i) for i in range(self.n_layers)],
            "cols": [str(i) for i in range(self.n_comp)],
            "row_name": self.row_name,
            "col_name": self.col_name,
        }

    def component_name(self, layer: int, comp: int) -> str:
        if self.name == "mlp":
            return f"L{layer}.mlp"
        if self.name == "resid":
            return f"L{layer}.pos{comp}"
        if self.name in QKV_SITES:
            return (
                f"L{layer}H{comp}.{self.name}"
                if self.col_name == "head"
                else (f"L{layer}KV{comp}.{self.name}")
            )
        return f"L{layer}H{comp}"


def _heads_reduce(
    x: Float[Tensor, "copies pos head_index d_head"],
) -> Float[Tensor, "copies head_index"]:
    return x.sum(dim=(1, 3))


def _heads_expand(s: Float[Tensor, "copies head_index"]) -> Float[Tensor, "copies 1 head_index 1"]:
    return s[:, None, :, None]  # [copies, 1, head_index, 1]


def _layer_reduce(x: Float[Tensor, "copies pos d_model"]) -> Float[Tensor, "copies 1"]:
    return x.sum(dim=(1, 2))[:, None]  # [copies, 1]


def _layer_expand(s: Float[Tensor, "copies 1"]) -> Float[Tensor, "copies 1 1"]:
    return s[:, :, None]  # [copies, 1, 1]


def _pos_reduce(x: Float[Tensor, "copies pos d_model"]) -> Float[Tensor, "copies pos"]:
    return x.sum(dim=2)


def _pos_expand(s: Float[Tensor, "copies pos"]) -> Float[Tensor, "copies pos 1"]:
    return s[:, :, None]  # [copies, pos, 1]


def make_site(model, name: str, n_pos: int) -> Site:
    """Build a site for ``model`` (a TransformerBridge) on prompts of ``n_pos`` tokens."""
    if name not in SITES:
        raise ValueError(f"unknown site {name!r}: choose one of {', '.join(SITES)}")
    n_layers = int(model.cfg.n_layers)
    if name in QKV_SITES:
        n = kv_heads(model) if name in ("k", "v") else int(model.cfg.n_heads)
        grouped = n != int(model.cfg.n_heads)
        return Site(
            name,
            tuple(f"blocks.{i}.attn.hook_{name}" for i in range(n_layers)),
            n,
            _heads_reduce,
            _heads_expand,
            "layer",
            "kv head" if grouped else "head",
        )
    if name == "heads":
        return Site(
            name,
            tuple(f"blocks.{i}.attn.hook_z" for i in range(n_layers)),
            int(model.cfg.n_heads),
            _heads_reduce,
            _heads_expand,
            "layer",
            "head",
        )
    if name == "mlp":
        return Site(
            name,
            tuple(f"blocks.{i}.hook_mlp_out" for i in range(n_layers)),
            1,
            _layer_reduce,
            _layer_expand,
            "layer",
            "mlp",
        )
    return Site(
        name,
        tuple(f"blocks.{i}.hook_resid_pre" for i in range(n_layers)),
        n_pos,
        _pos_reduce,
        _pos_expand,
        "layer",
        "position",
    )


def kv_heads(model) -> int:
    """The key/value heads per layer: ``n_key_value_heads`` where keys and values are grouped
    (GQA), else one per attention head."""
    n = getattr(model.cfg, "n_key_value_heads", None)
    return int(n) if n else int(model.cfg.n_heads)


def component_mask(site: Site, layer_comps: Tensor, like: Tensor) -> Tensor:
    """One-hot multiplier selecting component ``layer_comps[k]`` in copy k: broadcastable to
    ``like`` ([copies, pos, ...])."""
    onehot = torch.zeros(len(layer_comps), site.n_comp, dtype=like.dtype, device=like.device)
    onehot[torch.arange(len(layer_comps)), layer_comps] = 1.0  # [copies, n_comp]
    return site.expand(onehot)
