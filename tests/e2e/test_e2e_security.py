"""Issue 9 in a real browser: /docs renders Swagger UI from the server's own assets (no request
leaves it, nothing blocked by the Content-Security-Policy), and the dashboard's pages (Plotly
included) work under that policy."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


def _csp_watch(page) -> list[str]:
    seen: list[str] = []
    page.on(
        "console",
        lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return seen


def test_docs_are_local_and_render(page, server) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    blocked = _csp_watch(page)
    resp = page.goto("/docs")
    assert resp is not None and resp.status == 200
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("patchaudit", timeout=30_000)
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert requests and all(u.startswith(server.url) for u in requests), requests
    assert any(u.endswith("/openapi.json") for u in requests)
    assert blocked == [], blocked


def test_dashboard_pages_work_under_the_csp(page, server, model_name) -> None:
    blocked = _csp_watch(page)
    resp = page.goto("/")
    assert resp is not None and resp.headers["x-content-type-options"] == "nosniff"
    expect(page.locator("#model option[value=bundled]")).to_have_count(1)
    status, body = server.api(
        "POST",
        "/api/analyses",
        {"model": model_name, "task": "ioi", "n_pairs": 2, "seed": 9090, "methods": ["atp"]},
    )
    assert status == 202, body
    resp = page.goto(f"/a/{body['id']}")
    assert resp is not None and resp.headers["referrer-policy"] == "no-referrer"
    expect(page.locator("#heatmap .main-svg").first).to_be_attached(timeout=90_000)
    assert blocked == [], blocked
