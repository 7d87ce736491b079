"""The shared machinery of every estimator: the perturbed forward, the base pass (clean and
corrupted activations and the gradient at eps = 0), pass counting, chunking, progress and
cancellation.

Perturbation form (METHODS.md): F(eps) = m(f(x) with a_c <- a_c + eps_c at every component).
The hooks add eps to the tensor the model consumes (``blocks.L.attn.hook_z`` for heads).
Copies of the batch ride on the batch axis (copy-major: row ``k * batch + b``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..tasks.metrics import MetricTargets, per_copy, per_example
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
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if device is not None:
            t = {k: v.to(device) for k, v in t.items()}
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


@dataclass
class Prefix:
    """The base run's key/value cache (a Hugging Face cache) over the first ``length``
    positions, which the clean and the corrupted prompts of every pair share."""

    length: int
    cache: Any
    _tiled: dict[int, Any] = field(default_factory=dict, repr=False)

    def copies(self, rows: Tensor) -> Any:
        """A fresh cache whose batch rows are ``rows`` of this one (a forward extends it)."""
        c = copy.deepcopy(self.cache)
        c.batch_select_indices(rows)
        return c

    def tiled(self, k: int, batch: int, device: torch.device) -> Any:
        """A fresh cache of ``k`` copies of the batch (copy-major), as ``copies``. For a layered
        DynamicCache the tiled tensors are built once per k and each call hands out new cache
        and layer objects over them (a forward extends a layer by concatenation, which leaves
        the shared tensors as they are)."""
        rows = torch.arange(batch, device=device).repeat(k)
        if not _layers(self.cache):
            return self.copies(rows)
        if k not in self._tiled:
            self._tiled[k] = self.copies(rows)
        t = self._tiled[k]
        c = copy.copy(t)
        c.layers = [copy.copy(layer) for layer in t.layers]
        return c


def _layers(cache: Any) -> bool:
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(
        type(x).__name__ == "DynamicLayer" and getattr(x, "keys", None) is not None for x in layers
    )


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
    p.can_resume = type(model).__name__ == "TransformerBridge"
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


def _hooks(
    p: Problem,
    eps: Sequence[Tensor | None] | None = None,
    replace: dict[int, tuple[Tensor, Tensor]] | None = None,
    capture: list[Tensor | None] | None = None,
    resid_capture: list[Tensor | None] | None = None,
    last_only: Tensor | None = None,
) -> list[tuple[str, Callable]]:
    """The forward hooks of ``run`` (its arguments of the same names)."""
    hooks: list[tuple[str, Callable]] = []
    if last_only is not None:
        rows = torch.arange(last_only.shape[0], device=last_only.device)

        def cut(act, hook):
            return act[rows, last_only][:, None]  # [rows, 1, d_model]

        hooks.append(("unembed.hook_in", cut))
    if resid_capture is not None:
        for layer in range(p.site.n_layers):

            def keep(act, hook, layer=layer):
                resid_capture[layer] = act.detach()
                return act

            hooks.append((f"blocks.{layer}.hook_resid_pre", keep))
    for layer, name in enumerate(p.site.hook_names):
        e = eps[layer] if eps is not None else None
        r = replace.get(layer) if replace is not None else None
        if e is None and r is None and capture is None:
            continue

        def hook(act, hook, layer=layer, e=e, r=r):
            if e is not None:
                act = act + e.view(act.shape)
            if r is not None:
                mask, value = r
                act = torch.where(mask, value.view(act.shape), act)
            if capture is not None:
                capture[layer] = act
            return act

        hooks.append((name, hook))
    return hooks


def run(
    p: Problem,
    tokens: Tensor,
    eps: Sequence[Tensor | None] | None = None,
    replace: dict[int, tuple[Tensor, Tensor]] | None = None,
    capture: list[Tensor | None] | None = None,
    resid_capture: list[Tensor | None] | None = None,
    start_at_layer: int | None = None,
    last_only: Tensor | None = None,
    past: Any = None,
    fast: bool = False,
) -> Tensor:
    """One forward of ``tokens`` ([copies*batch, pos]; with ``start_at_layer`` = L, the
    residual stream entering block L, [copies*batch, pos, d_model]).

    eps[l] is added to layer l's activation; replace[l] = (mask, value) sets
    act = where(mask, value, act); capture[l] receives layer l's activation and
    resid_capture[l] the residual stream entering block l. With ``last_only`` (one position
    per row) the unembedding input is cut to that position, so the
    unembedding runs on one position per row: logits [rows, 1, d_vocab]. With ``past`` (a
    Hugging Face cache of the positions before ``tokens``) only those later positions run.
    ``fast``: with the problem's shortcuts on, take ``cpu_kernels`` (the caller makes sure
    that the two runs whose activations make a delta take the same kernels, so a zero delta
    stays exactly zero).
    """
    hooks = _hooks(p, eps, replace, capture, resid_capture, last_only)
    kw: dict[str, Any] = {}
    if start_at_layer is not None:
        kw["start_at_layer"] = start_at_layer
    with contextlib.ExitStack() as stack:
        if start_at_layer:
            stack.enter_context(skip_blocks(p.model, start_at_layer))
        if fast:
            stack.enter_context(shortcut_kernels(p))
        if past is None:
            return p.model.run_with_hooks(tokens, fwd_hooks=hooks, **kw)
        stack.enter_context(cache_kwarg(p.model))
        return p.model.run_with_hooks(tokens, fwd_hooks=hooks, past_key_values=past, **kw)


def _pass_through(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def skip_blocks(model, start: int) -> Iterator[None]:
    """Make blocks 0 .. start-1 hand their input straight on, for a forward that resumes at
    block ``start``. The bridge's ``start_at_layer`` runs those blocks and then discards their
    output (block ``start`` swaps in the caller's residual), so skipping them changes no number
    and saves their compute. Only where a block returns its hidden states as one tensor (the
    transformers >= 5 decoder layers: GPT-2, NeoX, Llama, Gemma-2); else nothing is skipped.
    The skipped layers' key/value cache rows are not extended (nothing reads them)."""
    blocks = list(getattr(model, "blocks", []))[:start]
    if not blocks or not _returns_tensor(model):
        yield
        return
    for b in blocks:  # an instance attribute, which nn.Module calls instead (object's setattr:
        object.__setattr__(b, "forward", _pass_through)  # the bridge's would reach the HF block)
    try:
        yield
    finally:
        for b in blocks:
            object.__delattr__(b, "forward")


#: Attention rows up to this many keys take ``_short_row_softmax`` on the CPU.
SHORT_ROWS = 32


def _short_row_softmax(orig: Callable) -> Callable:
    """The attention's softmax over keys, as exp(x - max) / sum on the CPU for short rows
    without autograd: PyTorch's CPU softmax kernel is ~6x slower there (rows shorter than its
    vector width); anything else (a GPU, long rows, a fully masked row, a graph) takes the
    original."""

    def softmax(attn_scores: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        x = attn_scores
        if x.device.type != "cpu" or x.shape[-1] > SHORT_ROWS or torch.is_grad_enabled():
            return orig(attn_scores, dtype=dtype)
        x = x.to(dtype) if dtype is not None else x
        top = x.amax(-1, keepdim=True)
        if torch.isneginf(top).any():  # a query that sees no key: the original's own rule
            return orig(attn_scores, dtype=dtype)
        e = (x - top).exp_()
        return e.div_(e.sum(-1, keepdim=True))

    return softmax


def _fused_gelu_tanh(x: Tensor) -> Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


@contextlib.contextmanager
def cpu_kernels(model) -> Iterator[None]:
    """Faster CPU kernels for the same functions, for forwards without autograd: the
    attention softmax of short rows (``_short_row_softmax``) and GPT-2's tanh GELU
    (transformers' ``NewGELUActivation``, five element-wise ops) as PyTorch's fused
    ``gelu(approximate="tanh")``. Both agree with the originals to float rounding; nothing
    changes on a GPU or where a graph is recorded."""
    if model_device(model).type != "cpu" or torch.is_grad_enabled():
        yield
        return
    swapped: list[tuple[Any, str]] = []
    for m in model.modules():
        if callable(getattr(type(m), "_masked_softmax", None)):
            name, fn = "_masked_softmax", _short_row_softmax(m._masked_softmax)
        elif type(m).__name__ == "NewGELUActivation":
            name, fn = "forward", _fused_gelu_tanh
        else:
            continue
        if name not in vars(m):  # (an enclosing cpu_kernels has swapped it already)
            object.__setattr__(m, name, fn)
            swapped.append((m, name))
    try:
        yield
    finally:
        for m, name in swapped:
            object.__delattr__(m, name)


def shortcut_kernels(p: Problem) -> contextlib.AbstractContextManager:
    """``cpu_kernels`` where the problem's shortcuts are on, else nothing."""
    return cpu_kernels(p.model) if p.shortcuts else contextlib.nullcontext()


def _returns_tensor(model) -> bool:
    """Whether the model's blocks return a plain tensor (checked once on a 1-token forward;
    the answer is kept on the model)."""
    known = getattr(model, "_patchaudit_blocks_return_tensor", None)
    if known is not None:
        return bool(known)
    seen: list[type] = []
    h = model.blocks[0].register_forward_hook(lambda mod, i, o: seen.append(type(o)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, dtype=torch.long, device=model_device(model)))
    finally:
        h.remove()
    ok = bool(seen) and seen[0] is Tensor
    model._patchaudit_blocks_return_tensor = ok
    return ok


def _cache_to_past(module, args, kwargs):
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
    return args, kwargs


@contextlib.contextmanager
def cache_kwarg(model) -> Iterator[None]:
    """transformers >= 5.2x hands GPT-2's attention its key/value cache as ``cache=``, which
    the bridge's attention (reading ``past_key_values`` / ``layer_past``) misses: the cached
    positions would be silently dropped. Hand it over under the name the bridge reads."""
    handles = [
        b.attn.register_forward_pre_hook(_cache_to_past, with_kwargs=True)
        for b in getattr(model, "blocks", [])
        if hasattr(b, "attn")
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def shared_prefix_len(p: Problem) -> int:
    """How many leading positions every pair's two prompts share (and every metric position
    follows): no patch changes any activation there in a causal model. 0 without shortcuts,
    where the model cannot take a key/value cache (not a TransformerBridge), or where the
    prefix is too short to be worth one (under 2 positions or 1/8 of the prompt)."""
    if not p.shortcuts or not p.can_resume:
        return 0
    diff = p.base_tokens != p.src_tokens
    n_pos = int(diff.shape[1])
    first = torch.where(diff.any(1), diff.int().argmax(1), n_pos)
    n = min(int(first.min()), int(p.targets.last_pos.min()), n_pos - 1)
    # a prefix of one or two tokens (a shared BOS) saves less than the cache costs
    return n if n >= max(2, n_pos // 8) else 0


def _last_position(act: Tensor, hook: Any) -> Tensor:
    # contiguous: a strided slice sends a half-precision CPU matmul down a path that copies
    # the whole unembedding matrix (a 64 MiB peak for a 32k x 512 bf16 W_U)
    return act[:, -1:].contiguous()


def prefix_cache(p: Problem, base: BaseCache, tracker: Tracker) -> Prefix | None:
    """The base run's key/value cache over the shared prefix (one forward of the prefix
    alone, once per base), or None when there is no prefix to share."""
    n = shared_prefix_len(p)
    if n == 0:
        return None
    if base.prefix is None or base.prefix.length != n:
        base.prefix = prefix_forward(p, n, tracker)
    return base.prefix


def prefix_forward(
    p: Problem,
    n: int,
    tracker: Tracker,
    capture: list[Tensor | None] | None = None,
    resid_capture: list[Tensor | None] | None = None,
) -> Prefix:
    """One forward of the first ``n`` positions of the base run (the same tokens as the
    source run's there): their key/value cache, and (as ``run``) the site activations and
    residual streams of those positions in ``capture`` / ``resid_capture``."""
    hooks = _hooks(p, capture=capture, resid_capture=resid_capture)
    if p.can_cut:  # no metric reads the prefix: unembed one position only
        hooks.append(("unembed.hook_in", _last_position))
    with torch.no_grad(), cache_kwarg(p.model), shortcut_kernels(p):
        _, cache = p.model.run_with_hooks(
            p.base_tokens[:, :n], fwd_hooks=hooks, return_type="logits_and_cache"
        )
    tracker.prefix += 1
    return Prefix(n, cache)


def zero_delta(p: Problem, base: BaseCache, n_prefix: int = 0) -> Tensor:
    """[n_layers, n_comp] bool: components whose delta is zero at every position of every
    pair (their patch changes nothing: ap = 0 exactly). Resid positions inside the shared
    prefix count as zero (the two runs agree there)."""
    out = []
    for d in base.delta:
        nz = p.site.reduce((d != 0).to(d.dtype)).sum(0)  # [n_comp]
        if p.site.name == "resid" and n_prefix:
            nz[:n_prefix] = 0
        out.append(nz == 0)
    return torch.stack(out)


def suffix_patch(mask: Tensor, value: Tensor, n_prefix: int) -> tuple[Tensor, Tensor]:
    """A (mask, value) patch of [rows, pos, ...] cut to the positions after the prefix."""
    if not n_prefix:
        return mask, value
    return (mask[:, n_prefix:] if mask.shape[1] > 1 else mask), value[:, n_prefix:].contiguous()


def tile(x: Tensor, copies: int) -> Tensor:
    """[batch, ...] -> [copies * batch, ...], copy-major."""
    return x.repeat(copies, *([1] * (x.dim() - 1)))


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


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    size = max(1, size)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def grad_hvp(
    p: Problem,
    base: BaseCache,
    ts: Float[Tensor, " k"],
    signs: Float[Tensor, "k n_layers n_comp"] | None,
    tracker: Tracker,
) -> tuple[Float[Tensor, "k n_layers n_comp"], Float[Tensor, "k n_layers n_comp"] | None]:
    """The one generic kernel behind atp, hvp, hvp_joint, hvp_exact, ig and mhvp.

    Copy k of the batch runs at eps = ts[k] * delta (all components together). Returns
    phi[k, l, c] = <g_c(ts[k] delta), delta_c> and, when ``signs`` is given, with the tangent
    v_k = sum_c signs[k, c] delta_c, y[k, l, c] = signs[k, c] <delta_c, [Hess F(ts[k] delta) v_k]_c>
    computed by double backward (never a Hessian). Copies are chunked to the memory budget;
    in "loop" mode the tangents of one point share one graph instead of the batch axis.
    """
    k_all = int(ts.shape[0])
    delta = base.delta
    nl, nc = p.site.n_layers, p.site.n_comp
    acc = torch.promote_types(delta[0].dtype, torch.float32)
    phi = torch.zeros(k_all, nl, nc, device=delta[0].device, dtype=acc)
    y = torch.zeros(k_all, nl, nc, device=delta[0].device, dtype=acc) if signs is not None else None
    loop = signs is not None and p.hvp_mode == "loop"
    if loop:  # one graph per distinct point; its tangents one double backward each
        values = list(dict.fromkeys(float(x) for x in ts.tolist()))
        parts = [[k for k in range(k_all) if float(ts[k]) == t] for t in values]
    else:
        parts = [list(range(lo, hi)) for lo, hi in chunks(k_all, p.max_copies)]
    for j, rows in enumerate(parts):
        tracker.check()
        copies = 1 if loop else len(rows)
        t = ts[rows[:copies]].to(delta[0].device, delta[0].dtype)
        eps = []
        for d in delta:
            tt = t.repeat_interleave(p.batch).view(
                -1, *([1] * (d.dim() - 1))
            )  # [copies*batch, 1..]
            eps.append((tile(d, copies) * tt).detach().requires_grad_(True))
        with torch.enable_grad():
            f = p.copies_metric(run(p, tile(p.base_tokens, copies), eps=eps)).sum()
            tracker.fwd(copies)
            g = torch.autograd.grad(f, eps, create_graph=signs is not None)
            tracker.bwd(copies)
            for layer, (gl, d) in enumerate(zip(g, delta, strict=True)):
                prod = p.site.dot(gl.detach(), tile(d, copies))  # [copies*batch, n_comp]
                phi[rows, layer] = prod.view(copies, p.batch, nc).sum(1)  # broadcasts in loop mode
            if signs is not None:
                assert y is not None
                y[rows] = hvp_from_graph(p, g, eps, delta, signs[rows], copies, tracker)
        tracker.report((j + 1) / len(parts))
    return phi, y


def patch_components(
    p: Problem,
    base: BaseCache,
    components: Sequence[tuple[int, int]],
    tracker: Tracker,
    per_pair: dict[tuple[int, int], Tensor] | None = None,
) -> dict[tuple[int, int], float]:
    """Activation patching: for each component, one forward of the base run with that
    component's activation replaced by the source run's; returns F(patched) - F(base).
    With ``per_pair`` (a dict) it also keeps every pair's own value, m_b(patched) - m_b(base)
    ([batch] on the CPU; their mean is the returned value), which the same forward computes.
    Components of one layer share a forward (copies on the batch axis, chunked); where the
    model can resume mid-network, that forward starts at the layer from the cached residual
    stream (the blocks before it are untouched by the patch).

    Exact shortcuts (``p.shortcuts``): the positions every pair shares run once (a key/value
    cache, ``prefix_cache``) and each patched forward computes only the later ones; a
    component whose delta is zero everywhere gets ap = 0 without a forward."""
    from .sites import component_mask

    f0 = base.f_base.mean()
    out: dict[tuple[int, int], float] = {}
    pre = prefix_cache(p, base, tracker) if p.shortcuts else None
    n0 = pre.length if pre is not None else 0
    skip = zero_delta(p, base, n0).tolist() if p.shortcuts else None
    by_layer: dict[int, list[int]] = {}
    for layer, comp in components:
        layer, comp = int(layer), int(comp)
        if skip is not None and skip[layer][comp]:  # nothing to patch: ap = 0, no forward
            out[(layer, comp)] = 0.0
            if per_pair is not None:
                per_pair[(layer, comp)] = torch.zeros(p.batch, dtype=base.f_base.dtype)
            continue
        by_layer.setdefault(layer, []).append(comp)
    work = [
        (layer, comps[lo:hi])
        for layer, comps in sorted(by_layer.items())
        for lo, hi in chunks(len(comps), p.max_copies)
    ]
    for j, (layer, comps) in enumerate(work):
        tracker.check()
        k = len(comps)
        a_src = base.a_src[layer]
        idx = torch.tensor(comps, device=a_src.device).repeat_interleave(p.batch)  # [k*batch]
        mask = component_mask(p.site, idx, a_src) > 0  # broadcastable bool
        patch = {layer: suffix_patch(mask, tile(a_src, k), n0)}
        with torch.inference_mode():
            logits, targets = patched_forward(p, base, patch, k, pre)
            rows = per_example(p.metric, logits, targets).view(k, p.batch)  # [copies, batch]
            vals = rows.mean(1)  # per_copy
            if per_pair is not None:
                for c, r in zip(comps, (rows - base.f_base).detach().cpu(), strict=True):
                    per_pair[(layer, c)] = r
        tracker.fwd(k)
        for c, v in zip(comps, (vals - f0).tolist(), strict=True):
            out[(layer, c)] = float(v)
        tracker.report((j + 1) / len(work))
    return {key: out[key] for key in sorted(out)}


def suffix_targets(p: Problem, k: int, n0: int) -> tuple[MetricTargets, Tensor | None]:
    """For a forward of ``k`` copies of the positions after the first ``n0``: the metric
    targets that read its logits, and (where the model allows the cut) the one position per
    row to unembed (``run``'s ``last_only``; the targets then read position 0)."""
    if p.can_cut:  # the metric reads one position per row: unembed only that one
        last = p.targets.last_pos.repeat(k) - n0
        return replace(p.targets, last_pos=torch.zeros_like(p.targets.last_pos)), last
    if n0:
        return replace(p.targets, last_pos=p.targets.last_pos - n0), None
    return p.targets, None


def patched_forward(
    p: Problem, base: BaseCache, patch: dict[int, tuple[Tensor, Tensor]], k: int, pre: Prefix | None
) -> tuple[Tensor, MetricTargets]:
    """One forward of ``k`` copies of the base run with ``patch`` (layer -> (mask, value), cut
    to the positions after the shared prefix ``pre``), and the metric targets that read its
    logits. It resumes at the first patched layer from the cached residual stream, runs only
    the positions after the prefix (its key/value cache) and unembeds only the metric's
    position where the model allows each."""
    n0 = pre.length if pre is not None else 0
    targets, last = suffix_targets(p, k, n0)
    past = pre.tiled(k, p.batch, p.base_tokens.device) if pre is not None else None
    start = min(patch) if patch else p.site.n_layers - 1
    if p.can_resume and base.resid is not None:  # (at layer 0 too: the embedding is cached)
        resid = tile(base.resid[start][:, n0:], k)  # [k*batch, pos - n0, d_model]
        logits = run(
            p, resid, replace=patch, start_at_layer=start, last_only=last, past=past, fast=True
        )
    else:
        tokens = tile(p.base_tokens[:, n0:], k)
        logits = run(p, tokens, replace=patch, last_only=last, past=past, fast=True)
    return logits, targets


def rademacher(k: int, shape: tuple[int, int], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (k, *shape), generator=g) * 2 - 1).float()


def onehots(shape: tuple[int, int], idx: Sequence[int] | None = None) -> Tensor:
    n = shape[0] * shape[1]
    idx = list(range(n)) if idx is None else list(idx)
    s = torch.zeros(len(idx), n)
    s[torch.arange(len(idx)), torch.tensor(idx, dtype=torch.long)] = 1.0
    return s.view(len(idx), *shape)


def se_of_mean(y: Tensor) -> Tensor:
    k = y.shape[0]
    if k < 2:
        return torch.zeros_like(y[0])
    return y.std(0, unbiased=True) / math.sqrt(k)
