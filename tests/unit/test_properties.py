"""The properties of METHODS.md on toy models whose downstream function is exactly quadratic or
linear (built on TransformerLens's own hook machinery), and on random-initialised GPT-2,
GPT-NeoX (Pythia), Llama, Gemma-2 and Qwen2 models from transformers configs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

import patchaudit as pa
from patchaudit.estimators import core
from patchaudit.estimators.sites import component_mask

from .conftest import ARCH_PARAMS, random_pairs


class ToyNet(HookedRootModule):
    """Two 'attention' layers with head outputs hook_z; the logits are a linear or quadratic
    function of both layers' head outputs, so F(eps) is exactly linear / quadratic."""

    def __init__(self, quadratic: bool, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg = SimpleNamespace(
            n_layers=2,
            n_heads=3,
            d_head=4,
            d_model=12,
            d_vocab=7,
            n_ctx=16,
            default_prepend_bos=False,
        )
        self.quadratic = quadratic
        self.embed = nn.Parameter(torch.randn(7, 12, generator=g), requires_grad=False)
        self.mix = nn.Parameter(torch.randn(12, 12, generator=g) / 3, requires_grad=False)
        self.u = nn.Parameter(torch.randn(12, 7, generator=g) / 3, requires_grad=False)
        self.v = nn.Parameter(torch.randn(12, 7, generator=g) / 3, requires_grad=False)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            blk = nn.Module()
            blk.attn = nn.Module()
            blk.attn.hook_z = HookPoint()
            self.blocks.append(blk)
        self.setup()

    def forward(self, tokens):
        b, p = tokens.shape
        x = self.embed[tokens]  # [batch, pos, 12]
        z0 = self.blocks[0].attn.hook_z(x.view(b, p, 3, 4)).reshape(b, p, 12)
        x1 = torch.cumsum(z0, dim=1) @ self.mix  # linear, mixes positions causally
        z1 = self.blocks[1].attn.hook_z(x1.view(b, p, 3, 4)).reshape(b, p, 12)
        h = z0 + z1
        out = h @ self.u
        if self.quadratic:
            out = out + (h @ self.v) ** 2 + (z0 @ self.v) * (z1 @ self.v)
        return out


def toy_pairs():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 7, (3, 5), generator=g)
    corr = torch.randint(0, 7, (3, 5), generator=g)
    return pa.PromptPairs.from_tokens(clean, corr, [1, 2, 3], [4, 5, 6])


def test_quadratic_site_hvp_exact_equals_ap_and_hvp_converges():
    net = ToyNet(quadratic=True).double()
    pairs = toy_pairs()
    r = pa.audit(net, pairs, methods=["ap", "atp", "hvp_exact", "mhvp"], mhvp_steps=1)
    ap, exact = r.scores["ap"].double(), r.scores["hvp_exact"].double()
    assert torch.allclose(exact, ap, rtol=1e-6, atol=1e-9)
    # AtP alone is wrong here (curvature), so the test has power
    assert (r.scores["atp"] - r.scores["ap"]).abs().max() > 1e-3
    # hvp with P probes -> hvp_exact as P grows (statistical tolerance: error ~ 1/sqrt(P))
    errs = []
    for probes in (2, 32, 512):
        rp = pa.audit(net, pairs, methods=["hvp"], hvp_probes=probes, seed=0)
        err = float((rp.scores["hvp"] - exact).abs().mean())
        errs.append(err)
        # within 4 standard errors on average
        assert err <= 4 * float(rp.q_se.mean()) / 2 + 1e-9
    assert errs[2] < errs[0] / 4


def test_linear_site_atp_equals_ap():
    net = ToyNet(quadratic=False).double()
    r = pa.audit(net, toy_pairs(), methods=["ap", "atp", "hvp_exact"])
    assert torch.allclose(r.scores["atp"].double(), r.scores["ap"].double(), rtol=1e-6, atol=1e-9)
    assert float(r.q.abs().max()) < 1e-9


