"""Smoke test of the benchmark code paths on a micro random model: the JSON schema, the
defaults it would write and the report generator. Checks correctness, never timings."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from patchaudit import defaults as D
from patchaudit.bench import accuracy as A
from patchaudit.bench import common as C
from patchaudit.bench import cost as K

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def acc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "accuracy.json"
    cfg = A.Config(
        "micro/random/heads",
        "micro",
        "random",
        None,
        "heads",
        n_sets=2,
        n_pairs=2,
        n_pos=6,
        probes=(1, 2),
        ig_steps=(2,),
        mhvp_steps=(1,),
        vocab=64,
    )
    before = D.DEFAULTS_FILE.read_text() if D.DEFAULTS_FILE.exists() else None
    r = A.run(str(out), configs=[cfg], write_defaults=False)
    after = D.DEFAULTS_FILE.read_text() if D.DEFAULTS_FILE.exists() else None
    assert before == after, "the smoke run must not touch defaults.json"
    return out, r


def test_accuracy_json_schema(acc):
    out, r = acc
    data = json.loads(out.read_text())
    assert data["kind"] == "accuracy"
    c = data["configs"]["micro/random/heads"]
    assert len(c["sets"]) == 2
    s = c["sets"][0]
    n = s["n_components"]
    for key in ("ap", "atp", "hvp_P1", "hvp_P2", "hvp_joint", "hvp_exact", "ig_K2", "mhvp_K1"):
        assert len(s["values"][key]) == n, key
    a = c["analysis"]
    for key in ("atp", "hvp_P2", "ig_K2"):
        row = a["methods"][key]
        for m in ("spearman", "pearson", "nmae", "topk_recall", "sign_agreement"):
            assert set(row[m]) == {"median", "q25", "q75", "n"}
        sp = row["spearman"]["median"]
        assert sp is None or -1.0 <= sp <= 1.0
    assert set(a["reliability"]) >= {"hvp_P1", "hvp_P2", "hvp_exact"}
    cur = a["sff"]["curve"]
    assert set(cur) == set(A.ORDERS)
    # verifying every component with ap gives ap back
    full = A.sff_curve(c["sets"], "hvp_P2")
    assert set(full["rho"]) == {f"{f:.2f}" for f in A.FRACTIONS}
    d = data["defaults"]
    assert set(d) == set(D._FALLBACK)
    assert d["bound_calibrated_on"] == {"metric": "logit_diff", "direction": "noising"}
    assert set(d["hvp_probes"]) == {"cpu", "cuda"} and 0 <= d["tau"] <= 1
    assert d["ig_steps"] == 2 and d["mhvp_steps"] == 1
    assert all(k in data["defaults_why"] for k in ("hvp_probes", "tau", "ig_steps", "mhvp_steps"))
    # the bound's calibration factor per model family and site, and the family's largest
    bs = d["bound_scale"]
    assert "default:heads" in bs and bs["default"] == max(v for k, v in bs.items() if ":" in k)


def test_bound_scale_per_site(monkeypatch):
    """A site's own factor, else its family's largest, else the other models' (site, then
    family): one site's heavy tail does not widen another site's bounds."""
    table = {"bundled": 9.0, "bundled:mlp": 9.0, "bundled:heads": 1.5, "default": 2.0}
    table["default:mlp"] = 3.0
    cal = {"metric": "logit_diff", "direction": "noising"}
    monkeypatch.setattr(D, "load", lambda: {"bound_scale": table, "bound_calibrated_on": cal})
    assert D.bound_scale("bundled", "heads") == 1.5
    assert D.bound_scale("bundled", "mlp") == 9.0
    assert D.bound_scale("bundled", "resid") == 9.0  # no calibration there: the family's largest
    assert D.bound_scale("bundled") == 9.0
    assert D.bound_scale("gpt2", "mlp") == 3.0 and D.bound_scale("gpt2", "heads") == 2.0
    assert D.bound_scale(None) == 2.0
    # a site's factor holds for the metric and direction it was calibrated on; any other takes
    # the family's largest
    assert D.bound_scale("bundled", "heads", "logit_diff", "noising") == 1.5
    assert D.bound_scale("bundled", "heads", "prob_diff", "denoising") == 9.0
    assert D.bound_scale("bundled", "heads", "logit_diff", "denoising") == 9.0
    assert D.bound_scale("gpt2", "mlp", "kl", "noising") == 2.0


def test_exact_second_order_is_at_least_as_good_as_atp_on_its_own_sets(acc):
    _, r = acc
    sets = r["configs"]["micro/random/heads"]["sets"]
    # ap is exact on itself; metrics of a perfect estimate
    s = sets[0]
    ap = torch.tensor(s["values"]["ap"]).numpy()
    m = C.all_metrics(ap, ap, s["total_effect"])
    assert m["nmae"] == 0 and m["topk_recall"] == 1 and m["sign_agreement"] == 1


def test_metric_helpers():
    import numpy as np

    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert C.spearman(x, x**3) == pytest.approx(1.0)
    assert C.nmae(x + 1, x) == pytest.approx(1 / 2.5)
    assert C.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert math.isnan(C.auroc(np.array([0.1, 0.2]), np.array([0, 0])))
    s = C.summary([1, 2, 3, float("nan")])
    assert s["median"] == 2 and s["n"] == 3


def test_cost_paths_and_report(acc, tmp_path):
    model = A.get_model("micro", 64)
    tp = C.random_token_pairs(2, 6, 64, seed=0).tokenize(model)
    r = K.bench_model(
        model,
        tp,
        torch.device("cpu"),
        probes=2,
        ig_steps=2,
        mhvp_steps=1,
        repeats=1,
        max_seconds=5.0,
        with_tl=True,
        with_exact=True,
        warmup=0,
        memory=False,
    )
    for name in (
        "forward",
        "atp",
        "hvp_P2",
        "ig_K2",
        "mhvp_K1",
        "screen_flag_fix",
        "ap",
        "hvp_exact",
        "tl_atp",
        "tl_ap_loop",
    ):
        assert "median_s" in r[name], (name, r[name])
        assert r[name]["median_s"] >= 0
    assert r["ap"]["passes"] >= 1 and r["tl_ap_loop"]["passes"] == 1 + 2 * 2
    # the report generator reads the JSON and writes tables, targets and plots
    res = tmp_path / "results"
    res.mkdir()
    out_acc, _ = acc
    (res / "accuracy.json").write_text(out_acc.read_text())
    C.write_json(
        res / "cost_cpu.json",
        {
            "kind": "cost",
            "environment": C.environment(torch.device("cpu")),
            "settings": {},
            "models": {
                "micro": {
                    "n_layers": 2,
                    "n_heads": 2,
                    "d_model": 16,
                    "n_components": 4,
                    "methods": r,
                }
            },
        },
    )
    spec = importlib.util.spec_from_file_location("make_report", ROOT / "bench" / "make_report.py")
    mr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mr)
    mr.main(
        [
            "--results",
            str(res),
            "--plots",
            str(tmp_path / "plots"),
            "--readme",
            str(tmp_path / "README.md"),
            "--docs",
            str(tmp_path / "BENCHMARKS.md"),
        ]
    )
    t = (res / "targets.md").read_text()
    assert "batched ap >= 3x faster" in t and "costs <= 3x atp" in t
    assert (tmp_path / "plots" / "roc.png").exists()
    short = (res / "README_tables.md").read_text()
    full = (tmp_path / "BENCHMARKS.md").read_text()
    assert "docs/BENCHMARKS.md" in short and "Cost on the CPU" not in short  # long tables: docs
    assert "Cost on the CPU" in full and "batched ap >= 3x faster" in full


def test_patching_case_compares_shortcuts_plain_and_tl():
    """Issue 13's side-by-side case on a micro model: the shortcut sweep shares the prefix,
    gives the plain sweep's numbers, and the report renders its table."""
    model = A.get_model("micro", 64)
    tp = K.middle_corruption_pairs(2, 8, 64, seed=0).tokenize(model)
    case = K.patching_case(model, tp, repeats=1, with_tl=True, memory=False)
    assert case["ap"]["shared_prefix"] == 4 and case["ap_plain"]["shared_prefix"] == 0
    assert case["max_rel_diff"] < 1e-5
    assert case["tl_over_ap"] > 0 and case["speedup_vs_plain"] > 0
    spec = importlib.util.spec_from_file_location("make_report", ROOT / "bench" / "make_report.py")
    mr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mr)
    case["model"] = "micro"
    md = "\n".join(mr.patching_md({"micro": case}))
    assert "| micro | 2 x 8 | 4 |" in md
    pr = {
        "dtype": "bfloat16",
        "n_pairs": 2,
        "n_pos": 8,
        "hvp_probes": 2,
        "archs": {
            "llama": {
                "rel_err_atp": 0.01,
                "rel_err_hvp": 0.02,
                "rel_err_ap": 0.03,
                "n_material": 4,
                "flag_agreement_material": 1.0,
            }
        },
    }
    assert "| Llama | 1.00e-02 | 2.00e-02 | 3.00e-02 | 100 % of 4 |" in "\n".join(
        mr.precision_md(pr)
    )
