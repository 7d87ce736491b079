"""The per-head query / key / value sites (``q``, ``k``, ``v``): the vectors TransformerLens's
``hook_q`` / ``hook_k`` / ``hook_v`` carry, per key/value head where keys and values are grouped.
Activation patching equals TransformerLens's own ``get_act_patch_attn_head_{q,k,v}_all_pos``;
AtP equals a hand-written gradient on those hooks; the second-order term matches finite
differences; every method runs."""

from __future__ import annotations

import pytest
import torch

import patchaudit as pa
from patchaudit.component_keys import parse_component_key
from patchaudit.estimators import core
from patchaudit.estimators.sites import SITES, make_site

from .conftest import random_pairs
from .test_properties import _fd, _problem

QKV = ("q", "k", "v")


def _logit_diff(tp):
    def metric(lg):
        last = lg[:, -1]
        return (
            last.gather(1, tp.answer_ids[:, None]) - last.gather(1, tp.wrong_ids[:, None])
        ).mean()

    return metric


@pytest.mark.parametrize("site", QKV)
def test_site_shapes_follow_the_key_value_heads(arch_model, site):
    arch, model = arch_model
    s = make_site(model, site, 8)
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    assert s.n_comp == (model.cfg.n_heads if site == "q" else n_kv), arch
    assert s.hook_names[1] == f"blocks.1.attn.hook_{site}"
    grouped = site != "q" and n_kv != model.cfg.n_heads
    assert s.col_name == ("kv head" if grouped else "head")
    assert s.component_name(1, 0).endswith(f".{site}")
    assert site in SITES
    assert parse_component_key("1.0", site) == (1, 0)


@pytest.mark.parametrize("site", QKV)
def test_qkv_ap_matches_transformerlens_patching(arch_model, site):
    """Our batched denoising ap + m(x~) == TL's serial get_act_patch_attn_head_<site>_all_pos."""
    import transformer_lens.patching as tlp

    arch, model = arch_model
    pairs = random_pairs()
    tp = pairs.tokenize(model)
    r = pa.audit(model, pairs, site=site, direction="denoising", methods=["ap"])
    _, cache = model.run_with_cache(tp.clean)
    fn = getattr(tlp, f"get_act_patch_attn_head_{site}_all_pos")
    theirs = fn(model, tp.corrupted, cache, _logit_diff(tp)).float()
    ours = r.scores["ap"] + r.metric_base
    assert ours.shape == theirs.shape, (arch, site)
    assert float(theirs.std()) > 1e-4  # the patches do move the metric
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max())), (
        arch,
        site,
    )


@pytest.mark.parametrize("site", QKV)
def test_qkv_atp_matches_a_hand_written_gradient(arch_model, site):
    """noising AtP = sum over positions and d_head of dm/d(hook_<site>) * (corrupted - clean),
    per pair, averaged: the gradient taken by autograd through a plain hook on the clean run."""
    arch, model = arch_model
    pairs = random_pairs()
    tp = pairs.tokenize(model)
    r = pa.audit(model, pairs, site=site, methods=["atp"])
    n_layers = model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_{site}" for i in range(n_layers)]
    _, corr = model.run_with_cache(tp.corrupted, names_filter=lambda n: n in names)
    acts: dict[str, torch.Tensor] = {}
    zeros: dict[str, torch.Tensor] = {}

    def keep(act, hook, name):  # (an aliased hook's own name is its target's)
        acts[name] = act.detach()
        zeros[name] = torch.zeros_like(act, requires_grad=True)  # d/d(zero) = d/d(act)
        return act + zeros[name]

    hooks = [(n, lambda act, hook, n=n: keep(act, hook, n)) for n in names]
    with torch.enable_grad():
        lg = model.run_with_hooks(tp.clean, fwd_hooks=hooks)
        last = lg[:, -1]
        m = (last.gather(1, tp.answer_ids[:, None]) - last.gather(1, tp.wrong_ids[:, None])).sum()
        grads = torch.autograd.grad(m, [zeros[n] for n in names])
    theirs = torch.stack(
        [
            (g * (corr[n] - acts[n])).sum(dim=(0, 1, 3)) / len(tp)
            for g, n in zip(grads, names, strict=True)
        ]
    )
    ours = r.scores["atp"]
    assert float(theirs.abs().max()) > 0
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max())), (
        arch,
        site,
    )


@pytest.mark.parametrize("arch", ["gpt2", pytest.param("gemma2", marks=pytest.mark.slow)])
@pytest.mark.parametrize("site", QKV)
def test_qkv_q_matches_finite_difference(site, arch):
    """hvp_exact's q on a float64 model against a second difference of the exact forward.
    (Gemma-2: keys and values per key/value head, soft-capped attention logits; its RoPE runs
    in float32 inside a float64 model, hence the looser tolerance there.)"""
    from patchaudit.estimators.methods import hvp_exact

    from .conftest import random_model

    model = random_model(arch, dtype=torch.float64)
    p, base = _problem(model, random_pairs(), site)
    q = hvp_exact(p, base).q
    assert float(q.abs().max()) > 0
    # the bridge's softmax of RoPE models runs in float32: its rounding (~1e-7 / h^2) sets an
    # absolute floor of a few 1e-5 (the metric is O(1))
    rel, floor = (1e-3, 1e-6) if arch == "gpt2" else (1e-2, 5e-5)
    for layer, comp in [(0, 0), (0, 1), (1, 1)]:
        fd = _fd(p, base, layer, comp, 0.1)
        assert fd == pytest.approx(float(q[layer, comp]), rel=rel, abs=floor), (site, layer, comp)


@pytest.mark.parametrize("site", QKV)
def test_every_method_runs_on_qkv_and_agrees_where_it_must(site):
    from .conftest import random_model

    model = random_model("gpt2")
    pairs = random_pairs()
    methods = ["ap", "atp", "hvp", "hvp_joint", "hvp_exact", "mhvp", "ig", "sat"]
    r = pa.audit(model, pairs, site=site, methods=methods, hvp_probes=4, ig_steps=4)
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    for m in methods:
        assert tuple(r.scores[m].shape) == shape, m
        assert torch.isfinite(r.scores[m]).all(), m
    assert r.labels["col_name"] == "head"
    # the sat estimate and the second-order one track ap better than nothing
    err_atp = float((r.scores["atp"] - r.scores["ap"]).abs().mean())
    err_exact = float((r.scores["hvp_exact"] - r.scores["ap"]).abs().mean())
    assert err_atp > 0 and err_exact < 10 * err_atp + 1e-6


@pytest.mark.parametrize("site", QKV)
def test_qkv_patching_resumes_mid_network_exactly(site):
    from .conftest import random_model

    model = random_model("llama")
    p, base = _problem(model, random_pairs(), site)
    comps = [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]
    fast = core.patch_components(p, base, comps, core.Tracker())
    p.can_resume = p.can_cut = False
    slow = core.patch_components(p, base, comps, core.Tracker())
    for c in comps:
        assert fast[c] == pytest.approx(slow[c], rel=1e-4, abs=1e-6), (site, c)
