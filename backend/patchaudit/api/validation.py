"""Checks of a request against the settings' limits, and its normal form (the dedup key)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ApiError
from .schemas import METHODS, AnalysisRequest
from .settings import Settings

log = logging.getLogger(__name__)


def unprocessable(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        f"{field}: {message}",
        detail=[{"loc": ["body", *field.split(".")], "msg": message, "type": "value_error"}],
    )


def check_model(name: str, settings: Settings) -> str:
    if name in settings.allowed_models:
        return name
    examples = ", ".join(sorted(settings.allowed_models, key=lambda n: (n != "bundled", n))[:6])
    raise unprocessable(
        "model",
        f"unknown model {name!r}; use one of {examples}, ... (GET /api/models lists the "
        "offered ones; PATCHAUDIT_MODEL_ALLOWLIST sets what this server accepts)",
    )


@lru_cache(maxsize=8)
def _tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=False)


def tokenizer_for(model: str) -> Any:
    """The model's tokenizer, loaded once per process (never remote code). Raises ApiError
    (422) when the model has none."""
    from patchaudit.models import BUNDLED_DIR

    if model == "bundled":
        source = str(BUNDLED_DIR)
    else:
        source = model
        p = Path(model)
        if p.is_dir() and not (
            (p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()
        ):
            raise unprocessable(
                "model", f"{model} has no tokenizer: send token ids in 'tokens' instead of text"
            )
    try:
        return _tokenizer(source)
    except Exception as e:
        raise unprocessable("model", f"could not load the tokenizer of {model!r}: {e}") from e


def local_tokenizer(model: str) -> Any | None:
    """The tokenizer when it is on this machine (bundled or a local directory), else None."""
    if model != "bundled" and not Path(model).is_dir():
        return None
    try:
        return tokenizer_for(model)
    except ApiError:
        return None


def normalise(req: AnalysisRequest, settings: Settings) -> dict[str, Any]:
    """Validate against the limits and return the canonical request (what the job runs and
    what identifies a duplicate). Raises ApiError(422) with a message a person can act on."""
    model = check_model(req.model, settings)
    if req.pairs is not None and req.tokens is not None:
        raise unprocessable("pairs", "give either 'pairs' (text) or 'tokens', not both")
    out: dict[str, Any] = {
        "model": model,
        "task": None,
        "n_pairs": req.n_pairs,
        "seed": req.seed,
        "pairs": None,
        "tokens": None,
        "corruption": None,
        "site": req.site,
        "metric": req.metric,
        "direction": req.direction,
        "methods": [m for m in METHODS if m in set(req.methods)],
        "hvp_probes": req.hvp_probes,
        "ig_steps": req.ig_steps,
        "tau": req.tau,
    }
    if req.pairs is not None:
        n = len(req.pairs)
        if n == 0:
            raise unprocessable("pairs", "the list of pairs is empty")
        if n > settings.max_pairs:
            raise unprocessable("pairs", f"{n} pairs is over the limit of {settings.max_pairs}")
        for i, p in enumerate(req.pairs):
            for name in ("clean", "corrupted", "answer", "wrong"):
                if len(getattr(p, name)) > settings.max_prompt_chars:
                    raise unprocessable(
                        f"pairs.{i}.{name}",
                        f"over {settings.max_prompt_chars} characters: shorten it",
                    )
        _check_text_pairs(model, req, settings)
        out.update(pairs=[p.model_dump() for p in req.pairs], n_pairs=n)
    elif req.tokens is not None:
        t = req.tokens
        n = len(t.clean)
        if not (len(t.corrupted) == len(t.answer) == len(t.wrong) == n):
            raise unprocessable(
                "tokens",
                f"clean ({n}), corrupted ({len(t.corrupted)}), answer ({len(t.answer)}) and "
                f"wrong ({len(t.wrong)}) must have one entry per pair",
            )
        if n > settings.max_pairs:
            raise unprocessable("tokens", f"{n} pairs is over the limit of {settings.max_pairs}")
        width = len(t.clean[0])
        for name, rows in (("clean", t.clean), ("corrupted", t.corrupted)):
            for i, row in enumerate(rows):
                if len(row) != width or width == 0:
                    raise unprocessable(
                        f"tokens.{name}.{i}",
                        f"has {len(row)} tokens; every clean and corrupted row needs {width}",
                    )
        if width > settings.max_tokens:
            raise unprocessable(
                "tokens", f"{width} tokens per prompt is over the limit of {settings.max_tokens}"
            )
        ids = [x for rows in (t.clean, t.corrupted) for row in rows for x in row]
        if min([*ids, *t.answer, *t.wrong]) < 0:
            raise unprocessable("tokens", "token ids must be non-negative")
        out.update(tokens=t.model_dump(), n_pairs=n)
    else:
        if req.task is None:
            raise unprocessable(
                "task", "choose a task ('ioi', 'induction' or 'greater_than') or give your own 'pairs'"
            )
        if req.n_pairs > settings.max_pairs:
            raise unprocessable(
                "n_pairs", f"{req.n_pairs} is over the limit of {settings.max_pairs}"
            )
        out.update(task=req.task, corruption=req.corruption)
    if "hvp" in out["methods"]:
        if req.hvp_probes is not None and req.hvp_probes > settings.max_hvp_probes:
            raise unprocessable(
                "hvp_probes", f"{req.hvp_probes} is over the limit of {settings.max_hvp_probes}"
            )
    else:
        out["hvp_probes"] = None
    if "ig" in out["methods"]:
        if req.ig_steps is not None and req.ig_steps > settings.max_ig_steps:
            raise unprocessable(
                "ig_steps", f"{req.ig_steps} is over the limit of {settings.max_ig_steps}"
            )
    else:
        out["ig_steps"] = None
    return out


def _check_text_pairs(model: str, req: AnalysisRequest, settings: Settings) -> None:
    """With the tokenizer at hand, refuse pairs the engine would refuse (different lengths,
    multi-token answers, too long) before they reach the queue."""
    tok = local_tokenizer(model)
    if tok is None or req.pairs is None:
        return
    from patchaudit import check_pairs

    checked = check_pairs(
        tok,
        [p.clean for p in req.pairs],
        [p.corrupted for p in req.pairs],
        [p.answer for p in req.pairs],
        [p.wrong for p in req.pairs],
        max_tokens=settings.max_tokens,
    )
    bad = [(i, c["problems"]) for i, c in enumerate(checked) if c["problems"]]
    if bad:
        i, problems = bad[0]
        more = (
            f" ({len(bad) - 1} more pairs have problems: POST /api/tokenize shows them)"
            if len(bad) > 1
            else ""
        )
        raise ApiError(
            422,
            f"pair {i}: {'; '.join(problems)}{more}",
            detail=[
                {"loc": ["body", "pairs", j], "msg": "; ".join(p), "type": "value_error"}
                for j, p in bad
            ],
        )
