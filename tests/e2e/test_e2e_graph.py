"""Issue 22, acceptance 5: the graph view of an edge analysis in real Chromium against a real
`patchaudit serve` (real RQ workers running a bundled-model edge analysis and edge patching).

The graph draws the top-k edges by |score| of the chosen ranking (the drawn keys are the API's
top k); a real mouse click on an edge verifies it (the value on the edge is the API's verified
value); a click on a node opens its component panel; a fresh context restores k, the ranking
and the selected edge from the link."""

from __future__ import annotations

import math

import pytest
from playwright.sync_api import expect

from tests.waits import wait_for

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def edge_analysis(server, model_name) -> str:
    # the edge screen (EAP + HVP-corrected) with few probes: a short job on a loaded machine
    body = {"model": model_name, "task": "ioi", "n_pairs": 3, "seed": 5, "site": "edges"}
    body.update(methods=["atp", "hvp"], hvp_probes=2)
    status, acc = server.api("POST", "/api/analyses", body)
    assert status == 202, acc

    def done() -> bool:
        _, data = server.api("GET", f"/api/analyses/{acc['id']}")
        assert data["status"] not in ("failed", "cancelled"), data
        return data["status"] == "done"

    wait_for(done, 600, f"edge analysis {acc['id']} to finish", interval=0.5)
    return acc["id"]


def top_k(result: dict, ranking: str, k: int) -> tuple[set[str], float, float]:
    """The top k edges by |score| and the smallest |score| in, the largest out."""
    mag = [
        abs(v) if isinstance(v, float | int) and math.isfinite(v) else -1.0
        for v in result["scores"][ranking]
    ]
    order = sorted(range(len(mag)), key=lambda n: (-mag[n], n))
    keys = {result["edges"][n] for n in order[:k]}
    return keys, mag[order[k - 1]], mag[order[k]] if k < len(order) else -1.0


def drawn(page) -> list[str]:
    return page.evaluate("window.__patchaudit.graph.drawn()")


def clickable_edge(page, keys: list[str]) -> tuple[str, dict]:
    """The first of ``keys`` whose midpoint is on top (a click there lands on it)."""
    for key in keys:
        pt = page.evaluate(f"window.__patchaudit.graph.point({key!r})")
        hit = page.evaluate(
            f"document.elementFromPoint({pt['x']}, {pt['y']})?.closest('g.edge')?.dataset.key"
        )
        if hit == key:
            return key, pt
    raise AssertionError("no drawn edge can be clicked at its midpoint")


def test_the_graph_draws_top_k_verifies_a_clicked_edge_and_restores_from_the_link(
    new_context, edge_analysis, server, shots
):
    _, data = server.api("GET", f"/api/analyses/{edge_analysis}")
    result = data["result"]
    assert result["edges"] and set(result["scores"]) >= {"atp", "hvp"}

    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(f"/a/{edge_analysis}?view=graph&k=12")
    graph = page.locator("#graph")
    expect(graph).to_have_attribute("data-k", "12")
    expect(page.locator("#graph-card")).to_be_visible()
    expect(page.locator("#result-card")).to_be_hidden()  # no heatmap for edges
    assert graph.get_attribute("data-rank") == "hvp"  # the corrected ranking by default
    keys = drawn(page)
    want, smallest_in, largest_out = top_k(result, "hvp", 12)
    assert len(keys) == 12 and set(keys) == want, (keys, want)
    assert smallest_in >= largest_out
    assert page.locator("#graph g.edge").count() == 12

    # a real mouse click on an edge verifies it; its value appears on the edge
    ordered = page.evaluate("window.__patchaudit.graph.topEdges()")
    key, pt = clickable_edge(page, ordered)
    page.mouse.click(pt["x"], pt["y"])
    expect(graph).to_have_attribute("data-selected", key)
    label = page.locator(f'#graph text.edge-value[data-key="{key}"]')
    wait_for(
        lambda: label.count() == 1 and label.get_attribute("data-value"),
        120,
        f"the verified value on edge {key}",
        interval=0.3,
    )
    _, after = server.api("GET", f"/api/analyses/{edge_analysis}")
    value = after["result"]["verified"][key]
    assert float(label.get_attribute("data-value")) == value  # the API's number, unrounded
    text = (label.text_content() or "").replace("\u2212", "-")  # the page writes a true minus
    assert abs(float(text) - value) <= 5e-3 * abs(value) + 1e-12, (text, value)  # as shown
    expect(page.locator("#graph-info")).to_have_attribute(
        "data-verified", str(label.get_attribute("data-value"))
    )

    page.locator("#graph-card").screenshot(path=str(shots / "graph-view.png"))

    # a click on a node opens its component panel
    page.locator('#graph g.node[data-node="1.0"]').click()
    card = page.locator("#component-card")
    expect(card).to_be_visible()
    expect(card).to_have_attribute("data-key", "1.0")
    expect(page.locator("#comp-title")).to_have_text("head 1.0")
    expect(card).to_have_attribute("data-state", "ready", timeout=120_000)

    # another ranking and k: the link keeps them with the selected edge
    page.select_option("#graph-rank", "atp")
    page.locator("#graph-k").fill("7")
    expect(graph).to_have_attribute("data-k", "7")
    expect(graph).to_have_attribute("data-rank", "atp")
    assert set(drawn(page)) == top_k(result, "atp", 7)[0]
    link = page.url
    assert "view=graph" in link and "k=7" in link and "rank=atp" in link and "e=" in link

    fresh = new_context(viewport=VIEWPORT).new_page()
    fresh.goto(link)
    g2 = fresh.locator("#graph")
    expect(g2).to_have_attribute("data-k", "7")
    expect(g2).to_have_attribute("data-rank", "atp")
    expect(g2).to_have_attribute("data-selected", key)
    expect(fresh.locator("#graph-rank")).to_have_value("atp")
    expect(fresh.locator("#graph-info")).to_have_attribute("data-key", key)
    assert set(drawn(fresh)) == top_k(result, "atp", 7)[0]
    if key in drawn(fresh):  # the selected edge is among the drawn: its value is on it
        expect(fresh.locator(f'#graph text.edge-value[data-key="{key}"]')).to_have_attribute(
            "data-value", label.get_attribute("data-value")
        )
