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
    # the calibrated flag rule (bench/trust): "family:site:metric:direction[:task]|screen"
    "flag_calibration": {},
    # the rho threshold that would catch 90% of misleading material components (reference)
    "tau_catching_90": None,
}

#: Used where no calibration applies (a model family, site, metric or direction the benchmark
#: never measured): an interval as wide as the screen's own uncertainty plus half the estimate.
UNCALIBRATED = {"scale": 1.0, "kappa": 0.5}


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


def flag_calibration(
    model_name: str | None,
    site: str,
    metric: str,
    direction: str,
    task: str | None = None,
    with_sat: bool = True,
):
    """The flag calibration for this combination (``reliability.Calibration``): the entry of
    this model family, site, metric and direction for this built-in task, else for any pairs,
    else the default family's; where none was ever measured, an uncalibrated rule that says so.
    ``with_sat``: whether the screen ran the saturation-aware estimate (calibrated apart)."""
    from .estimators.reliability import Calibration

    table = load().get("flag_calibration") or {}
    screen = "atp+hvp+sat" if with_sat else "atp+hvp"
    family = model_name if model_name in {k.split(":")[0] for k in table} else "default"
    tried = []
    for fam in dict.fromkeys((family, "default")):
        base = f"{fam}:{site}:{metric}:{direction}"
        for key in ([f"{base}:{task}"] if task else []) + [base]:
            tried.append(key)
            entry = table.get(f"{key}|{screen}")
            if entry:
                pooled = key == base and task is not None
                what = "any pairs" if key == base else f"the {task} task"
                why = (
                    f"calibrated by make bench on {entry.get('sets', '?')} held-out-free prompt "
                    f"sets of {what} ({fam} model family, {site}, {metric}, {direction}, screen "
                    f"{screen}): interval scale {entry['scale']:.3g}, relative term "
                    f"{entry['kappa']:.3g}, centred on {entry['estimate']}"
                )
                if pooled:
                    why += f"; no calibration for the {task} task itself, so the pooled one"
                if fam != family or (model_name and fam != model_name):
                    why += (
                        f"; {model_name or 'this model'} was never calibrated, so it takes the "
                        f"'{fam}' family's"
                    )
                return Calibration(
                    scale=float(entry["scale"]),
                    kappa=float(entry["kappa"]),
                    estimate=str(entry["estimate"]),
                    key=f"{key}|{screen}",
                    calibrated=fam == model_name and not pooled,
                    why=why,
                )
    u = UNCALIBRATED
    return Calibration(
        scale=float(u["scale"]),  # type: ignore[arg-type]
        kappa=float(u["kappa"]),  # type: ignore[arg-type]
        estimate="sat" if with_sat else "hvp",
        key="",
        calibrated=False,
        why=(
            f"never calibrated ({site}, {metric}, {direction}, screen {screen}; tried "
            f"{', '.join(tried)}): the interval is the screen's own uncertainty plus "
            f"{u['kappa']:g} x |estimate|, scale {u['scale']:g}; run make bench to calibrate"
        ),
    )
