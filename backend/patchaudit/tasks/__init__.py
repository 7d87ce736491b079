"""Prompt-pair sets (ioi, induction, custom) and metrics."""

from __future__ import annotations


def list_tasks() -> list[dict]:
    """Built-in tasks with an example pair each (for the UI and the API)."""
    out = []
    try:
        from .ioi import IOI_EXAMPLE

        ioi_example = dict(IOI_EXAMPLE)
    except ImportError:  # pragma: no cover - generator not present
        ioi_example = {}
    out.append(
        {
            "name": "ioi",
            "description": "Indirect object identification: 'When Mary and John went to the "
            "store , John gave a drink to' -> ' Mary'",
            "corruptions": ["abc", "swap"],
            "example": ioi_example,
        }
    )
    try:
        from .induction import INDUCTION_EXAMPLE

        ind_example = dict(INDUCTION_EXAMPLE)
    except ImportError:  # pragma: no cover
        ind_example = {}
    out.append(
        {
            "name": "induction",
            "description": "Induction: a random token sequence repeated; predict the next "
            "repeated token. Corruption: the first half replaced by random tokens.",
            "corruptions": ["random"],
            "example": ind_example,
        }
    )
    return out
