"""The adaptations to transformers / TransformerBridge internals (estimators/compat.py): each
finds its feature on a bridge and, on a model without it, does nothing (the plain path)."""

from __future__ import annotations

import torch

from patchaudit.estimators import compat


class Plain(torch.nn.Module):
    """A model with none of the features: no bridge, no Hugging Face module, no blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x)


def test_fallbacks_on_a_plain_model():
    m = Plain()
    assert compat.hf_model(m) is None
    assert not compat.takes_cache(m) and not compat.can_resume(m)
    assert compat.new_cache(m) is None
    past = object()
    assert compat.cache_forward_kwargs(m, past) == {"past_key_values": past}
    assert not compat.tiled_layers(object()) and not compat.tiled_layers(None)
    with torch.no_grad(), compat.cpu_kernels(m), compat.cache_kwarg(m), compat.skip_blocks(m, 1):
        assert "forward" not in vars(m.lin)  # nothing swapped


def test_features_found_on_a_bridge(tiny_model):
    m = tiny_model
    assert compat.takes_cache(m) and compat.can_resume(m)  # transformers 5.2x, the bridge
    cache = compat.new_cache(m)
    assert cache is not None
    assert set(compat.cache_forward_kwargs(m, cache)) == {"cache", "use_cache"}
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        m(tokens, cache=cache, use_cache=True)
    assert not compat.tiled_layers(cache)  # the bridge's attention misses ``cache=``
    cache = compat.new_cache(m)
    with torch.no_grad(), compat.cache_kwarg(m):
        m(tokens, cache=cache, use_cache=True)
    assert compat.tiled_layers(cache)  # filled in place, a layer per block
    assert cache.get_seq_length() == 3
    fresh = compat.fresh_layers(cache)
    assert fresh is not cache and all(
        a is not b and a.keys is b.keys for a, b in zip(fresh.layers, cache.layers, strict=True)
    )
