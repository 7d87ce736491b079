"""Prompt pairs: clean and corrupted prompts of equal token length, with the answer and the
wrong answer of each pair. Text is tokenized with the model's own tokenizer when the pairs meet
a model (``PromptPairs.tokenize``); tokens given with ``from_tokens`` are used exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

TASKS = ("ioi", "induction", "greater_than")


@dataclass
class TokenPairs:
    """Tokenized pairs, right-padded to a common length; ``last_pos`` is each pair's last real
    position (where the metric reads the logits)."""

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer_ids: Int[Tensor, " batch"]
    wrong_ids: Int[Tensor, " batch"]
    last_pos: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def key(self) -> str:
        """Content hash of the tokens (the cache key's token part)."""
        import hashlib

        h = hashlib.sha256()
        for t in (self.clean, self.corrupted, self.answer_ids, self.wrong_ids, self.last_pos):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().to(torch.int64).numpy().tobytes())
        return h.hexdigest()[:32]


def _tokenizer_of(model_or_tokenizer):
    tok = getattr(model_or_tokenizer, "tokenizer", None)
    return tok if tok is not None else model_or_tokenizer


def _prepends_bos(model_or_tokenizer, tok) -> bool:
    cfg = getattr(model_or_tokenizer, "cfg", None)
    wants = getattr(cfg, "default_prepend_bos", True) if cfg is not None else True
    return bool(wants) and tok.bos_token_id is not None


def _encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _show(tok, ids: Sequence[int]) -> list[str]:
    return [tok.decode([i]) for i in ids]


def check_pairs(
    model_or_tokenizer,
    clean: Sequence[str],
    corrupted: Sequence[str],
    answers: Sequence[str],
    wrong: Sequence[str],
    max_tokens: int | None = None,
) -> list[dict]:
    """Tokens of every pair and what is wrong with it (never raises for a bad pair)."""
    tok = _tokenizer_of(model_or_tokenizer)
    bos = [tok.bos_token_id] if _prepends_bos(model_or_tokenizer, tok) else []
    cfg = getattr(model_or_tokenizer, "cfg", None)
    n_ctx = max_tokens or (getattr(cfg, "n_ctx", None) if cfg is not None else None)
    out = []
    lengths = (len(clean), len(corrupted), len(answers), len(wrong))
    if len(set(lengths)) != 1:
        raise ValueError(
            f"clean, corrupted, answers and wrong must have the same number of entries, got {lengths}"
        )
    for c, x, a, w in zip(clean, corrupted, answers, wrong, strict=True):
        problems = []
        for label, s in (
            ("clean prompt", c),
            ("corrupted prompt", x),
            ("answer", a),
            ("wrong answer", w),
        ):
            if not isinstance(s, str) or not s.strip():
                problems.append(f"the {label} is empty")
        ci, xi = bos + _encode(tok, c or ""), bos + _encode(tok, x or "")
        ai, wi = _encode(tok, a or ""), _encode(tok, w or "")
        if c and x and c.strip() and x.strip() and len(ci) != len(xi):
            problems.append(
                f"clean has {len(ci)} tokens but corrupted has {len(xi)}: make them the same length"
            )
        for label, ids, s in (("answer", ai, a), ("wrong answer", wi, w)):
            if s and s.strip() and len(ids) != 1:
                problems.append(
                    f"the {label} {s!r} is {len(ids)} tokens, not one: use a single-token word"
                    " (often with a leading space)"
                )
        unk = getattr(tok, "unk_token_id", None)
        if unk is not None and not getattr(tok, "patchaudit_placeholder", False):
            for label, ids in (
                ("clean prompt", ci),
                ("corrupted prompt", xi),
                ("answer", ai),
                ("wrong answer", wi),
            ):
                if unk in ids:
                    problems.append(
                        f"the {label} has words the model's vocabulary lacks (read as "
                        f"{tok.unk_token}): use words it knows"
                    )
        if c and x and ai and ai == wi:
            problems.append("the answer and the wrong answer are the same token")
        if n_ctx and max(len(ci), len(xi)) > n_ctx:
            problems.append(
                f"the prompt has {max(len(ci), len(xi))} tokens, over the model's context of {n_ctx}"
            )
        out.append(
            {
                "clean_tokens": _show(tok, ci),
                "corrupted_tokens": _show(tok, xi),
                "answer_tokens": _show(tok, ai),
                "wrong_tokens": _show(tok, wi),
                "problems": problems,
            }
        )
    return out


