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
    p.memory_budget_mb = memory_budget_or_free(model, memory_budget_mb)
    p.max_copies = copies_for_budget(model, p, p.memory_budget_mb)
    if memory_budget_mb is not None or dev.type == "cuda":  # a budget given, or a GPU's memory
        check_fits(model, p)
    p.hvp_mode = hvp_mode or ("tile" if dev.type == "cuda" else "loop")
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


def bytes_per_copy(model, p: Problem) -> int:
    """A rough upper estimate of the activations a double backward keeps per copy of the
    batch: ~48 tensors of [batch, pos, d_model] per layer plus 4 of [batch, pos, d_vocab],
    in fp32 (half-precision models keep about half)."""
    cfg = model.cfg
    b, pos = p.base_tokens.shape
    return 4 * b * pos * (48 * cfg.n_layers * cfg.d_model + 4 * cfg.d_vocab)


class MemoryBudgetError(ValueError):
    """A request whose smallest pass (one copy of the batch) exceeds the memory budget."""


def check_fits(model, p: Problem) -> None:
    """Refuse, before any pass, a request whose one-copy pass needs more than the budget."""
    need = bytes_per_copy(model, p) / 2**20
    if need > p.memory_budget_mb:
        b, pos = p.base_tokens.shape
        raise MemoryBudgetError(
            f"this request needs about {need:,.0f} MiB for one pass ({b} pairs x {pos} tokens "
            f"on a {model.cfg.n_layers}-layer, {model.cfg.d_model}-wide model), over the "
            f"memory budget of {p.memory_budget_mb:,.0f} MiB: use fewer pairs or shorter "
            "prompts, or raise the budget (memory_budget_mb; the service's "
            "PATCHAUDIT_MEMORY_BUDGET_MB)"
        )


def copies_for_budget(model, p: Problem, memory_budget_mb: float | None) -> int:
    """How many copies of the batch one forward+double-backward may carry."""
    budget = memory_budget_or_free(model, memory_budget_mb)
    return int(max(1, min(1024, budget * 2**20 // bytes_per_copy(model, p))))


def memory_plan(p: Problem) -> dict:
    """The chunking chosen up front for this problem (``report.cost["plan"]``)."""
    per_copy = bytes_per_copy(p.model, p) / 2**20
    return {  # no pass counts: a plan, not a pass ("0 0 0.000" would read as a free method)
        "memory_budget_mb": round(p.memory_budget_mb, 1),
        "per_copy_mb": round(per_copy, 2),
        "max_copies": p.max_copies,
        "hvp_mode": p.hvp_mode,
        "note": (
            f"planned for a {p.memory_budget_mb:.0f} MiB budget: up to {p.max_copies} copies"
            f" of the batch per pass (~{per_copy:.1f} MiB each) for probes, IG/MHVP points"
            f" and patched copies; HVP tangents "
            + ("on the batch axis" if p.hvp_mode == "tile" else "one double backward each")
        ),
    }
