"""``Diagnosis``: why AtP is wrong for a component, the result of ``pa.diagnose``.

Per component: q (the exact second-order term along its own delta) split by layer and kind of
operation (``estimators/diagnose.py``), which shares are local (the component's own layer,
downstream of the patch point) and which downstream, the remainder no second-order term
explains (ap - A1 - q/2) and the saturation-aware estimate ``sat``; plus a sentence saying
where the error comes from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .estimators.core import BaseCache, Problem, Tracker, patch_components
from .estimators.diagnose import KINDS, kind_of, layer_of, split_second_order
from .serial import json_safe

#: How each kind of operation is named in the sentence ("{} of L3H1").
KIND_WORDS = {
    "attn.qk": "the attention scores (QK^T)",
    "attn.softcap": "the attention soft-cap",
    "attn.softmax": "the attention softmax",
    "attn.pv": "pattern x V",
    "attn.other": "another attention operation",
    "norm": "the normalisation",
    "mlp.act": "the MLP activation",
    "mlp.gate": "the MLP gate product",
    "logits.softcap": "the final logit soft-cap",
    "metric": "the metric itself (its log-softmax)",
    "other": "another operation",
}


def where(key: str) -> str:
    """The place a share key names, for the sentence: "L3H1" for a head's attention share,
    "L4.ln1" for a norm, "L2" for an MLP, "" for the metric and final operations."""
    head = key.split(".", 1)[0]
    kind = kind_of(key)
    if kind.startswith("attn."):
        return head  # "L3H1" (per head) or "L3" (per layer)
    if kind == "norm":
        return key
    if kind.startswith("mlp."):
        return head
    return ""


def describe(key: str) -> str:
    kind, at = kind_of(key), where(key)
    if key == "ln_final":
        return "the final normalisation (ln_final)"
    if kind == "norm":
        return f"the normalisation {at}" if at else "a normalisation"
    words = KIND_WORDS.get(kind, "another operation")
    return f"{words} of {at}" if at else words


def is_local(site: str, layer: int, key: str) -> bool:
    """Whether a share is local to a component of ``site`` at ``layer``: an operation of the
    sub-block the patched activation belongs to, after the patch point (the attention of that
    layer for heads and q / k / v, where the q / k sites meet their own head's softmax; the MLP
    of that layer for mlp; the whole block for the residual stream entering it). Everything
    else (later layers, the final norm, the metric) is downstream."""
    if layer_of(key) != layer:
        return False
    kind = kind_of(key)
    if site in ("heads", "q", "k", "v"):
        return kind.startswith("attn.")
    if site == "mlp":
        return kind.startswith("mlp.")
    return True


def _pct(x: float) -> str:
    return f"{round(100 * x)} %"


@dataclass
class Diagnosis:
    """pa.diagnose's result; ``to_dict()`` is the API's shape (DESIGN.md "Next contracts")."""

    site: str
    metric: str
    direction: str
    components: list[tuple[int, int]]
    names: list[str]
    q: Tensor  # [n] the second-order term (the sum of the shares)
    shares: list[dict[str, float]]  # per component: key -> share of q
    heads: list[dict[str, float]]  # per component: "L3H1.attn.softmax" -> share
    a1: Tensor
    ap: Tensor
    saturation: Tensor  # sat; NaN where the model exposes no attention hooks
    cost: dict[str, Any] = field(default_factory=dict)

    @property
    def remainder(self) -> Tensor:
        """ap - A1 - q/2: what no second-order term explains."""
        return self.ap - self.a1 - self.q / 2

    def is_local(self, i: int, key: str) -> bool:
        return is_local(self.site, self.components[i][0], key)

    def local(self, i: int) -> float:
        return sum(v for k, v in self.shares[i].items() if self.is_local(i, k))

    def downstream(self, i: int) -> float:
        return sum(v for k, v in self.shares[i].items() if not self.is_local(i, k))

    def fractions(self, i: int) -> dict[str, float]:
        """Shares of the magnitude sum(|share|): local, downstream and per kind (0 when q has
        no shares at all)."""
        total = sum(abs(v) for v in self.shares[i].values())
        out = {"local": 0.0, "downstream": 0.0, **{k: 0.0 for k in KINDS}}
        if total == 0:
            return out
        for k, v in self.shares[i].items():
            out["local" if self.is_local(i, k) else "downstream"] += abs(v) / total
            out[kind_of(k)] += abs(v) / total
        return out

    def by_layer(self, i: int) -> dict[str, float]:
        """Shares summed per layer ("L3"), the final operations under "final" and the metric
        under "metric"."""
        out: dict[str, float] = {}
        for k, v in self.shares[i].items():
            layer = layer_of(k)
            name = f"L{layer}" if layer is not None else ("metric" if k == "metric" else "final")
            out[name] = out.get(name, 0.0) + v
        return out

    def by_kind(self, i: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in self.shares[i].items():
            out[kind_of(k)] = out.get(kind_of(k), 0.0) + v
        return out

    def top(self, i: int) -> tuple[str, float] | None:
        """The finest share with the largest magnitude: a head's own attention share where
        there is one, else the layer's key."""
        items = {k: v for k, v in self.shares[i].items() if not kind_of(k).startswith("attn.")}
        items.update(self.heads[i])
        # layer-level attention keys whose shares no head carries (another layout)
        for k, v in self.shares[i].items():
            if kind_of(k).startswith("attn.") and not any(
                h.split(".", 1)[1] == k.split(".", 1)[1] and h.startswith(k.split(".", 1)[0] + "H")
                for h in self.heads[i]
            ):
                items[k] = v
        if not items:
            return None
        key = max(items, key=lambda k: abs(items[k]))
        return key, items[key]

    def sentence(self, i: int) -> str:
        total = sum(abs(v) for v in self.shares[i].values())
        if total == 0:
            return (
                "No second-order term: every operation between this component and the metric "
                "is linear along its delta."
            )
        top = self.top(i)
        assert top is not None
        fr = self.fractions(i)
        return (
            f"{_pct(abs(top[1]) / total)} from {describe(top[0])}; "
            f"local curvature {_pct(fr['local'])}."
        )

    def to_dict(self) -> dict[str, Any]:
        comps = []
        for i, c in enumerate(self.components):
            comps.append(
                {
                    "component": list(c),
                    "name": self.names[i],
                    "q": float(self.q[i]),
                    "shares": dict(self.shares[i]),
                    "heads": dict(self.heads[i]),
                    "by_layer": self.by_layer(i),
                    "by_kind": self.by_kind(i),
                    "fractions": self.fractions(i),
                    "local": self.local(i),
                    "local_keys": sorted(k for k in self.shares[i] if self.is_local(i, k)),
                    "downstream": self.downstream(i),
                    "a1": float(self.a1[i]),
                    "ap": float(self.ap[i]),
                    "remainder": float(self.remainder[i]),
                    "saturation": float(self.saturation[i]),
                    "sentence": self.sentence(i),
                }
            )
        return json_safe(
            {
                "site": self.site,
                "metric": self.metric,
                "direction": self.direction,
                "components": comps,
                "cost": dict(self.cost),
            }
        )

    def __repr__(self) -> str:
        lines = [f"Diagnosis({self.site}, {self.metric}, {self.direction})"]
        for i, name in enumerate(self.names):
            lines.append(f"  {name}: q={float(self.q[i]):.4g}  {self.sentence(i)}")
        return "\n".join(lines)


