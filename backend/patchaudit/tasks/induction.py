"""Induction prompt pairs (repeated random tokens).

clean     = [bos] + r + r[:-1]     the model should predict r[-1] (it saw r[-2] -> r[-1])
corrupted = [bos] + r' + r[:-1]    r' fresh random tokens (random-token corruption of the
                                   first half), disjoint from r: r[-1] never appears
answer = r[-1], wrong = r'[-1]

r and r' each have ``half_len`` distinct tokens. With the bundled model's tokenizer the
tokens come from its filler block (``FILLER``: "t00" .. "t99", detected in the vocabulary);
with any other tokenizer from ordinary ids in [1000, min(vocab, 20000)) that are not special
tokens.
"""

from __future__ import annotations

import random

import torch

__all__ = ["FILLER", "INDUCTION_EXAMPLE", "filler_ids", "make_induction"]

#: The filler block of the bundled model's vocabulary (one word = one token).
FILLER: list[str] = [f"t{i:02d}" for i in range(100)]


def _vocab(tokenizer) -> dict[str, int]:
    get_vocab = getattr(tokenizer, "get_vocab", None)
    return dict(get_vocab()) if callable(get_vocab) else {}


def filler_ids(tokenizer) -> list[int]:
    """The ids random induction tokens are drawn from, for this tokenizer (sorted)."""
    vocab = _vocab(tokenizer)
    if all(w in vocab for w in FILLER):
        return sorted(vocab[w] for w in FILLER)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else len(vocab)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    lo, hi = 1000, min(size, 20000)
    if hi - lo < 64:  # a small vocabulary: use all of it but the special tokens
        lo = 0
    ids = [i for i in range(lo, hi) if i not in special]
    if len(ids) < 4:
        raise ValueError("tokenizer vocabulary too small for induction prompts")
    return ids


def make_induction(
    tokenizer,
    n: int,
    seed: int = 0,
    half_len: int = 8,
    bos: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (clean_ids [n, pos], corrupted_ids [n, pos], answer_ids [n], wrong_ids [n]).

    pos = 2 * half_len - 1 (+1 with a bos token). Deterministic for a given seed. If
    ``bos`` is true but the tokenizer has no bos token, no bos is used.
    """
    if half_len < 2:
        raise ValueError("half_len must be >= 2")
    if n < 0:
        raise ValueError("n must be >= 0")
    pool = filler_ids(tokenizer)
    if 2 * half_len > len(pool):
        raise ValueError(f"half_len {half_len} too large for a pool of {len(pool)} tokens")
    bos_id = getattr(tokenizer, "bos_token_id", None) if bos else None
    prefix = [] if bos_id is None else [int(bos_id)]
    rng = random.Random(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n):
        both = rng.sample(pool, 2 * half_len)  # r and r' disjoint, each distinct
        r, r2 = both[:half_len], both[half_len:]
        clean.append(prefix + r + r[:-1])
        corrupted.append(prefix + r2 + r[:-1])
        answer.append(r[-1])
        wrong.append(r2[-1])
    pos = len(prefix) + 2 * half_len - 1
    return (
        torch.tensor(clean, dtype=torch.long).reshape(n, pos),  # [n, pos]
        torch.tensor(corrupted, dtype=torch.long).reshape(n, pos),  # [n, pos]
        torch.tensor(answer, dtype=torch.long),  # [n]
        torch.tensor(wrong, dtype=torch.long),  # [n]
    )


INDUCTION_EXAMPLE: dict = {
    "clean": "t17 t42 t08 t93 t55 t21 t60 t34 t17 t42 t08 t93 t55 t21 t60",
    "corrupted": "t71 t05 t88 t12 t49 t26 t67 t90 t17 t42 t08 t93 t55 t21 t60",
    "answer": " t34",
    "wrong": " t90",
}
