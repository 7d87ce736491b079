"""Issue 20, the interactive lane in real Chromium against a real `patchaudit serve` (one
worker, the bundled model): a click's verified value arrives on the page while a long analysis
(IOI, 256 pairs, atp + hvp + ap + hvp_exact) is still running on that same worker, and the
page lists the long job's progress with its passes."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.waits import wait_for

from .test_e2e_component import VIEWPORT, finished_analysis, wait_rendered

pytestmark = pytest.mark.e2e


def test_a_clicks_value_arrives_while_a_long_job_runs(new_context, server, model_name):
    aid = finished_analysis(server, model_name, n_pairs=8, seed=2020)
    long_body = {
        "model": model_name,
        "task": "ioi",
        "n_pairs": 256,
        "seed": int(time.time()) % 100000,  # a fresh request: no stored result, no cache
        "methods": ["atp", "hvp", "ap", "hvp_exact"],
    }
    status, acc = server.api("POST", "/api/analyses", long_body)
    assert status == 202, acc
    lid = acc["id"]
    try:

        def computing() -> bool:
            _, d = server.api("GET", f"/api/analyses/{lid}")
            assert d["status"] not in ("failed", "cancelled", "done"), d
            return d["status"] == "running" and d["progress"]["phase"] not in (
                "queued",
                "starting",
                "load_model",
            )

        wait_for(computing, 180, "the long analysis to compute", interval=0.2)

        page = new_context(viewport=VIEWPORT).new_page()
        page.goto(f"/a/{aid}?view=hvp")
        wait_rendered(page)
        hm = page.locator("#heatmap")
        before = int(hm.get_attribute("data-verified") or 0)
        pt = page.evaluate("window.__patchaudit.cellCenter(1, 2)")
        page.mouse.click(pt["x"], pt["y"])
        expect(hm).to_have_attribute("data-verified", str(before + 1), timeout=60_000)
        _, d = server.api("GET", f"/api/analyses/{lid}")
        assert d["status"] == "running", "the click's value waited for the long job to end"
        _, mine = server.api("GET", f"/api/analyses/{aid}")
        assert "1.2" in mine["result"]["verified"]

        # the long job's page shows its phase, passes and time left
        page.goto(f"/a/{lid}")
        text = page.locator("#progress-text")
        expect(text).to_have_text(re.compile(r"\d+ / ~\d+ passes|\d+ passes"), timeout=60_000)
    finally:
        server.api("POST", f"/api/analyses/{lid}/cancel")
