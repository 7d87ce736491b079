"""pa.inspect (issue 11, acceptance 1): per-pair values average to the map's value, per-position
rows sum to the per-pair value, per-pair ap averages to the verified value, attention rows sum
to 1, are causal and equal ``blocks.L.attn.hook_pattern`` read by an independent hook; on the
bundled model and on random GPT-2 / NeoX / Llama configs."""

from __future__ import annotations

import json

import pytest
import torch

import patchaudit as pa
from tests.unit.conftest import random_pairs

RTOL = 1e-5


def close(got: float, want: float, scale: float) -> None:
    """``got`` equals ``want`` to 1e-5 relative (to the map's largest |value| near zero)."""
    assert abs(got - want) <= RTOL * max(abs(want), scale) + 1e-9, (got, want, scale)


def independent_pattern(model, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """The head's pattern from a full, plain forward with a hook of its own."""
    cap = {}

    def keep(act, hook):
        cap["p"] = act[:, head].detach().float().clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep)])
    return cap["p"]


def check_detail(model, pairs, site, comp, direction, probes):
    methods = ("atp", "hvp", "hvp_exact")
    report = pa.audit(
        model, pairs, site=site, direction=direction, methods=methods, hvp_probes=probes
    )
    cell = (comp, 0) if site == "mlp" else comp
    ver = pa.verify(model, pairs, [cell], site=site, direction=direction, base=report.base)
    d = pa.inspect(
        model,
        pairs,
        comp,
        site=site,
        direction=direction,
        methods=methods,
        base=report.base,
        hvp_probes=probes,
        verified_ap=ver.per_pair[cell],
    )
    tp = pairs.tokenize(model)
    n = len(tp)
    for m in methods:
        scale = float(report.scores[m].abs().max())
        assert d.per_pair[m].shape == (n,)
        close(float(d.per_pair[m].double().mean()), float(report.scores[m][cell]), scale)
        rows = d.per_position[m].double().sum(1)
        assert d.per_position[m].shape == (n, tp.clean.shape[1])
        torch.testing.assert_close(rows, d.per_pair[m].double(), rtol=RTOL, atol=1e-6 * scale)
    # first order: exact sums (same terms, same float sums)
    assert torch.equal(d.per_position["atp"].sum(1), d.per_pair["atp"])
    # ap: kept from verify's batched forward, and recomputed by inspect itself
    # ap = m(patched) - m(base): float32 rounding is relative to the metric's own size
    ap_scale = max(abs(ver.values[cell]), abs(report.metric_base))
    close(float(d.per_pair["ap"].double().mean()), ver.values[cell], ap_scale)
    close(d.verified, ver.values[cell], ap_scale)
    again = pa.inspect(
        model,
        pairs,
        comp,
        site=site,
        direction=direction,
        methods=("atp",),
        base=report.base,
        verified_ap=True,
    )
    torch.testing.assert_close(again.per_pair["ap"], d.per_pair["ap"], rtol=1e-5, atol=1e-6)
    rel = d.per_pair["reliability"]
    assert rel.shape == (n,) and bool(((rel > 0) & (rel <= 1)).all())
    assert d.reliability_source == "hvp_exact"
    # the whole detail is JSON-safe
    js = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert js["key"] == (str(comp) if site == "mlp" else f"{comp[0]}.{comp[1]}")
    assert (
        len(js["tokens"]["clean"]) == n and len(js["per_position"]["hvp"][0]) == tp.clean.shape[1]
    )
    if site == "heads":
        layer, head = comp
        clean, corrupted = d.attention["clean"], d.attention["corrupted"]
        for name, pat, toks in (("clean", clean, tp.clean), ("corrupted", corrupted, tp.corrupted)):
            pos = toks.shape[1]
            assert pat.shape == (n, pos, pos), name
            torch.testing.assert_close(pat.sum(-1), torch.ones(n, pos), rtol=0, atol=1e-5)
            assert float(pat.triu(1).abs().max()) == 0.0, f"{name} attends to later tokens"
            torch.testing.assert_close(
                pat, independent_pattern(model, toks, layer, head), rtol=1e-5, atol=1e-6
            )
        assert len(js["attention"]["clean"]) == n
    else:
        assert d.attention is None and js["attention"] is None
    return d


@pytest.fixture(scope="module")
def bundled():
    return pa.load_model("bundled", device="cpu")


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_inspect_bundled_heads(bundled, direction):
    pairs = pa.PromptPairs.from_task("ioi", n=4, seed=0)
    # 4 probes on 16 heads: the Rademacher estimate ("mean" of the probes)
    d = check_detail(bundled, pairs, "heads", (2, 1), direction, probes=4)
    assert d.cost["forward"] >= 1 and d.settings["base_cached"] is True


def test_inspect_bundled_mlp_and_resid(bundled):
    pairs = pa.PromptPairs.from_task("induction", n=3, seed=1)
    check_detail(bundled, pairs, "mlp", 1, "noising", probes=2)
    tp = pairs.tokenize(bundled)
    pos = int((tp.clean != tp.corrupted).any(0).nonzero()[0])  # a position that differs
    d = check_detail(bundled, pairs, "resid", (1, pos), "noising", probes=2)
    # a resid component lives at one position: every other column is 0
    others = torch.cat([d.per_position["atp"][:, :pos], d.per_position["atp"][:, pos + 1 :]], 1)
    assert float(others.abs().max()) == 0.0


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_inspect_random_architectures(arch_model, direction):
    arch, model = arch_model
    pairs = random_pairs(n=3, pos=6)
    check_detail(model, pairs, "heads", (1, 2), direction, probes=3)


def test_inspect_without_base_and_errors(arch_model):
    _, model = arch_model
    pairs = random_pairs(n=2, pos=5)
    d = pa.inspect(model, pairs, (0, 1), methods=("atp",))
    assert d.settings["base_cached"] is False and "hvp" not in d.per_pair
    assert "reliability" not in d.per_pair and d.cost["forward"] >= 2
    with pytest.raises(ValueError, match="outside the 2 x 4 heads map"):
        pa.inspect(model, pairs, (2, 0), methods=("atp",))
    with pytest.raises(ValueError, match="a heads component is"):
        pa.inspect(model, pairs, 1, methods=("atp",))
    with pytest.raises(ValueError, match="not 'ig'"):
        pa.inspect(model, pairs, (0, 0), methods=("atp", "ig"))
    with pytest.raises(ValueError, match="verified_ap has 3 values for 2 pairs"):
        pa.inspect(model, pairs, (0, 0), methods=("atp",), verified_ap=[1.0, 2.0, 3.0])
