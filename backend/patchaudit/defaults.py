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
    # the metric and direction the bound_scale factors were calibrated on (the benchmark's)
    "bound_calibrated_on": None,
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


def bound_scale(
    model_name: str | None,
    site: str | None = None,
    metric: str | None = None,
    direction: str | None = None,
) -> float:
    """The error bound's calibration factor for this model family and site: "bundled:mlp",
    else the family's largest ("bundled"), else the other models' ("default:mlp", "default").
    A site's own factor holds for the metric and direction it was calibrated on; any other
    takes the family's largest (the most conservative factor measured)."""
    d = load()
    s = d["bound_scale"]
    cal = d.get("bound_calibrated_on")
    if cal and metric is not None and (metric, direction) != (cal["metric"], cal["direction"]):
        site = None
    family = model_name if model_name and model_name in s else "default"
    for key in (f"{family}:{site}", family, f"default:{site}", "default"):
        if key in s:
            return float(s[key])
    return 1.0
