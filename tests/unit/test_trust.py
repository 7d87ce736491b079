"""The trust layer: the saturation-aware estimate (sat), the calibrated flag rule and its
reasons, and one unit of cost shared by ``report.cost`` and the benchmark."""

from __future__ import annotations

import math

import pytest
import torch

import patchaudit as pa
from patchaudit.audit import _problem
from patchaudit.estimators import methods as M
from patchaudit.estimators import reliability as R
from patchaudit.estimators.core import compute_base
from patchaudit.estimators.saturation import saturation
from tests.unit.conftest import ARCH_PARAMS, random_model


def _random_pairs(vocab: int = 64, n: int = 3, pos: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n, pos), generator=g)
    corr = torch.randint(0, vocab, (n, pos), generator=g)
    return pa.PromptPairs.from_tokens(clean, corr, [1, 2, 3][:n], [4, 5, 6][:n])


@pytest.mark.parametrize("arch", ARCH_PARAMS)
@pytest.mark.parametrize("site", ["heads", "mlp", "resid", "q", "k", "v"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_sat_with_every_softmax_linearised_is_atp(arch, site, direction):
    """The construction: with every softmax and the metric linearised, the forward-mode pass
    gives A1 exactly (1e-5 relative)."""
    model = random_model(arch)
    p, _ = _problem(model, _random_pairs(), site, "logit_diff", direction, None)
    b = compute_base(p)
    a1 = M.atp(p, b).values
    lin = saturation(p, b, exact_softmax=False, exact_metric=False, attribute=False)
    scale = float(a1.abs().max())
    assert float((lin.values - a1).abs().max()) <= 1e-5 * scale
    exact = saturation(p, b, attribute=False)
    assert bool(torch.isfinite(exact.values).all())


def test_sat_exact_metric_sees_kl_noising():
    """KL noising: A1 = 0 for every component, sat (the metric evaluated exactly) is not, and
    it lies far closer to activation patching."""
    model = random_model("gpt2")
    p, _ = _problem(model, _random_pairs(), "heads", "kl", "noising", None)
    b = compute_base(p)
    a1 = M.atp(p, b).values
    s = saturation(p, b, attribute=False).values
    ap = M.ap(p, b).values
    assert float(a1.abs().max()) < 1e-5
    assert float((s - ap).abs().sum()) < 0.5 * float(ap.abs().sum())


@pytest.fixture(scope="module")
def planted():
    return pa.load_model("planted", device="cpu")


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_planted_previous_token_head_flagged_for_saturation(planted, direction):
    """Acceptance 2: L0H0 (the previous-token head whose effect runs through the induction
    head's saturated softmax) is flagged with reason saturation naming L1H0, and sat is within
    50% of activation patching on it (AtP is ~0 there when noising)."""
    pairs = pa.PromptPairs.from_task("planted", n=16, seed=3)
    r = pa.audit(planted, pairs, "heads", "logit_diff", direction, ("atp", "hvp", "sat", "ap"))
    ap, sat = float(r.scores["ap"][0, 0]), float(r.scores["sat"][0, 0])
    assert abs(sat - ap) <= 0.5 * abs(ap), (sat, ap)
    assert bool(r.flags[0, 0])
    assert bool(r.flag_reasons["saturation"][0, 0])
    heads = r.saturation["0.0"]
    assert (heads[0]["layer"], heads[0]["head"]) == (1, 0), heads
    if direction == "noising":  # the failure mode: AtP sees nothing of a -3.3 effect
        assert abs(float(r.scores["atp"][0, 0])) < 0.05 * abs(ap)
    d = r.to_dict()
    assert d["saturation"]["0.0"][0]["layer"] == 1 and d["estimate_method"] in ("hvp", "sat")
    back = pa.Report.from_dict(d)
    assert back.saturation == r.saturation and back.estimate_method == r.estimate_method


def test_flag_rule_interval_material_and_cap():
    a1 = torch.tensor([[1.0, 0.0, 0.5, 1e-4]])
    est = torch.tensor([[1.0, 0.8, 0.5, 1e-4]])
    u = torch.tensor([[0.01, 0.8, 0.4, 1e-5]])
    cal = R.Calibration(scale=1.0, kappa=0.0)
    t = R.assess_calibrated(a1, est, u, total_effect=3.0, cal=cal, flag_cap=1.0)
    # 1.0 +- 0.01: trusted; 0.8 +- 0.8 reaches 0: flagged; 0.5 +- 0.4 admits an AtP error of
    # 0.5/0.1: flagged; 1e-4 +- 1e-5 lies under the materiality line: not material
    assert t.flags.tolist() == [[False, True, True, False]]
    assert t.material.tolist() == [[True, True, True, False]]
    assert t.material_threshold == pytest.approx(0.01 * 3.0)
    # the cap: at most one flag, the one that can reach furthest stays flagged
    t = R.assess_calibrated(a1, est, u, total_effect=3.0, cal=cal, flag_cap=0.25)
    assert t.flags.tolist() == [[False, True, False, False]]
    assert t.deferred.tolist() == [[False, False, True, False]]
    # the unexplained factor: a screen that explains 1% of the total effect is uncertain by it
    t = R.assess_calibrated(a1 * 0.01, est * 0.01, u * 0, total_effect=2.3001, cal=cal)
    assert t.unexplained == pytest.approx(100.0)
    assert bool(t.flags[0, 0])
    # the metric's own range clips the interval
    t = R.assess_calibrated(a1, est, u, 3.0, cal, feasible=(-0.2, 0.9), flag_cap=1.0)
    assert float(t.upper.max()) <= 0.9 and math.isfinite(float(t.lower.min()))


def test_uncalibrated_combination_says_so():
    from patchaudit import defaults

    c = defaults.flag_calibration("some-new-model", "resid", "kl", "denoising", None, True)
    assert not c.calibrated and "never calibrated" in c.why and "make bench" in c.why


def test_calibrated_combination_names_its_entry(tiny_model, tiny_pairs):
    from patchaudit import defaults

    table = defaults.load().get("flag_calibration") or {}
    if not table:
        pytest.fail("defaults.json has no flag_calibration: run make bench")
    c = defaults.flag_calibration("bundled", "heads", "prob_diff", "denoising", "ioi", True)
    assert c.key == "bundled:heads:prob_diff:denoising|atp+hvp+sat", c
    assert "calibrated by make bench" in c.why
    r = pa.audit(tiny_model, tiny_pairs, methods=("atp", "hvp"))
    assert r.calibration is not None and r.calibration["why"]
    assert r.to_dict()["calibration"]["why"] == r.calibration["why"]


@pytest.mark.parametrize(
    "method,k",
    [
        ("ap", 0),
        ("atp", 0),
        ("hvp", 4),
        ("hvp_joint", 0),
        ("hvp_exact", 0),
        ("sat", 0),
        ("ig", 3),
        ("mhvp", 2),
    ],
)
def test_report_cost_and_benchmark_agree(tiny_model, tiny_pairs, method, k):
    """Acceptance 4: the benchmark records, for every method, the passes and rows of
    ``report.cost`` for the same request (one unit: batched passes and the copies of the batch
    they carry)."""
    from patchaudit.bench import accuracy as A

    r = pa.audit(tiny_model, tiny_pairs, methods=[method], **A.method_settings(method, k))
    c = r.cost[method]
    assert c["passes"] == c["forward"] + c["backward"] and c["rows"] >= c["passes"]
    m = A.measure(tiny_model, tiny_pairs, "heads", 0, method, k)
    assert m["passes"] == c["passes"] and m["rows"] == c["rows"], (m, c)
    assert m["values"] == pytest.approx(r.scores[method].flatten().tolist())


def test_cost_unit_counts_copies(tiny_model, tiny_pairs):
    """IG with K steps: the base (2 forwards + 1 backward, one copy each) and one forward and
    one backward over K copies of the batch: 5 passes carrying 3 + 2K copies; ap: one patched
    forward per layer, carrying that layer's components."""
    k = 3
    r = pa.audit(tiny_model, tiny_pairs, methods=["ig"], ig_steps=k)
    assert (r.cost["ig"]["passes"], r.cost["ig"]["rows"]) == (5, 3 + 2 * k)
    r = pa.audit(tiny_model, tiny_pairs, methods=["ap"])
    n_layers, n_comp = r.scores["ap"].shape
    assert r.cost["ap"]["forward"] == 2 + n_layers
    assert r.cost["ap"]["rows"] == 2 + n_layers * n_comp
