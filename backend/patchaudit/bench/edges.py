"""Edge benchmark (issue 22): EAP, EAP-IG and the HVP-corrected edge estimate against edge
patching (the ground truth) on the bundled tasks, a random GPT-2 and the planted model:
Spearman, NMAE, flag recall and costs; edge-circuit CPR / CMD per ranking (MIB's edge
convention); the planted edges' AUC and the rank of each true edge per ranking.

Acceptance 4, measured side by side in the same run on a random GPT-2 small (12 x 12, d_model
768, 4 pairs x 16 tokens, from the tokens): the edge screen (EAP + HVP-corrected, default
probes) against the node screen (AtP + HVP on heads, default probes), and edge patching of the
top 100 edges against a batched node ap sweep.

    patchaudit bench edges --out bench/results/edges.json [--quick]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import common as C

log = logging.getLogger("patchaudit.bench")

RANKINGS = ("atp", "ig", "hvp", "ap")


@dataclass
class Config:
    name: str
    model: str  # "bundled", "planted", "gpt2-random"
    task: str
    corruption: str | None
    n_pairs: int


def configs(quick: bool) -> list[Config]:
    n = 4 if quick else 8
    out = [
        Config("planted/induction", "planted", "planted", "random", n),
        Config("gpt2-random/random", "gpt2-random", "random", None, 4),
        Config("bundled/ioi-abc", "bundled", "ioi", "abc", n),
    ]
    if not quick:
        out += [
            Config("bundled/induction", "bundled", "induction", "random", n),
            Config("bundled/greater_than", "bundled", "greater_than", "01", n),
        ]
    return out


def _model(name: str):
    import patchaudit as pa

    if name == "gpt2-random":  # 3 layers x 4 heads, d_model 64: 268 edges
        return C.random_arch("gpt2", layers=3, heads=4, width=64, vocab=256)
    return pa.load_model(name, device="cpu")


def _pairs(cfg: Config, model):
    import patchaudit as pa

    if cfg.task == "random":
        return C.random_token_pairs(cfg.n_pairs, 12, int(model.cfg.d_vocab), seed=0)
    return pa.PromptPairs.from_task(cfg.task, n=cfg.n_pairs, seed=0, corruption=cfg.corruption)


def flag_recall(rep, ap: np.ndarray) -> dict:
    """Of the material edges (|ap| >= 1% of the total effect) whose EAP error exceeds 50% of
    the true value, the share the screen flags; and the share of all edges flagged."""
    eap = rep.scores["atp"].double().numpy()
    flags = rep.flags.numpy() if rep.flags is not None else np.zeros_like(eap, dtype=bool)
    mat = np.abs(ap) >= 0.01 * abs(rep.total_effect)
    bad = mat & (np.abs(eap - ap) > 0.5 * np.abs(ap))
    return {
        "bad_edges": int(bad.sum()),
        "flag_recall": float(flags[bad].mean()) if bad.any() else None,
        "flagged_share": float(flags.mean()),
    }


def run_config(cfg: Config, model=None, curve_sizes=None) -> dict:
    import patchaudit as pa

    model = model if model is not None else _model(cfg.model)
    tp = _pairs(cfg, model).tokenize(model)
    t0 = time.perf_counter()
    rep = pa.audit(model, tp, site="edges", methods=RANKINGS, ig_steps=8)
    audit_s = time.perf_counter() - t0
    ap = rep.scores["ap"].double().numpy()
    out: dict = {
        "config": dict(cfg.__dict__),
        "n_edges": len(rep.edges or []),
        "metric_clean": rep.metric_base,
        "metric_corrupted": rep.metric_src,
        "audit_seconds": audit_s,
        "calibration": (rep.calibration or {}).get("why"),
        "flags": flag_recall(rep, ap),
        "rankings": {},
    }
    truth = None
    if cfg.model == "planted":
        keys = set(pa.models.planted.planted_edges())
        truth = np.array([k in keys for k in rep.edges or []])
        out["ground_truth"] = sorted(keys)
    for m in RANKINGS:
        est = rep.scores[m].double().numpy()
        row: dict = {**C.all_metrics(est, ap, rep.total_effect), "cost": rep.cost[m]}
        curve = pa.circuit_curve(
            model, tp, rep.scores[m], site="edges", sizes=curve_sizes, base=rep.base
        )
        row.update(
            {
                "cpr": curve.cpr,
                "cmd": curve.cmd,
                "smallest_80": curve.smallest_80,
                "smallest_90": curve.smallest_90,
                "sizes": curve.sizes,
                "faithfulness": curve.faithfulness,
                "curve_cost": curve.cost,
            }
        )
        if truth is not None:
            row["auc"] = C.auroc(np.abs(est), truth)
            order = list(curve.order)
            row["true_edge_rank"] = {k: order.index(k) + 1 for k in out["ground_truth"]}
        out["rankings"][m] = row
        log.info(
            "%s %s: Spearman %.3f NMAE %.3f CPR %.3f CMD %.3f%s",
            cfg.name,
            m,
            row["spearman"],
            row["nmae"],
            curve.cpr,
            curve.cmd,
            f" AUC {row['auc']:.3f}" if "auc" in row else "",
        )
    return out


def screen_and_patching_cost(repeats: int) -> dict:
    """Acceptance 4 on a random GPT-2 small (4 pairs x 16 tokens), everything from the tokens
    and timed side by side: the edge screen (atp + hvp on edges, default probes) vs the node
    screen (atp + hvp on heads, default probes); edge patching of the top 100 edges (by the
    edge screen's |estimate|) vs a batched ap sweep of the heads."""
    import patchaudit as pa

    model = C.random_gpt2("small", device="cpu")
    tp = C.random_token_pairs(4, 16, int(model.cfg.d_vocab), seed=0).tokenize(model)
    info: dict = {}

    def node_screen() -> None:
        r = pa.audit(model, tp, site="heads", methods=("atp", "hvp"))
        info["node_screen"] = r.cost.get("hvp")

    def edge_screen() -> None:
        r = pa.audit(model, tp, site="edges", methods=("atp", "hvp"))
        info["edge_screen"] = r.cost.get("hvp")
        info["n_edges"] = len(r.edges or [])
        info["top100"] = [c["edge"] for c in r.circuit(100)]
        info["probes"] = r.settings.get("hvp_probes")

    def node_ap() -> None:
        r = pa.audit(model, tp, site="heads", methods=("ap",))
        info["node_ap"] = r.cost.get("ap")

    def edge_ap() -> None:
        v = pa.verify(model, tp, info["top100"], site="edges")
        info["edge_ap"] = v.cost

    cpu = torch.device("cpu")
    with torch.no_grad():
        model(tp.clean)  # one untimed forward warms the allocator and kernels
    m_node = C.measure(node_screen, cpu, repeats=repeats, warmup=0, memory=False)
    m_edge = C.measure(edge_screen, cpu, repeats=repeats, warmup=0, memory=False)
    m_nap = C.measure(node_ap, cpu, repeats=repeats, warmup=0, memory=False)
    m_eap = C.measure(edge_ap, cpu, repeats=repeats, warmup=0, memory=False)
    screen_ratio = m_edge["median_s"] / m_node["median_s"]
    patch_ratio = m_eap["median_s"] / m_nap["median_s"]
    out = {
        "model": "gpt2-small (random weights, 12 x 12, d_model 768)",
        "n_pairs": 4,
        "n_pos": 16,
        "n_edges": info.get("n_edges"),
        "hvp_probes": info.get("probes"),
        "node_screen": {**m_node, "cost": info.get("node_screen")},
        "edge_screen": {**m_edge, "cost": info.get("edge_screen")},
        "node_ap_sweep": {**m_nap, "cost": info.get("node_ap")},
        "edge_patching_top100": {**m_eap, "cost": info.get("edge_ap")},
        "screen_ratio": screen_ratio,
        "screen_holds": screen_ratio <= 3.0,
        "patching_ratio": patch_ratio,
        "patching_holds": patch_ratio <= 2.0,
    }
    log.info(
        "edge screen %.2fs vs node screen %.2fs (x%.2f); edge patching top 100 %.2fs vs node ap "
        "sweep %.2fs (x%.2f)",
        m_edge["median_s"],
        m_node["median_s"],
        screen_ratio,
        m_eap["median_s"],
        m_nap["median_s"],
        patch_ratio,
    )
    return out


def run(out: str, quick: bool = False) -> dict:
    from .accuracy import bundled_available

    t_start = time.perf_counter()
    torch.manual_seed(0)
    res: dict = {
        "kind": "edges",
        "mode": "quick" if quick else "full",
        "environment": C.environment(torch.device("cpu")),
        "metric": "logit_diff",
        "direction": "noising",
        "methods": {
            "atp": "EAP",
            "ig": "EAP-IG (inputs, 8 steps)",
            "hvp": "HVP-corrected edge",
            "ap": "edge patching",
        },
        "faithfulness": "MIB edge level: clean run, every edge outside the circuit carries its "
        "sender's corrupted output; f = (m(C) - m(empty)) / (m(all) - m(empty))",
        "configs": {},
    }
    for cfg in configs(quick):
        if cfg.model == "bundled" and not bundled_available():
            res["configs"][cfg.name] = {"skipped": "bundled model missing"}
            continue
        t0 = time.perf_counter()
        try:
            r = run_config(cfg)
        except Exception as e:  # one failing configuration is recorded, not fatal
            log.exception("%s failed", cfg.name)
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        r["seconds"] = time.perf_counter() - t0
        res["configs"][cfg.name] = r
        res["seconds"] = time.perf_counter() - t_start
        C.write_json(out, res)
    res["acceptance"] = screen_and_patching_cost(repeats=1 if quick else 3)
    res["seconds"] = time.perf_counter() - t_start
    C.write_json(out, res)
    return res
