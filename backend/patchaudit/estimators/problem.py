"""The problem an estimator solves (model, the two token batches, site, metric, direction),
its memory plan, and the pass counting, progress and cancellation every estimator shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..tasks.metrics import MetricTargets, per_copy
from .compat import can_resume
from .sites import Site, make_site

DIRECTIONS = ("noising", "denoising")


ProgressFn = Callable[[str, float, int], None]


StopFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised between chunks when the caller's ``should_stop`` returns True."""


@dataclass
class Cost:
    """Batched passes (``forward``, ``backward``) and the rows they carried in copies of the
    batch (``forward_rows``, ``backward_rows``: a pass over k copies counts k), and seconds."""

    forward: int = 0
    backward: int = 0
    seconds: float = 0.0
    forward_rows: int = 0
    backward_rows: int = 0

    @property
    def passes(self) -> int:
        return self.forward + self.backward

    @property
    def rows(self) -> int:
        return self.forward_rows + self.backward_rows

    def as_dict(self) -> dict:
        return {
            "forward": self.forward,
            "backward": self.backward,
            "passes": self.passes,
            "forward_rows": self.forward_rows,
            "backward_rows": self.backward_rows,
            "rows": self.rows,
            "seconds": self.seconds,
        }

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.forward + other.forward,
            self.backward + other.backward,
            self.seconds + other.seconds,
            self.forward_rows + other.forward_rows,
            self.backward_rows + other.backward_rows,
        )

    @classmethod
    def since(cls, tracker: Tracker, start: Cost, seconds: float) -> Cost:
        """The passes ``tracker`` counted since it read ``start`` (``Cost.of(tracker)``)."""
        now = cls.of(tracker)
        return cls(
            now.forward - start.forward,
            now.backward - start.backward,
            seconds,
            now.forward_rows - start.forward_rows,
            now.backward_rows - start.backward_rows,
        )

    @classmethod
    def of(cls, tracker: Tracker) -> Cost:
        return cls(
            tracker.forward,
            tracker.backward,
            0.0,
            tracker.forward_rows,
            tracker.backward_rows,
        )


@dataclass
class Tracker:
    """Counts passes, reports progress and polls for cancellation."""

    progress: ProgressFn | None = None
    should_stop: StopFn | None = None
    forward: int = 0
    backward: int = 0
    phase: str = ""
    # forwards of the shared prefix alone (batch rows, the positions before the first that
    # differs): the exact shortcut's one-off cost, not counted in ``passes``
    prefix: int = 0
    # the rows those passes carried, in copies of the batch (a pass over k copies counts k):
    # with ``forward``/``backward`` the one unit of cost (METHODS.md, "Pass accounting")
    forward_rows: int = 0
    backward_rows: int = 0

    @property
    def passes(self) -> int:
        return self.forward + self.backward

    def fwd(self, copies: int = 1, n: int = 1) -> None:
        """Count ``n`` batched forwards, each over ``copies`` copies of the batch."""
        self.forward += n
        self.forward_rows += n * int(copies)

    def bwd(self, copies: int = 1, n: int = 1) -> None:
        """Count ``n`` (double) backwards, each over ``copies`` copies of the batch."""
        self.backward += n
        self.backward_rows += n * int(copies)

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled by request")

    def report(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress(self.phase, float(min(max(fraction, 0.0), 1.0)), self.passes)


@dataclass
class Problem:
    """Everything an estimator needs: model, the two token batches, site, metric, direction."""

    model: Any  # a TransformerBridge (or any HookedRootModule with cfg)
    base_tokens: Int[Tensor, "batch pos"]  # the run that gets patched
    src_tokens: Int[Tensor, "batch pos"]  # the run whose activations are patched in
    targets: MetricTargets
    site: Site
    metric: str
    direction: str
    max_copies: int = 64  # copies of the batch per forward (memory budget)
    # How the HVP tangents of one point share work: "tile" puts them on the batch axis of one
    # double-backward pass (a GPU is launch-bound: nearly free); "loop" runs one forward with
    # create_graph and one double backward per tangent on the shared graph (a CPU is
    # compute-bound: this skips the P-1 redundant copies of the forward and first backward).
    hvp_mode: str = "tile"
    # TransformerBridge can start a forward at block L from the residual stream entering it:
    # activation patching at layer L then skips the blocks before L
    can_resume: bool = False
    # ... and cut the final residual to the metric's position before the unembedding
    can_cut: bool = False
    # exact shortcuts of patched forwards: the shared prefix runs once (a key/value cache) and
    # components whose delta is zero at every position are skipped (their ap is 0)
    shortcuts: bool = True
    memory_budget_mb: float = 4096.0  # what max_copies was planned for
    methods: tuple[str, ...] = ()  # what max_copies was planned for (none: any method)

    @property
    def batch(self) -> int:
        return int(self.base_tokens.shape[0])

    @property
    def n_components(self) -> int:
        return self.site.n_layers * self.site.n_comp

    def copies_metric(self, logits: Tensor) -> Float[Tensor, " copies"]:
        return per_copy(self.metric, logits, self.targets)


def make_problem(
    model,
    tp: Any,
    site: str,
    metric: str,
    direction: str,
    memory_budget_mb: float | None = None,
    hvp_mode: str | None = None,
    shortcuts: bool = True,
    methods=None,
) -> Problem:
    """The problem of token pairs ``tp`` (a TokenPairs: clean, corrupted [batch, pos];
    answer_ids, wrong_ids, last_pos [batch]) on ``model``."""
    clean, corrupted = tp.clean, tp.corrupted
    answer_ids, wrong_ids, last_pos = tp.answer_ids, tp.wrong_ids, tp.last_pos
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: choose noising or denoising")
    base, src = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    dev = model_device(model)
    targets = MetricTargets(answer_ids.to(dev), wrong_ids.to(dev), last_pos.to(dev))
    s = make_site(model, site, int(clean.shape[1]))
    p = Problem(model, base.to(dev), src.to(dev), targets, s, metric, direction)
    p.hvp_mode = hvp_mode or ("tile" if dev.type == "cuda" else "loop")
    p.methods = tuple(methods or ())
    p.memory_budget_mb = memory_budget_or_free(model, memory_budget_mb)
    p.max_copies = copies_for_budget(model, p, p.memory_budget_mb, p.methods)
    if memory_budget_mb is not None or dev.type == "cuda":  # a budget given, or a GPU's memory
        check_fits(model, p, p.methods)
    p.can_resume = can_resume(model)
    p.can_cut = p.can_resume and "unembed.hook_in" in getattr(model, "hook_dict", {})
    p.shortcuts = bool(shortcuts)
    if p.hvp_mode not in ("tile", "loop"):
        raise ValueError(f"unknown hvp_mode {hvp_mode!r}: choose tile or loop")
    return p


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def memory_budget_or_free(model, memory_budget_mb: float | None) -> float:
    """The budget in MiB: the caller's, else 60 % of the free device memory (CUDA: free
    memory; CPU: MemAvailable, at most 4096 MiB on a machine shared with others)."""
    if memory_budget_mb is not None:
        return float(memory_budget_mb)
    dev = model_device(model)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return 0.6 * free / 2**20
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(x.split()[1]) for x in f if x.startswith("MemAvailable:"))
        return min(4096.0, 0.6 * avail / 1024)
    except (OSError, StopIteration, ValueError):
        return 4096.0


