"""Trust benchmark: the calibrated flag rule, measured.

1. **Calibration.** For every built-in task x metric x direction (heads of the bundled model),
   the screen (atp + hvp + sat) runs on calibration prompt sets (seeds ``CAL_SEEDS``) next to
   activation patching. For each (family, site, metric, direction[, task]) and each screen
   (with and without ``sat``), pooled over the tasks (the calibration holds for any pairs), a
   grid search picks the shown estimate (hvp or sat), the relative term kappa and the
   interval scale that flag the fewest components while missing the fewest material
   components (|ap| >= 1% of sum |ap|) whose AtP or shown estimate is more than 50% off, on
   the calibration sets (``defaults.json``, ``flag_calibration``).
2. **Held-out flag quality.** On other seeds (``HELD_SEEDS``) the engine's own ``audit`` runs
   with those defaults: recall of misleading material components, share flagged, and the
   Screen-Flag-Fix saving (component forwards, batched passes, seconds) against a full sweep.
3. **Saturation.** The planted model's previous-token head (L0H0), whose effect runs through
   the induction head's saturated softmax: AtP, HVP, sat and ap, and the flag reasons.
4. **Integration error of mhvp and IG** against a converged reference of the same joint-path
   integral (Richardson extrapolation of IG with 256 and 512 midpoint steps), K = 2 .. 32, and
   their accuracy against ap; passes and rows from the engine's own accounting.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..estimators import methods as M
from ..estimators import reliability as R
from ..estimators.core import Tracker, compute_base_fused
from ..estimators.saturation import saturation
from . import common as C

log = logging.getLogger("patchaudit.bench")

TASKS = ("ioi", "induction", "greater_than")
METRICS = ("logit_diff", "prob_diff", "logprob", "kl")
DIRECTIONS = ("noising", "denoising")
CAL_SEEDS = tuple(range(1000, 1006))
HELD_SEEDS = tuple(range(5000, 5004))
KAPPAS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 300.0)
SCALES = tuple(float(x) for x in np.exp(np.linspace(math.log(0.01), math.log(100.0), 61)))
MISS_WEIGHT = 10.0  # a missed misleading component weighs as 10x its share in flags
CAL_SHARE_CAP = 0.30  # the most the calibration sets may be flagged on average
MISLEAD = 0.5  # "misleading": more than 50% off


def misleading(ap: np.ndarray, a1: np.ndarray, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(material, misleading) masks: material |ap| >= 1% of sum |ap|; misleading: material and
    AtP or the shown estimate more than 50% off."""
    mat = np.abs(ap) >= 0.01 * np.abs(ap).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.abs(a1 - ap) / np.abs(ap)
        e2 = np.abs(shown - ap) / np.abs(ap)
    return mat, mat & ((e1 > MISLEAD) | (e2 > MISLEAD))


def collect(
    model,
    task: str,
    metric: str,
    direction: str,
    seed: int,
    n_pairs: int = 16,
    site: str = "heads",
    probes: int = 16,
) -> dict:
    """Every quantity the flag rule reads, and ap, for one prompt set (the engine's kernels,
    hvp signs seeded as ``audit``'s default)."""
    import patchaudit as pa

    from ..audit import _problem, screen_info

    pairs = pa.PromptPairs.from_task(task, n=n_pairs, seed=seed)
    p, _ = _problem(model, pairs, site, metric, direction, None)
    signs, comb = M.second_order_signs(p, "hvp", probes, 0)
    b, y = compute_base_fused(p, Tracker(), signs)
    assert y is not None
    h = M.from_tangents(p, b, y, comb)
    a1 = M.atp(p, b).values
    s = saturation(p, b)
    ap = M.ap(p, b).values
    te = float(b.f_src.mean() - b.f_base.mean())
    scr = screen_info(a1.cpu(), te, metric, direction, "hvp")
    f = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    assert h.q is not None and h.q_se is not None
    return {
        "task": task,
        "metric": metric,
        "direction": direction,
        "seed": seed,
        "site": site,
        "a1": f(a1),
        "q": f(h.q),
        "q_se": f(h.q_se),
        "sat": f(s.values),
        "share": f(s.nonlinear.abs().flatten(2).amax(2)),
        "ap": f(ap),
        "total_effect": te,
        "metric_base": float(b.f_base.mean()),
        "vanishes": bool(scr["first_order_vanishes"]),
    }


