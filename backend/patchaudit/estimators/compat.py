"""Every adaptation of patchaudit to transformers and TransformerLens's TransformerBridge
internals, in one place.

Each adaptation checks for the feature it relies on (an attribute, a signature, a class) and,
where the check fails, does nothing: the plain (slower, or less informative) path runs and the
numbers stay the same. Tested on the versions ``pyproject.toml`` allows:

- ``cache_forward_kwargs`` / ``new_cache``: hand a Hugging Face key/value cache to the model
  under the name its forward takes (``cache=`` since transformers 5.2x, where
  ``past_key_values=`` is deprecated; the bridge's own ``past_key_values`` otherwise).
- ``cache_kwarg``: the bridge's attention reads ``past_key_values`` / ``layer_past``, while
  transformers hands it the cache as ``cache=``; a pre-hook passes it on under the old name.
- ``can_resume``: the bridge can start a forward at block L and take a key/value cache.
- ``takes_stop_at_layer``: the forward can stop after block L (AtP*'s QK fix needs one block).
- ``skip_blocks``: blocks before the layer a forward resumes at hand their input straight on.
- ``cpu_kernels``: faster CPU kernels for the attention softmax of short rows and GPT-2's
  tanh GELU, in forwards without autograd.
- ``tiled_layers`` / ``fresh_layers``: a key/value cache tiled once per copy count, handed out
  as fresh cache and layer objects over the same tensors.
- ``load_progress``: the weight loading of transformers' loader reported as a fraction.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

# --- the model underneath the bridge, and what its forward takes --------------------------


def hf_model(model) -> Any:
    """The Hugging Face module a TransformerBridge wraps, or None (another kind of model, or a
    bridge without a local module)."""
    try:
        return getattr(model, "original_model", None)
    except AttributeError:  # a bridge whose driver exposes no nn.Module
        return None


_params: dict[Any, frozenset[str]] = {}


def _forward_params(cls: Any) -> frozenset[str]:
    """The parameter names of ``cls.forward`` (kept per class)."""
    if cls not in _params:
        try:
            _params[cls] = frozenset(inspect.signature(cls.forward).parameters)
        except (TypeError, ValueError, AttributeError):
            _params[cls] = frozenset()
    return _params[cls]


def _takes(module: Any, name: str) -> bool:
    """Whether ``module``'s forward takes a keyword ``name`` (checked on its class)."""
    return module is not None and name in _forward_params(type(module))


def takes_cache(model) -> bool:
    """Whether the wrapped model's forward takes its key/value cache as ``cache=`` (the name
    that stays in transformers >= 5.2x; ``past_key_values=`` is deprecated there)."""
    return _takes(hf_model(model), "cache")


def can_resume(model) -> bool:
    """Whether the model can start a forward at a block from the residual stream entering it
    (``start_at_layer``) and take a Hugging Face key/value cache: TransformerBridge's
    forward. (HookedTransformer has the first but a cache of its own.)"""
    return _takes(model, "start_at_layer") and _takes(model, "past_key_values")


def takes_stop_at_layer(model) -> bool:
    """Whether the model's forward can stop after a block (``stop_at_layer``: the bridge's and
    HookedTransformer's forward); else a forward that only needs one block's activations runs
    the whole model."""
    return _takes(model, "stop_at_layer")


def cache_forward_kwargs(model, past: Any) -> dict[str, Any]:
    """The keyword arguments that hand ``past`` (a Hugging Face cache) to the model's forward,
    which extends it: ``cache=`` straight through to the wrapped model where it takes that
    name, else the bridge's ``past_key_values=`` (which it renames for older versions)."""
    if takes_cache(model):
        return {"cache": past, "use_cache": True}
    return {"past_key_values": past}


def new_cache(model) -> Any:
    """An empty key/value cache the wrapped model's forward fills (the one it would build
    itself: ``DynamicCache(config=...)``), or None where this cannot be done through the
    non-deprecated ``cache=`` argument (the caller then takes the cache the bridge returns)."""
    hf = hf_model(model)
    if not takes_cache(model):
        return None
    try:
        from transformers import DynamicCache

        if "config" not in inspect.signature(DynamicCache).parameters:
            return None
        return DynamicCache(config=hf.config)
    except (ImportError, TypeError, ValueError, AttributeError):
        return None


# --- the bridge's attention and the cache -------------------------------------------------


def _cache_to_past(module, args, kwargs):
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
    return args, kwargs


