"""Exact shortcuts of patched forwards (issue 13): the shared prefix runs once (a key/value
cache) and zero-delta components are skipped; the numbers equal plain forwards' (fp32, 1e-5
relative) on random GPT-2, GPT-NeoX and Llama models, every site, both directions."""

from __future__ import annotations

import pytest
import torch

import patchaudit as pa
from patchaudit.estimators import circuits as CI
from patchaudit.estimators import compat, core

from .conftest import one_copy_budget


def prefix_pairs(n: int = 3, pos: int = 10, vocab: int = 64, first: int = 5, seed: int = 0):
    """Corrupted prompts that differ from the clean ones from position ``first`` on (pair 0
    at ``first`` only, the others at ``first`` + 1 and later too)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n, pos), generator=g)
    corr = clean.clone()
    corr[0, first] = (clean[0, first] + 1) % vocab
    corr[1:, first + 1 : -1] = torch.randint(0, vocab, (n - 1, pos - first - 2), generator=g)
    corr[1:, first + 1] = (clean[1:, first + 1] + 1) % vocab
    ans = torch.randint(0, vocab, (n,), generator=g)
    wrong = (ans + 1 + torch.randint(0, vocab - 1, (n,), generator=g)) % vocab
    return pa.PromptPairs.from_tokens(clean, corr, ans, wrong)


def _problem(model, site, direction, shortcuts):
    tp = prefix_pairs().tokenize(model)
    p = core.make_problem(model, tp, site, "logit_diff", direction, shortcuts=shortcuts)
    return p, core.compute_base(p)


def _close(a: float, b: float, scale: float) -> bool:
    """1e-5 relative, to the larger of the value and the metric's own scale."""
    return abs(a - b) <= 1e-5 * max(abs(b), scale)


@pytest.mark.parametrize("direction", ["noising", "denoising"])
@pytest.mark.parametrize("site", ["heads", "mlp", "resid", "q", "k", "v"])
def test_shortcut_ap_equals_plain_forwards(arch_model, site, direction):
    arch, model = arch_model
    p, base = _problem(model, site, direction, True)
    assert core.shared_prefix_len(p) == 5
    comps = [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]
    tr = core.Tracker()
    pp_fast: dict = {}
    fast = core.patch_components(p, base, comps, tr, per_pair=pp_fast)
    assert tr.prefix == 1 and base.prefix is not None and base.prefix.length == 5
    q, qb = _problem(model, site, direction, False)
    assert core.shared_prefix_len(q) == 0
    tq = core.Tracker()
    pp_slow: dict = {}
    slow = core.patch_components(q, qb, comps, tq, per_pair=pp_slow)
    # the patches move the metric (a query moves it least)
    assert max(abs(v) for v in slow.values()) > (1e-4 if site == "q" else 1e-3)
    # ap = m(patched) - m(base): its float32 rounding is relative to the metric's size
    scale = max(max(abs(v) for v in slow.values()), float(qb.f_base.abs().max()))
    for c in comps:
        assert _close(fast[c], slow[c], scale), (arch, site, direction, c, fast[c], slow[c])
        assert torch.allclose(pp_fast[c], pp_slow[c], rtol=1e-5, atol=1e-5 * scale)
    assert list(fast) == list(slow)
    assert tr.forward <= tq.forward
    if site == "resid":  # positions inside the shared prefix: zero delta, no forward, ap 0
        assert all(fast[(i, c)] == 0.0 for i in range(p.site.n_layers) for c in range(5))
        assert tr.forward == p.site.n_layers  # one batched forward per layer still


def test_zero_delta_components_are_skipped(arch_model):
    """Patching one layer's heads where a pair's prompts are identical everywhere: the delta of
    every component is zero, so ap is 0 with no patched forward."""
    arch, model = arch_model
    clean = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    same = pa.PromptPairs.from_tokens(clean, clean.clone(), [1, 2, 3], [4, 5, 6])
    tp = same.tokenize(model)
    p = core.make_problem(model, tp, "heads", "logit_diff", "noising")
    base = core.compute_base(p)
    assert bool(core.zero_delta(p, base).all())
    tr = core.Tracker()
    out = core.patch_components(p, base, [(0, 0), (1, 3)], tr)
    assert out == {(0, 0): 0.0, (1, 3): 0.0} and tr.forward == 0


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_shortcut_faithfulness_equals_plain_forwards(arch_model, direction):
    arch, model = arch_model
    p, base = _problem(model, "heads", direction, True)
    q, qb = _problem(model, "heads", direction, False)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(6, *p.site.shape, generator=g) > 0.5
    keep[0, 0] = True  # a circuit keeping all of layer 0: resumes at layer 1
    fast = CI.circuit_metrics(p, base, keep, core.Tracker())
    slow = CI.circuit_metrics(q, qb, keep, core.Tracker())
    assert base.prefix is not None and qb.prefix is None
    scale = max(float(slow.abs().max()), float(qb.f_base.abs().max()))
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5 * scale), (arch, fast, slow)


