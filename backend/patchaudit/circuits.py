"""The public circuit entry points: ``faithfulness`` and ``circuit_curve`` (METHODS.md,
"Circuits and faithfulness")."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .audit import _get_base, _problem
from .estimators import circuits as K
from .estimators.core import BaseCache, Cost, ProgressFn, StopFn, Tracker
from .serial import json_safe
from .tasks.pairs import PromptPairs, TokenPairs


@dataclass
class Faithfulness:
    """m(C), m(all), m(empty) and f(C); ``m`` and ``f`` are floats for one circuit and lists
    for a list of circuits."""

    m: float | list[float]
    m_all: float
    m_empty: float
    f: float | list[float]
    circuits: list[list[tuple[int, int]]]
    cost: dict = field(default_factory=dict)
    base: BaseCache | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN / inf -> None)."""
        return json_safe(
            {
                "m": self.m,
                "m_all": self.m_all,
                "m_empty": self.m_empty,
                "faithfulness": self.f,
                "circuits": [[list(c) for c in circ] for circ in self.circuits],
                "cost": self.cost,
            }
        )


@dataclass
class CircuitCurve:
    """Faithfulness of the top-k circuits of a ranking, for each size k, with CPR, CMD and the
    smallest circuits reaching 80 % and 90 %."""

    sizes: list[int]
    fractions: list[float]
    faithfulness: list[float]
    m: list[float]
    m_all: float
    m_empty: float
    cpr: float
    cmd: float
    smallest_80: int | None
    smallest_90: int | None
    order: list[tuple[int, int]]  # every component, most important first
    absolute: bool
    n_components: int
    cost: dict = field(default_factory=dict)
    base: BaseCache | None = None

    def circuit(self, k: int) -> list[tuple[int, int]]:
        """The top-k circuit of this ranking."""
        return self.order[:k]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN / inf -> None)."""
        return json_safe(
            {
                "sizes": self.sizes,
                "fractions": self.fractions,
                "faithfulness": self.faithfulness,
                "m": self.m,
                "m_all": self.m_all,
                "m_empty": self.m_empty,
                "cpr": self.cpr,
                "cmd": self.cmd,
                "smallest_80": self.smallest_80,
                "smallest_90": self.smallest_90,
                "order": [list(c) for c in self.order],
                "absolute": self.absolute,
                "n_components": self.n_components,
                "cost": self.cost,
            }
        )


def _is_component(x: Any) -> bool:
    return isinstance(x, Sequence) and len(x) == 2 and all(isinstance(v, int) for v in x)


def _keep_masks(keep: Any, shape: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """Keep-masks [k, n_layers, n_comp] from one circuit or a list of circuits (components
    [layer, index]) or a boolean tensor; also whether one circuit was given."""
    if isinstance(keep, torch.Tensor | np.ndarray):
        t = torch.as_tensor(keep).to(torch.bool)
        single = t.dim() == 2
        t = t[None] if single else t
        if t.dim() != 3 or tuple(t.shape[1:]) != shape:
            raise ValueError(f"a keep mask has the map's shape {shape}, got {tuple(t.shape)}")
        return t, single
    if not isinstance(keep, Sequence) or isinstance(keep, str):
        raise ValueError("keep is a circuit (a list of [layer, index]) or a list of circuits")
    items = list(keep)
    single = len(items) == 0 or all(_is_component(x) for x in items)
    circuits = [items] if single else items
    masks = torch.zeros(len(circuits), *shape, dtype=torch.bool)
    for i, circ in enumerate(circuits):
        if not isinstance(circ, Sequence) or isinstance(circ, str):
            raise ValueError(f"circuit {i} is not a list of [layer, index] components")
        for c in circ:
            if not _is_component(c):
                raise ValueError(f"a component is [layer, index] (two integers), got {c!r}")
            a, b = int(c[0]), int(c[1])
            if not (0 <= a < shape[0] and 0 <= b < shape[1]):
                raise ValueError(f"component [{a}, {b}] is outside the {shape[0]} x {shape[1]} map")
            masks[i, a, b] = True
    return masks, single


def _cost(tracker: Tracker, t0: float) -> dict:
    """Passes and seconds since ``t0``; ``prefix_forward`` counts forwards of the shared
    prefix alone (not in ``forward``)."""
    c = Cost.of(tracker)
    c.seconds = time.perf_counter() - t0
    cost = c.as_dict()
    cost["prefix_forward"] = tracker.prefix
    return cost


def _members(mask: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in mask.nonzero().tolist()]


def faithfulness(
    model,
    pairs: PromptPairs | TokenPairs,
    keep,
    site: str = "heads",
    metric: str = "logit_diff",
    direction: str = "noising",
    base: BaseCache | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    memory_budget_mb: float | None = None,
    keep_gradient: bool = False,
) -> Faithfulness:
    """Faithfulness of one circuit ``keep`` (components [layer, index] of ``site``) or of a
    list of circuits (they ride the batch axis of one pass). The base run is the clean prompts
    for noising (MIB's convention) and the corrupted ones for denoising; every component
    outside the circuit gets the other run's activation. ``keep_gradient``: as in ``verify``.
    With ``site="edges"`` a circuit is a list of edge keys and every edge outside it is
    patched (MIB's edge convention)."""
    if site == "edges":
        from .edge_audit import faithfulness_edges

        return faithfulness_edges(
            model, pairs, keep, metric, direction, base, progress, should_stop,
            memory_budget_mb, keep_gradient,
        )  # fmt: skip
    p, _ = _problem(model, pairs, site, metric, direction, memory_budget_mb)
    masks, single = _keep_masks(keep, p.site.shape)
    tracker = Tracker(progress=progress, should_stop=should_stop)
    t0 = time.perf_counter()
    b, _, _ = _get_base(p, base, tracker, need_grad=keep_gradient)
    tracker.phase = "faithfulness"
    r = K.faithfulness(p, b, masks, tracker)
    cost = _cost(tracker, t0)
    m, f = r.m.tolist(), r.f.tolist()
    return Faithfulness(
        m[0] if single else m,
        r.m_all,
        r.m_empty,
        f[0] if single else f,
        [_members(x) for x in masks],
        cost,
        b,
    )


def circuit_curve(
    model,
    pairs: PromptPairs | TokenPairs,
    scores,
    site: str = "heads",
    metric: str = "logit_diff",
    direction: str = "noising",
    sizes: Sequence[Any] | None = None,
    absolute: bool = True,
    base: BaseCache | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    memory_budget_mb: float | None = None,
    keep_gradient: bool = False,
) -> CircuitCurve:
    """Rank the components by ``scores`` ([n_layers, n_comp]: any method's map, e.g.
    ``report.scores["hvp"]``), keep the top k for each size and measure their faithfulness
    (one batched pass). ``sizes``: numbers of components (default: every k for maps of at most
    64 components, MIB's 0.1 .. 100 % otherwise); 0 and N are always on the curve. ``absolute``
    ranks by |score|; signed ranks by the score's push towards the fully patched run.
    With ``site="edges"``: ``scores`` is 1-D over the edges (``report.scores[m]`` of an edge
    audit) and the circuits are edge sets (``order`` holds edge keys)."""
    if site == "edges":
        from .edge_audit import circuit_curve_edges

        return circuit_curve_edges(
            model, pairs, scores, metric, direction, sizes, absolute, base, progress,
            should_stop, memory_budget_mb, keep_gradient,
        )  # fmt: skip
    p, _ = _problem(model, pairs, site, metric, direction, memory_budget_mb)
    if isinstance(scores, torch.Tensor):
        s = scores.detach().cpu().double()
    else:
        s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if tuple(s.shape) != p.site.shape:
        raise ValueError(f"scores have shape {tuple(s.shape)}, the {site} map is {p.site.shape}")
    n = p.n_components
    ks = K.check_sizes(sizes, n)
    tracker = Tracker(progress=progress, should_stop=should_stop)
    t0 = time.perf_counter()
    b, _, _ = _get_base(p, base, tracker, need_grad=keep_gradient)
    tracker.phase = "circuit"
    orient = 1.0
    if not absolute:  # orientation needs m(empty): one copy, shared below
        r0 = K.faithfulness(p, b, torch.zeros(1, *p.site.shape, dtype=torch.bool), tracker)
        orient = 1.0 if r0.m_empty >= r0.m_all else -1.0
    order = K.rank_components(s, absolute, orient)
    masks = K.topk_masks(order, ks, p.site.shape)
    r = K.faithfulness(p, b, masks, tracker)
    fr = [k / n for k in ks]
    f = r.f.tolist()
    cpr, cmd = K.curve_areas(fr, f)
    nc = p.site.n_comp
    cost = _cost(tracker, t0)
    return CircuitCurve(
        sizes=ks,
        fractions=fr,
        faithfulness=f,
        m=r.m.tolist(),
        m_all=r.m_all,
        m_empty=r.m_empty,
        cpr=cpr,
        cmd=cmd,
        smallest_80=K.smallest_reaching(ks, f, 0.8),
        smallest_90=K.smallest_reaching(ks, f, 0.9),
        order=[(i // nc, i % nc) for i in order],
        absolute=absolute,
        n_components=n,
        cost=cost,
        base=b,
    )
