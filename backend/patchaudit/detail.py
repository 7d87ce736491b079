"""``inspect``: one component in detail (per pair, per position, attention), for the panel a
researcher opens after the map. The tensor code is in ``estimators/inspect.py``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import defaults
from .component_keys import parse_component_key
from .estimators import inspect as I
from .estimators.core import BaseCache, Tracker, model_device
from .serial import json_safe
from .tasks.pairs import PromptPairs, TokenPairs

#: How the corrected estimate's second-order term is split over positions (ComponentDetail).
Q_SPLIT = (
    "position p takes delta_p . [H v]_p (the quadratic form's row p, cross terms with other "
    "positions included); the rows sum to the pair's q exactly"
)


@dataclass
class ComponentDetail:
    """One component of one site: tokens, per-pair and per-position estimates, attention."""

    site: str
    component: tuple[int, int]  # (layer, head) / (layer, 0) for mlp / (layer, position)
    name: str
    metric: str
    direction: str
    methods: list[str]
    tokens: dict[str, Any]  # {"clean": [[str]], "corrupted": [[str]], "last_pos": [int]}
    per_pair: dict[str, Tensor]  # method -> [pairs] (+ "reliability", + "ap" when verified)
    per_position: dict[str, Tensor]  # method -> [pairs, positions]
    q: dict[str, Tensor] = field(default_factory=dict)  # second-order term per pair
    attention: dict[str, Tensor] | None = None  # heads: "clean"/"corrupted" -> [pairs, q, k]
    map_value: dict[str, float] = field(default_factory=dict)  # mean over pairs per method
    verified: float | None = None  # the component's verified ap value, when known
    reliability_source: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The API's key: "L.H" (heads), "L" (mlp), "L.P" (resid)."""
        layer, comp = self.component
        return str(layer) if self.site == "mlp" else f"{layer}.{comp}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN / inf -> None, tensors -> nested lists)."""
        return {
            "site": self.site,
            "component": list(self.component),
            "key": self.key,
            "name": self.name,
            "metric": self.metric,
            "direction": self.direction,
            "methods": list(self.methods),
            "n_pairs": len(self.tokens["clean"]),
            "n_pos": len(self.tokens["clean"][0]) if self.tokens["clean"] else 0,
            "tokens": self.tokens,
            "per_pair": json_safe(self.per_pair),
            "per_position": json_safe(self.per_position),
            "q": json_safe(self.q),
            "attention": json_safe(self.attention),
            "map_value": json_safe({k: float(v) for k, v in self.map_value.items()}),
            "verified": json_safe(None if self.verified is None else float(self.verified)),
            "reliability_source": self.reliability_source,
            "settings": dict(self.settings),
            "cost": dict(self.cost),
        }


def _component(site: str, component: Any, shape: tuple[int, int]) -> tuple[int, int]:
    layer, comp = parse_component_key(component, site)
    if not (0 <= layer < shape[0] and 0 <= comp < shape[1]):
        raise ValueError(
            f"component {component!r} is outside the {shape[0]} x {shape[1]} {site} map"
        )
    return layer, comp


def _token_strings(model: Any, ids: Tensor) -> list[list[str]]:
    tok = getattr(model, "tokenizer", None)
    rows = ids.tolist()
    if tok is None:
        return [[str(i) for i in r] for r in rows]
    try:
        return [[tok.decode([i]) for i in r] for r in rows]
    except Exception:  # a placeholder tokenizer without a vocabulary
        return [[str(i) for i in r] for r in rows]