def test_audit_verify_uses_the_prefix(arch_model):
    """The public path (audit with ap) gives the same map with and without a shared prefix
    computed once: compare against a problem whose prefix is switched off."""
    arch, model = arch_model
    pairs = prefix_pairs()
    r = pa.audit(model, pairs, methods=["ap"])
    p, base = _problem(model, "heads", "noising", False)
    from patchaudit.estimators.methods import ap

    plain = ap(p, base).values
    scale = max(float(plain.abs().max()), float(base.f_base.abs().max()))
    assert torch.allclose(r.scores["ap"], plain.float(), rtol=1e-5, atol=1e-5 * scale), arch


def test_report_cost_states_the_memory_plan(arch_model):
    arch, model = arch_model
    pairs = prefix_pairs()
    one = one_copy_budget(model, pairs, methods=["ap"])
    small = pa.audit(model, pairs, methods=["ap"], memory_budget_mb=one)
    big = pa.audit(model, pairs, methods=["ap"], memory_budget_mb=512)
    ps, pb = small.cost["plan"], big.cost["plan"]
    assert ps["max_copies"] == 1 and ps["memory_budget_mb"] == round(one, 1)
    assert pb["max_copies"] > 1 and pb["memory_budget_mb"] == 512
    assert pb["max_copies"] * pb["per_copy_mb"] <= 512
    assert "forward" not in ps and "budget" in pb["note"]  # a plan, not a pass


@pytest.mark.parametrize("where", ["second", "last"])
def test_resume_skips_earlier_blocks_with_same_numbers(arch_model, where):
    """A forward resumed at block L no longer runs blocks 0..L-1 (the bridge ran them and threw
    their output away): the wrapped HF blocks before L are not called, and the logits equal
    those of the bridge's own resume (skipping off) and of the full forward."""
    arch, model = arch_model
    p, base = _problem(model, "heads", "noising", True)
    assert base.resid is not None
    layer = 1 if where == "second" else len(model.blocks) - 1
    assert compat._returns_tensor(model)  # (probed once per model, with one forward)
    calls = [0] * len(model.blocks)
    hooks = [
        b.original_component.register_forward_hook(
            lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + 1)
        )
        for k, b in enumerate(model.blocks)
    ]
    try:
        with torch.no_grad():
            fast = core.run(p, base.resid[layer], start_at_layer=layer)
            seen = list(calls)
            model._patchaudit_blocks_return_tensor = False  # the bridge's resume: no skipping
            try:
                slow = core.run(p, base.resid[layer], start_at_layer=layer)
            finally:
                del model._patchaudit_blocks_return_tensor
            full = core.run(p, p.base_tokens)
    finally:
        for h in hooks:
            h.remove()
    assert seen[:layer] == [0] * layer, (arch, seen)
    assert all(c == 1 for c in seen[layer:]), (arch, seen)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5), arch
    assert torch.allclose(fast, full, rtol=1e-4, atol=1e-4), arch
    # the blocks' own forward is back afterwards
    assert all("forward" not in vars(b) for b in model.blocks)


