"""The paper's table (bench/results/diagnose.json, ``patchaudit bench diagnose``) as Markdown
for docs/BENCHMARKS.md, and the README sentence on whether the paper's finding holds here."""

from __future__ import annotations

from collections import defaultdict

KIND_NAMES = {
    "attn.qk": "QK^T",
    "attn.softcap": "attn soft-cap",
    "attn.softmax": "attn softmax",
    "attn.pv": "pattern x V",
    "attn.other": "attn other",
    "norm": "norms",
    "mlp.act": "MLP act",
    "mlp.gate": "MLP gate",
    "logits.softcap": "logit soft-cap",
    "metric": "metric",
    "other": "other",
}


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _kinds(row: dict) -> str:
    return ", ".join(
        f"{KIND_NAMES.get(k, k)} {_pct(row['kinds'][k])}" for k in row.get("top_kinds", [])
    )


def diagnose_md(d: dict) -> str:
    rows = d.get("rows") or []
    out = [
        "## Where AtP's error comes from (the paper's table)",
        "",
        "`patchaudit bench diagnose`: every component's exact second-order term q split by "
        'operation (`pa.diagnose`, METHODS.md "The second-order term, split by operation"), '
        "pooled over the components of the site as magnitudes (sum |share|). *Local*: the "
        "patched component's own sub-block after the patch point (its attention for heads / "
        "q / k / v, its MLP for mlp, the whole block for the residual stream entering it); "
        "*downstream*: everything later, the final norm and the metric. Metric logit_diff, "
        f"{d.get('n_pairs', '?')} pairs per set. *Holds*: the downstream share is above one "
        "half (the paper's finding)."
        + ("" if d.get("complete", True) else f" (A partial run: the first {len(rows)} rows.)"),
        "",
        "| model | task | site | direction | downstream | local | dominant kinds | "
        "components with local > half | holds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['task']} | {r['site']} | {r['direction']} | "
            f"{_pct(r['downstream_share'])} | {_pct(r['local_share'])} | {_kinds(r)} | "
            f"{r['n_local_dominant']} / {r['n_with_q']} | {'yes' if r['holds'] else 'no'} |"
        )
    return "\n".join(out) + "\n"


def finding(d: dict) -> str:
    """One README sentence: does the paper's finding hold here, and where not."""
    rows = [r for r in d.get("rows") or [] if r.get("n_with_q")]
    if not rows:
        return ""
    held = [r for r in rows if r["holds"]]
    fails: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if not r["holds"]:
            fails[r["site"]].append(r)
    med = sorted(r["downstream_share"] for r in rows)[len(rows) // 2]
    s = (
        f"**Where AtP's error comes from** (`pa.diagnose`, the paper's table in "
        f"docs/BENCHMARKS.md): the paper's finding, that the second-order error comes mainly "
        f"from non-linearities *downstream* of the patched component, holds in {len(held)} of "
        f"{len(rows)} task x site x direction settings here (median downstream share of |q| "
        f"{_pct(med)})"
    )
    if not d.get("complete", True):
        models = sorted({r["model"] for r in rows})
        s += f" [a partial run so far: {', '.join(models)}; `make bench` completes it]"
    if not fails:
        return s + "; it holds in every setting measured.\n"
    parts = []
    for site, rs in sorted(fails.items()):
        models = sorted({r["model"] for r in rs})
        kinds: dict[str, float] = defaultdict(float)
        for r in rs:
            for k, v in r["kinds"].items():
                kinds[k] += v
        top = max(kinds, key=lambda k: kinds[k])
        share = sum(r["local_share"] for r in rs) / len(rs)
        parts.append(
            f"the {site} site on {', '.join(models)} (local share {_pct(share)} on average, "
            f"mostly {KIND_NAMES.get(top, top)})"
        )
    return s + "; it does not hold for " + "; ".join(parts) + ".\n"
