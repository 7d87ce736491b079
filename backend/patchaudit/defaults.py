"""Engine defaults chosen by the benchmark (bench/ writes defaults.json beside this file)."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULTS_FILE = Path(__file__).resolve().parent / "defaults.json"

_FALLBACK = {
    "hvp_probes": {"cpu": 8, "cuda": 8},
    "tau": 0.5,
    "ig_steps": 16,
    "mhvp_steps": 2,
    "bound_scale": {"default": 1.0},
    "circuit_share": 0.1,
}


def load() -> dict:
    d = dict(_FALLBACK)
    if DEFAULTS_FILE.exists():
        d.update(json.loads(DEFAULTS_FILE.read_text()))
    return d


def hvp_probes(device_type: str) -> int:
    p = load()["hvp_probes"]
    return int(p.get(device_type, p.get("cpu", 8)))


def tau() -> float:
    return float(load()["tau"])


def bound_scale(model_name: str | None) -> float:
    s = load()["bound_scale"]
    return float(s.get(model_name or "default", s.get("default", 1.0)))
