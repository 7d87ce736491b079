"""Issue 11, the component panel: real Chromium at 1280x800 against a real `patchaudit serve`
(real RQ workers computing GET /api/analyses/<id>/components/<key> on the bundled model).

Acceptance 2: click a flagged head -> the panel shows per-pair, per-position and attention
for it; the copied link opened in a fresh context shows the same component, pair and view."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from tests.waits import wait_for

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 800}


def finished_analysis(server, model_name, timeout_s: float = 180, **req) -> str:
    """A finished atp+hvp IOI analysis (4 pairs) on the real server; ``req`` overrides."""
    body = {"model": model_name, "task": "ioi", "n_pairs": 4, "seed": 11, "methods": ["atp", "hvp"]}
    body.update(req)
    status, acc = server.api("POST", "/api/analyses", body)
    assert status == 202, acc

    def done() -> bool:
        _, data = server.api("GET", f"/api/analyses/{acc['id']}")
        assert data["status"] not in ("failed", "cancelled"), data
        return data["status"] == "done"

    wait_for(done, timeout_s, f"analysis {acc['id']} to finish", interval=0.5)
    return acc["id"]


@pytest.fixture(scope="module")
def analysis(server, model_name) -> str:
    return finished_analysis(server, model_name)


def flat(m) -> list[float]:
    return [v for row in m for v in row]


def wait_rendered(page):
    expect(page.locator("#heatmap")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))


def plot(page, div: str, expr: str):
    return page.evaluate(
        f"(() => {{ const d = document.querySelector('#{div}'); return {expr}; }})()"
    )


def test_click_a_flagged_head_shows_its_detail_and_the_link_restores_it(
    new_context, analysis, server, shots
):
    page = new_context(viewport=VIEWPORT).new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"/a/{analysis}?view=hvp&tau=0.99")
    wait_rendered(page)
    flagged = page.evaluate("window.__patchaudit.flagged()")
    assert flagged, "no flagged head at tau 0.99 on this analysis"
    i, j = flagged[0]
    pt = page.evaluate(f"window.__patchaudit.cellCenter({i}, {j})")
    page.mouse.click(pt["x"], pt["y"])

    card = page.locator("#component-card")
    expect(card).to_be_visible()
    expect(card).to_have_attribute("data-key", f"{i}.{j}")
    expect(card).to_have_attribute("data-state", "ready", timeout=90_000)
    expect(page.locator("#comp-title")).to_have_text(f"head L{i}H{j}")
    assert f"c={i}.{j}" in page.url  # the click selected it (and still verified it)
    expect(page.locator("#heatmap")).to_have_attribute("data-pending", re.compile(r"^[0-9]"))

    # the click also verified it: every pair's ap value joins the bars once it is in
    expect(page.locator("#comp-pairs")).to_have_attribute("data-bars", "3", timeout=90_000)
    status, detail = server.api("GET", f"/api/analyses/{analysis}/components/{i}.{j}")
    assert status == 200, detail
    _, data = server.api("GET", f"/api/analyses/{analysis}")
    n = detail["n_pairs"]
    assert n == 4
    # per pair: one bar per pair for atp and hvp, the numbers the API stored
    bars = plot(page, "comp-pairs", "d.data.filter(t => t.type === 'bar').map(t => [t.name, t.y])")
    names = [b[0] for b in bars]
    assert names == ["AtP (estimate)", "HVP-corrected (estimate)", "verified (ap)"], names
    assert bars[0][1] == pytest.approx(detail["per_pair"]["atp"])
    assert bars[1][1] == pytest.approx(detail["per_pair"]["hvp"])
    assert bars[2][1] == pytest.approx(detail["per_pair"]["ap"])
    # ... whose means are the map's value and the verified value
    atp_map = data["result"]["scores"]["atp"][i][j]
    assert sum(bars[0][1]) / n == pytest.approx(atp_map, rel=1e-5, abs=1e-9)
    verified = data["result"]["verified"][f"{i}.{j}"]
    assert sum(bars[2][1]) / n == pytest.approx(verified, rel=1e-5, abs=1e-9)
    # unreliable pairs (reliability < tau on the pair alone) are marked
    rel = detail["per_pair"]["reliability"]
    n_unrel = sum(1 for r in rel if r is not None and r < 0.99)
    expect(page.locator("#comp-pairs")).to_have_attribute("data-unreliable", str(n_unrel))
    # per position of pair 0, with the pair's tokens on the axis; rows sum to the pair's value
    ticks = plot(page, "comp-pos", "JSON.parse(d.dataset.ticks)")
    assert len(ticks) == detail["n_pos"]
    assert ticks[1].split(" ", 1)[1].strip() in detail["tokens"]["clean"][0][1]
    z = plot(page, "comp-pos", "d.data[0].z")
    assert sum(v for v in z[0] if v is not None) == pytest.approx(
        detail["per_pair"]["atp"][0], rel=1e-4, abs=1e-7
    )
    # attention of the head: query rows x key columns, rows sum to 1, causal
    attn = plot(page, "comp-attn", "d.data[0].z")
    assert len(attn) == detail["n_pos"]
    for q, row in enumerate(attn):
        assert sum(row) == pytest.approx(1.0, abs=1e-4)
        assert all(abs(v) < 1e-6 for v in row[q + 1 :])
    assert flat(attn) == pytest.approx(flat(detail["attention"]["clean"][0]))

    # keyboard: the pair select is in the tab order; arrow keys choose pair 2
    page.focus("#comp-pair")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(card).to_have_attribute("data-pair", "2")
    assert "pair=2" in page.url
    z2 = plot(page, "comp-pos", "d.data[0].z")
    assert sum(v for v in z2[0] if v is not None) == pytest.approx(
        detail["per_pair"]["atp"][2], rel=1e-4, abs=1e-7
    )
    # the corrupted prompt's pattern
    page.locator('input[name="comp-attn-side"][value="corrupted"]').click()
    expect(page.locator("#comp-attn")).to_have_attribute("data-side", "corrupted")
    attn_c = plot(page, "comp-attn", "d.data[0].z")
    assert flat(attn_c) == pytest.approx(flat(detail["attention"]["corrupted"][2]))
    if os.environ.get("PATCHAUDIT_SCREENSHOTS"):
        card.screenshot(path=str(shots / "component-panel.png"))

    page.click("#copy-link")
    link = page.input_value("#share-link")
    assert f"c={i}.{j}" in link and "pair=2" in link and "view=hvp" in link and "tau=0.99" in link

    # a fresh browser context (no storage): the same component, pair and view
    fresh = new_context(viewport=VIEWPORT).new_page()
    computed = []
    fresh.on(
        "response",
        lambda r: computed.append(r.status) if f"/components/{i}.{j}" in r.url else None,
    )
    fresh.goto(link)
    wait_rendered(fresh)
    card2 = fresh.locator("#component-card")
    expect(card2).to_have_attribute("data-key", f"{i}.{j}")
    expect(card2).to_have_attribute("data-state", "ready")
    expect(card2).to_have_attribute("data-pair", "2")
    expect(fresh.locator("#view")).to_have_value("hvp")
    expect(fresh.locator("#comp-pair")).to_have_value("2")
    assert computed == [200]  # stored with the analysis: no second computation
    z3 = fresh.evaluate("document.querySelector('#comp-pos').data[0].z")
    assert flat(z3) == pytest.approx(flat(z2))
    assert console_errors == [], console_errors  # the browser console stays clean


def test_arrow_keys_on_the_map_select_another_component(new_context, analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(f"/a/{analysis}?c=1.1")
    wait_rendered(page)
    card = page.locator("#component-card")
    expect(card).to_have_attribute("data-key", "1.1")
    page.focus("#heatmap-keys")
    page.keyboard.press("ArrowRight")
    expect(card).to_have_attribute("data-key", "1.2")
    expect(card).to_have_attribute("data-state", "ready", timeout=90_000)
    expect(page.locator("#comp-title")).to_have_text("head L1H2")
    assert "c=1.2" in page.url
    # Close hides the panel and drops the selection from the link
    page.locator("#comp-close").click()
    expect(card).to_be_hidden()
    assert "c=" not in page.url


def test_a_bad_component_in_the_link_is_one_clear_line(new_context, analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(f"/a/{analysis}?c=9.9")
    wait_rendered(page)
    status = page.locator("#comp-status")
    expect(status).to_contain_text("no component 9.9")
    assert "Traceback" not in status.inner_text()
