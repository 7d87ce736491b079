"""The new-analysis form: defaults and limits from GET /api/config, custom pairs kept
across reloads, bulk paste through POST /api/pairs/parse, the model's vocabulary, unknown
words named, and "Edit and re-run". Real Chromium against a real `patchaudit serve`."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 800}


def open_form(page, path: str = "/"):
    page.goto(path)
    expect(page.locator("body[data-ready='1']")).to_be_attached(timeout=30_000)


def test_defaults_and_limits_come_from_the_server(new_context, server):
    status, cfg = server.api("GET", "/api/config")
    assert status == 200, cfg
    page = new_context(viewport=VIEWPORT).new_page()
    bodies = []
    page.on(
        "request",
        lambda r: (
            bodies.append(json.loads(r.post_data))
            if r.method == "POST" and r.url.endswith("/api/analyses")
            else None
        ),
    )
    open_form(page)
    d, lim = cfg["defaults"], cfg["limits"]
    assert page.input_value("#hvp_probes") == str(d["hvp_probes"])
    assert page.input_value("#ig_steps") == str(d["ig_steps"])
    assert page.input_value("#n_pairs") == str(d["n_pairs"])
    assert page.get_attribute("#n_pairs", "max") == str(lim["max_pairs"])
    assert page.get_attribute("#hvp_probes", "max") == str(lim["max_hvp_probes"])
    expect(page.locator("#limits-note")).to_contain_text(f"{lim['max_pairs']} pairs")
    # Over the server's limit: refused in the form, before any request.
    page.fill("#n_pairs", str(lim["max_pairs"] + 1))
    expect(page.locator("#submit")).to_be_disabled()
    expect(page.locator("#submit-reason")).to_contain_text(f"at most {lim['max_pairs']}")
    page.fill("#hvp_probes", str(lim["max_hvp_probes"] + 1))
    page.fill("#n_pairs", "2")
    expect(page.locator("#submit-reason")).to_contain_text(f"at most {lim['max_hvp_probes']}")
    page.fill("#hvp_probes", str(d["hvp_probes"]))
    expect(page.locator("#submit")).to_be_enabled()
    page.click("#submit")
    page.wait_for_url(re.compile(r"/a/[0-9a-f]{32}"), timeout=30_000)
    assert bodies and bodies[0]["hvp_probes"] == d["hvp_probes"]
    assert bodies[0]["ig_steps"] == d["ig_steps"]


def test_custom_pairs_survive_a_reload_and_unknown_words_are_named(new_context):
    page = new_context(viewport=VIEWPORT).new_page()
    open_form(page)
    page.check("input[name='source'][value='custom']")
    page.fill("#pair-0-clean", "When Mary and John went to the grocery, John gave a drink to")
    page.fill("#pair-0-corrupted", "When Mary and John went to the grocery, Mary gave a drink to")
    page.fill("#pair-0-answer", " Mary")
    page.fill("#pair-0-wrong", " John")
    reason = page.locator("#submit-reason")
    expect(reason).to_contain_text("'grocery'", timeout=15_000)  # a word the model lacks
    expect(page.locator("#submit")).to_be_disabled()
    page.reload()
    expect(page.locator("body[data-ready='1']")).to_be_attached(timeout=30_000)
    assert page.is_checked("input[name='source'][value='custom']")
    assert page.input_value("#pair-0-clean").startswith("When Mary and John went to the grocery,")
    assert page.input_value("#pair-0-wrong") == " John"
    # A word it knows, with the comma glued on: the tokenizer splits punctuation off words.
    page.fill("#pair-0-clean", "When Mary and John went to the store, John gave a drink to")
    page.fill("#pair-0-corrupted", "When Mary and John went to the store, Mary gave a drink to")
    expect(page.locator("#submit")).to_be_enabled(timeout=15_000)


def test_bulk_paste_tsv_and_a_bad_line_named(new_context):
    page = new_context(viewport=VIEWPORT).new_page()
    open_form(page)
    page.check("input[name='source'][value='custom']")
    page.click("#bulk-box summary")
    tsv = (
        "When Mary and John went to the store , John gave a drink to\t"
        "When Mary and John went to the store , Mary gave a drink to\t Mary\t John\n"
        "When Tom and Anna went to the park , Anna gave a ball to\t"
        "When Tom and Anna went to the park , Tom gave a ball to\t Tom\t Anna\n"
    )
    page.fill("#bulk-text", tsv)
    page.click("#bulk-add")
    expect(page.locator("#bulk-status")).to_contain_text("Added 2 pairs (TSV)")
    expect(page.locator(".pair")).to_have_count(2)
    assert page.input_value("#pair-1-answer") == " Tom"
    page.fill(
        "#bulk-text", '{"clean": "a", "corrupted": "b", "answer": " c", "wrong": " d"}\n{not json\n'
    )
    page.select_option("#bulk-format", "jsonl")
    page.click("#bulk-add")
    status = page.locator("#bulk-status")
    expect(status).to_contain_text("not added")
    expect(status).to_contain_text("line 2")
    expect(page.locator(".pair")).to_have_count(2)


def test_vocabulary_panel(new_context, server, model_name):
    status, vocab = server.api("GET", f"/api/models/{model_name}/vocab")
    page = new_context(viewport=VIEWPORT).new_page()
    open_form(page)
    page.check("input[name='source'][value='custom']")
    page.click("#vocab-box summary")
    if status != 200:  # a subword model: the panel says so
        expect(page.locator("#vocab-status")).to_contain_text("subword")
        return
    expect(page.locator("#vocab-size")).to_contain_text(f"{vocab['size']} words")
    words = page.locator("#vocab-words")
    expect(words).to_have_attribute("data-count", str(vocab["size"]))
    page.fill("#vocab-filter", "mary")
    n = sum("mary" in w.lower() for w in vocab["words"])
    assert n >= 1
    expect(words).to_have_attribute("data-count", str(n))
    expect(words).to_contain_text("Mary")


def test_edit_and_rerun_fills_the_form(new_context, server, model_name):
    req = {
        "model": model_name,
        "task": "ioi",
        "n_pairs": 3,
        "seed": 11,
        "methods": ["atp", "ig"],
        "metric": "prob_diff",
        "direction": "denoising",
        "ig_steps": 5,
    }
    status, body = server.api("POST", "/api/analyses", req)
    assert status == 202, body
    page = new_context(viewport=VIEWPORT).new_page()
    page.goto(f"/a/{body['id']}")
    link = page.locator("#edit-rerun")
    expect(link).to_have_attribute("href", f"/?from={body['id']}")
    link.click()
    expect(page.locator("body[data-ready='1']")).to_be_attached(timeout=30_000)
    expect(page.locator("#from-note")).to_contain_text(body["id"][:8])
    assert page.input_value("#n_pairs") == "3"
    assert page.input_value("#seed") == "11"
    assert page.input_value("#metric") == "prob_diff"
    assert page.input_value("#direction") == "denoising"
    assert page.input_value("#ig_steps") == "5"
    checked = page.locator("input[name='methods']:checked").evaluate_all(
        "els => els.map(e => e.value)"
    )
    assert checked == ["atp", "ig"]
