"""Acceptance 3: ``patchaudit serve`` alone (no REDIS_URL) starts the embedded Redis (AOF in
the data dir), a worker and the API, prints the URL, serves the API and the front end on the
bundled model, and stops every process on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import BACKEND, ROOT, free_port, tiny_model_dir, wait_for

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def bundled_available() -> bool:
    from patchaudit.models import BUNDLED_DIR

    return (BUNDLED_DIR / "model.safetensors").exists()


def test_serve_one_command(tmp_path: Path) -> None:
    import httpx

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    model = "bundled" if bundled_available() else str(tiny_model_dir())
    port = free_port()
    env = dict(os.environ)
    for k in ("REDIS_URL", "PATCHAUDIT_REDIS_URL", "PATCHAUDIT_DATA_DIR"):
        env.pop(k, None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(BACKEND), env.get("PYTHONPATH", "")]),
        PATCHAUDIT_MODEL_ALLOWLIST=json.dumps(["bundled", str(tiny_model_dir())]),
        PATCHAUDIT_WORKER_TTL_S="20",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchaudit",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--workers",
            "1",
            "--model",
            model,
        ],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    kids: list[int] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(
            lambda: any(f"serving at {url}" in ln for ln in lines) or proc.poll() is not None,
            60,
            "the URL to be printed",
        )
        assert proc.poll() is None, "".join(lines)
        kids = children_of(proc.pid)  # valkey + worker, killed below whatever happens
        with httpx.Client(base_url=url, timeout=30) as c:
            wait_for(lambda: c.get("/healthz").json()["workers"] >= 1, 90, "a worker")
            home = c.get("/")
            assert home.status_code == 200 and "text/html" in home.headers["content-type"], (
                home.text[:200]
            )
            js = c.get("/static/plotly.min.js")
            assert js.status_code == 200 and len(js.content) > 1_000_000
            if model == "bundled":
                body = {
                    "model": "bundled",
                    "task": "ioi",
                    "n_pairs": 4,
                    "seed": 0,
                    "methods": ["atp", "hvp"],
                    "hvp_probes": 4,
                }
            else:
                from .conftest import token_request

                body = token_request(model)
            r = c.post("/api/analyses", json=body)
            assert r.status_code == 202, r.text
            aid = r.json()["id"]

            def finished() -> dict | None:
                d = c.get(f"/api/analyses/{aid}").json()
                return d if d["status"] in ("done", "failed", "cancelled") else None

            d = wait_for(finished, 120, "the analysis", interval=0.2)
            assert d["status"] == "done", (d["error"], "".join(lines)[-4000:])
            assert c.get(f"/a/{aid}").status_code == 200
            models = [m["name"] for m in c.get("/api/models").json()]
            assert "bundled" in models
        kids = sorted(set(kids) | set(children_of(proc.pid)))
        assert len(kids) >= 2, kids  # valkey + worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(lines)[-4000:]
        wait_for(lambda: not any(alive(k) for k in kids), 15, "child processes to exit")
        assert any((data / "redis").rglob("*.aof")), list((data / "redis").rglob("*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for k in kids:
            if not alive(k):
                continue
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def test_serve_with_redis_url_serves_the_api_only(tmp_path: Path) -> None:
    import httpx

    from .conftest import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    port = free_port()
    env = dict(os.environ)
    env.pop("PATCHAUDIT_REDIS_URL", None)
    env.update(
        REDIS_URL=redis.url,
        PYTHONPATH=os.pathsep.join([str(BACKEND), env.get("PYTHONPATH", "")]),
        PATCHAUDIT_DATA_DIR=str(tmp_path / "data"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchaudit", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for(
            lambda: any("serving at" in ln for ln in lines) or proc.poll() is not None,
            60,
            "the URL to be printed",
        )
        assert proc.poll() is None, "".join(lines)
        assert children_of(proc.pid) == []  # no embedded Redis, no workers
        h = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        assert h["redis"] is True and h["workers"] == 0 and h["status"] == "degraded"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=20) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        redis.stop()