def test_patching_alone_takes_no_backward(arch_model):
    """compute_base(grad=False) skips the backward: the same activations, residuals and
    metrics as the full base, no gradient; patching on it gives the same ap; an audit of ap
    alone costs no backward, and such a base is not reused where a gradient is needed."""
    arch, model = arch_model
    p, full = _problem(model, "heads", "denoising", True)
    tr = core.Tracker()
    q = core.make_problem(model, prefix_pairs().tokenize(model), "heads", "logit_diff", "denoising")
    lean = core.compute_base(q, tr, grad=False)
    # the shared prefix runs once; then the two suffixes, as two copies of one forward
    assert (tr.prefix, tr.forward, tr.backward) == (1, 1, 0)
    assert full.has_grad and not lean.has_grad
    for a, b in zip(full.a_base + full.a_src, lean.a_base + lean.a_src, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(full.f_base, lean.f_base) and torch.allclose(full.f_src, lean.f_src)
    assert full.resid is not None and lean.resid is not None
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full.resid, lean.resid, strict=True))
    comps = [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]
    x = core.patch_components(p, full, comps, core.Tracker())
    y = core.patch_components(q, lean, comps, tr)
    assert tr.prefix == 1  # the patched forwards reuse the base pass's prefix cache
    assert all(abs(x[c] - y[c]) <= 1e-5 * max(1.0, abs(x[c])) for c in comps)
    pairs = prefix_pairs()
    rep = pa.audit(model, pairs, methods=["ap"])
    assert rep.base is not None and not rep.base.has_grad
    assert rep.cost["base"]["backward"] == 0 and rep.cost["ap"]["backward"] == 0
    rep2 = pa.audit(model, pairs, methods=["atp"], base=rep.base)  # needs a gradient
    assert rep2.base is not None and rep2.base.has_grad
    assert torch.isfinite(rep2.scores["atp"]).all()


@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
@pytest.mark.parametrize("site", ["heads", "mlp", "resid", "q", "k", "v"])
def test_base_through_prefix_equals_plain_base(arch_model, site, direction, metric):
    """The gradient-free base with the shortcuts (prefix once, both suffixes in one forward)
    keeps what the plain one keeps, at every position: activations, residual streams, the
    metric of both runs and the clean reference distribution."""
    arch, model = arch_model
    tp = prefix_pairs().tokenize(model)
    bases = []
    for shortcuts in (True, False):
        q = core.make_problem(model, tp, site, metric, direction, shortcuts=shortcuts)
        tr = core.Tracker()
        bases.append(core.compute_base(q, tr, grad=False))
        assert tr.prefix == (1 if shortcuts else 0)
    lean, plain = bases
    assert lean.prefix is not None and plain.prefix is None
    pairs = [
        *zip(lean.a_base + lean.a_src, plain.a_base + plain.a_src, strict=True),
        *zip(lean.resid or [], plain.resid or [], strict=True),
        (lean.f_base, plain.f_base),
        (lean.f_src, plain.f_src),
        (lean.ref_logprobs, plain.ref_logprobs),
    ]
    assert len(lean.resid or []) == len(plain.resid or []) > 0
    for a, b in pairs:
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (arch, site, direction, metric)


def test_cpu_kernels_give_the_same_forward(arch_model):
    """The faster CPU kernels (short-row attention softmax, fused tanh GELU) are engaged only
    without autograd, give the plain forward's logits to rounding, and leave the model as it
    was."""
    arch, model = arch_model
    tokens = prefix_pairs().tokenize(model).clean
    before = {id(m): dict(vars(m)) for m in model.modules()}
    with torch.no_grad():
        plain = model(tokens)
        swapped = []
        with compat.cpu_kernels(model):
            swapped = [m for m in model.modules() if "_masked_softmax" in vars(m)]
            with compat.cpu_kernels(model):  # nested: the outer one's swap stays
                pass
            assert all("_masked_softmax" in vars(m) for m in swapped)
            fast = model(tokens)
    assert len(swapped) == model.cfg.n_layers  # every attention took the short-row softmax
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)
    assert {id(m): dict(vars(m)) for m in model.modules()}.keys() == before.keys()
    assert all("_masked_softmax" not in vars(m) for m in model.modules())
    with compat.cpu_kernels(model):  # a graph is recorded: nothing is swapped
        assert all("_masked_softmax" not in vars(m) for m in model.modules())


def test_short_row_softmax_matches_torch():
    calls = []

    def orig(x, dtype=None):
        calls.append(x.shape)
        return torch.softmax(x, -1, dtype=dtype)

    fast = compat._short_row_softmax(orig)
    x = torch.randn(3, 2, 5, 7)
    x = x.masked_fill(torch.ones(5, 7, dtype=torch.bool).triu(1), -torch.inf)  # causal
    with torch.no_grad():
        assert torch.allclose(fast(x), torch.softmax(x, -1), atol=1e-7)
        assert not calls  # taken by the fast path
        assert fast(x, dtype=torch.float64).dtype == torch.float64
        y = x.clone()
        y[0, 0, 0] = -torch.inf  # a row that sees no key: the original decides
        fast(y)
        assert len(calls) == 1
        fast(torch.randn(2, compat.SHORT_ROWS + 1))  # a long row: the original
        assert len(calls) == 2
    fast(x)  # autograd on: the original
    assert len(calls) == 3
