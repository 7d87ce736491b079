"""Members and notes in real Chromium against a real `patchaudit serve` with a tokens file
(issue 20): a label and note written in one member's component panel appear, without a
reload, on the map and in the panel of another member's browser context; the other member
cannot change it; the home page lists the team's analyses with their owners and "mine"
apart. A token-less server shows its "open to every local user" banner on every page."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.waits import page_wait_for, wait_for

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.e2e

ALICE = "alice-e2e-token-0123456789abcdef"
BOB = "bob-e2e-token-fedcba9876543210xy"
KEY = "1.1"


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-team")
    tokens = tmp / "members.txt"
    tokens.write_text(f"alice: {ALICE}\nbob: {BOB}\n")
    tokens.chmod(0o600)
    srv, proc = start_server(tmp, extra_env={"PATCHAUDIT_TOKENS_FILE": str(tokens)})
    try:
        yield srv
    finally:
        stop_server(proc)


def as_member(srv: Server, token: str) -> Server:
    return Server(srv.url, srv.data_dir, srv.log, token)


def member_context(new_context, srv: Server, token: str):
    ctx = new_context(base_url=srv.url)
    # every frame runs it; only the server's own pages may (and need to) store the token
    ctx.add_init_script(
        f"if (location.origin === {srv.url!r}) localStorage.setItem('patchaudit.token', {token!r})"
    )
    return ctx


def test_a_note_written_by_one_member_shows_for_another(new_context, team_server, model_name):
    alice, bob = as_member(team_server, ALICE), as_member(team_server, BOB)
    req = {"model": model_name, "task": "ioi", "n_pairs": 2, "seed": 2020, "methods": ["atp"]}
    status, body = alice.api("POST", "/api/analyses", req)
    assert status == 202, body
    aid = body["id"]

    def done() -> bool:
        _, d = alice.api("GET", f"/api/analyses/{aid}")
        assert d["status"] not in ("failed", "cancelled"), d
        return d["status"] == "done"

    wait_for(done, 150, "the analysis to finish", interval=0.5)

    # bob has the page open before alice writes anything
    pb = member_context(new_context, team_server, BOB).new_page()
    pb.goto(f"/a/{aid}")
    expect(pb.locator("#heatmap")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))
    assert (
        pb.evaluate("document.querySelector('#heatmap').data.find(t => t.name === 'notes').text")
        == []
    )

    # alice labels head L1H1 in her component panel
    pa = member_context(new_context, team_server, ALICE).new_page()
    pa.goto(f"/a/{aid}?c={KEY}")
    expect(pa.locator("#comp-note-form")).to_be_visible(timeout=30_000)
    pa.fill("#comp-note-label", "name mover")
    pa.fill("#comp-note-text", "copies the indirect object's name")
    pa.click("#comp-note-save")
    expect(pa.locator("#comp-note-shown-label")).to_have_text("name mover")
    expect(pa.locator("#comp-note-view")).to_contain_text("by alice")

    # bob's open page: the label appears on the map cell and in the hover, without a reload
    labels = "document.querySelector('#heatmap').data.find(t => t.name === 'notes')"
    page_wait_for(pb, lambda: pb.evaluate(f"{labels}.text.length") == 1, "bob's label", 20)
    text, x, y = pb.evaluate(f"[{labels}.text[0], {labels}.x[0], {labels}.y[0]]")
    assert text.startswith("name") and x == 1 and round(y) == 1
    c = pb.evaluate("window.__patchaudit.cellCenter(1, 1)")
    pb.mouse.move(c["x"] + 1, c["y"] + 1)
    pb.mouse.move(c["x"], c["y"])
    expect(pb.locator("#heatmap .hoverlayer .hovertext")).to_contain_text("label: name mover")
    # ... and in his component panel, with the note and its author
    pb.goto(f"/a/{aid}?c={KEY}")
    expect(pb.locator("#comp-note-shown-label")).to_have_text("name mover")
    expect(pb.locator("#comp-note-shown-text")).to_have_text("copies the indirect object's name")
    expect(pb.locator("#comp-note-view")).to_contain_text("by alice")
    expect(pb.locator("#request")).to_contain_text("Owneralice")  # whose analysis it is
    # bob cannot change alice's note: the panel says whose it is, the note stays
    pb.click("#comp-note-edit summary")
    pb.fill("#comp-note-label", "not a name mover")
    pb.click("#comp-note-save")
    expect(pb.locator("#comp-note-status")).to_contain_text("alice")
    _, notes = bob.api("GET", f"/api/analyses/{aid}/notes")
    assert notes["notes"][KEY]["label"] == "name mover"

    # the home page: the team's list shows alice's analysis and its owner; bob's "Mine" does not
    home = pb.context.new_page()
    home.goto("/")
    row = home.locator(f"#history-server tr[data-id='{aid}']")
    expect(row.locator("td.owner")).to_have_text("alice")
    home.click("#history-mine")
    expect(home.locator("#history-server")).to_have_attribute("data-scope", "mine")
    expect(row).to_have_count(0)
    expect(home.locator("#history-member")).to_have_text("signed in as bob")
    expect(home.locator("#open-server-banner")).to_have_count(0)  # this server has members
    home.click("#history-team")
    expect(row.locator("button", has_text="Delete")).to_have_count(0)  # not bob's to delete

    # alice deletes it from her list: gone for everyone, with its notes
    mine = pa.context.new_page()
    mine.goto("/")
    mine.on("dialog", lambda d: d.accept())
    own = mine.locator(f"#history-server tr[data-id='{aid}']")
    expect(own.locator("td.owner")).to_have_text("alice (you)")
    own.locator("button", has_text="Delete").click()
    expect(own).to_have_count(0)
    assert bob.api("GET", f"/api/analyses/{aid}")[0] == 404
    assert bob.api("GET", f"/api/analyses/{aid}/notes")[0] == 404


def test_a_tokenless_server_says_it_is_open_on_every_page(page, server, model_name) -> None:
    for path in ("/", "/compare?a=0&b=1"):
        page.goto(path)
        expect(page.locator("#open-server-banner")).to_contain_text("every user of this machine")
    status, body = server.api(
        "POST", "/api/analyses", {"model": model_name, "task": "ioi", "n_pairs": 2, "seed": 77}
    )
    assert status == 202, body
    page.goto(f"/a/{body['id']}")
    expect(page.locator("#open-server-banner")).to_be_visible()
