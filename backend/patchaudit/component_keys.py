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


# -- edges (site "edges") ---------------------------------------------------------------------
#
# An edge is "SENDER->RECEIVER": a sender is "emb" (the token embedding), "L.H" (a head's
# output) or "mL" (layer L's MLP output); a receiver is "L.H.q" / "L.H.k" / "L.H.v" (a head's
# query, key or value input), "mL" (an MLP's input) or "logits" (the metric). The graph's
# nodes are the senders plus "logits".

_NODE = r"emb|logits|m\d{1,6}|\d{1,6}\.\d{1,6}"
_SENDER = re.compile(r"^(?:emb|m(\d{1,6})|(\d{1,6})\.(\d{1,6}))$")
_RECEIVER = re.compile(r"^(?:logits|m(\d{1,6})|(\d{1,6})\.(\d{1,6})\.([qkv]))$")
_NODE_KEY = re.compile(rf"^(?:{_NODE})$")
EDGE_SEP = "->"
EDGE_FORM = (
    "'SENDER->RECEIVER': a sender is 'emb', 'L.H' (a head) or 'mL' (an MLP); a receiver is "
    "'L.H.q', 'L.H.k', 'L.H.v', 'mL' or 'logits' (e.g. '0.1->1.0.k')"
)
_BIG = 10**9
_QKV = {"q": 0, "k": 1, "v": 2}


def _sender_order(s: str) -> tuple[int, int, int, int]:
    m = _SENDER.match(s)
    if m is None:
        raise ValueError(s)
    if s == "emb":
        return (-1, 0, 0, 0)
    if m[1] is not None:
        return (int(m[1]), 1, 0, 0)
    return (int(m[2]), 0, int(m[3]), 0)


def _receiver_order(r: str) -> tuple[int, int, int, int]:
    m = _RECEIVER.match(r)
    if m is None:
        raise ValueError(r)
    if r == "logits":
        return (_BIG, 0, 0, 0)
    if m[1] is not None:
        return (int(m[1]), 1, 0, 0)
    return (int(m[2]), 0, int(m[3]), _QKV[m[4]])


def is_edge_key(key: Any) -> bool:
    """Whether ``key`` is written as an edge ("SENDER->RECEIVER")."""
    try:
        parse_edge_key(key)
    except ValueError:
        return False
    return True


def parse_edge_key(key: Any) -> tuple[str, str]:
    """(sender, receiver) of an edge key; ValueError naming the form otherwise. Whether the
    edge exists in a model is for its analysis to say (``result.edges``)."""
    text = key if isinstance(key, str) else None
    if text is not None and text.count(EDGE_SEP) == 1:
        s, r = text.split(EDGE_SEP)
        if _SENDER.match(s) and _RECEIVER.match(r):
            return s, r
    shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
    raise ValueError(f"{shown} is not an edge: an edge is {EDGE_FORM}")


def is_node_key(key: Any) -> bool:
    """A node of the edge graph: "emb", "L.H", "mL" or "logits"."""
    return isinstance(key, str) and _NODE_KEY.match(key) is not None


def node_of_receiver(receiver: str) -> str:
    """The node a receiver belongs to ("1.0.k" -> "1.0")."""
    m = _RECEIVER.match(receiver)
    if m is None:
        raise ValueError(f"{receiver!r} is not a receiver")
    return f"{m[2]}.{m[3]}" if m[2] is not None else receiver


def key_order(key: Any) -> tuple[int, ...]:
    """A sort key for any stored key: components ("L.C", "L") and graph nodes ("emb", "mL",
    "logits") first in the order the model computes them, then edges by receiver, then sender (both in the order the model computes them)."""
    if isinstance(key, str) and EDGE_SEP in key:
        s, r = parse_edge_key(key)
        return (1, *_receiver_order(r), *_sender_order(s))
    if key == "emb":
        return (0, -1, 0)
    if key == "logits":
        return (0, _BIG, 0)
    if isinstance(key, str) and key.startswith("m") and key[1:].isdigit():
        return (0, int(key[1:]), _BIG)  # an MLP node after the layer's heads
    return (0, *parse_component_key(key))
