"""Prompt pairs: clean and corrupted prompts of equal token length, with the answer and the
wrong answer of each pair. Text is tokenized with the model's own tokenizer when the pairs meet
a model (``PromptPairs.tokenize``); tokens given with ``from_tokens`` are used exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

from . import TASK_REGISTRY, TASKS  # noqa: F401  (the one task registry)


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


def unknown_words(tok, text: str) -> list[str]:
    """The words of ``text`` the tokenizer reads as its unknown token, in order, once each."""
    unk = getattr(tok, "unk_token_id", None)
    if unk is None:
        return []
    out: list[str] = []
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [
            text[a:b]
            for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
            if i == unk
        ]
    except (NotImplementedError, TypeError, ValueError):  # a slow tokenizer: word by word
        spans = [w for w in text.split() if unk in _encode(tok, w)]
    for w in spans:
        w = w.strip()
        if w and w not in out:
            out.append(w)
    return out


def _punctuation_fix(tok, word: str) -> str | None:
    """``word`` with its attached punctuation spaced off ("store," -> "store ,") when every
    piece is then known; None when that does not help."""
    import re

    pieces = re.findall(r"\w+|[^\w\s]", word)
    if len(pieces) < 2 or not any(re.fullmatch(r"[^\w\s]", p) for p in pieces):
        return None
    unk = tok.unk_token_id
    if any(unk in _encode(tok, p) for p in pieces):
        return None
    return " ".join(pieces)


def unknown_words_message(tok, label: str, text: str) -> str:
    """'the clean prompt has words the model's vocabulary lacks: 'Zed', 'store,' ...' with a
    hint for punctuation attached to a word."""
    words = unknown_words(tok, text)
    named = ", ".join(repr(w) for w in words[:8]) + (" ..." if len(words) > 8 else "")
    msg = (
        f"the {label} has words the model's vocabulary lacks (read as {tok.unk_token}): "
        f"{named or '?'}"
    )
    fixes = [(w, f) for w in words if (f := _punctuation_fix(tok, w))]
    if fixes:
        w, f = fixes[0]
        msg += (
            f"; this tokenizer splits on spaces only, so put a space before punctuation "
            f"({w!r} -> {f!r})"
        )
    elif words:
        msg += "; use words it knows"
    if word_vocab(tok) is not None:
        msg += " (GET /api/models/<model>/vocab lists them)"
    return msg


def word_vocab(model_or_tokenizer) -> list[str] | None:
    """The words of a word-level vocabulary (special tokens left out), in id order; None for
    subword vocabularies (BPE, WordPiece, Unigram), where any text splits into known pieces,
    and for the placeholder tokenizer of models that ship none."""
    tok = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer
    if getattr(tok, "patchaudit_placeholder", False):
        return None
    backend = getattr(tok, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if type(model).__name__ != "WordLevel":
        return None
    special = set(getattr(tok, "all_special_tokens", []) or [])
    vocab = tok.get_vocab()
    return [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w not in special]


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
            for label, ids, s in (
                ("clean prompt", ci, c),
                ("corrupted prompt", xi, x),
                ("answer", ai, a),
                ("wrong answer", wi, w),
            ):
                if unk in ids:
                    problems.append(unknown_words_message(tok, label, s or ""))
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


PAIR_FIELDS = ("clean", "corrupted", "answer", "wrong")
PAIR_FORMATS = ("auto", "tsv", "csv", "jsonl")
_ALIASES = {
    "clean": "clean",
    "corrupted": "corrupted",
    "corrupt": "corrupted",
    "answer": "answer",
    "answers": "answer",
    "wrong": "wrong",
    "wrong_answer": "wrong",
}


class PairsParseError(ValueError):
    """A pairs file or paste that cannot be read; ``line`` is 1-based (0: the whole text)."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


