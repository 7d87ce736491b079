"""Command line: ``patchaudit serve | worker | audit | bench``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path


def _write(s: str = "", stream=None) -> None:
    (stream or sys.stdout).write(s + "\n")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "FLAG" if v else ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:+.4f}"
    return str(v)


def print_table(report, top: int = 15) -> None:
    from .report import component_label

    cols = [
        m
        for m in (
            "atp",
            "hvp",
            "hvp_joint",
            "hvp_exact",
            "sat",
            "ig",
            "mhvp",
            "atp_star",
            "graddrop",
        )
        if m in report.scores
    ]
    header = ["component", *cols, "reliability", "bound", "flag", "verified (ap)"]
    rows = []
    for r in report.table(top):
        name = component_label(report.labels, r["layer"], r["comp"])
        rows.append(
            [
                name,
                *[_fmt(r[m]) for m in cols],
                _fmt(r.get("reliability")).lstrip("+") if r.get("reliability") is not None else "-",
                _fmt(r.get("error_bound")).lstrip("+") if r.get("error_bound") is not None else "-",
                "FLAG" if r.get("flag") else "",
                _fmt(r.get("verified")),
            ]
        )
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]
    _write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        _write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def write_html(report, path: str | Path) -> None:
    """A standalone page with one heatmap per method (plotly.js inlined: works offline)."""
    from html import escape

    import plotly.io as pio

    from .report import negative_means

    zmax = report.shared_zmax()  # every view on one scale
    parts = []
    for i, m in enumerate(report.scores):
        fig = report.figure(m, zmax=zmax)
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)))
    s = report.settings
    screen = report.screen or {}
    warn = (
        f"<p style='background:#fff3cd;padding:8px'><b>Warning:</b> {escape(screen['message'])}</p>"
        if screen and not screen.get("informative", True)
        else ""
    )
    head = (
        f"<h1>patchaudit: {report.site}, {report.metric}, {report.direction}</h1>"
        f"<p>model {s.get('model')}, {s.get('n_pairs')} pairs, hvp probes {s.get('hvp_probes')}, "
        f"tau {report.tau}; flagged components are outlined; hover for every number. "
        f"Colours: negative blue, positive red, one scale (+-{zmax:.3g}) for every view. "
        f"Negative means: {escape(negative_means(report.metric, report.direction))}.</p>{warn}"
    )
    Path(path).write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>patchaudit report</title></head>"
        f"<body style='font-family:sans-serif'>{head}{''.join(parts)}</body></html>"
    )


def cmd_audit(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="patchaudit audit", description="Audit attribution patching on one task."
    )
    ap.add_argument("--model", default="bundled")
    from .tasks import TASK_REGISTRY, task_names_text

    ap.add_argument("--task", default="ioi", help=task_names_text().replace("'", ""))
    ap.add_argument(
        "--corruption",
        default=None,
        help="; ".join(f"{t.name}: {', '.join(t.corruptions)}" for t in TASK_REGISTRY.values())
        + " (the first is the default)",
    )
    ap.add_argument(
        "--pairs",
        default=None,
        help="your own prompt pairs: a TSV, CSV or JSON-lines file (clean, corrupted, answer, "
        "wrong; a header row is optional); replaces --task",
    )
    ap.add_argument("--n", type=int, default=16, help="number of prompt pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--site",
        default="heads",
        help="heads, mlp, resid, or q / k / v (each head's queries, keys, values)",
    )
    ap.add_argument("--metric", default="logit_diff")
    ap.add_argument("--direction", default="noising")
    ap.add_argument("--methods", default="atp,hvp,sat,ap")
    ap.add_argument("--hvp-probes", type=int, default=None)
    ap.add_argument("--ig-steps", type=int, default=None)
    ap.add_argument("--mhvp-steps", type=int, default=None)
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--fix", action="store_true", help="verify every flagged component with ap")
    ap.add_argument("--device", default=None)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=None, help="write the report as JSON")
    ap.add_argument("--html", default=None, help="write a standalone HTML page with the heatmaps")
    ap.add_argument("--png", default=None, help="write the heatmaps as PNG (kaleido + Chromium)")
    a = ap.parse_args(argv)

    from tqdm import tqdm

    import patchaudit as pa

    bar = None
    try:
        methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        for kind, value, allowed in [
            ("site", a.site, pa.SITES),
            ("metric", a.metric, pa.METRICS),
            ("direction", a.direction, pa.DIRECTIONS),
            *[("method", m, pa.METHODS) for m in methods],
        ]:  # before the model loads: a typo should not cost a load
            if value not in allowed:
                raise ValueError(f"unknown {kind} {value!r}: choose one of {', '.join(allowed)}")
        if a.pairs:  # read before the model loads: a bad line should not cost a load
            pairs = pa.PromptPairs.from_file(a.pairs)
        model = pa.load_model(a.model, device=a.device)
        if not a.pairs:
            pairs = pa.PromptPairs.from_task(a.task, n=a.n, seed=a.seed, corruption=a.corruption)
        bar = tqdm(
            total=1000,
            desc="audit",
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
        )

        def progress(phase: str, frac: float, passes: int) -> None:
            assert bar is not None
            bar.set_description(f"{phase} ({passes} passes)")
            bar.n = int(frac * 1000)
            bar.refresh()

        report = pa.audit(
            model,
            pairs,
            site=a.site,
            metric=a.metric,
            direction=a.direction,
            methods=methods,
            hvp_probes=a.hvp_probes,
            ig_steps=a.ig_steps,
            mhvp_steps=a.mhvp_steps,
            seed=a.seed,
            tau=a.tau,
            progress=progress,
            model_name=a.model,
        )
        fix = None
        if a.fix and report.flags is not None:
            fix = pa.screen_flag_fix(model, pairs, a.site, a.metric, a.direction, report=report)
            bar.set_description(f"fixed {fix.fix_forwards} of {fix.full_sweep_forwards} components")
        bar.close()
    except ValueError as e:  # bad input: one line, no traceback
        if bar is not None:
            bar.leave = False
            bar.close()
        _write(f"error: {e}", sys.stderr)
        return 2
    flagged = int(report.flags.sum()) if report.flags is not None else 0
    m_clean, m_corr = report.metric_base, report.metric_src
    if a.direction == "denoising":
        m_clean, m_corr = m_corr, m_clean
    source = f"{Path(a.pairs).name}" if a.pairs else a.task
    _write(
        f"{a.model} | {source} x{len(pairs)} | site {a.site} | {a.metric} {a.direction} | "
        f"m(clean)={m_clean:+.3f} m(corrupted)={m_corr:+.3f} | "
        f"{flagged} flagged of {report.estimate.numel()} (tau {report.tau:g})"
    )
    if report.screen and not report.screen.get("informative", True):
        _write(f"warning: {report.screen['message']}")
    print_table(report, a.top)
    costs = ", ".join(
        f"{m} {c['seconds'] * 1000:.0f} ms"
        for m, c in report.cost.items()
        if m not in ("base", "plan")
    )
    _write(f"cost: {costs}")
    if fix is not None:
        sweep = (
            "?"
            if fix.full_sweep_seconds is None
            else f"{fix.full_sweep_seconds * 1000:.0f} ms"
            + (" (estimated)" if fix.full_sweep_seconds_estimated else "")
        )
        _write(
            f"fix: {fix.fix_forwards} component forwards vs {fix.full_sweep_forwards} for a full "
            f"ap sweep; {fix.fix_batch_passes} batched passes vs {fix.full_sweep_batch_passes}; "
            f"{fix.fix_seconds * 1000:.0f} ms vs {sweep}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(report.to_dict(), indent=1))
    if a.html:
        write_html(report, a.html)
    if a.png:  # every method side by side on one colour scale
        n = len(report.scores)
        report.figure_panels().write_image(a.png, width=380 * n + 160, height=460)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cmds = {"serve", "worker", "audit", "bench"}
    if not argv or argv[0] not in cmds:
        _write(
            "usage: patchaudit {serve|worker|audit|bench} [options]  (--help after a command)",
            sys.stderr,
        )
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "audit":
        return cmd_audit(rest)
    if cmd == "serve":
        from .api.serve import main as serve_main

        return int(serve_main(rest) or 0)
    if cmd == "worker":
        from .worker.cli import main as worker_main

        return int(worker_main(rest) or 0)
    from .bench import main as bench_main

    return int(bench_main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
