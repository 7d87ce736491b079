"""Edges (METHODS.md, "Edges"): edge patching against an independent hook-based path patch,
EAP against node AtP, EAP = edge patching where the downstream is linear, the planted model's
true edges, edge circuits, and the edge report's JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch

import patchaudit as pa
from patchaudit.estimators import edges as E
from patchaudit.estimators.compat import cpu_kernels
from patchaudit.estimators.core import Tracker, make_problem
from patchaudit.report import Report
from tests.unit.conftest import ARCH_PARAMS, random_model, random_pairs

#: every architecture whose blocks add their heads' and MLPs' outputs to the residual stream
#: as they are (Gemma-2 normalises them first: refused, see the last test)
EDGE_ARCHS = [a for a in ARCH_PARAMS if getattr(a, "values", [a])[0] != "gemma2"]


@pytest.fixture(scope="module", params=EDGE_ARCHS)
def arch64(request):
    """A random model of each architecture in float64 (the equalities are exact up to
    rounding) and its pairs."""
    return request.param, random_model(request.param, torch.float64), random_pairs(2, 7)


def _outputs(model, tokens) -> dict[str, torch.Tensor]:
    """Every sender's output, from the plain (non-split) forward: the embedding (the residual
    stream entering block 0), each head's z through its own W_O, each MLP's output."""
    keep: dict[str, torch.Tensor] = {}

    def cap(name):
        def hook(act, hook):
            keep[name] = act.detach()
            return act

        return hook

    n = int(model.cfg.n_layers)
    names = ["blocks.0.hook_resid_pre"]
    names += [f"blocks.{i}.attn.hook_z" for i in range(n)]
    names += [f"blocks.{i}.hook_mlp_out" for i in range(n)]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(x, cap(x)) for x in names])
    out = {"emb": keep["blocks.0.hook_resid_pre"]}
    for i in range(n):
        w_o = model.blocks[i].attn.W_O  # [heads, d_head, d_model]
        z = keep[f"blocks.{i}.attn.hook_z"]
        for h in range(int(model.cfg.n_heads)):
            out[f"{i}.{h}"] = z[:, :, h] @ w_o[h]
        out[f"m{i}"] = keep[f"blocks.{i}.hook_mlp_out"]
    return out


def path_patch(model, tp, key: str) -> float:
    """Edge patching written independently of the engine: the plain forward of the clean
    prompts, with the receiver's own input recomputed from the residual stream plus the
    sender's change (q / k / v: the block's first norm and that head's projection applied by
    hand at ``attn.hook_q|k|v``; an MLP: ``ln2.hook_in``; the logits: ``ln_final.hook_in``)."""
    sender, receiver = key.split("->")
    d = (_outputs(model, tp.corrupted)[sender] - _outputs(model, tp.clean)[sender]).detach()
    parts = receiver.split(".")
    hooks = []
    if len(parts) == 3:
        layer, head, kind = int(parts[0]), int(parts[1]), parts[2]
        blk = model.blocks[layer]
        resid: dict[str, torch.Tensor] = {}

        def grab(act, hook):
            resid["x"] = act
            return act

        def proj(x):
            w = getattr(blk.attn, f"W_{kind.upper()}")[head]
            y = blk.ln1.original_component(x) @ w
            b = getattr(blk.attn, f"b_{kind.upper()}", None)
            return y + b[head] if b is not None else y

        def swap(act, hook):
            assert torch.allclose(proj(resid["x"]), act[:, :, head], atol=1e-9)  # the hand path
            act = act.clone()
            act[:, :, head] = proj(resid["x"] + d)
            return act

        hooks = [
            (f"blocks.{layer}.hook_resid_pre", grab),
            (f"blocks.{layer}.attn.hook_{kind}", swap),
        ]
    else:
        name = "ln_final.hook_in" if receiver == "logits" else f"blocks.{receiver[1:]}.ln2.hook_in"
        hooks = [(name, lambda act, hook: act + d)]
    # the model's own CPU kernels, as the engine's patched forwards take them (Llama's eager
    # attention takes its softmax in float32 even in a float64 model: two softmax kernels
    # would differ by its rounding)
    with torch.no_grad(), cpu_kernels(model):
        lg = model.run_with_hooks(tp.clean, fwd_hooks=hooks)
        lg0 = model(tp.clean)
    idx = torch.arange(len(tp))

    def ld(x):
        last = x[idx, tp.last_pos]
        return last[idx, tp.answer_ids] - last[idx, tp.wrong_ids]

    return float((ld(lg) - ld(lg0)).mean())


def _sample(g: E.Graph) -> list[str]:
    """One edge of each receiver kind from each sender kind, late and early."""
    want = {}
    for k in g.keys:
        s, r = k.split("->")
        sk = "emb" if s == "emb" else ("mlp" if s.startswith("m") else "head")
        rk = r.split(".")[-1] if "." in r else ("logits" if r == "logits" else "mlp")
        want.setdefault((sk, rk), k)
    return sorted(want.values())


def test_edge_patching_equals_path_patch(arch64):
    arch, model, pairs = arch64
    tp = pairs.tokenize(model)
    g = E.graph(model)
    keys = _sample(g)
    assert any(k.endswith(".k") for k in keys) and any(k.endswith("logits") for k in keys)
    got = pa.verify(model, pairs, keys, site="edges").values
    # Llama's eager attention takes its softmax in float32 even in a float64 model: the two
    # paths (one resumed mid-network) agree to that rounding, 1e-5 of the largest effect
    tol = 1e-5 * max(abs(v) for v in got.values()) if arch == "llama" else 1e-9
    for k in keys:
        ref = path_patch(model, tp, k)
        assert got[k] == pytest.approx(ref, rel=1e-5, abs=tol), (arch, k)
    assert max(abs(v) for v in got.values()) > 1e-4  # the effects are not all zero


def test_outgoing_edges_together_equal_node_patching(arch64):
    arch, model, pairs = arch64
    g = E.graph(model)
    for sender, site, comp in (("1.2", "heads", (1, 2)), ("m0", "mlp", (0, 0))):
        out = [k for k in g.keys if k.startswith(sender + "->")]
        keep = [k for k in g.keys if k not in out]
        f = pa.faithfulness(model, pairs, keep, site="edges")
        node = pa.verify(model, pairs, [comp], site=site).values[comp]
        assert f.m - f.m_all == pytest.approx(node, rel=1e-5, abs=1e-9), (arch, sender)


def test_eap_sums_to_node_atp(arch64):
    arch, model, pairs = arch64
    r = pa.audit(model, pairs, site="edges", methods=("atp",))
    heads = pa.audit(model, pairs, site="heads", methods=("atp",)).scores["atp"]
    mlp = pa.audit(model, pairs, site="mlp", methods=("atp",)).scores["atp"]
    eap = r.scores["atp"].double()
    sums: dict[str, float] = {}
    for k, v in zip(r.edges, eap.tolist(), strict=True):
        s = k.split("->")[0]
        sums[s] = sums.get(s, 0.0) + v
    for (i, h), v in [((i, h), float(heads[i, h])) for i in range(2) for h in range(4)]:
        assert sums[f"{i}.{h}"] == pytest.approx(v, rel=1e-5, abs=1e-9), (arch, i, h)
    for i in range(2):
        assert sums[f"m{i}"] == pytest.approx(float(mlp[i, 0]), rel=1e-5, abs=1e-9)


def _linear_final_norm_gpt2():
    """A random GPT-2 whose final LayerNorm divides by a constant instead of the standard
    deviation (a permanent hook on ``ln_final.hook_scale``): everything downstream of the
    logits receiver's input is then linear ((x - mean) / c * w + b, the unembedding, the
    logit difference)."""
    model = random_model("gpt2", torch.float64)

    def constant(act, hook):
        return torch.full_like(act, 2.5)

    model.add_hook("ln_final.hook_scale", constant, is_permanent=True)
    return model


def test_eap_equals_edge_patching_where_downstream_is_linear():
    model = _linear_final_norm_gpt2()
    pairs = random_pairs(2, 7)
    r = pa.audit(model, pairs, site="edges", methods=("atp", "ig", "ap"), ig_steps=3)
    logit = [i for i, k in enumerate(r.edges) if k.endswith("->logits")]
    other = [i for i, k in enumerate(r.edges) if not k.endswith("->logits")]
    eap, ap, ig = (r.scores[m].double() for m in ("atp", "ap", "ig"))
    assert torch.allclose(eap[logit], ap[logit], rtol=1e-5, atol=1e-7)
    assert torch.allclose(ig[logit], eap[logit], rtol=1e-5, atol=1e-7)  # constant gradient
    # elsewhere the network is not linear: the check can fail
    assert (eap[other] - ap[other]).abs().max() > 1e-4


def test_hvp_term_matches_finite_difference():
    """The edge's own quadratic form from one-hot probes equals the second difference of
    edge patching with the delta scaled by +-h."""
    model = random_model("gpt2", torch.float64)
    pairs = random_pairs(2, 7)
    tp = pairs.tokenize(model)
    p = make_problem(model, tp, "heads", "logit_diff", "noising")
    g = E.graph(model)
    pick = [g.index[k] for k in ("emb->1.0.k", "0.1->1.2.q", "m0->logits", "1.3->m1")]
    signs = torch.zeros(len(pick), g.n_edges)
    signs[torch.arange(len(pick)), torch.tensor(pick)] = 1.0
    eb, y = E.edge_base(p, g, signs=signs)
    assert y is not None
    q = y.sum(0)[pick]
    h = 1e-3
    tr = Tracker()
    delta = eb.delta.clone()
    vals = []
    for s in (h, -h):
        eb.delta = delta * s
        vals.append(E.patch_edges(p, eb, pick, tr))
    eb.delta = delta
    for j, e in enumerate(pick):
        fd = (vals[0][e] + vals[1][e]) / h**2
        assert float(q[j]) == pytest.approx(fd, rel=1e-3, abs=1e-6)


def test_planted_edge_patching_ranks_true_edges_first():
    model = pa.load_model("planted")
    pairs = pa.PromptPairs.from_task("planted", n=4, seed=0)
    true = pa.models.planted.ground_truth()["edges"]
    keys = {e["edge"] for e in true}
    g = E.graph(model)
    assert keys <= set(g.keys)  # every shipped key names an edge of the model
    r = pa.audit(model, pairs, site="edges", methods=("ap",))
    ap = r.scores["ap"].abs()
    is_true = torch.tensor([k in keys for k in r.edges])
    assert float(ap[is_true].min()) > 10 * float(ap[~is_true].max())


def test_edge_report_round_trip_and_flags(tmp_path):
    model = random_model("gpt2")
    pairs = random_pairs()
    r = pa.audit(model, pairs, site="edges", methods=("atp", "hvp"), hvp_probes=2)
    assert r.edges is not None and r.scores["hvp"].shape == (len(r.edges),)
    assert r.flags is not None and r.flags.shape == (len(r.edges),)
    assert r.calibration is not None and "uncalibrated" in r.calibration["why"]
    d = json.loads(json.dumps(r.to_dict()))
    assert d["edges"] == r.edges and len(d["flag_reasons"]) == len(r.edges)
    r2 = Report.from_dict(d)
    assert r2.edges == r.edges
    assert torch.equal(r2.flags, r.flags)
    assert torch.allclose(r2.scores["hvp"], r.scores["hvp"])
    assert json.dumps(r2.to_dict()) == json.dumps(d)
    top = r.circuit(3)
    assert [c["edge"] for c in top] == [
        r.edges[i] for i in r.estimate.abs().argsort(descending=True)[:3]
    ]
    assert "edges" in repr(r)
    v = pa.verify(model, pairs, [top[0]["edge"]], site="edges", base=r.base)
    assert v.cost["forward"] == 1  # the cached base: one patched forward
    r.base.save(str(tmp_path / "edges.safetensors"))  # the service's activation cache
    back = pa.BaseCache.load(str(tmp_path / "edges.safetensors"))
    assert isinstance(back, E.EdgeBase) and back.graph.keys == r.edges
    v2 = pa.verify(model, pairs, [top[0]["edge"]], site="edges", base=back)
    assert v2.values == v.values and v2.cost["forward"] == 1
    with pytest.raises(ValueError, match="not an edge"):
        pa.verify(model, pairs, ["1.0->0.1.q"], site="edges")
    with pytest.raises(ValueError, match="no edge version"):
        pa.audit(model, pairs, site="edges", methods=("mhvp",))


def test_edge_circuit_curve_and_nodes():
    model = random_model("gpt2")
    pairs = random_pairs()
    r = pa.audit(model, pairs, site="edges", methods=("atp",))
    c = pa.circuit_curve(model, pairs, r.scores["atp"], site="edges", sizes=[5, 20])
    assert c.sizes[0] == 0 and c.sizes[-1] == len(r.edges)
    assert c.faithfulness[0] == 0.0 and c.faithfulness[-1] == 1.0
    assert c.m_empty == pytest.approx(r.metric_src, rel=1e-4, abs=1e-5)  # every edge patched
    assert 0.0 <= c.cmd and c.order[0] in r.edges
    g = E.graph(model)
    nodes = g.components([g.index["0.1->1.2.q"], g.index["m0->logits"]])
    assert nodes["heads"] == [[0, 1], [1, 2]] and nodes["mlps"] == [0] and nodes["logits"]


@pytest.mark.slow
def test_post_norm_model_is_refused_clearly():
    model = random_model("gemma2")
    with pytest.raises(ValueError, match="normalise each block's output"):
        pa.audit(model, random_pairs(), site="edges", methods=("atp",))
