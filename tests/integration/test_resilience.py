"""Acceptance 2: kill -9 of a worker mid-job (the job is retried once and completes with the
right numbers) and kill -9 of the Redis server (after a restart on the same data dir, AOF
replays every finished analysis and its link)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Stack, token_request, wait_for, wait_status, wait_verified

pytestmark = pytest.mark.integration


def reference_report(model_dir: str, body: dict) -> dict:
    """The same audit computed in this process, straight through the engine."""
    import torch

    import patchaudit as pa

    model = pa.load_model(model_dir)
    t = body["tokens"]
    pairs = pa.PromptPairs.from_tokens(
        torch.tensor(t["clean"]),
        torch.tensor(t["corrupted"]),
        torch.tensor(t["answer"]),
        torch.tensor(t["wrong"]),
    )
    report = pa.audit(
        model,
        pairs,
        site=body["site"],
        metric=body["metric"],
        direction=body["direction"],
        methods=tuple(body["methods"]),
        hvp_probes=body["hvp_probes"],
        seed=body["seed"],
    )
    return report.to_dict()


def close(a: list, b: list, tol: float = 1e-4) -> bool:
    return all(
        (x is None and y is None) or abs(x - y) <= tol * (1 + abs(y))
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra, rb, strict=True)
    )


def test_worker_kill9_mid_job_is_retried_and_correct(tmp_path: Path) -> None:
    from redis import Redis
    from rq.job import Job
    from rq.serializers import JSONSerializer

    # 1 s of test delay at each phase change: the job is surely mid-way when killed
    s = Stack(tmp_path, PATCHAUDIT_TEST_JOB_DELAY_S="1.0")
    try:
        s.start(n_workers=1)
        c = s.client
        body = token_request(s.tiny, seed=21)
        aid = c.post("/api/analyses", json=body).json()["id"]

        def mid_job() -> bool:
            d = c.get(f"/api/analyses/{aid}").json()
            return d["status"] == "running" and d["progress"]["phase"] not in (
                "queued",
                "load_model",
            )

        wait_for(mid_job, 60, "the job to be mid-way")
        s.workers[0].kill9()
        assert c.get(f"/api/analyses/{aid}").json()["status"] == "running"
        s.add_worker(wait=True)
        d = wait_status(c, aid, ("done", "failed", "cancelled"), 90)
        assert d["status"] == "done", (d["error"], s.logs())

        conn = Redis.from_url(s.redis.url)
        job_id = c.app.state.store.get(aid).job_id
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        assert job.get_status() == "finished"
        assert job.retries_left == 0  # it ran twice: the abandoned run and the retry
        conn.close()
        assert "abandoned" in s.workers[1].log() or "retry" in s.workers[1].log().lower()

        ref = reference_report(s.tiny, d["request"])
        res = d["result"]
        for m in ("atp", "hvp"):
            assert close(res["scores"][m], ref["scores"][m]), m
        assert close(res["reliability"], ref["reliability"])
        assert res["flags"] == ref["flags"]
    finally:
        s.stop()


def test_redis_kill9_results_and_links_survive(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    try:
        s.start(n_workers=1)
        c = s.client
        bodies = [token_request(s.tiny, seed=k) for k in (31, 32)]
        ids = [c.post("/api/analyses", json=b).json()["id"] for b in bodies]
        for aid in ids:
            assert wait_status(c, aid, ("done", "failed"), 60)["status"] == "done"
        c.post(f"/api/analyses/{ids[0]}/verify", json={"components": [[0, 0]]})
        wait_verified(c, ids[0], ["0.0"])
        before = {aid: c.get(f"/api/analyses/{aid}").json() for aid in ids}
        pages = {aid: c.get(f"/a/{aid}").status_code for aid in ids}
        assert all(code in (200, 503) for code in pages.values())  # 503: front end not built

        s.redis.kill9()
        r = c.get(f"/api/analyses/{ids[0]}")
        assert r.status_code == 503 and "Traceback" not in r.text  # storage down, said plainly
        assert c.get("/healthz").json()["status"] == "down"
        s.redis.start()  # same port, same data dir: the AOF is replayed

        for aid in ids:
            after = c.get(f"/api/analyses/{aid}").json()
            assert after["status"] == "done"
            assert after["result"] == before[aid]["result"]
            assert after["request"] == before[aid]["request"]
            assert c.get(f"/a/{aid}").status_code == pages[aid]
            assert c.get(f"/api/analyses/{aid}/export.csv").status_code == 200
        assert "0.0" in c.get(f"/api/analyses/{ids[0]}").json()["result"]["verified"]
        # dedup survives too, and the worker reconnects and keeps working
        assert c.post("/api/analyses", json=bodies[1]).json()["id"] == ids[1]
        new = c.post("/api/analyses", json=token_request(s.tiny, seed=33)).json()["id"]
        assert wait_status(c, new, ("done", "failed"), 90)["status"] == "done", s.logs()
    finally:
        s.stop()
