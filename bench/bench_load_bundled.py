"""Load time of the bundled model and the package size (acceptance: ``pa.load_model("bundled")``
loads offline in < 2 s on the CPU; the package stays < 30 MB).

Each repeat is a fresh Python process (a cold start, as a user's first call is): it imports
patchaudit, then times ``pa.load_model("bundled", device="cpu")`` alone. The import of torch,
transformers and TransformerLens is reported apart. Writes bench/results/load_bundled.json.

    PYTHONPATH=backend python bench/bench_load_bundled.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "backend" / "patchaudit"

CHILD = """
import json, time
t0 = time.perf_counter()
import patchaudit as pa
from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
t1 = time.perf_counter()
m = pa.load_model("bundled", device="cpu")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "n_heads": m.cfg.n_layers * m.cfg.n_heads}))
"""


def package_bytes() -> int:
    return sum(
        p.stat().st_size for p in PKG.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench/results/load_bundled.json"))
    a = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT / "backend") + os.pathsep + env.get("PYTHONPATH", "")
    runs = []
    for _ in range(a.repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    load = [r["load_s"] for r in runs]
    res = {
        "load_s_median": statistics.median(load),
        "load_s_min": min(load),
        "load_s_max": max(load),
        "import_s_median": statistics.median(r["import_s"] for r in runs),
        "n_heads": runs[0]["n_heads"],
        "package_bytes": package_bytes(),
        "bundled_dir_bytes": sum(
            p.stat().st_size for p in (PKG / "models" / "bundled").iterdir() if p.is_file()
        ),
        "load_target_s": 2.0,
        "package_target_bytes": 30 * 2**20,
        "repeats": a.repeats,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "machine": platform.machine(),
        "runs": runs,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
