"""The analysis page on synthetic results: speed on a 48-layer x 25-head map, tau re-flagging,
sorting, read-only mode, progress and cancel, failure messages.

The page itself comes from the real `patchaudit serve` (an analysis that exists there); its
GET /api/analyses/<id> is answered by Playwright's `page.route` with synthetic JSON, so no
48-layer model is needed."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
from e2e_synthetic import synthetic_analysis
from playwright.sync_api import expect

from tests.waits import page_wait_for

pytestmark = pytest.mark.e2e

REAL_REQUEST = {
    "model": "bundled",
    "task": "ioi",
    "n_pairs": 2,
    "seed": 123,
    "methods": ["atp"],
}


@pytest.fixture(scope="module")
def analysis_id(server, model_name) -> str:
    """A real (tiny) analysis, so that GET /a/<id> serves the page."""
    status, body = server.api("POST", "/api/analyses", {**REAL_REQUEST, "model": model_name})
    assert status == 202, body
    return body["id"]


def serve_json(page, analysis_id: str, payload, requests: list | None = None):
    """Answer GET /api/analyses/<id> with `payload` (a dict, or a callable returning one)."""

    def handler(route):
        if requests is not None:
            requests.append(route.request.method)
        if route.request.method != "GET":
            route.fallback()
            return
        body = payload() if callable(payload) else payload
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route(re.compile(rf".*/api/analyses/{analysis_id}$"), handler)


def expected_flags(result: dict, tau: float) -> int:
    """The flag rule of METHODS.md, independently of the page."""
    atp = np.array(result["scores"]["atp"], dtype=float)
    hvp = np.array(result["scores"]["hvp"], dtype=float)
    rho = np.array(result["reliability"], dtype=float)
    bound = np.array(
        [[np.inf if v is None else v for v in row] for row in result["error_bound"]], dtype=float
    )
    material = np.array(result["material"], dtype=bool)
    cut = result["cutoff"]
    with np.errstate(invalid="ignore"):
        straddle = (np.abs(hvp) - bound < cut) & (np.abs(hvp) + bound > cut)
    return int((material & ((rho < tau) | (np.sign(atp) != np.sign(hvp)) | straddle)).sum())


def wait_rendered(page):
    expect(page.locator("#heatmap")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))


def test_large_map_is_fast_and_reflags(page, analysis_id):
    data = synthetic_analysis(analysis_id, n_layers=48, n_heads=25, seed=1)
    result = data["result"]
    serve_json(page, analysis_id, data)
    page.goto(f"/a/{analysis_id}")
    wait_rendered(page)
    first_render_ms = page.evaluate("window.__patchaudit.lastRenderMs")
    nav_ms = page.evaluate("performance.now()")

    # Page flags at the server's tau equal the server's flags.
    n_server = sum(map(sum, result["flags"]))
    assert n_server == expected_flags(result, result["tau"])
    expect(page.locator("#heatmap")).to_have_attribute("data-flagged", str(n_server))
    # One heatmap trace, one outline path (plus its halo): not one shape per cell.
    kinds = page.evaluate(
        "document.querySelector('#heatmap').data.map(t => [t.type, t.name || ''])"
    )
    # (the map, the unbounded layer and the uncertain layer)
    assert sum(1 for t, _ in kinds if t == "heatmap") <= 3
    assert page.evaluate("(document.querySelector('#heatmap').layout.shapes || []).length") == 0

    # A tau change: re-flag + redraw, measured inside the page until the next frame.
    tau_ms = page.evaluate(
        """async () => {
          const slider = document.querySelector('#tau');
          const hm = document.querySelector('#heatmap');
          const t0 = performance.now();
          slider.value = '0.8';
          slider.dispatchEvent(new Event('input', {bubbles: true}));
          await new Promise(res => { const check = () => hm.dataset.tau === '0.80' ? res() : requestAnimationFrame(check); check(); });
          await new Promise(res => requestAnimationFrame(() => requestAnimationFrame(res)));
          return performance.now() - t0;
        }"""
    )
    n_08 = expected_flags(result, 0.8)
    assert n_08 > n_server
    expect(page.locator("#heatmap")).to_have_attribute("data-flagged", str(n_08))
    outline_cells = page.evaluate(
        "document.querySelector('#heatmap').data.find(t => t.name === 'flagged').x.length / 6"
    )
    assert outline_cells == n_08
    assert "tau=0.80" in page.url

    # Hover on the far corner shows that cell's numbers.
    c = page.evaluate("window.__patchaudit.cellCenter(47, 24)")
    page.mouse.move(c["x"] + 1, c["y"])
    page.mouse.move(c["x"], c["y"])
    hover = page.locator("#heatmap .hoverlayer .hovertext")
    expect(hover).to_have_count(1)
    text = hover.text_content()
    assert "layer 47, head 24" in text and "reliability" in text
    m = re.search(r"AtP: ([−\-0-9.e+]+)", text)
    assert m, text
    shown = float(m.group(1).replace("−", "-"))
    assert shown == pytest.approx(result["scores"]["atp"][47][24], rel=1e-2)

    print(
        f"\n48x25: first render {first_render_ms:.0f} ms (page ready at {nav_ms:.0f} ms "
        f"incl. loading plotly.js), tau change {tau_ms:.0f} ms; last render by panel "
        f"{page.evaluate('window.__patchaudit.parts')}"
    )
    assert first_render_ms < 1000
    assert tau_ms < 1000
    assert first_render_ms + tau_ms < 2000


def test_views_table_sorting_and_share_state(page, analysis_id):
    data = synthetic_analysis(analysis_id, n_layers=12, n_heads=12, seed=2)
    serve_json(page, analysis_id, data)
    page.goto(f"/a/{analysis_id}?view=diff&tau=0.3")
    wait_rendered(page)
    assert page.locator("#view").input_value() == "diff"
    assert page.locator("#tau").input_value() == "0.3"
    options = page.locator("#view option").evaluate_all("els => els.map(e => e.value)")
    for v in ("atp", "hvp", "reliability", "error_bound", "verified", "diff"):
        assert v in options
    # Estimates: diverging scale centred at zero, symmetric.
    for view in ("atp", "hvp", "diff", "verified"):
        page.select_option("#view", view)
        expect(page.locator("#heatmap")).to_have_attribute("data-view", view)
        hm = page.evaluate(
            "(() => { const t = document.querySelector('#heatmap').data[0];"
            " return [t.zmid, t.zmin, t.zmax]; })()"
        )
        assert hm[0] == 0 and hm[1] == -hm[2] and hm[2] > 0
        assert f"view={view}" in page.locator("#share-link").input_value()
    page.select_option("#view", "reliability")
    z = page.evaluate("document.querySelector('#heatmap').data[0].zmax")
    assert z == 1

    # Sorting by clicking headers (and by keyboard).
    header = page.locator("#top-table thead button[data-key='rel']")
    header.click()
    expect(page.locator("#top-table thead th").nth(3)).to_have_attribute("aria-sort", "descending")
    rel = [
        float(t.replace("−", "-"))
        for t in page.locator("#top-table tbody tr td:nth-child(4)").all_inner_texts()
    ]
    assert rel == sorted(rel, reverse=True)
    header.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#top-table thead th").nth(3)).to_have_attribute("aria-sort", "ascending")
    rel = [
        float(t.replace("−", "-"))
        for t in page.locator("#top-table tbody tr td:nth-child(4)").all_inner_texts()
    ]
    assert rel == sorted(rel)

    # The request and the cost are on the page.
    expect(page.locator("#request")).to_contain_text("synthetic-48x25")
    expect(page.locator("#cost")).to_contain_text("HVP-corrected")


def test_read_only_without_token_and_token_is_sent(page, analysis_id):
    data = synthetic_analysis(analysis_id, n_layers=6, n_heads=6, seed=3)
    data["result"]["verified"] = {}
    serve_json(page, analysis_id, data)
    seen_tokens = []

    def refuse(route):
        token = route.request.headers.get("x-api-token")
        seen_tokens.append(token)
        if token == "a-valid-token-of-length-32-chars!":
            route.fulfill(
                status=202,
                content_type="application/json",
                body=json.dumps(
                    {
                        "id": analysis_id,
                        "status": "done",
                        "url": f"/a/{analysis_id}",
                        "components": [],
                        "pending": [],
                    }
                ),
            )
        else:
            route.fulfill(
                status=401,
                content_type="application/json",
                body=json.dumps(
                    {
                        "detail": "this server needs an API token for changes",
                        "message": "this server needs an API token for changes",
                    }
                ),
            )

    page.route(re.compile(rf".*/api/analyses/{analysis_id}/(verify|fix)$"), refuse)
    # a server with a team token says so on /healthz
    page.route(
        re.compile(r".*/healthz$"),
        lambda route: route.fulfill(
            status=200,
            content_type="application/json",
            body=json.dumps({"status": "ok", "redis": True, "workers": 1, "auth_required": True}),
        ),
    )
    page.goto(f"/a/{analysis_id}")
    wait_rendered(page)
    # /healthz says writes need a token and none is held: read-only.
    expect(page.locator("#readonly-note")).to_be_visible()
    expect(page.locator("#fix")).to_be_disabled()
    expect(page.locator("#top-table tbody button").first).to_be_disabled()
    c = page.evaluate("window.__patchaudit.cellCenter(1, 1)")
    page.mouse.click(c["x"], c["y"])
    expect(page.locator("#readonly-note")).to_be_visible()  # one banner: no second notice
    expect(page.locator("#notice")).to_have_text("")

    # Enter a token: stored in localStorage, sent with writes, buttons enabled.
    expect(page.locator("#token-box")).to_have_attribute("open", "")  # opened for the user
    page.fill("#token-input", "a-valid-token-of-length-32-chars!")
    page.press("#token-input", "Enter")
    expect(page.locator("#readonly-note")).to_be_hidden()
    assert (
        page.evaluate("localStorage.getItem('patchaudit.token')")
        == "a-valid-token-of-length-32-chars!"
    )
    expect(page.locator("#top-table tbody button").first).to_be_enabled()
    page.locator("#top-table tbody button").first.click()
    page_wait_for(
        page, lambda: "a-valid-token-of-length-32-chars!" in seen_tokens, "a write with the token"
    )


def test_progress_cancel_and_failure_messages(page, analysis_id):
    state = {"status": "running"}
    base = synthetic_analysis(analysis_id, n_layers=4, n_heads=4)

    def payload():
        d = copy.deepcopy(base)
        d["status"] = state["status"]
        d["result"] = None
        if state["status"] == "running":
            d["progress"] = {"phase": "hvp", "fraction": 0.4, "passes": 3}
        elif state["status"] == "failed":
            d["error"] = {
                "type": "ValueError",
                "message": "pair 3: clean has 12 tokens, corrupted 11",
            }
        return d

    cancels = []

    def on_cancel(route):
        cancels.append(route.request.method)
        state["status"] = "cancelled"
        route.fulfill(status=202, content_type="application/json", body=json.dumps(payload()))

    serve_json(page, analysis_id, payload)
    page.route(re.compile(rf".*/api/analyses/{analysis_id}/cancel$"), on_cancel)
    page.goto(f"/a/{analysis_id}")
    expect(page.locator("#progress-card")).to_be_visible()
    expect(page.locator("#progress-text")).to_contain_text("hvp")
    expect(page.locator("#progress-text")).to_contain_text("40%")
    expect(page.locator("#progress-bar")).to_have_attribute("aria-valuenow", "40")
    cancel = page.locator("#cancel")
    expect(cancel).to_be_enabled()
    cancel.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text("cancelled")
    expect(page.locator("#progress-card")).to_be_hidden()
    expect(page.locator("#message")).to_contain_text("cancelled")
    assert cancels == ["POST"]

    state["status"] = "failed"
    page.reload()
    expect(page.locator("#message")).to_contain_text("clean has 12 tokens, corrupted 11")
    assert "Traceback" not in page.locator("#message").inner_text()


def test_unknown_analysis_is_a_clear_message(page, server):
    resp = page.goto("/a/" + "0" * 32)
    assert resp.status == 404
    assert "not found" in page.inner_text("body").lower()
