"""`patchaudit audit --html` writes a standalone page that renders in Chromium with no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_cli_audit_writes_json_and_offline_html(browser, tmp_path):
    out, html = tmp_path / "report.json", tmp_path / "report.html"
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "patchaudit",
            "audit",
            "--model",
            "bundled",
            "--task",
            "ioi",
            "--n",
            "4",
            "--methods",
            "atp,hvp,ap",
            "--out",
            str(out),
            "--html",
            str(html),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "flagged of 48" in proc.stdout and "verified (ap)" in proc.stdout
    )  # the table (6 x 8 heads)
    assert "%|" in proc.stderr  # the progress bar
    report = json.loads(out.read_text())
    assert set(report["scores"]) == {"atp", "hvp", "ap"} and len(report["scores"]["hvp"]) == 6

    requested: list[str] = []
    ctx = browser.new_context()
    ctx.route(
        "**/*",
        lambda route: (
            requested.append(route.request.url),
            route.continue_() if route.request.url.startswith("file:") else route.abort(),
        ),
    )
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.as_uri())
    page.wait_for_selector(".plot-container", timeout=20_000)
    assert page.locator(".plot-container").count() == 3  # one heatmap per method
    assert page.evaluate("typeof Plotly") == "object"  # plotly.js inlined
    assert not [u for u in requested if not u.startswith("file:")], requested
    assert not errors, errors
    ctx.close()


def test_cli_bad_input_is_one_line():
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "patchaudit", "audit", "--model", "bundled", "--site", "neurons"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: unknown site 'neurons': choose one of heads, mlp, resid, q, k, v"]
    assert "Traceback" not in proc.stderr