def _stack(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    t = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        t[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return t, torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)


@dataclass
class PromptPairs:
    """A set of prompt pairs: text, tokens, or a built-in task resolved with the model's
    tokenizer. ``tokenize(model)`` validates and returns :class:`TokenPairs`."""

    clean: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    tokens: TokenPairs | None = None
    task: dict | None = None  # {"name", "n", "seed", ...} for tasks generated from the tokenizer

    def __len__(self) -> int:
        if self.tokens is not None:
            return len(self.tokens)
        if self.task is not None and not self.clean:
            return int(self.task["n"])
        return len(self.clean)

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def from_text(
        cls,
        clean: Sequence[str],
        corrupted: Sequence[str],
        answers: Sequence[str],
        wrong: Sequence[str],
    ) -> PromptPairs:
        lengths = (len(clean), len(corrupted), len(answers), len(wrong))
        if len(set(lengths)) != 1:
            raise ValueError(
                "clean, corrupted, answers and wrong must have the same number of entries, "
                f"got {lengths}"
            )
        if lengths[0] == 0:
            raise ValueError("no prompt pairs given: pass at least one pair")
        for i, row in enumerate(zip(clean, corrupted, answers, wrong, strict=True)):
            for label, s in zip(
                ("clean prompt", "corrupted prompt", "answer", "wrong answer"), row, strict=True
            ):
                if not isinstance(s, str) or not s.strip():
                    raise ValueError(f"pair {i}: the {label} is empty; give a non-empty string")
        return cls(list(clean), list(corrupted), list(answers), list(wrong))

    @classmethod
    def from_tokens(
        cls,
        clean_tokens: Tensor,
        corrupted_tokens: Tensor,
        answer_ids: Tensor | Sequence[int],
        wrong_ids: Tensor | Sequence[int],
    ) -> PromptPairs:
        clean_t = torch.as_tensor(clean_tokens, dtype=torch.long)
        corr_t = torch.as_tensor(corrupted_tokens, dtype=torch.long)
        ans = torch.as_tensor(answer_ids, dtype=torch.long).flatten()
        wr = torch.as_tensor(wrong_ids, dtype=torch.long).flatten()
        if clean_t.dim() != 2 or corr_t.dim() != 2:
            raise ValueError("clean and corrupted tokens must be 2-D LongTensors [batch, pos]")
        if clean_t.shape != corr_t.shape:
            raise ValueError(
                f"clean tokens {tuple(clean_t.shape)} and corrupted tokens {tuple(corr_t.shape)} "
                "differ in shape: every pair needs the same token length"
            )
        if clean_t.shape[1] == 0 or clean_t.shape[0] == 0:
            raise ValueError("empty token batch: pass at least one pair of at least one token")
        if ans.numel() != clean_t.shape[0] or wr.numel() != clean_t.shape[0]:
            raise ValueError(
                f"need one answer id and one wrong id per pair ({clean_t.shape[0]}), got "
                f"{ans.numel()} and {wr.numel()}"
            )
        last = torch.full((clean_t.shape[0],), clean_t.shape[1] - 1, dtype=torch.long)
        return cls(tokens=TokenPairs(clean_t, corr_t, ans, wr, last))

    @classmethod
    def from_task(
        cls, name: str, n: int = 16, seed: int = 0, corruption: str | None = None, **kw
    ) -> PromptPairs:
        if n <= 0:
            raise ValueError(f"n must be a positive number of pairs, got {n}")
        if name == "ioi":
            from .ioi import make_ioi

            rows = make_ioi(n, seed=seed, corruption=corruption or "abc", **kw)
            p = cls.from_text(
                [r["clean"] for r in rows],
                [r["corrupted"] for r in rows],
                [r["answer"] for r in rows],
                [r["wrong"] for r in rows],
            )
            p.task = {"name": name, "n": n, "seed": seed, "corruption": corruption or "abc"}
            return p
        if name == "greater_than":
            from .greater_than import make_greater_than

            rows = make_greater_than(n, seed=seed, corruption=corruption or "01", **kw)
            p = cls.from_text(
                [r["clean"] for r in rows],
                [r["corrupted"] for r in rows],
                [r["answer"] for r in rows],
                [r["wrong"] for r in rows],
            )
            p.task = {"name": name, "n": n, "seed": seed, "corruption": corruption or "01"}
            return p
        if name == "induction":
            if corruption not in (None, "random"):
                raise ValueError(
                    f"task 'induction' has corruption 'random' only, got {corruption!r}"
                )
            return cls(task={"name": name, "n": n, "seed": seed, "corruption": "random", **kw})
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")

    # -- resolution ------------------------------------------------------------------------
    def tokenize(self, model) -> TokenPairs:
        """Tokens for ``model``; raises ValueError naming the offending pair."""
        if self.tokens is not None:
            t = self.tokens
            n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
            if n_ctx and t.clean.shape[1] > n_ctx:
                raise ValueError(
                    f"prompts have {t.clean.shape[1]} tokens, over the model's context of {n_ctx}"
                )
            vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
            if vocab:
                for label, x in (
                    ("clean", t.clean),
                    ("corrupted", t.corrupted),
                    ("answer", t.answer_ids),
                    ("wrong", t.wrong_ids),
                ):
                    if int(x.max()) >= vocab or int(x.min()) < 0:
                        raise ValueError(
                            f"{label} token ids must lie in [0, {vocab}) for this model"
                        )
            return t
        if self.task is not None and self.task["name"] == "induction" and not self.clean:
            from .induction import make_induction

            kw = {
                k: v for k, v in self.task.items() if k not in ("name", "n", "seed", "corruption")
            }
            c, x, a, w = make_induction(
                _tokenizer_of(model), self.task["n"], seed=self.task["seed"], **kw
            )
            self.tokens = TokenPairs(
                c, x, a, w, torch.full((c.shape[0],), c.shape[1] - 1, dtype=torch.long)
            )
            return self.tokens
        tok = _tokenizer_of(model)
        if tok is None:
            raise ValueError(
                "this model has no tokenizer: pass tokens with PromptPairs.from_tokens"
            )
        report = check_pairs(model, self.clean, self.corrupted, self.answers, self.wrong)
        for i, r in enumerate(report):
            if r["problems"]:
                raise ValueError(f"pair {i}: {r['problems'][0]}")
        bos = [tok.bos_token_id] if _prepends_bos(model, tok) else []
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        clean, last = _stack([bos + _encode(tok, s) for s in self.clean], pad)
        corr, _ = _stack([bos + _encode(tok, s) for s in self.corrupted], pad)
        ans = torch.tensor([_encode(tok, s)[0] for s in self.answers], dtype=torch.long)
        wr = torch.tensor([_encode(tok, s)[0] for s in self.wrong], dtype=torch.long)
        return TokenPairs(clean, corr, ans, wr, last)

    def to_records(self) -> list[dict]:
        return [
            {"clean": c, "corrupted": x, "answer": a, "wrong": w}
            for c, x, a, w in zip(self.clean, self.corrupted, self.answers, self.wrong, strict=True)
        ]
