"""Issue 21, acceptance 4: the "why" view in real Chromium against a real `patchaudit serve`
(real RQ workers running pa.diagnose on the bundled model): a flagged head's view shows the
stacked bar and the sentence, the shares shown add up to the second-order term shown, and the
link restores the view (and the model-wide view of the flagged heads) in a fresh context."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .test_e2e_component import VIEWPORT, finished_analysis, plot, wait_rendered

pytestmark = pytest.mark.e2e

SENTENCE = re.compile(r"^(\d+ % from .+; local curvature \d+ %\.|No second-order term.*)$")


@pytest.fixture(scope="module")
def analysis(server, model_name) -> str:
    return finished_analysis(server, model_name, seed=21)


def shown_bars(page) -> tuple[float, float, list[str]]:
    """(sum of the coloured bars, the unexplained bar, their trace names)."""
    traces = plot(page, "why-bar", "d.data.map(t => [t.name, t.y])")
    kinds = [t for t in traces if not t[0].startswith("unexplained")]
    rem = [t for t in traces if t[0].startswith("unexplained")]
    return sum(v for _, ys in kinds for v in ys), rem[0][1][0], [t[0] for t in kinds]


def test_why_view_of_a_flagged_head_and_its_link(new_context, analysis, server):
    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(f"/a/{analysis}?view=hvp&tau=0.99")
    wait_rendered(page)
    flagged = page.evaluate("window.__patchaudit.flagged()")
    assert flagged, "no flagged head at tau 0.99 on this analysis"
    i, j = flagged[0]
    pt = page.evaluate(f"window.__patchaudit.cellCenter({i}, {j})")
    page.mouse.click(pt["x"], pt["y"])
    expect(page.locator("#component-card")).to_have_attribute("data-key", f"{i}.{j}")

    page.click("#why-toggle")
    box = page.locator("#why-box")
    expect(box).to_have_attribute("data-state", "ready", timeout=180_000)
    sentence = page.locator("#why-sentence").inner_text().strip()
    assert SENTENCE.match(sentence), sentence
    status, d = server.api("GET", f"/api/analyses/{analysis}/components/{i}.{j}/why")
    assert status == 200, d
    c = d["components"][0]
    assert c["component"] == [i, j] and c["sentence"] == sentence
    # the stacked bar: one trace per kind of operation, stacked over the layers
    total, rem, names = shown_bars(page)
    assert names, "no bar drawn"
    assert plot(page, "why-bar", "d.layout.barmode") == "relative"
    term = float(page.locator("#why-bar").get_attribute("data-term"))
    # the shares shown add up to the second-order term shown (q/2), which is the API's
    assert total == pytest.approx(term, rel=1e-6, abs=1e-12)
    assert term == pytest.approx(c["q"] / 2, rel=1e-9, abs=1e-15)
    assert rem == pytest.approx(c["remainder"], rel=1e-9, abs=1e-15)
    text = page.locator("#why-numbers").inner_text()
    assert "Second-order term q/2" in text and "unexplained remainder" in text
    assert "why=c" in page.url

    # the model-wide view: the flagged heads, which layers carry their error
    page.click("#why-model-toggle")
    card = page.locator("#why-model-card")
    expect(card).to_have_attribute("data-state", "ready", timeout=180_000)
    rows = int(page.locator("#why-model").get_attribute("data-rows"))
    status, f = server.api("GET", f"/api/analyses/{analysis}/why")
    assert status == 200 and rows == len(f["components"]) >= 1
    assert f"L{i}H{j}" in plot(page, "why-model", "d.data[0].y")

    page.click("#copy-link")
    link = page.input_value("#share-link")
    assert re.search(r"why=c(%2C|,)flagged", link) and f"c={i}.{j}" in link

    # a fresh browser context (no storage, no cache): the same views, read from the store
    fresh = new_context(viewport=VIEWPORT).new_page()
    fresh.goto(link)
    expect(fresh.locator("#why-box")).to_have_attribute("data-state", "ready", timeout=60_000)
    expect(fresh.locator("#why-sentence")).to_have_text(sentence)
    total2, _, names2 = shown_bars(fresh)
    assert names2 == names and total2 == pytest.approx(total, rel=1e-12, abs=1e-15)
    expect(fresh.locator("#why-model-card")).to_have_attribute("data-state", "ready")
    assert fresh.locator("#why-model").get_attribute("data-rows") == str(rows)
    # closing the view drops it from the link
    fresh.click("#why-toggle")
    expect(fresh.locator("#why-view")).to_be_hidden()
    assert "why=flagged" in fresh.url