def _F(p, base, layer, comp, scale):
    """F(scale * delta_c e_c) - exact forward with the perturbation."""
    eps = []
    for i, d in enumerate(base.delta):
        e = torch.zeros_like(d)
        if i == layer:
            idx = torch.full((d.shape[0],), comp, dtype=torch.long)
            e = d * component_mask(p.site, idx, d) * scale
        eps.append(e)
    with torch.no_grad():
        return float(p.copies_metric(core.run(p, p.base_tokens, eps=eps)).sum())


def _fd(p, base, layer, comp, h):
    """(F(h d) - 2F(0) + F(-h d)) / h^2, Richardson-extrapolated from h and h/2 (error O(h^4)).
    A moderate h: some architectures (Llama's RMSNorm) compute in float32 even in a float64
    model, so a tiny h would measure rounding noise."""

    def plain(hh):
        return (
            _F(p, base, layer, comp, hh)
            - 2 * _F(p, base, layer, comp, 0.0)
            + _F(p, base, layer, comp, -hh)
        ) / hh**2

    return (4 * plain(h / 2) - plain(h)) / 3


def _problem(model, pairs, site="heads"):
    tp = pairs.tokenize(model)
    p = core.make_problem(
        model,
        tp,
        site,
        "logit_diff",
        "noising",
    )
    return p, core.compute_base(p)


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_q_matches_finite_difference(arch):
    from .conftest import random_model

    model = random_model(arch, dtype=torch.float64)
    p, base = _problem(model, random_pairs())
    from patchaudit.estimators.methods import hvp_exact

    q = hvp_exact(p, base).q
    h = 0.1
    for layer, comp in [(0, 0), (0, 3), (1, 1), (1, 2)]:
        fd = _fd(p, base, layer, comp, h)
        assert fd == pytest.approx(float(q[layer, comp]), rel=5e-3, abs=1e-6), (arch, layer, comp)


def test_ap_matches_transformerlens_patching(arch_model):
    """Our batched denoising ap + m(x~) == TL's serial get_act_patch_attn_head_out_all_pos."""
    import transformer_lens.patching as tlp

    arch, model = arch_model
    pairs = random_pairs()
    tp = pairs.tokenize(model)
    r = pa.audit(model, pairs, direction="denoising", methods=["ap"])
    _, cache = model.run_with_cache(tp.clean)

    def metric(lg):
        last = lg[:, -1]
        return (
            last.gather(1, tp.answer_ids[:, None]) - last.gather(1, tp.wrong_ids[:, None])
        ).mean()

    theirs = tlp.get_act_patch_attn_head_out_all_pos(model, tp.corrupted, cache, metric)
    ours = r.scores["ap"] + r.metric_base
    assert torch.allclose(ours, theirs.float(), rtol=1e-5, atol=1e-5 * float(theirs.abs().max())), (
        arch
    )


