"""Issue 12, the circuit panel: real Chromium at 1280x800 against a real `patchaudit serve`
(real RQ workers running POST /api/analyses/<id>/circuit on the bundled model).

Acceptance 4: open an analysis, compute the hvp and atp curves, move the size slider -> the
outlined circuit changes; the link restores the chosen size in a fresh context."""

from __future__ import annotations

import json
import os
import re

import pytest
from playwright.sync_api import expect
from test_e2e_component import finished_analysis

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def analysis(server, model_name) -> str:
    return finished_analysis(server, model_name, seed=12)


def outlined(page) -> list[list[int]]:
    return json.loads(page.get_attribute("#heatmap", "data-circuit") or "[]")


def circuit_trace_cells(page) -> int:
    """Cells drawn by the heatmap's "circuit" trace (5 points and a gap per cell)."""
    n = page.evaluate(
        "document.querySelector('#heatmap').data.find(t => t.name === 'circuit').x.length"
    )
    return n // 6


def slide_to(page, fraction: float) -> None:
    """A real mouse click on the slider's track at `fraction` of its width."""
    box = page.locator("#circuit-k").bounding_box()
    page.mouse.click(box["x"] + 8 + (box["width"] - 16) * fraction, box["y"] + box["height"] / 2)


def test_curves_slider_outline_and_link(new_context, analysis, server, shots):
    page = new_context(viewport=VIEWPORT).new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"/a/{analysis}")
    expect(page.locator("#heatmap")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))
    card = page.locator("#circuit-card")
    expect(card).to_be_visible()
    expect(page.locator("#circuit-k")).to_be_disabled()  # nothing to outline yet
    page.locator("#circuit-hvp").click()
    page.locator("#circuit-atp").click()
    expect(card).to_have_attribute("data-curves", "2", timeout=120_000)
    expect(page.locator("#circuit-hvp")).to_have_text("HVP-corrected: done")

    _, data = server.api("GET", f"/api/analyses/{analysis}")
    circuits = data["result"]["circuits"]
    assert set(circuits) == {"hvp", "atp"}
    n = len(circuits["hvp"]["sizes"]) - 1  # every k on the curve (<= 64 components)
    assert n == 48 and circuits["hvp"]["sizes"] == list(range(n + 1))  # 6 layers x 8 heads
    traces = page.evaluate(
        "document.querySelector('#circuit-chart').data.map(t => [t.name, t.x, t.y])"
    )
    assert [t[0].split(" (")[0] for t in traces] == ["AtP", "HVP-corrected"]
    by_name = {t[0].split(" (")[0]: t for t in traces}
    assert by_name["HVP-corrected"][2] == pytest.approx(circuits["hvp"]["faithfulness"])
    assert by_name["AtP"][2] == pytest.approx(circuits["atp"]["faithfulness"])
    assert by_name["HVP-corrected"][2][0] == pytest.approx(0.0, abs=1e-6)  # f(empty) = 0
    assert by_name["HVP-corrected"][2][-1] == pytest.approx(1.0, abs=1e-6)  # f(all) = 1

    # move the slider with the mouse: the outlined circuit is the top k of hvp's order
    expect(page.locator("#circuit-k")).to_be_enabled()
    slide_to(page, 0.25)
    k1 = int(page.input_value("#circuit-k"))
    assert abs(k1 - 0.25 * n) <= 0.1 * n, k1  # a quarter of the way along 0..n
    order = [list(c) for c in circuits["hvp"]["order"]]
    expect(page.locator("#heatmap")).to_have_attribute(
        "data-circuit", json.dumps(order[:k1]).replace(" ", "")
    )
    assert circuit_trace_cells(page) == k1
    slide_to(page, 0.75)
    k2 = int(page.input_value("#circuit-k"))
    assert abs(k2 - 0.75 * n) <= 0.1 * n, k2
    assert outlined(page) == order[:k2] != order[:k1]
    assert circuit_trace_cells(page) == k2
    assert f"k={k2}" in page.url
    expect(page.locator("#circuit-k-value")).to_contain_text(f"k = {k2} of {n}")
    # the atp ranking's circuit of the same size
    page.select_option("#circuit-ranking", "atp")
    assert outlined(page) == [list(c) for c in circuits["atp"]["order"]][:k2]
    page.select_option("#circuit-ranking", "hvp")
    if os.environ.get("PATCHAUDIT_SCREENSHOTS"):
        # the map with its outlined circuit and the panel below it
        page.set_viewport_size({"width": 1280, "height": 1400})
        page.evaluate("document.querySelector('#heatmap-wrap').scrollIntoView({block: 'start'})")
        top = page.locator("#heatmap-wrap").bounding_box()
        bottom = card.bounding_box()
        page.screenshot(
            path=str(shots / "circuit-panel.png"),
            clip={
                "x": bottom["x"],
                "y": top["y"],
                "width": bottom["width"],
                "height": bottom["y"] + bottom["height"] - top["y"],
            },
        )
        page.set_viewport_size(VIEWPORT)

    page.click("#copy-link")
    link = page.input_value("#share-link")
    assert f"k={k2}" in link

    fresh = new_context(viewport=VIEWPORT).new_page()
    fresh.goto(link)
    expect(fresh.locator("#circuit-card")).to_have_attribute("data-curves", "2")
    expect(fresh.locator("#circuit-k")).to_have_value(str(k2))
    assert outlined(fresh) == order[:k2]
    assert circuit_trace_cells(fresh) == k2
    # nothing was computed again: the curves are stored with the analysis
    expect(fresh.locator("#circuit-hvp")).to_be_disabled()
    assert console_errors == [], console_errors  # the browser console stays clean
