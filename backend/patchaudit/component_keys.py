"""Component keys: the one formatter and the one parser of the "L.C" strings that name a
component everywhere (the API, the store, the engine's JSON, the dashboard's frontend/keys.js).

"L.H" is a head (or, on the q / k / v sites, a head's query, key or value: per key/value head
where they are grouped), "L.P" a residual-stream position, "L" (or "L.0") an MLP layer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_KEY = re.compile(r"^(\d{1,6})(?:\.(\d{1,6}))?$")

#: How each site's components are written and what they are.
KEY_FORMS = {
    "heads": "'L.H' (layer.head)",
    "mlp": "'L' (a layer)",
    "resid": "'L.P' (layer.position)",
    "q": "'L.H' (layer.head: the head's query)",
    "k": "'L.H' (layer.head: the head's key; the key/value head where they are grouped)",
    "v": "'L.H' (layer.head: the head's value; the key/value head where they are grouped)",
}
_WHAT = {
    "heads": "(layer, head)",
    "mlp": "a layer",
    "resid": "(layer, position)",
    "q": "(layer, head)",
    "k": "(layer, key/value head)",
    "v": "(layer, key/value head)",
}


def component_key(component: Sequence[int]) -> str:
    """(layer, comp) -> "L.C"."""
    return ".".join(str(int(c)) for c in component)


def parse_component_key(component: Any, site: str | None = None) -> tuple[int, int]:
    """(layer, comp) of a component given as "L.C" / "L" (a string or an int) or as a pair of
    ints. A single number is an MLP layer: allowed when ``site`` is "mlp" or not given.
    Raises ValueError naming the accepted forms."""
    if isinstance(component, bool):
        parts: list[int] | None = None
    elif isinstance(component, int | str):
        m = _KEY.match(str(component))
        parts = None if m is None else [int(m[1])] + ([int(m[2])] if m[2] is not None else [])
    else:
        try:
            parts = [int(c) for c in component]
        except (TypeError, ValueError):
            parts = None
    if parts is not None and len(parts) == 1 and site in (None, "mlp"):
        parts = [parts[0], 0]
    if parts is None or len(parts) != 2 or min(parts) < 0:
        s = site or "heads"
        raise ValueError(
            f"{component!r} is not a {s} component: a {s} component is {_WHAT.get(s, '(layer, component)')}; "
            f"use {KEY_FORMS.get(s, KEY_FORMS['heads'])}"
        )
    return parts[0], parts[1]
