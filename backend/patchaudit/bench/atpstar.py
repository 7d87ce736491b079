"""AtP* benchmark (issue 21): the QK fix (``atp_star``) and GradDrop (``graddrop``) side by side
with atp, hvp, ig and sat against activation patching on the bundled tasks, with their costs.

Per prompt set and site, every method runs through ``audit`` (its own base pass, so the passes
and rows are ``report.cost``'s) and ap is taken per pair (the same patched forwards). Measured
per method:

- ``spearman_abs_pairs``: Spearman of |score| against the mean over pairs of |ap| (the ranking
  GradDrop is built for: it scores a magnitude per pair);
- ``spearman_abs``: Spearman of |score| against |ap| (ap of the batch mean);
- ``spearman``: Spearman of the signed score against ap (not for graddrop, a magnitude);
- ``topk_recall``: the share of the top 10 % of components by |ap| that the top 10 % by
  |score| finds (the false negatives AtP* was made against);
- passes, rows and seconds.

``--quick`` (a shared 2-core machine): atp, atp_star and graddrop only, 3 sets of the heads
site per task and 2 of the q and k sites on induction; the full run (``make bench``) takes
every method, 8 sets, the heads, q, k and mlp sites of every task.

    patchaudit bench atpstar --out bench/results/atpstar.json [--quick]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import common as C

log = logging.getLogger("patchaudit.bench")

METHODS = ("atp", "atp_star", "graddrop", "hvp", "ig", "sat")
QUICK_METHODS = ("atp", "atp_star", "graddrop")  # --quick: AtP* against AtP alone
MAGNITUDE = ("graddrop", "atp_pairs")  # scores that are a magnitude, not a signed effect


@dataclass
class Config:
    name: str
    task: str
    corruption: str | None
    site: str
    n_sets: int
    n_pairs: int = 8


def configs(quick: bool) -> list[Config]:
    tasks = [
        ("ioi-swap", "ioi", "swap"),
        ("ioi-abc", "ioi", "abc"),
        ("induction", "induction", "random"),
        ("greater_than", "greater_than", "01"),
    ]
    if quick:
        out = [Config(f"bundled/{n}/heads", t, c, "heads", 3) for n, t, c in tasks]
        out += [Config(f"bundled/induction/{s}", "induction", "random", s, 2) for s in ("q", "k")]
        return out
    return [
        Config(f"bundled/{n}/{s}", t, c, s, 8)
        for n, t, c in tasks
        for s in ("heads", "q", "k", "mlp")
    ]


def _pairs(cfg: Config, seed: int, model=None):
    import patchaudit as pa

    if cfg.task == "random":  # random tokens (the smoke test's micro models)
        return C.random_token_pairs(cfg.n_pairs, 8, int(model.cfg.d_vocab), seed)
    if cfg.task == "induction":
        return pa.PromptPairs.from_task("induction", n=cfg.n_pairs, seed=seed)
    return pa.PromptPairs.from_task(cfg.task, n=cfg.n_pairs, seed=seed, corruption=cfg.corruption)


def ap_per_pair(model, tp, site: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ap of the batch mean, the mean over pairs of |ap|, and the mean over pairs of |AtP| (the
    per-pair magnitude GradDrop combines, without the dropped gradients) ([n_components] each)."""
    from ..audit import _problem
    from ..estimators import core

    p, _ = _problem(model, tp, site, "logit_diff", "noising", None)
    base = core.compute_base(p)
    comps = [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]
    per: dict = {}
    vals = core.patch_components(p, base, comps, core.Tracker(), per_pair=per)
    ap = np.array([vals[c] for c in comps])
    abs_pairs = np.array([float(per[c].abs().mean()) for c in comps])
    # per pair: batch * <g_row, delta> (the batch metric's gradient carries 1/batch)
    atp_rows = torch.stack(
        [p.site.dot(g, d) * p.batch for g, d in zip(base.grad, base.delta, strict=True)], dim=1
    )  # [batch, n_layers, n_comp]
    atp_abs = atp_rows.abs().mean(0).flatten().detach().cpu().double().numpy()
    return ap, abs_pairs, atp_abs