@contextlib.contextmanager
def cache_kwarg(model) -> Iterator[None]:
    """transformers >= 5.2x hands the attention its key/value cache as ``cache=``, which the
    bridge's attention (reading ``past_key_values`` / ``layer_past``) misses: the cached
    positions would be silently dropped. Hand it over under the name the bridge reads. Only
    where the wrapped model takes ``cache=`` (an older one passes ``past_key_values`` on)."""
    if not takes_cache(model):
        yield
        return
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


def _dynamic_layer_class() -> type | None:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - a transformers without layered caches
        return None
    return DynamicLayer


def tiled_layers(cache: Any) -> bool:
    """Whether ``cache`` is a layered cache of plain ``DynamicLayer`` objects (exactly that
    class: it extends a layer by concatenation, which leaves the tensors it held as they are),
    so one tiled copy may back many caches (``fresh_layers``). Else every copy is deep."""
    cls = _dynamic_layer_class()
    layers = getattr(cache, "layers", None) or []
    return (
        cls is not None
        and bool(layers)
        and all(type(x) is cls and getattr(x, "keys", None) is not None for x in layers)
    )


def fresh_layers(cache: Any) -> Any:
    """A new cache object with new layer objects over ``cache``'s tensors (for a cache that
    ``tiled_layers`` accepts: a forward then extends the new layers only)."""
    c = copy.copy(cache)
    c.layers = [copy.copy(layer) for layer in cache.layers]
    return c


# --- skipping the blocks before the one a forward resumes at -------------------------------


def _pass_through(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _device(model) -> torch.device:
    return next(model.parameters()).device


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
            model(torch.zeros(1, 1, dtype=torch.long, device=_device(model)))
    finally:
        h.remove()
    ok = bool(seen) and seen[0] is Tensor
    model._patchaudit_blocks_return_tensor = ok
    return ok


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


# --- faster CPU kernels for forwards without autograd -------------------------------------

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


@functools.lru_cache(maxsize=1)
def _gelu_tanh_class() -> type | None:
    """transformers' tanh GELU module (``NewGELUActivation``), or None where it has none."""
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover
        return None
    return NewGELUActivation


def _softmax_takes_dtype(cls: Any) -> bool:
    """Whether ``cls._masked_softmax`` is the bridge's (attn_scores, dtype=None) softmax."""
    try:
        params = list(inspect.signature(cls._masked_softmax).parameters)
    except (TypeError, ValueError, AttributeError):
        return False
    return params[1:3] == ["attn_scores", "dtype"]


@contextlib.contextmanager
def cpu_kernels(model) -> Iterator[None]:
    """Faster CPU kernels for the same functions, for forwards without autograd: the
    attention softmax of short rows (``_short_row_softmax``, where the bridge's attention has
    a ``_masked_softmax(attn_scores, dtype)``) and GPT-2's tanh GELU (transformers'
    ``NewGELUActivation``, five element-wise ops) as PyTorch's fused
    ``gelu(approximate="tanh")``. Both agree with the originals to float rounding; nothing
    changes on a GPU or where a graph is recorded."""
    if _device(model).type != "cpu" or torch.is_grad_enabled():
        yield
        return
    gelu = _gelu_tanh_class()
    swapped: list[tuple[Any, str]] = []
    for m in model.modules():
        if callable(getattr(type(m), "_masked_softmax", None)) and _softmax_takes_dtype(type(m)):
            name, fn = "_masked_softmax", _short_row_softmax(m._masked_softmax)
        elif gelu is not None and type(m) is gelu:
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


# --- model loading --------------------------------------------------------------------------


@contextlib.contextmanager
def load_progress(callback: Callable[[float], None]) -> Iterator[None]:
    """Report the weight loading of ``load_model`` as a fraction (0..1) to ``callback``: the
    transformers loader's own "Loading weights" loop is counted. Where this transformers
    version has no such loop, nothing is reported (the load still works)."""
    try:
        import transformers.core_model_loading as cml
    except ImportError:  # pragma: no cover - older transformers
        yield
        return
    original = getattr(cml, "tqdm", None)
    if original is None:  # pragma: no cover
        yield
        return

    def counted(iterable=None, *args, **kwargs):
        items = list(iterable) if iterable is not None else []
        total = max(1, len(items))
        step = max(1, total // 50)

        def gen():
            for i, x in enumerate(original(items, *args, **kwargs)):
                if i % step == 0:
                    callback(i / total)
                yield x
            callback(1.0)

        return gen()

    cml.tqdm = counted  # type: ignore[assignment]
    try:
        yield
    finally:
        cml.tqdm = original
