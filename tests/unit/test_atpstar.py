"""AtP* (Kramár et al. 2024): the QK fix (``atp_star``) equals activation patching where the
network downstream of the attention pattern is linear (a toy attention layer, the metric linear
in its output); each GradDrop term equals AtP taken with an independent stop-gradient hook on
that layer's residual contribution, and the score is the paper's combination of them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

import patchaudit as pa
from patchaudit.estimators import methods as M
from patchaudit.tasks.metrics import per_example

from .conftest import random_pairs
from .test_properties import _problem


class ToyAttention(HookedRootModule):
    """One causal attention layer (3 heads) whose output z feeds the logits linearly: with q or
    k patched, the metric is a linear function of the pattern."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        h, dh, d, v = 3, 4, 12, 7
        self.cfg = SimpleNamespace(
            n_layers=1, n_heads=h, d_head=dh, d_model=d, d_vocab=v, n_ctx=16,
            default_prepend_bos=False,
        )  # fmt: skip
        self.embed = nn.Parameter(torch.randn(v, d, generator=g), requires_grad=False)
        self.pos = nn.Parameter(torch.randn(16, d, generator=g), requires_grad=False)
        for name in ("wq", "wk", "wv"):
            w = torch.randn(d, h, dh, generator=g) * (1.5 if name != "wv" else 0.5)
            setattr(self, name, nn.Parameter(w, requires_grad=False))
        self.unembed = nn.Parameter(torch.randn(h * dh, v, generator=g) / 2, requires_grad=False)
        blk = nn.Module()
        blk.attn = nn.Module()
        for hook in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z"):
            setattr(blk.attn, hook, HookPoint())
        self.blocks = nn.ModuleList([blk])
        self.setup()

    def forward(self, tokens):
        b, p = tokens.shape
        attn = self.blocks[0].attn
        x = self.embed[tokens] + self.pos[:p]
        q = attn.hook_q(torch.einsum("bpd,dhe->bphe", x, self.wq))
        k = attn.hook_k(torch.einsum("bpd,dhe->bphe", x, self.wk))
        v = attn.hook_v(torch.einsum("bpd,dhe->bphe", x, self.wv))
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / 2.0
        causal = torch.ones(p, p, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        pattern = attn.hook_pattern(scores.softmax(-1))
        z = attn.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return z.reshape(b, p, -1) @ self.unembed


def _toy_pairs():
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 7, (4, 6), generator=g)
    corr = torch.randint(0, 7, (4, 6), generator=g)
    return pa.PromptPairs.from_tokens(clean, corr, [1, 2, 3, 4], [5, 6, 0, 1])


@pytest.mark.parametrize("direction", ["noising", "denoising"])
@pytest.mark.parametrize("site", ["q", "k"])
def test_qk_fix_equals_ap_where_downstream_is_linear(site, direction):
    net = ToyAttention().double()
    r = pa.audit(
        net, _toy_pairs(), site=site, direction=direction, methods=["ap", "atp", "atp_star"]
    )
    ap, star = r.scores["ap"].double(), r.scores["atp_star"].double()
    scale = float(ap.abs().max())
    assert scale > 1e-2
    assert torch.allclose(star, ap, rtol=1e-9, atol=1e-9 * scale), (star, ap)
    # AtP itself is wrong here (the softmax), so the test has power
    assert float((r.scores["atp"].double() - ap).abs().max()) > 1e-2 * scale
    assert r.cost["atp_star"]["forward"] > r.cost["atp"]["forward"]


def test_atp_star_is_atp_off_the_qk_sites(tiny_model, tiny_pairs):
    for site in ("heads", "v"):
        r = pa.audit(tiny_model, tiny_pairs, site=site, methods=["atp", "atp_star"])
        assert torch.equal(r.scores["atp_star"], r.scores["atp"]), site
        assert r.cost["atp_star"]["passes"] == r.cost["atp"]["passes"]