# What one pass of each method holds, measured per method (tests/unit/test_memory_plan.py
# bounds the measured peaks with these): the activations it caches, the copies of the batch
# a pass carries and whether it keeps a backward or a double-backward graph. Units:
#   U = n_layers x [batch, pos, d_model]   (the residual stream of every layer)
#   V = [batch, pos, d_vocab] in fp32       (the logits; metrics promote them to fp32)
#   W = n_layers x [batch, n_heads, pos, pos] (the attention patterns)
# Each entry: (fixed U, V, W; per copy of the batch U, V, W); fixed = what the pass holds at
# any number of copies (the base runs, the graph of a method that runs one copy), per copy =
# what each further copy of the batch on the batch axis adds (patched copies, IG/MHVP points,
# HVP tangents on the batch axis).
MEMORY_UNITS: dict[str, tuple[float, float, float, float, float, float]] = {
    # patched forwards without a graph: only the copies in flight (the screen's 370 MiB was
    # the double-backward estimate applied to it)
    "ap": (0.0, 2.0, 0.0, 5.0, 0.9, 1.9),
    # both runs' forward graph and one backward
    "atp": (29.5, 3.6, 0.0, 0.0, 0.0, 0.0),
    # a backward graph per interpolation point
    "ig": (2.7, 3.5, 0.0, 27.5, 0.0, 0.6),
    "mhvp": (55.0, 2.3, 0.0, 7.5, 0.4, 0.7),
    "sat": (0.2, 3.6, 0.0, 22.0, 0.0, 3.5),
    # a double-backward graph (first backward with create_graph), one tangent at a time
    "hvp": (91.0, 2.5, 2.0, 0.0, 0.0, 0.0),
    "hvp_exact": (91.0, 2.5, 2.0, 0.0, 0.0, 0.0),
    "hvp_joint": (66.0, 2.8, 1.0, 0.0, 0.0, 0.0),
}
#: hvp / hvp_exact with their tangents on the batch axis (hvp_mode "tile", a GPU): every
#: tangent is a copy of the double-backward graph; when they do not fit, the loop runs.
MEMORY_UNITS_TILE = (91.0, 2.5, 2.0, 65.0, 0.0, 2.4)
#: A method not measured yet: the most any measured method holds.
MEMORY_UNITS_DEFAULT = (91.0, 3.6, 2.0, 65.0, 0.9, 3.5)


