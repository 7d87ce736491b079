"""Flag recall per metric and direction (issue 8): among material components (|ap| >= 1% of
the total effect) whose AtP error |atp - ap| / |ap| exceeds 50%, the share flagged; and whether
the component with the largest |ap| is flagged when its AtP error exceeds 50%.

    PYTHONPATH=backend python bench/flag_recall.py [--seeds 0,1] [--task ioi] [--site heads]
"""

from __future__ import annotations

import argparse
import json

import patchaudit as pa


def measure(model, task: str, site: str, seeds: list[int], n: int = 16) -> list[dict]:
    rows = []
    for metric in pa.METRICS:
        for direction in pa.DIRECTIONS:
            pos = hit = top_bad = top_hit = flagged = comps = 0
            uninformative = 0
            for seed in seeds:
                pairs = pa.PromptPairs.from_task(task, n=n, seed=seed)
                r = pa.audit(
                    model,
                    pairs,
                    site=site,
                    metric=metric,
                    direction=direction,
                    methods=("atp", "hvp", "ap"),
                    seed=seed,
                )
                ap, atp = r.scores["ap"], r.scores["atp"]
                err = (atp - ap).abs() / ap.abs().clamp(min=1e-30)
                bad = (ap.abs() >= 0.01 * abs(r.total_effect)) & (err > 0.5)
                pos += int(bad.sum())
                hit += int((bad & r.flags).sum())
                li, ci = divmod(int(ap.abs().argmax()), ap.shape[1])
                if err[li, ci] > 0.5:
                    top_bad += 1
                    top_hit += int(r.flags[li, ci])
                flagged += int(r.flags.sum())
                comps += ap.numel()
                uninformative += int(not r.screen["informative"])
            rows.append(
                {
                    "metric": metric,
                    "direction": direction,
                    "positives": pos,
                    "flagged_positives": hit,
                    "recall": hit / pos if pos else None,
                    "top_bad": top_bad,
                    "top_flagged": top_hit,
                    "flagged": flagged,
                    "components": comps,
                    "uninformative_sets": uninformative,
                    "sets": len(seeds),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--site", default="heads")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = pa.load_model("bundled", device="cpu")
    rows = measure(model, a.task, a.site, [int(s) for s in a.seeds.split(",")])
    print(
        "| metric | direction | recall (flagged / positives) | top-|ap| flagged when AtP > 50% off "
        "| flagged / components | screen uninformative |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        rec = "-" if r["recall"] is None else f"{r['recall']:.0%}"
        print(
            f"| {r['metric']} | {r['direction']} | {rec} ({r['flagged_positives']}/{r['positives']}) "
            f"| {r['top_flagged']}/{r['top_bad']} | {r['flagged']}/{r['components']} "
            f"| {r['uninformative_sets']}/{r['sets']} |",
            flush=True,
        )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