def run_set(model, cfg: Config, seed: int, methods: tuple[str, ...] = METHODS) -> dict:
    import patchaudit as pa

    tp = _pairs(cfg, seed, model).tokenize(model)
    ap, abs_pairs, atp_abs = ap_per_pair(model, tp, cfg.site)
    out: dict = {
        "seed": seed,
        "ap": ap.tolist(),
        "ap_abs_pairs": abs_pairs.tolist(),
        "atp_abs_pairs": atp_abs.tolist(),
        "methods": {},
    }
    for m in methods:
        r = pa.audit(model, tp, cfg.site, "logit_diff", "noising", methods=[m], seed=seed)
        c = r.cost[m]
        out["methods"][m] = {
            "values": r.scores[m].flatten().tolist(),
            "passes": int(c["passes"]),
            "rows": int(c["rows"]),
            "seconds": float(c["seconds"]),
        }
    return out


def scores(s: dict, m: str) -> dict:
    """The accuracy numbers of method ``m`` on one set."""
    est = np.array(s["methods"][m]["values"], dtype=float)
    ap = np.array(s["ap"], dtype=float)
    pairs = np.array(s["ap_abs_pairs"], dtype=float)
    out: dict[str, float | None] = {
        "spearman_abs_pairs": C.spearman(np.abs(est), pairs),
        "spearman_abs": C.spearman(np.abs(est), np.abs(ap)),
        "topk_recall": C.topk_recall(np.abs(est), np.abs(ap)),
    }
    out["spearman"] = None if m in MAGNITUDE else C.spearman(est, ap)
    return out


def table(sets: list[dict]) -> dict:
    """Per method: median and IQR over sets of each number, passes, rows and seconds; and
    ``atp_pairs``: the mean over pairs of |AtP| (atp's cost), GradDrop's combination without
    the dropped gradients, which tells the dropping from the per-pair absolute value."""
    out = {}
    for m in sets[0]["methods"]:
        rows = [scores(s, m) for s in sets]
        out[m] = {k: C.summary([r[k] for r in rows]) for k in rows[0]}
        for f in ("passes", "rows", "seconds"):
            out[m][f] = C.summary([s["methods"][m][f] for s in sets])
    if all("atp_abs_pairs" in s for s in sets) and "atp" in sets[0]["methods"]:
        rows = [
            scores({**s, "methods": {"atp_pairs": {"values": s["atp_abs_pairs"]}}}, "atp_pairs")
            for s in sets
        ]
        out["atp_pairs"] = {k: C.summary([r[k] for r in rows]) for k in rows[0]}
        for f in ("passes", "rows", "seconds"):
            out["atp_pairs"][f] = out["atp"][f]
    return out


def run(out: str, quick: bool = False) -> dict:
    from .accuracy import bundled_available, get_model

    t_start = time.perf_counter()
    torch.manual_seed(0)
    res: dict = {
        "kind": "atpstar",
        "mode": "quick" if quick else "full",
        "environment": C.environment(torch.device("cpu")),
        "metric": "logit_diff",
        "direction": "noising",
        "methods": list(QUICK_METHODS if quick else METHODS),
        "configs": {},
    }
    if not bundled_available():
        res["skipped"] = "bundled model missing"
        C.write_json(out, res)
        return {**res, "seconds": 0.0}
    model = get_model("bundled")
    for cfg in configs(quick):
        t0 = time.perf_counter()
        sets = []
        for i in range(cfg.n_sets):
            sets.append(run_set(model, cfg, 2000 + i, QUICK_METHODS if quick else METHODS))
            log.info("%s set %d/%d", cfg.name, i + 1, cfg.n_sets)
        res["configs"][cfg.name] = {
            "config": cfg.__dict__,
            "sets": sets,
            "table": table(sets),
            "seconds": time.perf_counter() - t0,
        }
        res["seconds"] = time.perf_counter() - t_start
        C.write_json(out, res)
    res["seconds"] = time.perf_counter() - t_start
    C.write_json(out, res)
    return res
