"""Smoke test of the circuit-recovery benchmark on the planted model and a micro random GPT-2:
the JSON fields and the markdown table. Checks correctness, never timings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from patchaudit.bench import circuits as B
from patchaudit.bench import common as C

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_circuit_bench_paths_and_report():
    cfg = B.Config("planted/induction", "planted", "planted", "random", 4)
    r = B.run_config(cfg, ("atp", "ap"))
    assert r["n_components"] == 12 and len(r["ground_truth"]) == 4
    ap, atp = r["rankings"]["ap"], r["rankings"]["atp"]
    assert ap["auc"] == 1.0 and sorted(ap["planted_rank"]) == [1, 2, 3, 4]
    assert ap["sizes"] == list(range(13)) and ap["faithfulness"][0] == 0.0
    assert ap["cpr"] >= atp["cpr"] - 1e-9  # ap's ranking is the ceiling here
    assert atp["ranking_cost"]["backward"] == 1 and ap["curve_cost"]["backward"] == 0
    cv = B.curve_vs_ap_sweep(C.random_gpt2("micro"), repeats=1, warmup=0)
    assert cv["curve"]["n_sizes"] >= 2 and cv["ap_sweep"]["cost"]["forward"] >= 2
    assert isinstance(cv["holds"], bool) and cv["ratio"] > 0
    spec = importlib.util.spec_from_file_location("make_report", ROOT / "bench" / "make_report.py")
    assert spec is not None and spec.loader is not None
    mr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mr)
    md = mr.circuits_md(
        {
            "mode": "quick",
            "metric": "logit_diff",
            "direction": "noising",
            "configs": {cfg.name: r, "x/skipped": {"skipped": "bundled model missing"}},
            "curve_vs_ap": cv,
        }
    )
    assert "### planted/induction" in md and "| ap | " in md and "AUC" in md
    assert "not run: bundled model missing" in md and "16-size curve" in md
