"""End-to-end fixtures: a real `patchaudit serve` and real Chromium through Playwright.

- ``server``: starts ``patchaudit serve`` on a free port with a temporary data directory and
  waits for /healthz (PATCHAUDIT_E2E_URL=http://host:port uses a running server instead).
- ``browser``: Debian's Chromium (``apt-get install chromium``; PATCHAUDIT_CHROMIUM overrides
  the path). Missing Chromium FAILS the tests with the command to install it.
- ``context`` / ``new_context``: browser contexts whose route handler aborts, records and then
  fails the test on any request outside localhost / 127.0.0.1; uncaught page errors fail too.
- ``shots``: where screenshots go (PATCHAUDIT_SCREENSHOTS, e.g. docs/screenshots; else a temp
  directory, so the tests always exercise the screenshot writer).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the test modules import e2e_synthetic from here
    sys.path.insert(0, str(HERE))
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = float(os.environ.get("PATCHAUDIT_E2E_START_TIMEOUT", "180"))
# The model the tests submit: the bundled one (a local model directory can stand in for it
# while developing: PATCHAUDIT_E2E_MODEL=/path/to/hf_dir).
E2E_MODEL = os.environ.get("PATCHAUDIT_E2E_MODEL", "bundled")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Server:
    def __init__(self, url: str, data_dir: Path | None, log: Path | None, token: str | None):
        self.url = url
        self.data_dir = data_dir
        self.log = log
        self.token = token

    def api(self, method: str, path: str, body: dict | None = None, token: bool = True):
        """Call the API directly (for set-up and cross-checks). Returns (status, json)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token and self.token:
            req.add_header("X-API-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")


def start_server(
    tmp: Path, token: str | None = None, extra_env: dict | None = None
) -> tuple[Server, subprocess.Popen]:
    port = _free_port()
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = tmp / "serve.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "backend"), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.pop("REDIS_URL", None)
    env.pop("PATCHAUDIT_REDIS_URL", None)
    env.setdefault("PATCHAUDIT_DEVICE", "cpu")
    if token:
        env["PATCHAUDIT_API_TOKEN"] = token
    else:
        env.pop("PATCHAUDIT_API_TOKEN", None)
    if E2E_MODEL != "bundled":
        env["PATCHAUDIT_MODEL_ALLOWLIST"] = f"bundled,{E2E_MODEL}"
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        "-m",
        "patchaudit.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--model",
        E2E_MODEL,
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown ends it and its children
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"`patchaudit serve` exited with {proc.returncode} before /healthz answered:\n"
                f"{_tail(log)}",
                pytrace=False,
            )
        if _healthy(url):
            return Server(url, data_dir, log, token), proc
        time.sleep(0.25)
    stop_server(proc)
    pytest.fail(
        f"`patchaudit serve` did not answer {url}/healthz within {SERVER_START_TIMEOUT_S:.0f} s:\n"
        f"{_tail(log)}",
        pytrace=False,
    )


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture created
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def model_name() -> str:
    return E2E_MODEL


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    external = os.environ.get("PATCHAUDIT_E2E_URL")
    if external:
        yield Server(external.rstrip("/"), None, None, os.environ.get("PATCHAUDIT_E2E_TOKEN"))
        return
    server, proc = start_server(tmp_path_factory.mktemp("serve"))
    try:
        yield server
    finally:
        stop_server(proc)


def chromium_path() -> str:
    path = os.environ.get("PATCHAUDIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(
            f"Chromium not found (looked for {path!r}). The e2e tests need a real browser: "
            "install Debian's Chromium with `apt-get install -y chromium` (or set "
            "PATCHAUDIT_CHROMIUM to a Chromium binary).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: pip install playwright (the `dev` extra).",
            pytrace=False,
        )
    path = chromium_path()
    pw = sync_playwright().start()
    try:
        try:
            b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        except Exception as err:  # noqa: BLE001 - turn any launch failure into a clear failure
            pytest.fail(f"Chromium at {path} failed to start: {err}", pytrace=False)
        yield b
        b.close()
    finally:
        pw.stop()


class Guard:
    """Records requests to non-local hosts (aborted) and uncaught page errors."""

    def __init__(self) -> None:
        self.external: list[str] = []
        self.page_errors: list[str] = []

    def route(self, route) -> None:
        url = route.request.url
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL_HOSTS:
            self.external.append(url)
            route.abort()
            return
        route.fallback()

    def check(self) -> None:
        problems = []
        if self.external:
            problems.append(
                "the page requested resources outside localhost: " + ", ".join(self.external)
            )
        if self.page_errors:
            problems.append("uncaught errors in the page: " + " | ".join(self.page_errors))
        if problems:
            pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def new_context(browser, server):
    """Factory for fresh, guarded browser contexts (a new visitor: no storage, no cookies)."""
    made = []

    def make(**kw):
        guard = Guard()
        opts = {"viewport": {"width": 1280, "height": 900}, "base_url": server.url}
        opts.update(kw)
        ctx = browser.new_context(**opts)
        ctx.set_default_timeout(20_000)
        ctx.route("**/*", guard.route)
        ctx.pa_guard = guard  # for the test of the guard itself
        ctx.on("page", lambda p: p.on("pageerror", lambda e: guard.page_errors.append(str(e))))
        made.append((ctx, guard))
        return ctx

    yield make
    for ctx, _ in made:
        ctx.close()
    for _, guard in made:
        guard.check()


@pytest.fixture
def context(new_context):
    return new_context()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("PATCHAUDIT_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    if not path.is_absolute():
        path = REPO / path
    path.mkdir(parents=True, exist_ok=True)
    return path