def _verdict(row: dict, with_sat: bool, estimate: str, kappa: float, scale: float):
    """The engine's flag rule (``reliability.assess_calibrated``) on one collected set."""
    t = lambda k: torch.from_numpy(row[k])  # noqa: E731
    a1, q, se = t("a1"), t("q"), t("q_se")
    sat = t("sat") if with_sat else None
    shown = sat if (estimate == "sat" and sat is not None) else a1 + q / 2
    u = R.uncertainty(a1, q, se, sat)
    cal = R.Calibration(scale=scale, kappa=kappa, estimate=estimate)
    feas = R.feasible_range(row["metric"], row["metric_base"])
    tr = R.assess_calibrated(
        a1,
        shown,
        u,
        row["total_effect"],
        cal,
        feas,
        t("share") if with_sat else None,
        row["vanishes"],
        sat=sat,
    )
    return shown.numpy(), tr.flags.numpy()


def fit(rows: Sequence[dict], with_sat: bool) -> dict:
    """The (estimate, kappa, scale) for ``rows`` (calibration sets of one family, site, metric
    and direction): the fewest flags plus ``MISS_WEIGHT`` x the share of misleading material
    components missed, among the settings that flag at most ``CAL_SHARE_CAP`` of the
    components on average. Larger scales only widen the interval (more flags), so for each
    (estimate, kappa) the scan over scales stops at the cap."""
    best: dict | None = None
    for estimate in ("sat", "hvp") if with_sat else ("hvp",):
        for kappa in KAPPAS:
            for scale in SCALES:
                n_mis = caught = 0
                shares = []
                for r in rows:
                    shown, fl = _verdict(r, with_sat, estimate, kappa, scale)
                    _, mis = misleading(r["ap"], r["a1"], shown)
                    n_mis += int(mis.sum())
                    caught += int((mis & fl).sum())
                    shares.append(float(fl.mean()))
                share = float(np.mean(shares))
                if share > CAL_SHARE_CAP:
                    break
                recall = caught / n_mis if n_mis else 1.0
                objective = share + MISS_WEIGHT * (1.0 - recall)
                if best is None or objective < best["objective"] - 1e-12:
                    best = {
                        "estimate": estimate,
                        "kappa": kappa,
                        "scale": round(scale, 6),
                        "share": share,
                        "recall": recall,
                        "misleading": n_mis,
                        "sets": len(rows),
                        "objective": objective,
                    }
    if best is None:  # even the narrowest interval flags too many: the narrowest measured
        best = {
            "estimate": "hvp",
            "kappa": 0.0,
            "scale": SCALES[0],
            "share": None,
            "recall": None,
            "misleading": None,
            "sets": len(rows),
            "objective": None,
        }
    return best


def calibrate(rows: Sequence[dict], family: str = "bundled") -> dict:
    """``flag_calibration`` entries: per task and pooled over the tasks, both screens."""
    out: dict = {}
    sites = sorted({r["site"] for r in rows})
    for site, metric, direction in itertools.product(sites, METRICS, DIRECTIONS):
        sel = [
            r for r in rows if (r["site"], r["metric"], r["direction"]) == (site, metric, direction)
        ]
        if not sel:
            continue
        base = f"{family}:{site}:{metric}:{direction}"
        for with_sat in (True, False):
            screen = "atp+hvp+sat" if with_sat else "atp+hvp"
            out[f"{base}|{screen}"] = fit(sel, with_sat)
            log.info("calibrated %s|%s: %s", base, screen, out[f"{base}|{screen}"])
    return out