def inspect(
    model: Any,
    pairs: PromptPairs | TokenPairs,
    component: Any,
    site: str = "heads",
    metric: str = "logit_diff",
    direction: str = "noising",
    methods: Sequence[str] = ("atp", "hvp"),
    base: BaseCache | None = None,
    verified_ap: Sequence[float] | Tensor | float | bool | None = None,
    hvp_probes: int | None = None,
    seed: int = 0,
    attention_pairs: int | None = None,
    memory_budget_mb: float | None = None,
) -> ComponentDetail:
    """Component ``component`` ((layer, head), a layer for mlp, (layer, position) for resid) in
    detail. First-order values come from the base pass (``base``, e.g. ``report.base``; one is
    computed when absent); each second-order method costs one forward with create_graph and a
    double backward per tangent (the map's own tangents: same ``hvp_probes`` and ``seed``, so
    the mean over pairs is the map's value); attention costs two partial forwards (the base
    run resumes from the cached residual stream).

    ``verified_ap``: None / False: no activation patching; True: patch the component (one
    patched forward from the cached base) and give every pair's value; a sequence of per-pair
    values (kept from an earlier verify) is used as is; a float (the verified map value) also
    patches and records it as ``verified``. ``attention_pairs`` caps the pairs whose attention
    is returned (the first ones)."""
    from .audit import _get_base, _model_name, _positive_int, _problem

    t0 = time.perf_counter()
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(["atp", *methods]))
    for m in methods:
        if m not in I.INSPECT_METHODS:
            raise ValueError(f"inspect computes {', '.join(I.INSPECT_METHODS)} per pair, not {m!r}")
    dev = model_device(model).type
    probes = _positive_int(
        "hvp_probes", defaults.hvp_probes(dev) if hvp_probes is None else hvp_probes
    )
    p, tp = _problem(model, pairs, site, metric, direction, memory_budget_mb)
    layer, comp = _component(site, component, p.site.shape)
    tracker = Tracker()
    b, _, cached = _get_base(p, base, tracker)
    pd = I.inspect_component(p, b, layer, comp, tuple(methods), probes, seed, tracker)
    per_pair = dict(pd.per_pair)
    verified: float | None = None
    if verified_ap is not None and verified_ap is not False:
        if isinstance(verified_ap, bool | float | int):
            per_pair["ap"] = I.ap_pairs(p, b, layer, comp, tracker)
            if not isinstance(verified_ap, bool):
                verified = float(verified_ap)
        else:
            vals = torch.as_tensor(verified_ap, dtype=torch.float32).flatten()
            if vals.numel() != len(tp):
                raise ValueError(f"verified_ap has {vals.numel()} values for {len(tp)} pairs")
            per_pair["ap"] = vals
        if verified is None:
            verified = float(per_pair["ap"].mean())
    attention = None
    # the head's own pattern: for a head's output or query, and for a key / value that belongs to
    # one head (not a key/value head shared by a group of heads)
    if site in ("heads", "q") or (site in ("k", "v") and p.site.col_name == "head"):
        attention = I.attention(p, b, layer, comp, tracker)
        if attention_pairs is not None:
            attention = {k: v[: max(0, int(attention_pairs))] for k, v in attention.items()}
    clean_ids, corr_ids = tp.clean, tp.corrupted
    source = next((m for m in I.SECOND_ORDER if m in pd.q), None)
    return ComponentDetail(
        site=site,
        component=(layer, comp),
        name=p.site.component_name(layer, comp),
        metric=metric,
        direction=direction,
        methods=methods,
        tokens={
            "clean": _token_strings(model, clean_ids),
            "corrupted": _token_strings(model, corr_ids),
            "last_pos": [int(x) for x in tp.last_pos.tolist()],
        },
        per_pair=per_pair,
        per_position=pd.per_position,
        q=pd.q,
        attention=attention,
        map_value={m: float(v.double().mean()) for m, v in per_pair.items() if m != "reliability"},
        verified=verified,
        reliability_source=source,
        settings={
            "hvp_probes": probes,
            "seed": seed,
            "model": _model_name(model),
            "base_cached": cached,
            "q_split": Q_SPLIT,
            "attention_pairs": None if attention is None else int(attention["clean"].shape[0]),
        },
        cost={
            "forward": tracker.forward,
            "backward": tracker.backward,
            "seconds": time.perf_counter() - t0,
        },
    )
