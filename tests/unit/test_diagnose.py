"""pa.diagnose: the second-order term split by operation (METHODS.md, "The second-order term,
split by operation"). The shares add up to hvp_exact's q on real architectures, every site and
both directions; on toy models with a single downstream softmax / GELU the one share equals
the analytic second derivative."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

import patchaudit as pa
from patchaudit.estimators import core, methods
from patchaudit.estimators.diagnose import kind_of, split_second_order

from .conftest import ARCHS, random_model, random_pairs

SITES_SPLIT = ("heads", "mlp", "resid", "q", "k", "v")


def _problem(model, pairs, site, metric="logit_diff", direction="noising"):
    p = core.make_problem(model, pairs.tokenize(model), site, metric, direction)
    return p, core.compute_base(p)


def _all(p):
    return [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]


def _check_sum(model, site, direction, metric, arch=""):
    p, base = _problem(model, random_pairs(n=2, pos=6), site, metric, direction)
    q = methods.hvp_exact(p, base).q.double().flatten()
    s = split_second_order(p, base, _all(p))
    assert float(q.abs().max()) > 1e-6  # the model is non-linear: the test has power
    for i, comp in enumerate(s.components):
        total = sum(s.shares[i].values())
        assert total == pytest.approx(float(s.q[i]), rel=1e-12, abs=1e-15)
        # Gemma-2's RMSNorm computes in float32 inside a float64 model: hvp_exact and the shares
        # round differently there, relative to the terms' magnitude where they cancel
        scale = abs(float(q[i]))
        if arch == "gemma2":
            scale = max(scale, sum(abs(v) for v in s.shares[i].values()))
        assert abs(total - float(q[i])) <= 1e-5 * scale + 1e-12, (comp, total, q[i])
    return s


#: GPT-2 in the fast tier; the other architectures and sites in the slow tier.
CASES = [
    pytest.param(a, s, d, m, marks=() if (a, s) == ("gpt2", "heads") else pytest.mark.slow)
    for a in ARCHS
    for s in SITES_SPLIT
    for d, m in (("noising", "logit_diff"), ("denoising", "kl" if s != "mlp" else "logprob"))
]


@pytest.fixture(scope="module")
def models64():
    cache: dict[str, object] = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = random_model(arch, dtype=torch.float64)
        return cache[arch]

    return get


@pytest.mark.parametrize(("arch", "site", "direction", "metric"), CASES)
def test_shares_add_up_to_hvp_exact(models64, arch, site, direction, metric):
    s = _check_sum(models64(arch), site, direction, metric, arch)
    kinds = {kind_of(k) for sh in s.shares for k in sh}
    assert "norm" in kinds  # named from the real modules
    if site != "mlp" and arch != "neox":
        # (NeoX's parallel residual: a layer-0 MLP or query changes nothing at the metric's
        # position, whose token is the same in both prompts: its path runs through attention)
        assert {"mlp.act", "mlp.gate"} & kinds
    assert {"attn.qk", "attn.softmax", "attn.pv"} & kinds
    if metric in ("kl", "logprob"):
        assert "metric" in kinds


@pytest.mark.parametrize("site", ["q", "k"])
def test_q_and_k_sites_meet_their_own_softmax_locally(models64, site):
    """A head's query / key meets its own QK^T (linear in one factor: no share) and its own
    softmax: local curvature, counted as local; a value meets pattern x V linearly (none)."""
    d = pa.diagnose(models64("gpt2"), random_pairs(n=2, pos=6), [(0, 1)], site=site)
    sh = d.shares[0]
    assert "L0.attn.softmax" in sh and "L0.attn.qk" not in sh
    assert "L0.attn.softmax" in d.to_dict()["components"][0]["local_keys"]
    assert d.local(0) == pytest.approx(sum(v for k, v in sh.items() if k.startswith("L0.attn.")))
    assert set(d.heads[0]) >= {"L0H1.attn.softmax"}
    assert all(not k.startswith("L0H") or k.startswith("L0H1.") for k in d.heads[0])
    v = split_second_order(*_problem(models64("gpt2"), random_pairs(n=2, pos=6), "v"), [(0, 1)])
    assert not any(k.startswith("L0.") and kind_of(k).startswith("attn.") for k in v.shares[0])


@pytest.mark.slow
def test_gemma2_soft_caps_and_sandwich_norms_are_their_own_keys(models64):
    s = _check_sum(models64("gemma2"), "heads", "noising", "logprob", "gemma2")
    keys = {k for sh in s.shares for k in sh}
    assert {"L1.attn.softcap", "logits.softcap", "L0.ln1_post", "L0.ln2_post"} <= keys
    assert kind_of("L1.attn.softcap") == "attn.softcap" and kind_of("L0.ln2_post") == "norm"


def test_attention_shares_split_by_head_add_up(models64):
    p, base = _problem(models64("gpt2"), random_pairs(n=2, pos=6), "heads")
    s = split_second_order(p, base, [(0, 1), (0, 2)])
    for sh, hd in zip(s.shares, s.heads, strict=True):
        for key, v in sh.items():
            if kind_of(key).startswith("attn."):
                layer, kind = key.split(".", 1)
                per_head = [x for k, x in hd.items() if re.match(rf"^{layer}H\d+\.{kind}$", k)]
                assert len(per_head) >= 1
                assert sum(per_head) == pytest.approx(v, rel=1e-9, abs=1e-15)


# --- toy models with one non-linearity, against the analytic second derivative -------------


class OneNonlinearity(HookedRootModule):
    """tokens -> embedding -> hook_z (the patched heads) -> linear -> ONE non-linearity
    (a softmax inside ``blocks.1.attn`` or a GELU inside ``blocks.1.mlp``) -> linear logits."""

    def __init__(self, kind: str, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg = SimpleNamespace(
            n_layers=1,
            n_heads=3,
            d_head=4,
            d_model=12,
            d_vocab=7,
            n_ctx=16,
            default_prepend_bos=False,
        )
        self.kind = kind
        self.embed = nn.Parameter(torch.randn(7, 12, generator=g), requires_grad=False)
        self.w = nn.Parameter(torch.randn(12, 9, generator=g), requires_grad=False)
        self.u = nn.Parameter(torch.randn(9, 7, generator=g), requires_grad=False)
        self.blocks = nn.ModuleList([nn.Module(), nn.Module()])
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.hook_z = HookPoint()
        self.blocks[1].attn = _Softmax()
        self.blocks[1].mlp = _Gelu()
        self.setup()

    def pre(self, tokens):
        b, p = tokens.shape
        return self.embed[tokens].view(b, p, 3, 4)

    def forward(self, tokens):
        b, p = tokens.shape
        z = self.blocks[0].attn.hook_z(self.pre(tokens)).reshape(b, p, 12)
        s = z @ self.w
        a = self.blocks[1].attn(s) if self.kind == "softmax" else self.blocks[1].mlp(s)
        return a @ self.u


class _Softmax(nn.Module):
    def forward(self, s):
        return torch.softmax(s, -1)


class _Gelu(nn.Module):
    def forward(self, s):
        return torch.nn.functional.gelu(s)


def _toy_pairs():
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 7, (3, 5), generator=g)
    corr = torch.randint(0, 7, (3, 5), generator=g)
    return pa.PromptPairs.from_tokens(clean, corr, [1, 2, 3], [4, 5, 6])


def _analytic(net: OneNonlinearity, pairs, layer_head):
    """q of head h by hand: u = z W at the last position, udot = delta_h W, gbar = (U[:, ans] -
    U[:, wrong]) / B, and f'' of the softmax p*((udot - p.udot)^2 - Var_p(udot)) or of the GELU
    phi(u) (2 - u^2) udot^2."""
    _, h = layer_head
    clean, corr = pairs.tokens.clean, pairs.tokens.corrupted
    b, n = clean.shape
    zc, zx = net.pre(clean).double(), net.pre(corr).double()
    delta = torch.zeros_like(zc)
    delta[:, :, h] = (zx - zc)[:, :, h]
    w, u = net.w.double(), net.u.double()
    uu = (zc.reshape(b, n, 12) @ w)[:, -1]  # [B, 9]
    ud = (delta.reshape(b, n, 12) @ w)[:, -1]
    ans, wrong = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    gbar = (u[:, ans] - u[:, wrong]).T / b  # [B, 9]
    if net.kind == "softmax":
        pr = torch.softmax(uu, -1)
        m = (pr * ud).sum(-1, keepdim=True)
        var = (pr * (ud - m) ** 2).sum(-1, keepdim=True)
        second = pr * ((ud - m) ** 2 - var)
    else:
        phi = torch.exp(-(uu**2) / 2) / math.sqrt(2 * math.pi)
        second = phi * (2 - uu**2) * ud**2
    return float((gbar * second).sum())


@pytest.mark.parametrize(("kind", "key"), [("softmax", "L1.attn.softmax"), ("gelu", "L1.mlp.act")])
def test_one_nonlinearity_matches_its_analytic_second_derivative(kind, key):
    net = OneNonlinearity(kind).double()
    pairs = _toy_pairs()
    d = pa.diagnose(net, pairs, [(0, 0), (0, 1), (0, 2)])
    ex = pa.audit(net, pairs, methods=["hvp_exact"]).q.double()
    for i, comp in enumerate(d.components):
        want = _analytic(net, pairs, comp)
        assert abs(want) > 1e-4  # the toy is visibly non-linear
        assert set(d.shares[i]) == {key}  # the one non-linearity, named from its module
        assert d.shares[i][key] == pytest.approx(want, rel=1e-9)
        assert float(d.q[i]) == pytest.approx(float(ex[comp]), rel=1e-9)
        assert d.downstream(i) == pytest.approx(want, rel=1e-9)  # layer 1: downstream of layer 0
        assert d.local(i) == 0.0


# --- the public API ------------------------------------------------------------------------


def test_diagnose_api_dict_and_consistency():
    model = random_model("gpt2")
    pairs = random_pairs(n=3, pos=8)
    d = pa.diagnose(model, pairs, [(1, 0), "0.2"], site="heads", metric="prob_diff")
    r = pa.audit(model, pairs, metric="prob_diff", methods=("ap", "atp", "hvp_exact", "sat"))
    out = d.to_dict()
    assert [c["component"] for c in out["components"]] == [[1, 0], [0, 2]]
    assert out["cost"]["forward"] > 0 and out["cost"]["backward"] > 0
    for c in out["components"]:
        li, hi = c["component"]
        q = c["q"]
        assert sum(c["shares"].values()) == pytest.approx(q, rel=1e-6, abs=1e-12)
        assert c["local"] + c["downstream"] == pytest.approx(q, rel=1e-6, abs=1e-12)
        assert sum(c["by_layer"].values()) == pytest.approx(q, rel=1e-6, abs=1e-12)
        assert c["local"] == 0.0  # a head's output meets only W_O (linear) in its own layer
        assert q == pytest.approx(float(r.q[li, hi]), rel=1e-4, abs=1e-9)
        assert c["ap"] == pytest.approx(float(r.scores["ap"][li, hi]), rel=1e-5, abs=1e-9)
        assert c["a1"] == pytest.approx(float(r.scores["atp"][li, hi]), rel=1e-5, abs=1e-9)
        assert c["saturation"] == pytest.approx(float(r.scores["sat"][li, hi]), rel=1e-5, abs=1e-9)
        assert c["remainder"] == pytest.approx(c["ap"] - c["a1"] - q / 2, abs=1e-9)
        assert sum(c["fractions"][k] for k in ("local", "downstream")) == pytest.approx(1.0)
        assert re.match(r"^\d+ % from .+; local curvature \d+ %\.$", c["sentence"]), c["sentence"]
        assert "metric" in c["shares"]  # prob_diff's softmax is its own kind


def test_diagnose_refuses_bad_components():
    model = random_model("gpt2")
    pairs = random_pairs(n=2, pos=6)
    with pytest.raises(ValueError, match="outside"):
        pa.diagnose(model, pairs, [(7, 0)])
    with pytest.raises(ValueError, match="non-empty"):
        pa.diagnose(model, pairs, [])
    with pytest.raises(ValueError, match="site"):
        pa.diagnose(model, pairs, [(0, 0)], site="nope")


# --- the paper's table (bench) ---------------------------------------------------------------


def test_bench_table_rows_and_the_readme_sentence():
    import sys
    from pathlib import Path

    from patchaudit.bench.diagnose import measure

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from report_diagnose import diagnose_md, finding

    model = random_model("gpt2")
    pairs = random_pairs(n=2, pos=6)
    rows = [
        {"model": "random gpt2", "task": "random tokens", **measure(model, pairs, site, "noising")}
        for site in ("heads", "resid")
    ]
    heads, resid = rows
    for r in rows:
        assert r["local_share"] + r["downstream_share"] == pytest.approx(1.0)
        assert sum(r["kinds"].values()) == pytest.approx(1.0)
        assert r["top_kinds"] and r["n_with_q"] > 0
    # a head's output meets only W_O in its own layer: no local curvature at all
    assert heads["local_share"] == 0.0 and heads["holds"] is True
    # the residual stream entering a block meets that block's norms, attention and MLP
    assert resid["local_share"] > 0.0
    md = diagnose_md({"rows": rows, "n_pairs": 2})
    assert md.count("| random gpt2 | random tokens |") == 2
    sentence = finding({"rows": rows})
    n_held = sum(r["holds"] for r in rows)
    assert f"holds in {n_held} of 2" in sentence
    if n_held < 2:
        assert "does not hold for the resid site" in sentence