def test_atp_matches_transformerlens_attribution_patch(arch_model):
    """Our denoising atp == TL's attribution_patch, summed over positions, mean over pairs."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    arch, model = arch_model
    pairs = random_pairs()
    tp = pairs.tokenize(model)
    r = pa.audit(model, pairs, direction="denoising", methods=["atp"])
    theirs = torch.zeros_like(r.scores["atp"])
    for prm in model.parameters():  # TL's sweep needs a graph through the weights
        prm.requires_grad_(True)
    try:
        for b in range(len(tp)):

            def metric(lg, b=b):
                return lg[0, -1, tp.answer_ids[b]] - lg[0, -1, tp.wrong_ids[b]]

            res = attribution_patch(model, tp.clean[b : b + 1], tp.corrupted[b : b + 1], metric)
            for node, s in res.node_scores.items():
                if node.kind == "attn_head_out":
                    theirs[node.layer, node.head] += s / len(tp)
    finally:
        for prm in model.parameters():
            prm.requires_grad_(False)
    ours = r.scores["atp"]
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max())), arch


@pytest.mark.parametrize("site", ["heads", "mlp", "resid", "q", "k", "v"])
def test_perturbation_hooks_change_the_logits(arch_model, site):
    """A hook on a view the model never reads would make every estimate silently zero."""
    arch, model = arch_model
    p, base = _problem(model, random_pairs(), site)
    # random, not constant: a constant shift of the residual is removed by LayerNorm
    g = torch.Generator().manual_seed(0)
    eps = [torch.randn(d.shape, generator=g) * 0.5 for d in base.delta]
    with torch.no_grad():
        plain = core.run(p, p.base_tokens)
        pert = core.run(p, p.base_tokens, eps=eps)
    assert float((pert - plain).abs().max()) > 1e-3, (arch, site)
    assert (
        float(pa.audit(model, random_pairs(), site=site, methods=["atp"]).scores["atp"].abs().max())
        > 0
    )


@pytest.mark.parametrize("site", ["mlp", pytest.param("resid", marks=pytest.mark.slow)])
def test_other_sites_shapes_and_finite_difference(site):
    from patchaudit.estimators.methods import hvp_exact

    from .conftest import random_model

    model = random_model("gpt2", dtype=torch.float64)
    p, base = _problem(model, random_pairs(), site)
    r = pa.audit(model, random_pairs(), site=site, methods=["ap", "atp", "hvp_exact"])
    expect = (2, 1) if site == "mlp" else (2, 8)
    assert tuple(r.scores["ap"].shape) == expect
    assert r.labels["col_name"] == ("mlp" if site == "mlp" else "position")
    q = hvp_exact(p, base).q
    h = 0.1
    for layer, comp in [(0, 0), (1, 0)] + ([(1, 5)] if site == "resid" else []):
        fd = _fd(p, base, layer, comp, h)
        assert fd == pytest.approx(float(q[layer, comp]), rel=1e-3, abs=1e-7), (site, layer, comp)


def test_seeded_determinism(arch_model):
    arch, model = arch_model
    pairs = random_pairs()
    a = pa.audit(model, pairs, methods=["atp", "hvp", "ig"], hvp_probes=3, ig_steps=3, seed=7)
    b = pa.audit(model, pairs, methods=["atp", "hvp", "ig"], hvp_probes=3, ig_steps=3, seed=7)
    c = pa.audit(model, pairs, methods=["hvp"], hvp_probes=3, seed=8)
    for m in a.scores:
        assert torch.equal(a.scores[m], b.scores[m]), m
    assert torch.equal(a.flags, b.flags) and torch.equal(a.reliability, b.reliability)
    assert not torch.equal(a.scores["hvp"], c.scores["hvp"])  # the seed does matter


def test_hvp_converges_to_exact_on_real_architecture(arch_model):
    arch, model = arch_model
    pairs = random_pairs()
    exact = pa.audit(model, pairs, methods=["hvp_exact"]).q
    err = []
    for probes in (1, 64):
        q = pa.audit(model, pairs, methods=["hvp"], hvp_probes=probes, seed=0).q
        err.append(float((q - exact).abs().mean()))
    assert err[1] < err[0], (arch, err)


@pytest.mark.parametrize("site", ["heads", "mlp", "resid"])
def test_patching_resumes_mid_network_exactly(arch_model, site):
    """Patched forwards that start at the patched layer from the cached residual stream and
    unembed only the metric's position give the same numbers as full forwards."""
    arch, model = arch_model
    p, base = _problem(model, random_pairs(), site)
    assert p.can_resume and p.can_cut and base.resid is not None
    comps = [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]
    fast = core.patch_components(p, base, comps, core.Tracker())
    p.can_resume = p.can_cut = False
    slow = core.patch_components(p, base, comps, core.Tracker())
    for c in comps:
        assert fast[c] == pytest.approx(slow[c], rel=1e-4, abs=1e-6), (arch, site, c)
