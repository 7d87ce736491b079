"""Smoke test of the AtP* benchmark (``patchaudit bench atpstar``) on a micro random GPT-2: the
per-set fields, the table, the markdown and the README sentence. Checks correctness, never
timings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from patchaudit.bench import atpstar as B
from patchaudit.bench import common as C

ROOT = Path(__file__).resolve().parents[2]


def test_atpstar_bench_paths_and_report():
    model = C.random_gpt2("micro", vocab=64)
    sets = {}
    for site in ("heads", "q"):
        cfg = B.Config(f"micro/random/{site}", "random", None, site, 2, n_pairs=3)
        sets[cfg.name] = [B.run_set(model, cfg, s, B.QUICK_METHODS) for s in (0, 1)]
    s = sets["micro/random/heads"][0]
    n = len(s["ap"])
    assert n == model.cfg.n_layers * model.cfg.n_heads
    assert len(s["ap_abs_pairs"]) == n and len(s["atp_abs_pairs"]) == n
    # the mean of per-pair |x| bounds |mean x|
    assert np.all(np.array(s["ap_abs_pairs"]) >= np.abs(s["ap"]) - 1e-6)
    assert np.all(np.array(s["methods"]["graddrop"]["values"]) >= 0)
    assert s["methods"]["atp_star"]["values"] == s["methods"]["atp"]["values"]  # off q / k
    assert s["methods"]["graddrop"]["rows"] > s["methods"]["atp"]["rows"]
    q = sets["micro/random/q"][0]
    assert q["methods"]["atp_star"]["values"] != q["methods"]["atp"]["values"]  # the QK fix
    t = B.table(sets["micro/random/heads"])
    assert set(t) == {*B.QUICK_METHODS, "atp_pairs"}
    assert t["graddrop"]["spearman"] is not None and t["graddrop"]["spearman"]["n"] == 0
    assert t["atp"]["spearman"]["n"] == 2 and t["atp"]["passes"]["median"] == 3
    res = {
        "mode": "quick",
        "methods": list(B.QUICK_METHODS),
        "configs": {
            k: {"config": {"n_pairs": 3}, "sets": v, "table": B.table(v)} for k, v in sets.items()
        },
    }
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(
        "report_atpstar", ROOT / "bench" / "report_atpstar.py"
    )
    assert spec is not None and spec.loader is not None
    rep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rep)
    md = rep.atpstar_md(res)
    assert "### micro/random/heads (2 sets of 3 pairs)" in md and "| graddrop |" in md
    assert "mean per-pair abs atp" in md and "GradDrop vs AtP" in md
    sentence = rep.wins(res)
    assert sentence.startswith("**") and "AtP" in sentence
