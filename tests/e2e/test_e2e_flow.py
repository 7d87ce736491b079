"""The whole loop on the bundled model: submit an IOI analysis from the form, read the heatmap,
click a flagged head to verify it, run Fix all flagged, and open the share link as a new
visitor. Real Chromium, real `patchaudit serve` (API + worker + embedded Redis)."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_MS = 150_000
ID_URL = re.compile(r"/a/([0-9a-f]{32})")


def heatmap_attr(page, name: str) -> str:
    return page.locator("#heatmap").get_attribute(f"data-{name}") or ""


def wait_done(page) -> None:
    expect(page.locator("body[data-status='done']")).to_be_attached(timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#heatmap")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))


def flagged_unverified(page) -> list[list[int]]:
    return page.evaluate(
        """() => {
          const hm = document.querySelector('#heatmap');
          const ver = new Set(hm.data.find(t => t.name === 'verified').x.map(
            (x, k) => `${hm.data.find(t => t.name === 'verified').y[k]}.${x}`));
          return window.__patchaudit.flagged().filter(([i, j]) => !ver.has(`${i}.${j}`));
        }"""
    )


def hover_cell(page, i: int, j: int) -> str:
    c = page.evaluate(f"window.__patchaudit.cellCenter({i}, {j})")
    page.mouse.move(c["x"] + 1, c["y"] + 1)
    page.mouse.move(c["x"], c["y"])
    layer = page.locator("#heatmap .hoverlayer .hovertext")
    expect(layer).to_have_count(1)
    return layer.text_content() or ""


def hover_number(text: str, label: str) -> float:
    """The number after `label:` in a hover label (the page writes U+2212 for minus)."""
    m = re.search(rf"{re.escape(label)}: ([−\-0-9.e+]+)", text)
    assert m, f"{label!r} not in {text!r}"
    return float(m.group(1).replace("−", "-"))


def test_ioi_verify_fix_share(page, new_context, server, shots, model_name):
    t_start = time.monotonic()
    page.goto("/")
    expect(page.locator("body[data-ready='1']")).to_be_attached(timeout=30_000)
    page.select_option("#model", model_name)
    page.select_option("#task", "ioi")
    page.fill("#n_pairs", "8")
    page.click("#submit")
    page.wait_for_url(ID_URL, timeout=30_000)
    analysis_id = ID_URL.search(page.url).group(1)
    wait_done(page)

    # The request is on the page.
    req = page.locator("#request")
    expect(req).to_contain_text(model_name)
    expect(req).to_contain_text("ioi")
    expect(req).to_contain_text("logit_diff")

    status, data = server.api("GET", f"/api/analyses/{analysis_id}")
    assert status == 200 and data["status"] == "done", data
    result = data["result"]
    n_rows, n_cols = len(result["labels"]["rows"]), len(result["labels"]["cols"])

    # Hover shows every number of the cell.
    text = hover_cell(page, 0, 0)
    for word in ("AtP", "HVP-corrected", "reliability", "error bound"):
        assert word in text, text
    assert hover_number(text, "AtP") == pytest.approx(
        result["scores"]["atp"][0][0], rel=1e-2, abs=1e-9
    )

    # A flagged head to click: at the server's tau if any, else raise tau until one is.
    flagged = flagged_unverified(page)
    if not flagged:
        page.locator("#tau").fill("1")
        expect(page.locator("#heatmap")).to_have_attribute("data-tau", "1.00")
        flagged = flagged_unverified(page)
    assert flagged, "no flagged component even at tau = 1"
    i, j = flagged[0]
    verified_before = int(heatmap_attr(page, "verified") or 0)

    c = page.evaluate(f"window.__patchaudit.cellCenter({i}, {j})")
    page.mouse.click(c["x"], c["y"])
    # Pending marker first (set as soon as the API accepted the verify request) ...
    page.wait_for_function(
        "() => document.querySelector('#heatmap').dataset.pending !== '0'", timeout=15_000
    )
    # ... then the verified value, with its mark.
    expect(page.locator("#heatmap")).to_have_attribute(
        "data-verified", str(verified_before + 1), timeout=60_000
    )
    expect(page.locator("#heatmap")).to_have_attribute("data-pending", "0", timeout=60_000)
    status, data = server.api("GET", f"/api/analyses/{analysis_id}")
    value = data["result"]["verified"][f"{i}.{j}"]
    assert value is not None
    row = page.locator(f"#top-table tbody tr[data-key='{i}.{j}']")
    expect(row.locator(".verified-mark")).to_have_count(1)
    shown = float(row.locator("td").nth(6).inner_text().replace("−", "-"))
    assert shown == pytest.approx(value, rel=1e-2, abs=1e-3)
    text = hover_cell(page, i, j)
    assert "verified (activation patching)" in text and "error of AtP" in text, text
    n_marks = page.evaluate(
        "document.querySelector('#heatmap').data.find(t => t.name === 'verified').x.length"
    )
    assert n_marks == verified_before + 1
    expect(page.locator("#scatter")).to_have_attribute("data-points", str(verified_before + 1))

    # Fix all flagged: make sure something flagged is left to fix.
    if not flagged_unverified(page):
        page.locator("#tau").fill("1")
        expect(page.locator("#heatmap")).to_have_attribute("data-tau", "1.00")
    left = flagged_unverified(page)
    fix = page.locator("#fix")
    if left:
        expect(fix).to_be_enabled()
        fix.click()
        summary = page.locator("#fix-summary")
        expect(summary).to_be_visible(timeout=90_000)
        expect(summary).to_contain_text("component forward", timeout=90_000)
        expect(summary).to_contain_text("full activation-patching sweep")
        expect(page.locator("#heatmap")).to_have_attribute("data-pending", "0", timeout=90_000)
        assert flagged_unverified(page) == []
        expect(fix).to_be_disabled()
        m = re.search(
            r"with (\d+) component forwards?.*against (\d+) component forwards",
            summary.inner_text(),
        )
        assert m, summary.inner_text()
        assert int(m.group(2)) >= n_rows * n_cols > 0
        assert 0 < int(m.group(1)) <= int(m.group(2))

    # Screenshot: the corrected view with flagged outlines and verified marks.
    page.evaluate("window.scrollTo(0, 0)")
    page.mouse.move(5, 5)
    expect(page.locator("#heatmap .hoverlayer .hovertext")).to_have_count(0)
    page.screenshot(path=str(shots / "analysis.png"), full_page=True)
    hover_cell(page, i, j)  # the clicked head's numbers, verified value and errors included
    page.locator("#result-card").screenshot(path=str(shots / "analysis-hover.png"))
    page.mouse.move(5, 5)

    # Export links.
    csv = page.request.get(page.locator("#export-csv").get_attribute("href"))
    assert csv.ok and "csv" in (csv.headers.get("content-type") or "")
    assert len(csv.text().strip().splitlines()) >= n_rows * n_cols
    with page.expect_download() as dl:
        page.click("#download-png")
    assert dl.value.suggested_filename.endswith(".png")

    # Share the reliability view at tau 0.35; a new visitor sees the same view and numbers.
    page.select_option("#view", "reliability")
    page.locator("#tau").fill("0.35")
    expect(page.locator("#heatmap")).to_have_attribute("data-tau", "0.35")
    expect(page.locator("#heatmap")).to_have_attribute("data-view", "reliability")
    page.click("#copy-link")
    expect(page.locator("#copy-status")).not_to_be_empty()
    link = page.locator("#share-link").input_value()
    assert f"/a/{analysis_id}" in link and "view=reliability" in link and "tau=0.35" in link
    table_before = page.locator("#top-table tbody").inner_text()
    flagged_before = heatmap_attr(page, "flagged")
    verified_now = heatmap_attr(page, "verified")

    other = new_context().new_page()
    other.goto(link)
    wait_done(other)
    assert other.locator("#view").input_value() == "reliability"
    assert other.locator("#tau").input_value() in ("0.35", "0.350")
    expect(other.locator("#heatmap")).to_have_attribute("data-view", "reliability")
    expect(other.locator("#heatmap")).to_have_attribute("data-flagged", flagged_before)
    expect(other.locator("#heatmap")).to_have_attribute("data-verified", verified_now)
    assert other.locator("#top-table tbody").inner_text() == table_before
    if left and server.api("GET", f"/api/analyses/{analysis_id}")[1]["result"].get("fix"):
        expect(other.locator("#fix-summary")).to_be_visible()
    z_a = page.evaluate("document.querySelector('#heatmap').data[0].z")
    z_b = other.evaluate("document.querySelector('#heatmap').data[0].z")
    assert z_a == z_b
    assert time.monotonic() - t_start < 170
