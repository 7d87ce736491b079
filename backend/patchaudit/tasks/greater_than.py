"""Greater-than prompt pairs (Hanna, Liu and Variengien 2023, "How does GPT-2 compute
greater-than?").

A clean prompt names a start year; the model should continue the end year with a later
two-digit year::

    The war lasted from the year 1732 to the year 17   ->  a year in " 33" .. " 99"

Years are written as four digits; a tokenizer that splits "1732" into "17" "32" (GPT-2's does
for these years, the bundled model's pre-tokenizer does for every four-digit number) sees the
start year's last two digits ``YY`` as one token and the century ``17`` as another.

Corruption ``"01"`` (the paper's): the start year becomes ``XX01`` ("... from the year 1701 to
the year 17"), so every later year is possible and the clean preference for years after ``YY``
is gone; the prompts keep the same number of tokens.

``answer`` / ``wrong`` (for the engine's logit-difference metric) are a later and an earlier
two-digit year at the same distance ``d`` from ``YY`` (" 45" and " 19" for YY = 32, d = 13),
so the clean logit difference is large and the corrupted one near zero. The paper's own metric,
probability mass on years after ``YY`` minus mass on years before it, is
:func:`prob_diff_greater` (the bundled model's held-out accuracy reads the top year).
"""

from __future__ import annotations

import random

import torch

__all__ = [
    "CENTURIES",
    "CORRUPTIONS",
    "GT_EXAMPLE",
    "GT_NOUNS",
    "GT_TEMPLATE",
    "YEARS",
    "make_greater_than",
    "prob_diff_greater",
    "year_ids",
]

#: Two-digit year tokens "00" .. "99" (the bundled vocabulary holds each as one word).
YEARS: list[str] = [f"{i:02d}" for i in range(100)]
#: Centuries the prompts use ("11" .. "19", as in 1100 .. 1999).
CENTURIES: list[str] = [str(c) for c in range(11, 20)]
GT_NOUNS: list[str] = [
    "war",
    "expedition",
    "project",
    "reign",
    "drought",
    "strike",
    "dispute",
    "famine",
    "voyage",
    "siege",
    "festival",
    "trial",
]
GT_TEMPLATE = "The {noun} lasted from the year {century}{yy} to the year {century}"
#: Start years used (the paper's 02 .. 98: at least one earlier and one later year remain).
YY_RANGE = (2, 98)
CORRUPTIONS: tuple[str, ...] = ("01",)


def gt_prompt(noun: str, century: str, yy: int) -> str:
    return GT_TEMPLATE.format(noun=noun, century=century, yy=f"{yy:02d}")


def make_greater_than(n: int, seed: int = 0, corruption: str = "01") -> list[dict]:
    """Return ``n`` greater-than pairs ``{"clean", "corrupted", "answer", "wrong", "yy"}``.

    Deterministic for a given (n, seed). ``answer`` = YY + d and ``wrong`` = YY - d (with a
    leading space), d drawn from 1 .. min(YY, 99 - YY).
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(
            f"unknown greater-than corruption {corruption!r}; choose one of {CORRUPTIONS}"
        )
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    out: list[dict] = []
    for _ in range(n):
        noun = rng.choice(GT_NOUNS)
        century = rng.choice(CENTURIES)
        yy = rng.randint(*YY_RANGE)
        d = rng.randint(1, min(yy, 99 - yy))
        out.append(
            {
                "clean": gt_prompt(noun, century, yy),
                "corrupted": gt_prompt(noun, century, 1),
                "answer": f" {yy + d:02d}",
                "wrong": f" {yy - d:02d}",
                "yy": yy,
            }
        )
    return out


def year_ids(tokenizer) -> list[int]:
    """Token ids of "00" .. "99" for a tokenizer whose vocabulary holds them as words."""
    vocab = tokenizer.get_vocab()
    missing = [y for y in YEARS if y not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the two-digit year tokens (e.g. {missing[0]!r})")
    return [vocab[y] for y in YEARS]


def prob_diff_greater(last_logits: torch.Tensor, yy: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The paper's metric per prompt: p(year > YY) - p(year < YY), probabilities over the
    whole vocabulary; ``last_logits`` [n, d_vocab], ``yy`` [n], ``ids`` the 100 year ids."""
    p = last_logits.softmax(-1)[:, ids]  # [n, 100]
    years = torch.arange(100, device=p.device)[None, :]
    yy = yy[:, None].to(p.device)
    return (p * (years > yy)).sum(1) - (p * (years < yy)).sum(1)


GT_EXAMPLE: dict = {
    "clean": "The war lasted from the year 1732 to the year 17",
    "corrupted": "The war lasted from the year 1701 to the year 17",
    "answer": " 45",
    "wrong": " 19",
}
