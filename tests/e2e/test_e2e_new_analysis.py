"""The new-analysis page in real Chromium against a real `patchaudit serve`."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


def open_form(page):
    page.goto("/")
    expect(page.locator("body[data-ready='1']")).to_be_attached(timeout=30_000)


def test_form_lists_models_and_tasks(page, server, shots):
    status, tasks = server.api("GET", "/api/tasks")
    assert status == 200, tasks
    status, models = server.api("GET", "/api/models")
    assert status == 200, models
    open_form(page)

    model_names = page.locator("#model option").all_inner_texts()
    assert "bundled" in model_names
    assert page.locator("#model").input_value() == "bundled"
    task_names = page.locator("#task option").all_inner_texts()
    assert {"ioi", "induction"} <= set(task_names)

    # The preset's example prompt pair is shown.
    ioi = next(t for t in tasks if t["name"] == "ioi")
    expect(page.locator("#task-info .example")).to_contain_text(ioi["example"]["clean"])
    page.select_option("#task", "induction")
    induction = next(t for t in tasks if t["name"] == "induction")
    expect(page.locator("#task-info .example")).to_contain_text(induction["example"]["clean"])
    page.select_option("#task", "ioi")

    # Defaults and labelled controls.
    status, cfg = server.api("GET", "/api/config")
    assert status == 200, cfg
    assert page.locator("#hvp_probes").input_value() == str(cfg["defaults"]["hvp_probes"])
    assert page.locator("#ig_steps").input_value() == str(cfg["defaults"]["ig_steps"])
    assert page.locator("input[name=methods][value=atp]").is_checked()
    assert page.locator("input[name=methods][value=hvp]").is_checked()
    for control in (
        "model",
        "task",
        "n_pairs",
        "seed",
        "site",
        "metric",
        "direction",
        "hvp_probes",
    ):
        expect(page.locator(f"label[for={control}]")).to_have_count(1)
    expect(page.locator("#submit")).to_be_enabled()
    page.screenshot(path=str(shots / "new-analysis.png"), full_page=True)


def test_custom_pairs_are_checked_before_submit(page, server, shots, model_name):
    status, tasks = server.api("GET", "/api/tasks")
    ex = next(t for t in tasks if t["name"] == "ioi")["example"]
    open_form(page)
    page.select_option("#model", model_name)
    page.check("input[name=source][value=custom]")
    expect(page.locator("#custom-section")).to_be_visible()
    expect(page.locator("#submit")).to_be_disabled()

    page.click("#fill-example")
    expect(page.locator("#pair-0-clean")).to_have_value(ex["clean"])
    # Tokens appear (debounced /api/tokenize) and the pair is fine: submit is enabled.
    expect(page.locator("#pair-0-tokens .tok").first).to_be_visible()
    expect(page.locator("#submit")).to_be_enabled()
    expect(page.locator("#pair-0")).not_to_have_class(re.compile(r"\bbad\b"))

    # A corrupted prompt of another token length: marked, and submit disabled with the reason.
    page.fill("#pair-0-corrupted", ex["corrupted"] + " and then some more words")
    expect(page.locator("#pair-0")).to_have_class(re.compile(r"\bbad\b"))
    expect(page.locator("#pair-0-problems li").first).to_be_visible()
    expect(page.locator("#submit")).to_be_disabled()
    expect(page.locator("#submit-reason")).to_contain_text("pair 1")

    # A second pair whose answer is more than one token.
    page.fill("#pair-0-corrupted", ex["corrupted"])
    expect(page.locator("#submit")).to_be_enabled()
    page.click("#add-pair")
    page.fill("#pair-1-clean", ex["clean"])
    page.fill("#pair-1-corrupted", ex["corrupted"])
    page.fill("#pair-1-answer", " Mary Elizabeth Johnson")
    page.fill("#pair-1-wrong", ex["wrong"])
    expect(page.locator("#pair-1")).to_have_class(re.compile(r"\bbad\b"))
    expect(page.locator("#pair-1-problems")).to_contain_text(re.compile(r"token", re.I))
    expect(page.locator("#submit-reason")).to_contain_text("pair 2")
    expect(page.locator("#submit")).to_be_disabled()
    page.screenshot(path=str(shots / "new-analysis-custom-pairs.png"), full_page=True)

    # Removing the bad pair (keyboard: focus the button and press Enter) re-enables submit.
    page.get_by_role("button", name="Remove pair 2").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#pair-1")).to_have_count(0)
    expect(page.locator("#submit")).to_be_enabled()


def test_server_refusal_is_shown_as_a_message(page, server):
    """A request the server refuses (422) shows its `detail`, never a traceback. (The form
    knows the server's limits from /api/config; a stale copy that allows more is how a
    request the server refuses still gets sent.)"""

    def stale_config(route):
        cfg = route.fetch().json()
        cfg["limits"]["max_pairs"] = 10**6
        route.fulfill(json=cfg)

    page.route(re.compile(r".*/api/config$"), stale_config)
    open_form(page)
    page.fill("#n_pairs", "100000")
    page.click("#submit")
    box = page.locator("#form-error")
    expect(box).to_be_visible()
    expect(box).to_contain_text("not started")
    expect(box).to_contain_text(re.compile(r"n_pairs|pairs", re.I))
    assert "Traceback" not in box.inner_text()
    assert "/a/" not in page.url  # nothing was queued


def test_requests_outside_localhost_are_caught(new_context):
    """The guard every test runs under: a request to another host is aborted and recorded
    (which fails the test at teardown; here the record is checked and cleared)."""
    ctx = new_context()
    page = ctx.new_page()
    fetch = "fetch('http://example.com/x').then(() => 'loaded', () => 'blocked')"
    page.goto("/")
    # on the dashboard the Content-Security-Policy (connect-src 'self') stops it first
    assert page.evaluate(fetch) == "blocked"
    assert ctx.pa_guard.external == []
    page.goto("about:blank")  # no CSP here: the guard aborts and records it
    assert page.evaluate(fetch) == "blocked"
    assert ctx.pa_guard.external == ["http://example.com/x"]
    ctx.pa_guard.external.clear()