def held_out(
    model, tasks=TASKS, metrics=METRICS, directions=DIRECTIONS, seeds=HELD_SEEDS, n_pairs: int = 16
) -> list[dict]:
    """The engine's own audit and Screen-Flag-Fix on held-out seeds, with the defaults as
    written: per set the misleading components caught, the share flagged and the fix's cost
    against a full ap sweep."""
    import patchaudit as pa

    out = []
    for task, metric, direction, seed in itertools.product(tasks, metrics, directions, seeds):
        pairs = pa.PromptPairs.from_task(task, n=n_pairs, seed=seed)
        t0 = time.perf_counter()
        screen = pa.audit(model, pairs, "heads", metric, direction, ("atp", "hvp", "sat"))
        t_screen = time.perf_counter() - t0
        fix = pa.screen_flag_fix(model, pairs, "heads", metric, direction, report=screen)
        t1 = time.perf_counter()
        full = pa.verify(
            model,
            pairs,
            [
                (i, j)
                for i in range(screen.estimate.shape[0])
                for j in range(screen.estimate.shape[1])
            ],
            "heads",
            metric,
            direction,
            base=screen.base,
        )
        t_full = time.perf_counter() - t1
        ap = np.zeros(tuple(screen.estimate.shape))
        for (i, j), v in full.values.items():
            ap[i, j] = v
        a1 = screen.scores["atp"].double().numpy()
        shown = screen.estimate.double().numpy()
        assert screen.flags is not None
        fl = screen.flags.numpy()
        mat, mis = misleading(ap, a1, shown)
        why = screen.flag_reasons or {}
        te = screen.total_effect
        accuracy = {
            m: C.all_metrics(screen.scores[m].double().numpy().ravel(), ap.ravel(), te)
            for m in ("atp", "hvp", "sat")
        }
        accuracy["shown"] = C.all_metrics(shown.ravel(), ap.ravel(), te)
        cost = {
            m: {k: screen.cost[m][k] for k in ("passes", "rows", "seconds")}
            for m in ("atp", "hvp", "sat")
        }
        out.append(
            {
                "accuracy": accuracy,
                "screen_cost": cost,
                "task": task,
                "metric": metric,
                "direction": direction,
                "seed": seed,
                "n": int(fl.size),
                "flagged": int(fl.sum()),
                "share": float(fl.mean()),
                "material": int(mat.sum()),
                "misleading": int(mis.sum()),
                "caught": int((mis & fl).sum()),
                "missed": [[int(i), int(j)] for i, j in zip(*np.nonzero(mis & ~fl), strict=True)],
                "reasons": {k: int(v.sum()) for k, v in why.items() if bool(v.any())},
                "calibration": (screen.calibration or {}).get("key"),
                "estimate": screen.estimate_method,
                "fix_forwards": fix.fix_forwards,
                "full_sweep_forwards": fix.full_sweep_forwards,
                "fix_batch_passes": fix.fix_batch_passes,
                "full_sweep_batch_passes": int(full.cost.get("patch_passes", 0)),
                "screen_seconds": t_screen,
                "fix_seconds": fix.fix_seconds,
                "full_sweep_seconds": t_full,
            }
        )
        log.info(
            "held %s %s %s %d: %d/%d flagged, %d/%d misleading caught",
            task,
            metric,
            direction,
            seed,
            out[-1]["flagged"],
            out[-1]["n"],
            out[-1]["caught"],
            out[-1]["misleading"],
        )
    return out


def summarise_held(rows: list[dict]) -> dict:
    """Per task x metric x direction and over all: recall, mean and max share flagged, and
    the fix's saving."""
    per: dict = {}
    for r in rows:
        k = f"{r['task']}/{r['metric']}/{r['direction']}"
        per.setdefault(k, []).append(r)

    def agg(rs: list[dict]) -> dict:
        mis = sum(r["misleading"] for r in rs)
        return {
            "sets": len(rs),
            "misleading": mis,
            "caught": sum(r["caught"] for r in rs),
            "recall": sum(r["caught"] for r in rs) / mis if mis else None,
            "share_mean": float(np.mean([r["share"] for r in rs])),
            "share_max": float(np.max([r["share"] for r in rs])),
            "fix_forwards": float(np.mean([r["fix_forwards"] for r in rs])),
            "full_sweep_forwards": float(np.mean([r["full_sweep_forwards"] for r in rs])),
            "fix_batch_passes": float(np.mean([r["fix_batch_passes"] for r in rs])),
            "full_sweep_batch_passes": float(np.mean([r["full_sweep_batch_passes"] for r in rs])),
            "fix_seconds": float(np.median([r["fix_seconds"] for r in rs])),
            "full_sweep_seconds": float(np.median([r["full_sweep_seconds"] for r in rs])),
            "screen_seconds": float(np.median([r["screen_seconds"] for r in rs])),
            "accuracy": {
                m: {
                    f: float(np.nanmedian([r["accuracy"][m][f] for r in rs]))
                    for f in ("spearman", "nmae", "topk_recall")
                }
                for m in ("atp", "hvp", "sat", "shown")
            },
        }

    return {"configs": {k: agg(v) for k, v in sorted(per.items())}, "all": agg(rows)}


def planted_saturation() -> dict:
    """L0H0 of the planted model (both directions): AtP, HVP, sat, ap, flags and the heads."""
    import patchaudit as pa

    model = pa.load_model("planted", device="cpu")
    pairs = pa.PromptPairs.from_task("planted", n=16, seed=0)
    out = {}
    for direction in DIRECTIONS:
        r = pa.audit(model, pairs, "heads", "logit_diff", direction, ("atp", "hvp", "sat", "ap"))
        cell: dict[str, Any] = {m: float(r.scores[m][0, 0]) for m in ("atp", "hvp", "sat", "ap")}
        cell["flagged"] = bool(r.flags[0, 0]) if r.flags is not None else False
        cell["reasons"] = [k for k, v in (r.flag_reasons or {}).items() if bool(v[0, 0])]
        cell["heads"] = (r.saturation or {}).get("0.0", [])
        cell["sat_error"] = abs(cell["sat"] - cell["ap"]) / abs(cell["ap"])
        out[direction] = cell
    return out


