"""Circuit-recovery benchmark (issue 12): for each configuration, every estimator's ranking
turned into a circuit curve (faithfulness of its top-k heads, MIB's node-level counterfactual
patching), with CPR, CMD and the size reaching 90 %, next to ap's ranking (the ceiling); on the
planted model the ROC AUC of each ranking against the circuit known by construction; the cost
of each ranking (its estimator's passes and seconds, base pass included).

Acceptance 3: on a random GPT-2 small (4 pairs x 16 tokens) a 16-size curve and a batched ap
sweep, both from the tokens, timed side by side in the same run.

    patchaudit bench circuits --out bench/results/circuits.json [--quick]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import common as C

log = logging.getLogger("patchaudit.bench")


@dataclass
class Config:
    name: str
    model: str  # "bundled", "planted", "gpt2-small" (random weights)
    task: str  # "ioi", "induction", "planted", "random"
    corruption: str | None
    n_pairs: int


def configs(quick: bool) -> list[Config]:
    n = 8 if quick else 16
    return [
        Config("bundled/ioi-swap", "bundled", "ioi", "swap", n),
        Config("bundled/ioi-abc", "bundled", "ioi", "abc", n),
        Config("bundled/induction", "bundled", "induction", "random", n),
        Config("bundled/greater_than", "bundled", "greater_than", "01", n),
        Config("planted/induction", "planted", "planted", "random", n),
        Config("gpt2-small-random/random", "gpt2-small", "random", None, 4),
    ]


def _model(name: str):
    import patchaudit as pa

    if name == "gpt2-small":
        return C.random_gpt2("small", device="cpu")
    return pa.load_model(name, device="cpu")


def _pairs(cfg: Config, model):
    import patchaudit as pa

    if cfg.task == "random":
        return C.random_token_pairs(cfg.n_pairs, 16, int(model.cfg.d_vocab), seed=0)
    return pa.PromptPairs.from_task(cfg.task, n=cfg.n_pairs, seed=0, corruption=cfg.corruption)


def run_config(cfg: Config, methods: tuple[str, ...], model=None) -> dict:
    import patchaudit as pa

    model = model if model is not None else _model(cfg.model)
    tp = _pairs(cfg, model).tokenize(model)
    t0 = time.perf_counter()
    rep = pa.audit(model, tp, methods=methods, ig_steps=16)
    audit_s = time.perf_counter() - t0
    shape = tuple(rep.scores["ap"].shape)
    out: dict = {
        "config": {**cfg.__dict__, "methods": list(methods)},
        "shape": list(shape),
        "n_components": int(shape[0] * shape[1]),
        "metric_clean": rep.metric_base,
        "metric_corrupted": rep.metric_src,
        "audit_seconds": audit_s,
        "rankings": {},
    }
    truth = None
    if cfg.model == "planted":
        from ..models import planted

        truth = planted.planted_mask().flatten().numpy()
        out["ground_truth"] = [list(x) for x in planted.planted_mask().nonzero().tolist()]
    for m in methods:
        curve = pa.circuit_curve(model, tp, rep.scores[m], base=rep.base)
        row = {
            "cpr": curve.cpr,
            "cmd": curve.cmd,
            "smallest_80": curve.smallest_80,
            "smallest_90": curve.smallest_90,
            "sizes": curve.sizes,
            "faithfulness": curve.faithfulness,
            "curve_cost": curve.cost,
            "ranking_cost": rep.cost[m],
        }
        if truth is not None:
            s = np.abs(rep.scores[m].detach().double().flatten().numpy())
            row["auc"] = C.auroc(s, truth)
            row["planted_rank"] = [curve.order.index(tuple(x)) + 1 for x in out["ground_truth"]]
        out["rankings"][m] = row
        log.info(
            "%s %s: CPR %.3f CMD %.3f k90 %s%s",
            cfg.name,
            m,
            curve.cpr,
            curve.cmd,
            curve.smallest_90,
            f" AUC {row['auc']:.3f}" if "auc" in row else "",
        )
    return out


def curve_vs_ap_sweep(model, repeats: int, warmup: int = 1) -> dict:
    """A 16-size circuit curve and a batched ap sweep on GPT-2 small (random weights, 4 pairs x
    16 tokens), both from the tokens (base pass included), timed side by side."""
    import patchaudit as pa

    tp = C.random_token_pairs(4, 16, int(model.cfg.d_vocab), seed=0).tokenize(model)
    n = int(model.cfg.n_layers * model.cfg.n_heads)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(int(model.cfg.n_layers), int(model.cfg.n_heads), generator=g)
    sizes = [int(round(x)) for x in np.linspace(n / 16, n, 16)]
    info: dict = {}

    def curve() -> None:
        c = pa.circuit_curve(model, tp, scores, sizes=sizes)
        info["curve_cost"] = c.cost
        info["curve_sizes"] = c.sizes

    def ap() -> None:
        r = pa.audit(model, tp, methods=("ap",))
        info["ap_cost"] = r.cost["ap"]

    cpu = torch.device("cpu")
    out = {
        "model": "gpt2-small (random weights)",
        "n_pairs": 4,
        "n_pos": 16,
        "n_components": n,
        "sizes": sizes,
    }
    if warmup == 0:  # one untimed forward warms the allocator and kernels for both
        with torch.no_grad():
            model(tp.clean)
    m_curve = C.measure(curve, cpu, repeats=repeats, warmup=warmup, memory=False)
    m_ap = C.measure(ap, cpu, repeats=repeats, warmup=warmup, memory=False)
    out["curve"] = {**m_curve, "cost": info["curve_cost"], "n_sizes": len(info["curve_sizes"])}
    out["ap_sweep"] = {**m_ap, "cost": info["ap_cost"]}
    out["ratio"] = m_curve["median_s"] / m_ap["median_s"]
    out["holds"] = m_curve["median_s"] <= m_ap["median_s"]
    log.info(
        "16-size curve %.3fs vs batched ap sweep %.3fs (ratio %.2f)",
        m_curve["median_s"],
        m_ap["median_s"],
        out["ratio"],
    )
    return out


def run(out: str, quick: bool = False) -> dict:
    from .accuracy import bundled_available

    t_start = time.perf_counter()
    torch.manual_seed(0)
    methods: tuple[str, ...] = (
        ("atp", "hvp", "atp_star", "graddrop", "ap")
        if quick
        else ("atp", "hvp", "ig", "mhvp", "sat", "atp_star", "graddrop", "ap")
    )
    res: dict = {
        "kind": "circuits",
        "mode": "quick" if quick else "full",
        "environment": C.environment(torch.device("cpu")),
        "site": "heads",
        "metric": "logit_diff",
        "direction": "noising",
        "faithfulness": "MIB node level: clean run, every head outside the circuit gets its "
        "corrupted activation; f = (m(C) - m(empty)) / (m(all) - m(empty))",
        "ranking": "by |score|; sizes every k (<= 64 components) or MIB's 0.1..100 %",
        "configs": {},
    }
    gpt2 = None
    for cfg in configs(quick):
        if cfg.model == "bundled" and not bundled_available():
            res["configs"][cfg.name] = {"skipped": "bundled model missing"}
            continue
        model = None
        if cfg.model == "gpt2-small":
            gpt2 = model = _model("gpt2-small")
        t0 = time.perf_counter()
        try:
            r = run_config(cfg, methods, model)
        except Exception as e:  # one failing configuration is recorded, not fatal
            log.exception("%s failed", cfg.name)
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        r["seconds"] = time.perf_counter() - t0
        res["configs"][cfg.name] = r
        res["seconds"] = time.perf_counter() - t_start
        C.write_json(out, res)
    # quick: 3 runs each after one shared warm-up forward; full: 5 runs each after a warm-up
    model = gpt2 or _model("gpt2-small")
    res["curve_vs_ap"] = curve_vs_ap_sweep(model, 3 if quick else 5, warmup=0 if quick else 1)
    res["seconds"] = time.perf_counter() - t_start
    C.write_json(out, res)
    return res