@pytest.mark.parametrize("site", ["q", "k"])
def test_qk_fix_on_a_real_architecture_matches_a_plain_recomputation(arch_model, site):
    """On a real model, the fix from resumed one-block forwards equals a plain full forward with
    the component patched, its pattern change contracted with an independently taken dm/dA."""
    arch, model = arch_model
    p, base = _problem(model, random_pairs(), site)
    star = M.atp_star(p, base).values
    n = model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n)]
    zeros: dict[str, torch.Tensor] = {}
    pats: dict[str, torch.Tensor] = {}

    def keep(act, hook, name):
        pats[name] = act.detach()
        zeros[name] = torch.zeros_like(act, requires_grad=True)
        return act + zeros[name]

    with torch.enable_grad():
        lg = model.run_with_hooks(
            p.base_tokens,
            fwd_hooks=[(nm, lambda a, hook, nm=nm: keep(a, hook, nm)) for nm in names],
        )
        g = torch.autograd.grad(p.copies_metric(lg).sum(), [zeros[nm] for nm in names])
    ref = torch.zeros_like(star)
    for layer in range(n):
        for c in range(p.site.n_comp):
            src = base.a_src[layer]

            def patch(act, hook, c=c, src=src):
                act = act.clone()
                act[:, :, c] = src[:, :, c]
                return act

            got: list[torch.Tensor] = []
            with torch.no_grad():
                model.run_with_hooks(
                    p.base_tokens,
                    fwd_hooks=[
                        (p.site.hook_names[layer], patch),
                        (names[layer], lambda a, hook, got=got: got.append(a) or a),
                    ],
                )
            ref[layer, c] = ((got[0] - pats[names[layer]]) * g[layer]).sum()
    assert float(ref.abs().max()) > 0
    assert torch.allclose(star, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), (arch, site)


@pytest.mark.parametrize("site", ["heads", "mlp", "q"])
def test_graddrop_terms_equal_atp_with_an_independent_stop_gradient(arch_model, site):
    """Term l: AtP with the block's residual contribution stop-gradiented, taken here on the
    residual stream itself (x_post <- x_pre + (x_post - x_pre).detach()), per pair; the score
    is the mean over pairs of 1/(L-1) sum_l |term|."""
    arch, model = arch_model
    p, base = _problem(model, random_pairs(), site)
    est = M.graddrop(p, base)
    n = model.cfg.n_layers
    per_pair = []
    for drop in range(n):
        pre: dict[str, torch.Tensor] = {}
        eps = [torch.zeros_like(d, requires_grad=True) for d in base.delta]

        def add(act, hook, i, eps=eps):
            return act + eps[i]

        def keep_pre(act, hook, pre=pre):
            pre["x"] = act
            return act

        def cut(act, hook, pre=pre):
            return pre["x"] + (act - pre["x"]).detach()

        hooks = [
            (nm, lambda a, hook, i=i: add(a, hook, i)) for i, nm in enumerate(p.site.hook_names)
        ]
        hooks += [
            (f"blocks.{drop}.hook_resid_pre", keep_pre),
            (f"blocks.{drop}.hook_resid_post", cut),
        ]
        with torch.enable_grad():
            lg = model.run_with_hooks(p.base_tokens, fwd_hooks=hooks)
            f = per_example(p.metric, lg, p.targets).sum()  # per-pair gradients, unscaled
            gs = torch.autograd.grad(f, eps, allow_unused=True)
        rows = torch.stack(
            [
                torch.zeros(p.batch, p.site.n_comp) if gl is None else p.site.dot(gl, d)
                for gl, d in zip(gs, base.delta, strict=True)
            ],
            dim=1,
        )  # [batch, n_layers, n_comp]
        per_pair.append(rows)
        scale = float(rows.mean(0).abs().max())
        assert torch.allclose(est.detail.terms[drop], rows.mean(0), rtol=1e-4, atol=1e-5 * scale), (
            arch,
            site,
            drop,
        )
    pp = torch.stack(per_pair)  # [drop, batch, n_layers, n_comp]
    want = pp.abs().mean(1).sum(0) / (n - 1)
    assert torch.allclose(est.values, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    # dropping a layer downstream of a component changes its AtP (the test has power)
    atp = M.atp(p, base).values
    assert float((est.detail.terms[n - 1, 0] - atp[0]).abs().max()) > 1e-6
    # and a layer upstream of it changes nothing
    assert torch.allclose(est.detail.terms[0, n - 1], atp[n - 1], rtol=1e-4, atol=1e-7)


def test_graddrop_and_atp_star_cost_is_tracked(tiny_model, tiny_pairs):
    r = pa.audit(tiny_model, tiny_pairs, site="k", methods=["atp", "atp_star", "graddrop"])
    n = tiny_model.cfg.n_layers
    gd, star, base = r.cost["graddrop"], r.cost["atp_star"], r.cost["base"]
    assert gd["backward_rows"] - base["backward_rows"] == n  # one backward per layer
    assert gd["forward_rows"] - base["forward_rows"] == n
    # dm/dA (1 forward, 1 backward) and one block per component
    assert star["backward"] - base["backward"] == 1
    assert star["forward_rows"] - base["forward_rows"] == 1 + n * tiny_model.cfg.n_heads
    assert (r.scores["graddrop"] >= 0).all()
