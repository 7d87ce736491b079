"""The trust benchmark's tables (bench/results/trust.json -> docs/BENCHMARKS.md) and the
generated sentences the README quotes (flag quality, when mhvp beats IG)."""

from __future__ import annotations


def _f(x, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (x != x):
        return "–"
    if isinstance(x, int):
        return str(x)
    if abs(x) and (abs(x) < 10 ** -nd or abs(x) >= 1e5):
        return f"{x:.1e}"
    return f"{x:.{nd}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def flag_quality_md(t: dict) -> str:
    held = t["held_out"]["summary"]
    a = held["all"]
    lines = [
        "## Flag quality (held-out seeds)",
        "",
        f"`patchaudit bench trust`: bundled model, heads, 16 pairs per set, calibration seeds "
        f"{t['cal_seeds'][0]}-{t['cal_seeds'][-1]}, held-out seeds "
        f"{t['held_seeds'][0]}-{t['held_seeds'][-1]} (never used to calibrate); the engine's own "
        "`audit` (atp + hvp + sat) with the calibrated defaults, then `screen_flag_fix` and a full "
        "ap sweep. *Misleading*: material (|ap| >= 1% of the summed |ap|) and AtP or the shown "
        "estimate more than 50% off. Fix vs sweep: component forwards, batched passes, seconds.",
        "",
        f"**All configurations: {a['caught']} of {a['misleading']} misleading heads flagged "
        f"({_pct(a['recall'])}); {_pct(a['share_mean'])} of the heads flagged on average, "
        f"{_pct(a['share_max'])} at most in one analysis.**",
        "",
        "| task / metric / direction | misleading caught | recall | flagged (mean / max) | "
        "fix vs sweep: forwards | batched passes | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, c in held["configs"].items():
        lines.append(
            f"| {k} | {c['caught']} / {c['misleading']} | {_pct(c['recall'])} | "
            f"{_pct(c['share_mean'])} / {_pct(c['share_max'])} | "
            f"{c['fix_forwards']:.1f} / {c['full_sweep_forwards']:.0f} | "
            f"{c['fix_batch_passes']:.1f} / {c['full_sweep_batch_passes']:.1f} | "
            f"{_f(c['fix_seconds'])} / {_f(c['full_sweep_seconds'])} |"
        )
    lines += [
        "",
        "Batched passes: a layer's components ride on the batch axis of one pass, so on this "
        "6-layer model a fix that touches every layer runs as many passes as the sweep; the "
        "saving is in component forwards (the compute) and seconds. The screen itself "
        f"(atp + hvp + sat) took {_f(a['screen_seconds'])} s (median).",
        "",
    ]
    return "\n".join(lines)


def accuracy_md(t: dict) -> str:
    held = t["held_out"]["summary"]["configs"]
    lines = [
        "## Accuracy against activation patching, every metric and direction (held-out)",
        "",
        "Median over the held-out sets of Spearman / NMAE against ap: AtP, the HVP-corrected "
        "estimate (P = 16), the saturation-aware estimate `sat`, and the estimate the page "
        "shows (the calibration's choice per metric and direction).",
        "",
        "| task / metric / direction | AtP | HVP | sat | shown |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, c in held.items():
        acc = c["accuracy"]
        cells = [f"{_f(acc[m]['spearman'], 2)} / {_f(acc[m]['nmae'], 2)}" for m in
                 ("atp", "hvp", "sat", "shown")]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def saturation_md(t: dict) -> str:
    p = t.get("planted") or {}
    lines = [
        "## Saturation: the planted previous-token head",
        "",
        "L0H0 of the planted model writes the previous token; the induction head L1H0 reads it "
        "through a saturated softmax (score 20). Logit difference, 16 pairs:",
        "",
        "| direction | AtP | HVP | sat | ap | sat error | flagged, reasons | heads named |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for d, c in p.items():
        heads = ", ".join(f"L{h['layer']}H{h['head']} ({h['share']:+.2f})" for h in c["heads"])
        lines.append(
            f"| {d} | {_f(c['atp'], 4)} | {_f(c['hvp'], 4)} | {_f(c['sat'], 4)} | {_f(c['ap'], 4)} "
            f"| {_pct(c['sat_error'])} | {'yes' if c['flagged'] else 'no'}: "
            f"{', '.join(c['reasons'])} | {heads} |"
        )
    lines.append("")
    return "\n".join(lines)


def integration_md(t: dict) -> str:
    s = t["integration"]["summary"]
    lines = [
        "## Integration error of mhvp and IG (K = 2 .. 32)",
        "",
        "Both estimate the same joint-path integral (every component moves together, eps = t "
        "delta). Reference: Richardson extrapolation of IG with 256 and 512 midpoint steps "
        "(their own disagreement below). Error = sum |estimate - reference| / sum |reference|; "
        "NMAE against ap; rows = copies of the batch over all passes (`report.cost`); bundled "
        "model, heads, logit difference, noising, median over two prompt sets.",
        "",
    ]
    for task, c in s.items():
        lines += [
            f"**{task}** (reference agreement {_f(c['reference_agreement'], 2)}; the joint path "
            f"itself is NMAE {_f(c['joint_path_nmae_vs_ap'], 3)} from ap)",
            "",
            "| K | IG error | mhvp error | IG NMAE vs ap | mhvp NMAE vs ap | IG passes / rows | "
            "mhvp passes / rows |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k, cell in c["k"].items():
            ig, mh = cell["ig"], cell["mhvp"]
            lines.append(
                f"| {k} | {_f(ig['integration_error'], 2)} | {_f(mh['integration_error'], 2)} | "
                f"{_f(ig['nmae_vs_ap'])} | {_f(mh['nmae_vs_ap'])} | "
                f"{ig['passes']:.0f} / {ig['rows']:.0f} | {mh['passes']:.0f} / {mh['rows']:.0f} |"
            )
        lines.append("")
    lines += [mhvp_claim(t), ""]
    return "\n".join(lines)


def mhvp_claim(t: dict) -> str:
    """What the integration table shows, in one paragraph (the README quotes it)."""
    s = t["integration"]["summary"]
    wins, ties, gaps = [], [], []
    for task, c in s.items():
        ks = sorted(c["k"], key=int)
        igs = [(c["k"][k]["ig"]["rows"], c["k"][k]["ig"]["integration_error"]) for k in ks]
        first = None
        for k in ks:
            mh = c["k"][k]["mhvp"]
            # IG with at least as many rows (the smallest such measured)
            more = [e for r, e in igs if r >= mh["rows"]]
            if more and mh["integration_error"] < more[0] and first is None:
                first = int(k)
        wins.append((task, first))
        k_small = ks[1] if len(ks) > 1 else ks[0]
        ties.append((task, k_small, c["k"][k_small]["mhvp"]["integration_error"],
                     c["k"][k_small]["ig"]["integration_error"]))
        gaps.append((task, c["joint_path_nmae_vs_ap"], c["k"][ks[-1]]["mhvp"]["nmae_vs_ap"],
                     c["k"][ks[-1]]["ig"]["nmae_vs_ap"]))
    won = [f"{task} from K = {k}" for task, k in wins if k is not None]
    lost = [task for task, k in wins if k is None]
    out = "**mhvp vs IG** (the same joint-path integral; the integration-error table is in docs/BENCHMARKS.md). "
    if won:
        out += ("Per copy of the batch (rows), mhvp's integration error is below IG's with at "
                f"least as many rows on {', '.join(won)}")
        out += f"; on {', '.join(lost)} never at the K measured. " if lost else ". "
    else:
        out += "At no K measured does mhvp beat IG with as many rows. "
    out += "At K = " + ", ".join(
        f"{k} ({task}: mhvp {_f(m, 2)} vs IG {_f(i, 2)})" for task, k, m, i in ties
    ) + ". "
    out += ("Against activation patching neither can beat the joint path's own gap: NMAE "
            + ", ".join(f"{task} {_f(g, 2)} (mhvp {_f(m, 2)}, IG {_f(i, 2)} at K = 32)"
                        for task, g, m, i in gaps)
            + ", so more steps buy integration accuracy, not accuracy against ap.")
    return out


def calibration_md(t: dict) -> str:
    cal = t.get("calibration") or {}
    lines = [
        "## Flag calibration (written to defaults.json)",
        "",
        "Per model family, site, metric and direction, and screen: the shown estimate, the "
        "relative term kappa and the interval scale, with the calibration sets' recall of "
        "misleading material components and share flagged (docs/METHODS.md).",
        "",
        "| key | estimate | kappa | scale | recall (cal) | flagged (cal) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for k, v in sorted(cal.items()):
        lines.append(
            f"| `{k}` | {v['estimate']} | {_f(v['kappa'], 2)} | {_f(v['scale'], 3)} | "
            f"{_pct(v.get('recall'))} | {_pct(v.get('share'))} |"
        )
    lines.append("")
    return "\n".join(lines)


def trust_md(t: dict) -> str:
    return "\n".join([flag_quality_md(t), saturation_md(t), accuracy_md(t), integration_md(t),
                      calibration_md(t)])


def headline(t: dict) -> str:
    """The README's one paragraph on flags."""
    a = t["held_out"]["summary"]["all"]
    p = t.get("planted", {}).get("noising", {})
    return (
        f"**Flags that mean something** (held-out prompt sets, bundled model, every task x metric "
        f"x direction): {a['caught']} of {a['misleading']} misleading heads flagged "
        f"({_pct(a['recall'])}), {_pct(a['share_mean'])} of all heads flagged on average, "
        f"{_pct(a['share_max'])} at most. Saturation is seen: the planted previous-token head "
        f"has AtP {_f(p.get('atp'), 4)} but ap {_f(p.get('ap'), 2)}; `sat` gives "
        f"{_f(p.get('sat'), 2)} and flags it, naming the induction head.\n"
    )
