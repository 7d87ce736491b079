"""The analysis page's interactions (clicks and keys that verify, the colour scale, flags and
their reasons, the cost table, cancel, tokens): real Chromium at 1280x800 against a real
`patchaudit serve`.

The click test runs on a real analysis of the bundled model (real verify jobs); the others
answer GET /api/analyses/<id> with synthetic results in the REST contract's shape (as
test_e2e_analysis_page does), so that every field the page reads can be set on purpose."""

from __future__ import annotations

import copy
import json
import re

import pytest
from e2e_synthetic import synthetic_analysis
from playwright.sync_api import expect
from test_e2e_component import finished_analysis

from tests.waits import next_frames, page_wait_for, wait_for

from .conftest import start_server, stop_server

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def real_analysis(server, model_name) -> str:
    """A finished atp+hvp analysis of the bundled model (6 layers x 8 heads)."""
    return finished_analysis(server, model_name, timeout_s=150, seed=8)


def serve_json(page, analysis_id: str, payload):
    def handler(route):
        if route.request.method != "GET":
            route.fallback()
            return
        body = payload() if callable(payload) else payload
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route(re.compile(rf".*/api/analyses/{analysis_id}$"), handler)


def wait_rendered(page):
    expect(page.locator("#heatmap")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))


def trace0(page, key: str):
    return page.evaluate(f"document.querySelector('#heatmap').data[0].{key}")


# ------------------------------------------------------------------ item 2, 16: clicks, keys
def test_three_quick_clicks_verify_the_three_cells_aimed_at(new_context, real_analysis, server):
    page = new_context(viewport=VIEWPORT).new_page()
    posted: list[list[int]] = []
    page.on(
        "request",
        lambda r: (
            posted.extend(json.loads(r.post_data or "{}").get("components", []))
            if r.method == "POST" and r.url.endswith("/verify")
            else None
        ),
    )
    downloads = []
    page.on("download", lambda d: downloads.append(d))
    page.goto(f"/a/{real_analysis}")
    wait_rendered(page)
    # At the server's tau the page flags exactly what the server flagged (its flag_reasons).
    _, data = server.api("GET", f"/api/analyses/{real_analysis}")
    n_server = sum(map(sum, data["result"]["flags"]))
    expect(page.locator("#heatmap")).to_have_attribute("data-flagged", str(n_server))
    aimed = [(2, 1), (3, 2), (0, 2)]
    # The user brings the whole map into view (the open-server banner and the cards above it can
    # push its lower rows below an 800 px viewport), then aims where the cells are drawn.
    page.locator("#heatmap").scroll_into_view_if_needed()
    page.evaluate("document.querySelector('#heatmap').scrollIntoView({block: 'center'})")
    next_frames(page)
    centres = [page.evaluate(f"window.__patchaudit.cellCenter({i}, {j})") for i, j in aimed]
    top_before = page.evaluate("document.querySelector('#heatmap').getBoundingClientRect().top")
    for n, c in enumerate(centres, 1):
        page.mouse.click(c["x"], c["y"])
        # the click's verify request has gone out before the next click
        page_wait_for(page, lambda n=n: len(posted) >= n, f"verify request {n} of {len(aimed)}")
    next_frames(page)
    top_after = page.evaluate("document.querySelector('#heatmap').getBoundingClientRect().top")
    assert top_after == top_before, "the heatmap moved while verifying"
    assert sorted(map(tuple, posted)) == sorted(aimed), posted
    # Each of them gets verified by the real worker, and nothing else.
    expect(page.locator("#heatmap")).to_have_attribute("data-pending", "0", timeout=90_000)
    status, data = server.api("GET", f"/api/analyses/{real_analysis}")
    assert {k for k in data["result"]["verified"]} == {f"{i}.{j}" for i, j in aimed}
    assert downloads == []

    # No mode bar (nothing to hit by accident, nothing invisible in the tab order).
    assert page.locator("#heatmap .modebar-btn").count() == 0
    expect(page.locator("#scatter")).to_have_attribute("data-points", "3")
    assert page.locator(".modebar-btn").count() == 0  # the scatter's neither
    assert page.locator("#heatmap a, #heatmap button, #heatmap [tabindex]").count() == 0
    # A double click leaves the axes where they are (no zoom-out into grey bands).
    c = page.evaluate("window.__patchaudit.cellCenter(1, 1)")
    page.mouse.dblclick(c["x"], c["y"])
    next_frames(page)  # a relayout the double click set off has been drawn
    xr = page.evaluate("document.querySelector('#heatmap')._fullLayout.xaxis.range")
    yr = page.evaluate("document.querySelector('#heatmap')._fullLayout.yaxis.range")
    assert xr == [-0.5, 7.5] and sorted(yr) == [-0.5, 5.5]  # 8 heads x 6 layers