def _saturation(
    p: Problem, base: BaseCache, comps: Sequence[tuple[int, int]], tracker: Tracker
) -> Tensor:
    """sat for the given components (one forward-mode pass per layer chunk), NaN where the
    model exposes no attention scores / pattern hooks."""
    from .estimators.core import chunks
    from .estimators.saturation import _chunk, attention_hook_names

    out = torch.full((len(comps),), float("nan"), dtype=torch.float64)
    try:
        names = attention_hook_names(p.model)
    except ValueError:
        return out
    acc = torch.promote_types(base.delta[0].dtype, torch.float32)
    for layer in sorted({c[0] for c in comps}):
        idx = [i for i, c in enumerate(comps) if c[0] == layer]
        for lo, hi in chunks(len(idx), p.max_copies):
            part = idx[lo:hi]
            tracker.check()
            v, _, _ = _chunk(p, base, names, layer, [comps[i][1] for i in part], None, True, acc)
            tracker.fwd(len(part))
            out[part] = v.double().cpu()
    return out


def build(p: Problem, base: BaseCache, comps: list[tuple[int, int]], tracker: Tracker) -> Diagnosis:
    """The diagnosis of ``comps`` on a problem with its base pass (tensor code underneath)."""
    tracker.phase = "diagnose"
    split = split_second_order(p, base, comps, tracker)
    a1 = torch.tensor(
        [float(p.site.dot(base.grad[l_], base.delta[l_]).sum(0)[c]) for l_, c in comps],
        dtype=torch.float64,
    )
    tracker.phase = "ap"
    apv = patch_components(p, base, comps, tracker)
    ap = torch.tensor([float(apv[c]) for c in comps], dtype=torch.float64)
    tracker.phase = "sat"
    sat = _saturation(p, base, comps, tracker)
    return Diagnosis(
        site=p.site.name,
        metric=p.metric,
        direction=p.direction,
        components=list(comps),
        names=[p.site.component_name(l_, c) for l_, c in comps],
        q=split.q,
        shares=split.shares,
        heads=split.heads,
        a1=a1,
        ap=ap,
        saturation=sat,
    )
