"""Prompt-pair sets (ioi, induction, greater_than, custom) and metrics."""

from __future__ import annotations


def list_tasks() -> list[dict]:
    """Built-in tasks with an example pair each (for the UI and the API)."""
    from .greater_than import GT_EXAMPLE
    from .induction import INDUCTION_EXAMPLE
    from .ioi import IOI_EXAMPLE

    out = []
    out.append(
        {
            "name": "ioi",
            "description": "Indirect object identification: 'When Mary and John went to the "
            "store , John gave a drink to' -> ' Mary'",
            "corruptions": ["abc", "swap"],
            "example": dict(IOI_EXAMPLE),
        }
    )
    out.append(
        {
            "name": "induction",
            "description": "Induction: a random token sequence repeated; predict the next "
            "repeated token. Corruption: the first half replaced by random tokens.",
            "corruptions": ["random"],
            "example": dict(INDUCTION_EXAMPLE),
        }
    )
    out.append(
        {
            "name": "greater_than",
            "description": "Greater-than: 'The war lasted from the year 1732 to the year 17' -> "
            "a later year (' 45' above ' 19'). Corruption '01': the start year becomes 1701.",
            "corruptions": ["01"],
            "example": dict(GT_EXAMPLE),
        }
    )
    out.append(
        {
            "name": "planted",
            "description": "Induction with a BOS token for the planted model (pa.load_model("
            "'planted')), whose circuit is known by construction: [bos] r r[:-1] -> r[-1]; "
            "corruption: the first half replaced by random tokens.",
            "corruptions": ["random"],
            "example": {
                "clean": "<bos> t24 t31 t28 t13 t01 t08 t16 t15 t24 t31 t28 t13 t01 t08 t16",
                "corrupted": "<bos> t12 t09 t30 t11 t18 t06 t25 t04 t24 t31 t28 t13 t01 t08 t16",
                "answer": " t15",
                "wrong": " t04",
            },
        }
    )
    return out