def test_keyboard_reaches_cells_and_enter_verifies(new_context, real_analysis, server):
    page = new_context(viewport=VIEWPORT).new_page()
    posted: list[list[int]] = []
    page.on(
        "request",
        lambda r: (
            posted.extend(json.loads(r.post_data or "{}").get("components", []))
            if r.method == "POST" and r.url.endswith("/verify")
            else None
        ),
    )
    page.goto(f"/a/{real_analysis}")
    wait_rendered(page)
    # Tab from the view selector reaches the cell grid (no Plotly buttons in between).
    page.locator("#view").focus()
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "heatmap-keys":
            break
    assert page.evaluate("document.activeElement.id") == "heatmap-keys"
    keys = page.locator("#heatmap-keys")
    expect(keys).to_contain_text("layer 0, head 0")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(keys).to_contain_text("layer 2, head 3")
    assert "c=2.3" in page.url
    cursor = page.evaluate(
        "document.querySelector('#heatmap').data.find(t => t.name === 'cursor').x"
    )
    assert min(x for x in cursor if x is not None) == 2.5
    page.keyboard.press("Enter")
    page_wait_for(page, lambda: posted, "the verify request of the cell under the cursor")
    assert posted == [[2, 3]]
    expect(keys).to_contain_text("verified", timeout=90_000)


# ------------------------------------------------------------------ items 3, 9, 15
def test_colour_convention_shared_scale_title_and_export(new_context, server, real_analysis):
    page = new_context(viewport=VIEWPORT, accept_downloads=True).new_page()
    data = synthetic_analysis(real_analysis, n_layers=6, n_heads=5, seed=4)
    serve_json(page, real_analysis, data)
    page.goto(f"/a/{real_analysis}?view=atp&tau=0.5")
    wait_rendered(page)
    r = data["result"]
    # negative blue, zero white, positive red, symmetric about zero
    scale = trace0(page, "colorscale")
    assert scale[0][1] == "#053061" and scale[-1][1] == "#67001f"
    assert trace0(page, "zmid") == 0
    finite = [
        abs(v) for m in r["scores"] for row in r["scores"][m] for v in row if v is not None
    ]  # the analysis's own maps: verified values never move the scale (issue 20)
    # Shared scale (on by default): AtP and HVP views have the same, all-covering scale.
    z_atp = trace0(page, "zmax")
    assert z_atp == pytest.approx(max(finite))
    page.select_option("#view", "hvp")
    expect(page.locator("#heatmap")).to_have_attribute("data-view", "hvp")
    assert trace0(page, "zmax") == pytest.approx(z_atp)
    assert trace0(page, "zmin") == pytest.approx(-z_atp)
    expect(page.locator("#scale-note")).to_contain_text("shared")
    page.uncheck("#shared-scale")
    own = max(abs(v) for row in r["scores"]["hvp"] for v in row)
    page.wait_for_function(
        f"Math.abs(document.querySelector('#heatmap').data[0].zmax - {own}) < 1e-9"
    )
    # The colour bar names the metric; the page says what negative means.
    assert "logit diff (answer − wrong)" in trace0(page, "colorbar.title.text")
    expect(page.locator("#meaning")).to_contain_text("Negative (blue)")
    expect(page.locator("#meaning")).to_contain_text("supports the answer")
    # Title: model, task, site, view, tau; in the exported SVG too.
    title = page.evaluate("document.querySelector('#heatmap').layout.title.text")
    for word in ("synthetic-48x25", "ioi", "site heads", "HVP", "τ = 0.50"):
        assert word in title, title
    with page.expect_download() as dl:
        page.click("#download-svg")
    svg = open(dl.value.path(), encoding="utf-8").read()
    assert "synthetic-48x25" in svg and "site heads" in svg and "logit diff" in svg

    # Error bounds: the scale reaches the largest finite bound; unbounded cells drawn apart.
    page.select_option("#view", "error_bound")
    expect(page.locator("#heatmap")).to_have_attribute("data-view", "error_bound")
    bounds = [v for row in r["error_bound"] for v in row if v is not None]
    assert trace0(page, "zmax") == pytest.approx(max(bounds))
    n_unb = sum(v is None for row in r["error_bound"] for v in row)
    expect(page.locator("#scale-note")).to_contain_text("not clipped")
    if n_unb:
        expect(page.locator("#scale-note")).to_contain_text(f"{n_unb} unbounded")
        expect(page.locator("#legend-unbounded")).to_be_visible()