def _units(model, p: Problem) -> tuple[float, float, float]:
    """U, V, W in bytes (module comment above) for this problem."""
    cfg = model.cfg
    b, pos = p.base_tokens.shape
    act = next(model.parameters()).element_size()  # activations in the model's dtype
    n_heads = int(getattr(cfg, "n_heads", 1) or 1)
    u = act * b * pos * cfg.n_layers * cfg.d_model
    v = 4 * b * pos * cfg.d_vocab
    w = act * b * n_heads * pos * pos * cfg.n_layers
    return float(u), float(v), float(w)


def _method_units(p: Problem, method: str) -> tuple[float, float, float, float, float, float]:
    if method in ("hvp", "hvp_exact") and p.hvp_mode == "tile":
        return MEMORY_UNITS_TILE
    return MEMORY_UNITS.get(method, MEMORY_UNITS_DEFAULT)


def method_bytes(model, p: Problem, method: str) -> tuple[float, float]:
    """(fixed, per copy) bytes of one pass of ``method`` (MEMORY_UNITS)."""
    u, v, w = _units(model, p)
    fu, fv, fw, cu, cv, cw = _method_units(p, method)
    return fu * u + fv * v + fw * w, cu * u + cv * v + cw * w


def method_need_mb(model, p: Problem, method: str, copies: int = 1) -> float:
    """MiB one pass of ``method`` needs with ``copies`` copies of the batch."""
    fixed, per = method_bytes(model, p, method)
    return (fixed + max(1, copies) * per) / 2**20


def planned_methods(methods) -> tuple[str, ...]:
    """The methods a plan is for; none named: a generic double-backward pass (the most any
    method holds), as for a caller that does not say what it runs."""
    return tuple(methods) if methods else ("?",)


def bytes_per_copy(model, p: Problem, methods=None) -> int:
    """What one copy of the batch adds to a pass, the most over ``methods``; a method that runs
    one copy (atp, hvp one tangent at a time) is planned as its patched forwards (ap)."""
    per = [method_bytes(model, p, m)[1] for m in planned_methods(methods)]
    per = [x for x in per if x > 0] or [method_bytes(model, p, "ap")[1]]
    return int(max(per))


class MemoryBudgetError(ValueError):
    """A request whose smallest pass (one copy of the batch) exceeds the memory budget."""


def check_fits(model, p: Problem, methods=None) -> None:
    """Refuse, before any pass, a request whose one-copy pass of any of ``methods`` needs more
    than the budget (each method by what it really holds: MEMORY_UNITS)."""
    needs = {m: method_need_mb(model, p, m) for m in planned_methods(methods)}
    worst = max(needs, key=lambda m: needs[m])
    need = needs[worst]
    if need > p.memory_budget_mb:
        b, pos = p.base_tokens.shape
        which = "" if worst == "?" else f" of {worst}"
        raise MemoryBudgetError(
            f"this request needs about {need:,.0f} MiB for one pass{which} ({b} pairs x {pos} "
            f"tokens on a {model.cfg.n_layers}-layer, {model.cfg.d_model}-wide model), over the "
            f"memory budget of {p.memory_budget_mb:,.0f} MiB: use fewer pairs or shorter "
            "prompts, or raise the budget (memory_budget_mb; the service's "
            "PATCHAUDIT_MEMORY_BUDGET_MB)"
        )


def copies_for_budget(model, p: Problem, memory_budget_mb: float | None, methods=None) -> int:
    """How many copies of the batch one pass may carry: the most that keep every method's
    pass (fixed + copies x per copy) within the budget, at least 1, at most 1024."""
    budget = memory_budget_or_free(model, memory_budget_mb) * 2**20
    best = 1024
    for m in planned_methods(methods):
        fixed, per = method_bytes(model, p, m)
        if per <= 0:
            continue
        best = min(best, int((budget - fixed) // per))
    if best == 1024 and not any(method_bytes(model, p, m)[1] > 0 for m in planned_methods(methods)):
        fixed, per = method_bytes(model, p, "ap")  # copies only patched forwards would carry
        best = int((budget - fixed) // per)
    return int(max(1, min(1024, best)))


def memory_plan(p: Problem) -> dict:
    """The chunking chosen up front for this problem (``report.cost["plan"]``)."""
    per_copy = bytes_per_copy(p.model, p, p.methods) / 2**20
    return {  # no pass counts: a plan, not a pass ("0 0 0.000" would read as a free method)
        "memory_budget_mb": round(p.memory_budget_mb, 1),
        "per_copy_mb": round(per_copy, 2),
        # what one pass of each method needs (one copy of the batch, and max_copies copies)
        "need_mb": {
            m: [
                round(method_need_mb(p.model, p, m), 2),
                round(method_need_mb(p.model, p, m, p.max_copies), 2),
            ]
            for m in p.methods
        },
        "max_copies": p.max_copies,
        "hvp_mode": p.hvp_mode,
        "note": (
            f"planned for a {p.memory_budget_mb:.0f} MiB budget: up to {p.max_copies} copies"
            f" of the batch per pass (~{per_copy:.1f} MiB each) for probes, IG/MHVP points"
            f" and patched copies; HVP tangents "
            + ("on the batch axis" if p.hvp_mode == "tile" else "one double backward each")
        ),
    }
