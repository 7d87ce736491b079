"""Issue 11, /compare and "My analyses": real Chromium at 1280x800 against a real
`patchaudit serve` (two real analyses of the bundled model, noising and denoising).

Acceptance 3 (issue 11): the compare page for a noising and a denoising IOI analysis renders both
maps on one scale and their difference; the analyses list shows both.
Acceptance 6 (issue 20): signs aligned by default with the convention stated (noising effects
flipped: positive = helps the clean behaviour), a raw-signs toggle, Spearman's rank correlation,
the verified view, a colour bar on every map, and no horizontal scroll at 1280 px."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect
from scipy.stats import spearmanr
from test_e2e_component import finished_analysis

from tests.waits import wait_for

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
    # signs aligned by default: A is noising (a helpful head lowers the logit diff), so its
    # values are flipped; B is denoising, shown as computed
    assert ta["z"] == [[-v for v in row] for row in ha] and tb["z"] == hb
    assert max_abs(ha) != pytest.approx(max_abs(hb))  # the two really differ
    # their difference, of the aligned values
    td = trace(page, "map-diff")
    for i, row in enumerate(td["z"]):
        assert row == pytest.approx([-x - y for x, y in zip(ha[i], hb[i], strict=True)])
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
    assert ta2["z"] == [[-v for v in row] for row in da["result"]["scores"]["atp"]]

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


def layer_head_keys(m, n: int) -> list[list[int]]:
    """The n components of largest |value| of the map m, as [layer, head]."""
    cells = sorted(
        ((abs(v), i, j) for i, row in enumerate(m) for j, v in enumerate(row)), reverse=True
    )
    return [[i, j] for _, i, j in cells[:n]]


def no_horizontal_scroll(page) -> None:
    sw, cw = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert sw <= cw, f"the page scrolls sideways: {sw} px wide in a {cw} px window"


def test_compare_aligns_signs_ranks_and_verified_view_at_1280(
    new_context, pair_of_analyses, server, shots
):
    a, b = pair_of_analyses
    _, da = server.api("GET", f"/api/analyses/{a}")
    _, db = server.api("GET", f"/api/analyses/{b}")
    assert da["request"]["direction"] == "noising" and db["request"]["direction"] == "denoising"
    ha = da["result"]["scores"]["hvp"]
    hb = db["result"]["scores"]["hvp"]
    # verify 4 components in each, 3 of them in both
    top = layer_head_keys(hb, 5)
    for analysis_id, comps in ((a, top[:4]), (b, top[:3] + top[4:5])):
        status, body = server.api(
            "POST", f"/api/analyses/{analysis_id}/verify", {"components": comps}
        )
        assert status in (200, 202), body

        def verified(aid=analysis_id, n=len(comps)):
            _, d = server.api("GET", f"/api/analyses/{aid}")
            return len((d["result"] or {}).get("verified") or {}) >= n and d

        wait_for(verified, 120, f"{analysis_id}'s verify", interval=0.3)
    _, da = server.api("GET", f"/api/analyses/{a}")
    _, db = server.api("GET", f"/api/analyses/{b}")

    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(f"/compare?a={a}&b={b}&view=hvp")
    card = page.locator("#compare-card")
    expect(card).to_have_attribute("data-rendered", re.compile(r"^[1-9]"))
    no_horizontal_scroll(page)
    # the convention, stated
    conv = page.locator("#cmp-convention")
    expect(conv).to_contain_text("positive (red) = the component helps the clean behaviour")
    expect(conv).to_contain_text("A (noising")
    expect(conv).to_contain_text("sign flipped")
    expect(card).to_have_attribute("data-aligned", "true")
    ta, tb = trace(page, "map-a"), trace(page, "map-b")
    assert ta["z"] == [[-v for v in row] for row in ha] and tb["z"] == hb
    # aligned, the strongest head has the same sign in both (it helps the clean behaviour)
    i, j = layer_head_keys(hb, 1)[0]
    assert ta["z"][i][j] * tb["z"][i][j] > 0
    # Spearman over every component, on the shown (aligned) values
    xs = [v for row in ta["z"] for v in row]
    ys = [v for row in tb["z"] for v in row]
    rho = float(spearmanr(xs, ys).statistic)
    assert float(card.get_attribute("data-spearman")) == pytest.approx(rho, abs=1e-9)
    expect(page.locator("#cmp-rank")).to_contain_text(f"ρ = {rho:.3f} over the {len(xs)}")
    assert rho > 0.3  # aligned, the two directions agree on which heads matter
    # a colour bar on every map (A, B, difference and the flags)
    for div in ("map-a", "map-b", "map-diff", "map-flags"):
        assert (
            page.evaluate(f"document.querySelector('#{div}').querySelectorAll('.colorbar').length")
            == 1
        ), div

    # raw signs: each analysis in its own convention, with the warning, and rho follows
    page.locator("#cmp-raw").check()
    expect(card).to_have_attribute("data-aligned", "false")
    assert "raw=1" in page.url
    assert trace(page, "map-a")["z"] == ha
    expect(conv).to_contain_text("OPPOSITE sign conventions")
    raw_rho = float(spearmanr([v for r in ha for v in r], ys).statistic)
    assert float(card.get_attribute("data-spearman")) == pytest.approx(raw_rho, abs=1e-9)
    assert raw_rho == pytest.approx(-rho, abs=1e-9)
    page.locator("#cmp-raw").uncheck()
    expect(card).to_have_attribute("data-aligned", "true")

    # the verified view: ap where each analysis verified a cell; the common ones ringed
    page.select_option("#cmp-view", "verified")
    expect(card).to_have_attribute("data-view", "verified")
    expect(card).to_have_attribute("data-verified-both", "3")
    va, vb = da["result"]["verified"], db["result"]["verified"]
    za, zb = trace(page, "map-a")["z"], trace(page, "map-b")["z"]
    for key, v in va.items():
        li, hj = map(int, key.split("."))
        assert za[li][hj] == pytest.approx(-v)  # noising, flipped
    for key, v in vb.items():
        li, hj = map(int, key.split("."))
        assert zb[li][hj] == pytest.approx(v)
    assert sum(v is not None for row in za for v in row) == len(va)
    expect(page.locator("#cmp-verified")).to_contain_text("Verified in both")
    both = sorted(set(va) & set(vb))
    assert len(both) == 3
    rho_v = float(spearmanr([-va[k] for k in both], [vb[k] for k in both]).statistic)
    assert float(card.get_attribute("data-spearman")) == pytest.approx(rho_v, abs=1e-9)
    ring = page.evaluate("document.querySelector('#map-a').data[1]")
    assert sorted(f"{y}.{x}" for x, y in zip(ring["x"], ring["y"], strict=True)) == both
    no_horizontal_scroll(page)
    if os.environ.get("PATCHAUDIT_SCREENSHOTS"):
        card.screenshot(path=str(shots / "compare-verified.png"))
