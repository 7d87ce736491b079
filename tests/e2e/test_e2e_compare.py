"""Issue 11, /compare and "My analyses": real Chromium at 1280x800 against a real
`patchaudit serve` (two real analyses of the bundled model, noising and denoising).

Acceptance 3: the compare page for a noising and a denoising IOI analysis renders both maps on
one scale and their difference; the analyses list shows both."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect
from test_e2e_component import finished_analysis

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def pair_of_analyses(server, model_name) -> tuple[str, str]:
    a = finished_analysis(server, model_name, seed=13, direction="noising")
    b = finished_analysis(server, model_name, seed=13, direction="denoising")
    return a, b


def trace(page, div: str):
    return page.evaluate(
        f"(() => {{ const t = document.querySelector('#{div}').data[0];"
        " return {z: t.z, zmin: t.zmin, zmax: t.zmax}; })()"
    )


def max_abs(m) -> float:
    return max(abs(v) for row in m for v in row if v is not None)


def test_compare_noising_and_denoising_on_one_scale(new_context, pair_of_analyses, server, shots):
    a, b = pair_of_analyses
    page = new_context(viewport=VIEWPORT).new_page()
    # from the analysis page: "Compare with…" -> paste B's link -> the compare page
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"/a/{a}")
    expect(page.locator("#heatmap")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))
    page.locator("#compare-box summary").click()
    page.locator("#compare-with").fill(f"{server.url}/a/{b}?view=atp")
    page.locator("#compare-form button[type=submit]").click()
    page.wait_for_url(re.compile(rf"/compare\?a={a}&b={b}"))
    card = page.locator("#compare-card")
    expect(card).to_have_attribute("data-rendered", re.compile(r"^[1-9]"))
    expect(card).to_have_attribute("data-view", "hvp")
    expect(page.locator("#compare-meta")).to_contain_text("noising")
    expect(page.locator("#compare-meta")).to_contain_text("denoising")

    _, da = server.api("GET", f"/api/analyses/{a}")
    _, db = server.api("GET", f"/api/analyses/{b}")
    ha = da["result"]["scores"]["hvp"]
    hb = db["result"]["scores"]["hvp"]
    ta = trace(page, "map-a")
    tb = trace(page, "map-b")
    # both maps on ONE colour scale: the larger |value| of the two
    top = max(max_abs(ha), max_abs(hb))
    assert ta["zmax"] == tb["zmax"] == pytest.approx(top)
    assert ta["zmin"] == tb["zmin"] == pytest.approx(-top)
    assert ta["z"] == ha and tb["z"] == hb
    assert max_abs(ha) != pytest.approx(max_abs(hb))  # the two really differ
    # their difference
    td = trace(page, "map-diff")
    for i, row in enumerate(td["z"]):
        assert row == pytest.approx([x - y for x, y in zip(ha[i], hb[i], strict=True)])
    # where the flags disagree (at one tau): the count matches the two flag maps
    flags = trace(page, "map-flags")["z"]
    disagree = sum(v in (2, 3) for row in flags for v in row)
    expect(card).to_have_attribute("data-disagree", str(disagree))
    expect(page.locator("#cmp-flags")).to_contain_text("Flagged in A only")
    if os.environ.get("PATCHAUDIT_SCREENSHOTS"):
        card.screenshot(path=str(shots / "compare.png"))

    # another view, another tau: kept in the link
    page.select_option("#cmp-view", "atp")
    expect(card).to_have_attribute("data-view", "atp")
    assert "view=atp" in page.url
    ta2 = trace(page, "map-a")
    assert ta2["z"] == da["result"]["scores"]["atp"]

    # the home page lists both: in this browser and on this (token-less loopback) server
    page.goto("/")
    local = page.locator("#history-local")
    server_list = page.locator("#history-server")
    for analysis_id in (a, b):
        expect(local.locator(f'tr[data-id="{analysis_id}"]')).to_have_count(1)
        expect(server_list.locator(f'tr[data-id="{analysis_id}"]')).to_have_count(1)
    expect(local.locator(f'tr[data-id="{b}"]')).to_contain_text("denoising")
    expect(page.locator("#history-page")).to_contain_text("page 1 of")
    assert console_errors == [], console_errors  # the browser console stays clean


def test_compare_names_a_missing_analysis_in_one_line(new_context, pair_of_analyses):
    a, _ = pair_of_analyses
    page = new_context(viewport=VIEWPORT).new_page()
    resp = page.goto(f"/compare?a={a}&b={'0' * 32}")
    assert resp is not None and resp.status == 200
    # the hardening middleware's headers apply to this page as to every other
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"
    expect(page.locator("#message")).to_contain_text("Not found")
    expect(page.locator("#compare-card")).to_be_hidden()