def integration(
    model, tasks=TASKS, seeds=(1000, 1001), ks=(2, 4, 8, 16, 32), n_pairs: int = 16
) -> dict:
    """mhvp(K) and ig(K) against the converged joint-path integral (Richardson of IG(256) and
    IG(512), whose own agreement is reported), and each against ap."""
    import patchaudit as pa

    from ..audit import _problem

    rows = []
    for task, seed in itertools.product(tasks, seeds):
        pairs = pa.PromptPairs.from_task(task, n=n_pairs, seed=seed)
        p, _ = _problem(model, pairs, "heads", "logit_diff", "noising", None)
        b = compute_base_fused(p, Tracker())[0]
        ig256 = M.ig(p, b, steps=256).values.double()
        ig512 = M.ig(p, b, steps=512).values.double()
        ref = (4 * ig512 - ig256) / 3  # the midpoint rule's h^2 term removed
        ap = M.ap(p, b).values.double()
        norm = float(ref.abs().sum())
        row = {
            "task": task,
            "seed": seed,
            "reference_agreement": float((ig512 - ig256).abs().sum()) / norm,
            "joint_path_nmae_vs_ap": C.nmae(ref.numpy(), ap.numpy()),
            "k": {},
        }
        for k in ks:
            cell = {}
            for name in ("ig", "mhvp"):
                tr = Tracker()
                est = (M.ig if name == "ig" else M.mhvp)(p, b, steps=k, tracker=tr)
                v = est.values.double()
                cell[name] = {
                    "integration_error": float((v - ref).abs().sum()) / norm,
                    "nmae_vs_ap": C.nmae(v.numpy(), ap.numpy()),
                    "passes": est.cost.passes,
                    "rows": est.cost.rows,
                    "seconds": est.cost.seconds,
                }
            row["k"][str(k)] = cell
        rows.append(row)
        log.info("integration %s %d done", task, seed)
    return {"sets": rows, "summary": _integration_summary(rows, ks)}


def _integration_summary(rows: list[dict], ks) -> dict:
    out: dict = {}
    for task in sorted({r["task"] for r in rows}):
        rs = [r for r in rows if r["task"] == task]
        out[task] = {
            "reference_agreement": float(np.median([r["reference_agreement"] for r in rs])),
            "joint_path_nmae_vs_ap": float(np.median([r["joint_path_nmae_vs_ap"] for r in rs])),
            "k": {
                str(k): {
                    m: {
                        f: float(np.median([r["k"][str(k)][m][f] for r in rs]))
                        for f in ("integration_error", "nmae_vs_ap", "passes", "rows", "seconds")
                    }
                    for m in ("ig", "mhvp")
                }
                for k in ks
            },
        }
    return out


def run(out: str, quick: bool = False, write_defaults: bool | None = None) -> dict:
    import patchaudit as pa

    from .. import defaults as D

    t0 = time.perf_counter()
    model = pa.load_model("bundled", device="cpu")
    cal_seeds = CAL_SEEDS[:2] if quick else CAL_SEEDS
    held_seeds = HELD_SEEDS[:1] if quick else HELD_SEEDS
    results: dict = {
        "kind": "trust",
        "mode": "quick" if quick else "full",
        "environment": C.environment(torch.device("cpu")),
        "cal_seeds": list(cal_seeds),
        "held_seeds": list(held_seeds),
    }
    rows = []
    sites = ("heads",) if quick else ("heads", "mlp")
    for site, task, metric, direction, seed in itertools.product(
        sites, TASKS, METRICS, DIRECTIONS, cal_seeds
    ):
        rows.append(collect(model, task, metric, direction, seed, site=site))
    log.info("calibration sets collected (%.0f s)", time.perf_counter() - t0)
    table = calibrate(rows)
    results["calibration"] = table
    results["calibration_seconds"] = time.perf_counter() - t0
    if write_defaults if write_defaults is not None else not quick:
        d = D.load()
        d["flag_calibration"] = table
        d["tau"] = 0.0
        C.write_json(D.DEFAULTS_FILE, {k: v for k, v in d.items()})
        results["defaults_written"] = str(D.DEFAULTS_FILE)
    held = held_out(model, seeds=held_seeds)
    results["held_out"] = {"sets": held, "summary": summarise_held(held)}
    results["planted"] = planted_saturation()
    results["integration"] = integration(
        model,
        seeds=(1000,) if quick else (1000, 1001),
        ks=(2, 4, 8) if quick else (2, 4, 8, 16, 32),
    )
    results["seconds"] = time.perf_counter() - t0
    C.write_json(out, results)
    return results
