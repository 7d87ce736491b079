"""The one JSON serialiser of numbers: NaN and +-inf become null (JSON has neither), tensors
become nested lists. Everything the worker stores and the engine's ``to_dict`` writes goes
through ``json_safe``."""

from __future__ import annotations

import math
from typing import Any


def json_safe(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None, recursively (dicts, lists, tuples,
    tensors and numpy arrays; tensors as Python floats in float64)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if hasattr(x, "detach"):  # a tensor
        x = x.detach().cpu()
        return json_safe((x.double() if x.is_floating_point() else x).tolist())
    if callable(getattr(x, "tolist", None)) and not isinstance(x, int | str | bool):
        return json_safe(x.tolist())  # a numpy array or scalar
    return x