def detect_format(text: str) -> str:
    """jsonl when the first non-blank line starts with '{' or '[', tsv when it has a tab,
    else csv."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line[0] in "{[":
            return "jsonl"
        return "tsv" if "\t" in raw else "csv"
    return "tsv"


def _header(cells: list[str]) -> list[str] | None:
    names = [_ALIASES.get(c.strip().lower()) for c in cells]
    if all(names) and set(names) >= set(PAIR_FIELDS):
        return [str(n) for n in names]
    return None


def _check_row(line: int, row: dict) -> dict:
    out = {}
    for k in PAIR_FIELDS:
        v = row.get(k)
        if not isinstance(v, str):
            raise PairsParseError(line, f"'{k}' is missing or not text")
        v = v.rstrip("\r\n")
        if not v.strip():
            raise PairsParseError(line, f"the {k} field is empty")
        out[k] = v
    return out


def parse_pairs(text: str, format: str = "auto") -> tuple[list[dict], str]:
    """Prompt pairs from TSV, CSV or JSON lines: (pairs, format). Columns are clean, corrupted,
    answer, wrong, in that order or named by a header row; JSON lines are objects with those
    keys (or arrays in that order). Blank lines and lines starting with '#' are skipped.
    Fields keep their spaces (an answer is often " Mary"). Raises PairsParseError naming the
    line."""
    import csv
    import json

    if format not in PAIR_FORMATS:
        raise PairsParseError(
            0, f"unknown format {format!r}: choose one of {', '.join(PAIR_FORMATS)}"
        )
    if not isinstance(text, str) or not text.strip():
        raise PairsParseError(0, "no pairs given: the text is empty")
    fmt = detect_format(text) if format == "auto" else format
    pairs: list[dict] = []
    lines = text.splitlines()
    if fmt == "jsonl":
        for n, raw in enumerate(lines, start=1):
            if not raw.strip() or raw.strip().startswith("#"):
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise PairsParseError(n, f"not valid JSON ({e.msg})") from None
            except RecursionError:  # thousands of nested brackets
                raise PairsParseError(n, "JSON nested too deeply for a pair") from None
            if isinstance(obj, list):
                if len(obj) != 4:
                    raise PairsParseError(
                        n, f"expected 4 values (clean, corrupted, answer, wrong), got {len(obj)}"
                    )
                obj = dict(zip(PAIR_FIELDS, obj, strict=True))
            if not isinstance(obj, dict):
                raise PairsParseError(n, "expected an object with clean, corrupted, answer, wrong")
            obj = {_ALIASES.get(str(k).lower(), str(k)): v for k, v in obj.items()}
            pairs.append(_check_row(n, obj))
    else:
        delim = "\t" if fmt == "tsv" else ","
        rows = (
            csv.reader(lines, delimiter=delim) if fmt == "csv" else (ln.split("\t") for ln in lines)
        )
        names: list[str] | None = None
        for n, cells in enumerate(rows, start=1):
            if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            if names is None and not pairs:
                names = _header(cells)
                if names is not None:
                    continue
            cols = names or list(PAIR_FIELDS)
            if len(cells) != len(cols):
                sep = "tabs" if fmt == "tsv" else "commas"
                raise PairsParseError(
                    n,
                    f"expected {len(cols)} columns ({', '.join(cols)}) separated by {sep}, got "
                    f"{len(cells)}"
                    + (" (quote fields that contain commas)" if fmt == "csv" else ""),
                )
            pairs.append(_check_row(n, dict(zip(cols, cells, strict=True))))
    if not pairs:
        raise PairsParseError(
            0, "no pairs found: give one pair per line (clean, corrupted, answer, wrong)"
        )
    return pairs, fmt


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
                    raise ValueError(f"pair {i + 1}: the {label} is empty; give a non-empty string")
        return cls(list(clean), list(corrupted), list(answers), list(wrong))

    @classmethod
    def from_records(cls, records: Sequence[dict]) -> PromptPairs:
        """Pairs from dicts with keys clean, corrupted, answer, wrong."""
        return cls.from_text(
            [r["clean"] for r in records],
            [r["corrupted"] for r in records],
            [r["answer"] for r in records],
            [r["wrong"] for r in records],
        )

    @classmethod
    def from_file(cls, path, format: str = "auto") -> PromptPairs:
        """Pairs from a TSV, CSV or JSON-lines file (``parse_pairs``); with format "auto" the
        extension (.tsv, .csv, .jsonl) decides, else the content."""
        from pathlib import Path

        path = Path(path)
        if format == "auto":
            format = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
                path.suffix.lower(), "auto"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read pairs file {str(path)!r}: {e.strerror or e}") from None
        try:
            records, _ = parse_pairs(text, format)
        except PairsParseError as e:
            raise ValueError(f"{path.name}: {e}") from None
        return cls.from_records(records)

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
        spec = TASK_REGISTRY.get(name)
        if spec is None:
            raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
        if name in ("ioi", "greater_than"):  # text tasks
            from .greater_than import make_greater_than
            from .ioi import make_ioi

            make: Callable[..., list[dict]] = make_ioi if name == "ioi" else make_greater_than
            corruption = corruption or spec.default_corruption
            rows = make(n, seed=seed, corruption=corruption, **kw)
            p = cls.from_text(
                [r["clean"] for r in rows],
                [r["corrupted"] for r in rows],
                [r["answer"] for r in rows],
                [r["wrong"] for r in rows],
            )
            p.task = {"name": name, "n": n, "seed": seed, "corruption": corruption}
            return p
        if name in ("induction", "planted"):  # planted: induction for the planted model
            if corruption not in (None, "random"):
                raise ValueError(f"task {name!r} has corruption 'random' only, got {corruption!r}")
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
        if (
            self.task is not None
            and self.task["name"] in ("induction", "planted")
            and not self.clean
        ):
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
                raise ValueError(f"pair {i + 1}: {r['problems'][0]}")
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