def test_diverging_scale_says_when_it_clips(new_context, real_analysis):
    """A 'diff' view (its own scale) of a map whose verified value exceeds the estimates."""
    page = new_context(viewport=VIEWPORT).new_page()
    data = synthetic_analysis(real_analysis, n_layers=3, n_heads=3, seed=5)
    serve_json(page, real_analysis, data)
    page.goto(f"/a/{real_analysis}?view=atp")
    wait_rendered(page)
    page.uncheck("#shared-scale")
    page.select_option("#view", "best")
    expect(page.locator("#heatmap")).to_have_attribute("data-view", "best")
    zmax = trace0(page, "zmax")
    z = trace0(page, "z")
    assert zmax == pytest.approx(max(abs(v) for row in z for v in row if v is not None))
    expect(page.locator("#scale-note")).not_to_contain_text("clipped at")


# ------------------------------------------------------------------ items 1, 14
def test_uninformative_screen_and_flag_rule(new_context, real_analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    data = synthetic_analysis(real_analysis, n_layers=4, n_heads=4, seed=6)
    r = data["result"]
    r["metric"] = data["request"]["metric"] = "kl"
    r["screen"] = {
        "informative": False,
        "first_order_vanishes": True,
        "message": "KL noising: the first-order term is 0 at the clean run",
    }
    r["m_clean"] = 0.0
    r["m_corrupted"] = 1.25
    r["material_threshold"] = 0.0125
    r["circuit"] = [{"layer": 1, "comp": 2, "estimate": 0.3, "verified": False}]
    reasons = [[[] for _ in range(4)] for _ in range(4)]
    reasons[1][2] = ["unbounded", "cutoff"]
    r["flag_reasons"] = reasons
    serve_json(page, real_analysis, data)
    page.goto(f"/a/{real_analysis}")
    wait_rendered(page)
    warn = page.locator("#screen-warning")
    expect(warn).to_be_visible()
    expect(warn).to_contain_text("KL noising: the first-order term is 0 at the clean run")
    expect(warn).to_contain_text("cannot rank")
    expect(page.locator("#heatmap")).to_have_attribute("data-informative", "0")
    # KL: what the sign means there
    expect(page.locator("#meaning")).to_contain_text("KL is 0 on the clean run")
    page.click("#flag-rule summary")
    body = page.locator("#flag-rule-body")
    expect(body).to_contain_text("material")
    expect(page.locator("#material-threshold")).to_contain_text("0.0125")
    expect(page.locator("#cutoff")).to_contain_text(re.compile(r"0\.\d+"))
    expect(page.locator("#circuit")).to_contain_text("L1.H2")
    expect(body).to_contain_text("m(clean)")
    expect(body).to_contain_text("1.250")
    expect(body).to_contain_text("At most 35% of the components are flagged")
    expect(body.locator("li[data-code=atp_error]")).to_have_count(1)
    # The server's flag reasons in the hover.
    c = page.evaluate("window.__patchaudit.cellCenter(1, 2)")
    page.mouse.move(c["x"] + 1, c["y"])
    page.mouse.move(c["x"], c["y"])
    hover = page.locator("#heatmap .hoverlayer .hovertext")
    expect(hover).to_contain_text("unbounded, cutoff")

    # An informative screen shows no warning.
    r["screen"] = {"informative": True, "first_order_vanishes": False, "message": ""}
    page.reload()
    wait_rendered(page)
    expect(warn).to_be_hidden()


def test_flag_reason_codes_in_the_table(new_context, real_analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    data = synthetic_analysis(real_analysis, n_layers=6, n_heads=6, seed=3)
    serve_json(page, real_analysis, data)
    page.goto(f"/a/{real_analysis}?tau=0.9")
    wait_rendered(page)
    codes = page.locator("#top-table tbody td.flag-codes").all_inner_texts()
    assert codes, "no flagged row"
    allowed = {"reliability", "sign", "cutoff", "unbounded", "atp_error"}
    for text in codes:
        assert set(text.split(", ")) <= allowed, text
    assert any("reliability" in t for t in codes)


# ------------------------------------------------------------------ items 8, 13
def test_cost_table_cached_and_notes_and_fix_like_with_like(new_context, real_analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    data = synthetic_analysis(real_analysis, n_layers=4, n_heads=4, seed=7)
    r = data["result"]
    r["cost"] = {
        "atp": {"forward": 0, "backward": 0, "seconds": 0.0, "cached": True, "note": ""},
        "ig": {
            "forward": 1,
            "backward": 1,
            "seconds": 0.4,
            "cached": False,
            "note": "16 IG steps ride on the batch axis: 1 batched forward + 1 batched backward over 16x the rows",
        },
    }
    r["fix"] = {
        "status": "done",
        "components": ["0.1", "2.2"],
        "forwards": 2,
        "fix_forwards": 2,
        "full_sweep_forwards": 16,
        "fix_batch_passes": 1,
        "full_sweep_batch_passes": 4,
        "fix_seconds": 0.05,
        "full_sweep_seconds": 0.31,
        "full_sweep_seconds_estimated": True,
    }
    serve_json(page, real_analysis, data)
    page.goto(f"/a/{real_analysis}")
    wait_rendered(page)
    atp = page.locator("#cost tr[data-method='atp']")
    expect(atp).to_contain_text("cached")
    assert "0.000" not in atp.inner_text()
    expect(page.locator("#cost tr[data-method='ig']")).to_contain_text("ride on the batch axis")
    fix = page.locator("#fix-summary")
    expect(fix).to_contain_text("2 component forwards (1 batched pass, 0.05 s)")
    expect(fix).to_contain_text("16 component forwards (4 batched passes, ≈ 0.31 s estimated)")


# ------------------------------------------------------------------ item 12
def test_cancel_keeps_finished_methods_and_offers_rerun(new_context, real_analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    state = {"status": "running"}
    base = synthetic_analysis(real_analysis, n_layers=4, n_heads=4, seed=2)

    def payload():
        d = copy.deepcopy(base)
        d["status"] = state["status"]
        if state["status"] == "running":
            d["result"] = None
            d["progress"] = {"phase": "hvp", "fraction": 0.57}
        else:  # cancelled: AtP had finished, HVP not
            res = d["result"]
            res["scores"] = {"atp": res["scores"]["atp"]}
            res["partial"] = True
            for k in ("reliability", "error_bound", "reliability_source"):
                res[k] = None
            res["verified"] = {}
            res["flags"] = [[False] * 4 for _ in range(4)]
        return d

    def on_cancel(route):
        state["status"] = "cancelled"
        route.fulfill(
            status=202,
            content_type="application/json",
            body=json.dumps({"id": real_analysis, "status": "cancelled"}),
        )

    reruns = []

    def on_post(route):
        if route.request.method != "POST":
            route.fallback()
            return
        reruns.append(json.loads(route.request.post_data))
        route.fulfill(
            status=202,
            content_type="application/json",
            body=json.dumps(
                {"id": real_analysis, "status": "queued", "url": f"/a/{real_analysis}?rerun=1"}
            ),
        )

    serve_json(page, real_analysis, payload)
    page.route(re.compile(rf".*/api/analyses/{real_analysis}/cancel$"), on_cancel)
    page.route(re.compile(r".*/api/analyses$"), on_post)
    page.goto(f"/a/{real_analysis}")
    expect(page.locator("#progress-text")).to_contain_text("57%")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled")
    expect(page.locator("#notice")).not_to_contain_text("Cancelling")
    expect(page.locator("#message")).to_contain_text("methods that finished")
    expect(page.locator("#message")).to_contain_text("atp")
    wait_rendered(page)
    assert page.locator("#view option").evaluate_all("o => o.map(e => e.value)")[0] == "atp"
    rerun = page.locator("#rerun")
    expect(rerun).to_be_visible()
    rerun.click()
    page.wait_for_url(re.compile(r"rerun=1"))
    assert reruns == [base["request"]]
    expect(page.locator("#edit-rerun")).to_have_attribute("href", f"/?from={real_analysis}")


# ------------------------------------------------------------------ items 4, 17
def resid_analysis(analysis_id: str, n_layers: int, n_pos: int) -> dict:
    data = synthetic_analysis(analysis_id, n_layers=n_layers, n_heads=n_pos, seed=9)
    r = data["result"]
    r["site"] = data["request"]["site"] = "resid"
    words = [
        "When",
        " Mary",
        " and",
        " John",
        " went",
        " to",
        " the",
        " store",
        ",",
        " John",
        " gave",
        " a",
    ]
    r["labels"] = {
        "rows": list(range(n_layers)),
        "cols": list(range(n_pos)),
        "row_name": "layer",
        "col_name": "position",
        "positions": [words[k % len(words)] for k in range(n_pos)],
    }
    return data


def test_resid_axes_tokens_and_narrow_window_scrolls(new_context, real_analysis):
    page = new_context(viewport={"width": 800, "height": 800}).new_page()
    data = resid_analysis(real_analysis, 4, 24)
    serve_json(page, real_analysis, data)
    page.goto(f"/a/{real_analysis}")
    wait_rendered(page)
    ticks = page.evaluate("document.querySelector('#heatmap').layout.xaxis.ticktext")
    assert ticks[7] == "7 store", ticks[:9]
    assert len(ticks) == 24
    # readable cells: the map scrolls sideways rather than shrinking
    cell_w = page.evaluate(
        "(() => { const a = document.querySelector('#heatmap')._fullLayout.xaxis;"
        " return a.l2p(1) - a.l2p(0); })()"
    )
    assert cell_w >= 30, cell_w
    wrap = page.evaluate(
        "(() => { const w = document.querySelector('#heatmap-wrap');"
        " return [w.scrollWidth, w.clientWidth]; })()"
    )
    assert wrap[0] > wrap[1]
    # a cell off to the right is scrolled into view and hovers with its token
    c = page.evaluate("window.__patchaudit.cellCenter(1, 19)")
    assert 0 < c["x"] < 800
    page.mouse.move(c["x"] + 1, c["y"])
    page.mouse.move(c["x"], c["y"])
    expect(page.locator("#heatmap .hoverlayer .hovertext")).to_contain_text("L1 @19 'store'")


def test_prompt_table_columns_sit_together_at_1280(new_context, real_analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    data = synthetic_analysis(real_analysis, n_layers=3, n_heads=3)
    long = "When Mary and John went to the store on a long and sunny afternoon, " * 3
    data["request"]["task"] = None
    data["request"]["pairs"] = [
        {
            "clean": long + "John gave a drink to",
            "corrupted": long + "Mary gave a drink to",
            "answer": " Mary",
            "wrong": " John",
        }
    ]
    serve_json(page, real_analysis, data)
    page.goto(f"/a/{real_analysis}")
    wait_rendered(page)
    boxes = page.evaluate(
        """() => [...document.querySelectorAll('#prompts tbody tr:first-child td')]
              .map(td => { const b = td.getBoundingClientRect(); return [b.left, b.right]; })"""
    )
    card = page.evaluate("document.querySelector('#prompts').getBoundingClientRect().right")
    answer_left, wrong_right = boxes[3][0], boxes[4][1]
    assert wrong_right <= card + 1, (boxes, card)
    assert answer_left - boxes[2][1] < 2  # next to the corrupted prompt
    assert wrong_right < 1280


def test_read_only_page_shows_one_banner(new_context, real_analysis):
    page = new_context(viewport=VIEWPORT).new_page()
    data = synthetic_analysis(real_analysis, n_layers=3, n_heads=3)
    serve_json(page, real_analysis, data)
    page.route(
        re.compile(r".*/healthz$"),
        lambda route: route.fulfill(
            status=200,
            content_type="application/json",
            body=json.dumps({"status": "ok", "auth_required": True}),
        ),
    )
    page.goto(f"/a/{real_analysis}")
    wait_rendered(page)
    c = page.evaluate("window.__patchaudit.cellCenter(1, 1)")
    page.mouse.click(c["x"], c["y"])
    expect(page.locator(".msg", has_text=re.compile("token", re.I)).first).to_be_visible()
    next_frames(page)
    visible = page.evaluate(
        """() => [...document.querySelectorAll('.msg')]
              .filter(e => e.offsetParent !== null && /token/i.test(e.textContent)).length"""
    )
    assert visible == 1


# ------------------------------------------------------------------ item 10
TOKEN = "the-right-token-0123456789abcdef"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    """A second real `patchaudit serve`, this one with an API token."""
    srv, proc = start_server(tmp_path_factory.mktemp("serve-token"), token=TOKEN)
    try:
        yield srv
    finally:
        stop_server(proc)


@pytest.mark.parametrize("where", ["form", "analysis"])
def test_wrong_token_is_refused_once_clearly(new_context, token_server, model_name, where):
    path = "/"
    if where == "analysis":
        status, body = token_server.api(
            "POST",
            "/api/analyses",
            {"model": model_name, "task": "ioi", "n_pairs": 2, "methods": ["atp"]},
        )
        assert status == 202, body
        path = f"/a/{body['id']}"
    page = new_context(viewport=VIEWPORT, base_url=token_server.url).new_page()
    page.goto(path)
    expect(page.locator("#readonly-note")).to_be_visible()
    expect(page.locator("#token-box")).to_have_attribute("open", "")  # opened for the user
    page.fill("#token-input", "not-the-token")
    page.press("#token-input", "Enter")
    status_line = page.locator("#token-status")
    expect(status_line).to_contain_text("the API token is wrong")
    assert status_line.inner_text().lower().count("wrong") == 1
    assert page.evaluate("localStorage.getItem('patchaudit.token')") is None
    expect(page.locator("#readonly-note")).to_be_visible()
    page.fill("#token-input", TOKEN)
    page.press("#token-input", "Enter")
    expect(status_line).to_have_text("Token accepted.")
    assert page.evaluate("localStorage.getItem('patchaudit.token')") == TOKEN
    expect(page.locator("#readonly-note")).to_be_hidden()


# ------------------------------------------------------------------ real results: items 1, 4
def run_real(server, request: dict) -> dict:
    status, body = server.api("POST", "/api/analyses", request)
    assert status == 202, body

    def done() -> dict | None:
        _, data = server.api("GET", f"/api/analyses/{body['id']}")
        assert data["status"] not in ("failed", "cancelled"), data
        return data if data["status"] == "done" else None

    return wait_for(done, 150, f"analysis {body['id']} to finish", interval=0.5)


def test_real_kl_noising_says_the_screen_cannot_rank(new_context, server, model_name):
    data = run_real(
        server,
        {
            "model": model_name,
            "task": "ioi",
            "n_pairs": 2,
            "seed": 3,
            "metric": "kl",
            "direction": "noising",
            "methods": ["atp", "hvp"],
        },
    )
    assert data["result"]["screen"]["informative"] is False
    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(f"/a/{data['id']}")
    wait_rendered(page)
    warn = page.locator("#screen-warning")
    expect(warn).to_be_visible()
    expect(warn).to_contain_text(data["result"]["screen"]["message"][:40])
    assert "KL" in trace0(page, "colorbar.title.text")


def test_real_resid_map_has_token_labels(new_context, server, model_name):
    data = run_real(
        server,
        {
            "model": model_name,
            "task": "ioi",
            "n_pairs": 2,
            "seed": 4,
            "site": "resid",
            "methods": ["atp"],
        },
    )
    toks = data["result"]["labels"]["positions"]
    page = new_context(viewport={"width": 800, "height": 800}).new_page()
    page.goto(f"/a/{data['id']}")
    wait_rendered(page)
    ticks = page.evaluate("document.querySelector('#heatmap').layout.xaxis.ticktext")
    assert len(ticks) == len(toks)
    assert ticks[1] == f"1 {toks[1].strip()}"
    cell_w = page.evaluate(
        "(() => { const a = document.querySelector('#heatmap')._fullLayout.xaxis;"
        " return a.l2p(1) - a.l2p(0); })()"
    )
    assert cell_w >= 30, cell_w
    c = page.evaluate("window.__patchaudit.cellCenter(1, 1)")
    page.mouse.move(c["x"] + 1, c["y"])
    page.mouse.move(c["x"], c["y"])
    expect(page.locator("#heatmap .hoverlayer .hovertext")).to_contain_text(
        f"L1 @1 '{toks[1].strip()}'"
    )


# ------------------------------------------------------------------ item 12, real cancel
@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A real `patchaudit serve` whose jobs pause 3 s at each new phase (the service's test
    hook), so that Cancel lands between methods."""
    srv, proc = start_server(
        tmp_path_factory.mktemp("serve-slow"), extra_env={"PATCHAUDIT_TEST_JOB_DELAY_S": "3"}
    )
    try:
        yield srv
    finally:
        stop_server(proc)


def test_real_cancel_keeps_finished_methods_and_reruns(new_context, slow_server, model_name):
    req = {
        "model": model_name,
        "task": "ioi",
        "n_pairs": 2,
        "seed": 5,
        "methods": ["atp", "hvp", "ap"],
    }
    status, body = slow_server.api("POST", "/api/analyses", req)
    assert status == 202, body
    page = new_context(viewport=VIEWPORT, base_url=slow_server.url).new_page()
    page.goto(f"/a/{body['id']}")
    # ap runs last; cancel while it waits to start
    expect(page.locator("#progress-text")).to_contain_text(re.compile(r"^computing ap "), timeout=90_000)
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=60_000)
    msg = page.locator("#message")
    expect(msg).to_contain_text("methods that finished")
    expect(msg).to_contain_text("atp")
    expect(msg).to_contain_text("hvp")
    wait_rendered(page)
    expect(page.locator("#notice")).not_to_contain_text("Cancelling")
    views = page.locator("#view option").evaluate_all("o => o.map(e => e.value)")
    assert "atp" in views and "hvp" in views and "ap" not in views
    _, data = slow_server.api("GET", f"/api/analyses/{body['id']}")
    assert data["result"]["partial"] is True
    # Re-run starts a fresh analysis (not the cancelled one again).
    page.click("#rerun")
    # (not wait_for_function: its string predicate is evaluated in the page, where the CSP
    # forbids eval once the first check does not already hold)
    page.wait_for_url(lambda url: re.search(r"/a/[0-9a-f]{32}", url) and body["id"] not in url)
    new_id = re.search(r"/a/([0-9a-f]{32})", page.url).group(1)
    assert new_id != body["id"]
    _, again = slow_server.api("GET", f"/api/analyses/{new_id}")
    assert again["status"] in ("queued", "running", "started", "done"), again["status"]
