"""Checks of a request against the settings' limits, and its normal form (the dedup key)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..service.contract import NormalisedRequest
from ..settings import Settings
from ..tasks import task_names_text
from .errors import ApiError
from .schemas import METHODS, AnalysisRequest

log = logging.getLogger(__name__)


def unprocessable(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        f"{field}: {message}",
        detail=[{"loc": ["body", *field.split(".")], "msg": message, "type": "value_error"}],
    )


def enable_hint(name: str) -> str:
    """The setting (or ``serve`` flag) that would let this server run ``name``."""
    return (
        f"PATCHAUDIT_MODEL_ALLOWLIST={name} (or `patchaudit serve --allow-model {name}`; "
        "PATCHAUDIT_ALLOW_HUB_MODELS=true allows every hub model)"
    )


def check_model(name: str, settings: Settings) -> str:
    if name in settings.allowed_models:
        return name
    shown = name if len(name) <= 80 else name[:77] + "..."
    raise unprocessable(
        "model",
        f"model {shown!r} is not enabled on this server (GET /api/models lists the enabled "
        f"ones); the operator can enable it with {enable_hint(shown)}",
    )


@lru_cache(maxsize=8)
def _tokenizer(source: str, local_only: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        source, trust_remote_code=False, local_files_only=local_only
    )


HUB_PROBE_TIMEOUT_S = 3.0
_hub_seen: dict[str, tuple[float, bool]] = {}


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used now (HF_HUB_OFFLINE set, or no connection within
    a few seconds), else None. A failed probe is remembered for a minute."""
    import os
    import socket
    import threading
    import time
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    now = time.monotonic()
    seen = _hub_seen.get(host)
    if seen is not None and now - seen[0] < 60:
        return None if seen[1] else f"{host} could not be reached"
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo itself has no timeout
    t.start()
    t.join(HUB_PROBE_TIMEOUT_S)
    _hub_seen[host] = (now, bool(ok))
    return None if ok else f"{host} could not be reached within {HUB_PROBE_TIMEOUT_S:g} s"


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
    hub = model != "bundled" and not Path(model).is_dir()
    if hub:  # the local Hugging Face cache first: no network, no wait
        try:
            return _tokenizer(source, local_only=True)
        except Exception:
            reason = hub_offline_reason()
            if reason is not None:
                raise unprocessable(
                    "model",
                    f"the tokenizer of {model!r} is not on this machine and the Hugging Face hub "
                    f"is unavailable ({reason}): download the model once with network access "
                    "(it is cached), or use the bundled model",
                ) from None
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


def engine_defaults(settings: Settings) -> dict[str, Any]:
    """The engine's benchmark-chosen defaults (defaults.json) for the worker's device."""
    from patchaudit import defaults

    d = defaults.load()
    device = (settings.device or "cpu").split(":")[0]
    return {
        "hvp_probes": defaults.hvp_probes(device),
        "ig_steps": int(d["ig_steps"]),
        "mhvp_steps": int(d["mhvp_steps"]),
        "tau": defaults.tau(),
    }


def normalise(req: AnalysisRequest, settings: Settings) -> dict[str, Any]:
    """Validate against the limits and return the canonical request (what the job runs and
    what identifies a duplicate). Raises ApiError(422) with a message a person can act on."""
    model = check_model(req.model, settings)
    d = engine_defaults(settings)
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
        "hvp_probes": d["hvp_probes"] if req.hvp_probes is None else req.hvp_probes,
        "ig_steps": d["ig_steps"] if req.ig_steps is None else req.ig_steps,
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
                "task",
                f"choose a task ({task_names_text()}) or give your own 'pairs'",
            )
        if req.n_pairs > settings.max_pairs:
            raise unprocessable(
                "n_pairs", f"{req.n_pairs} is over the limit of {settings.max_pairs}"
            )
        out.update(task=req.task, corruption=req.corruption)
    if "hvp" in out["methods"]:
        if out["hvp_probes"] > settings.max_hvp_probes:
            raise unprocessable(
                "hvp_probes", f"{out['hvp_probes']} is over the limit of {settings.max_hvp_probes}"
            )
    else:
        out["hvp_probes"] = None
    if "ig" in out["methods"]:
        if out["ig_steps"] > settings.max_ig_steps:
            raise unprocessable(
                "ig_steps", f"{out['ig_steps']} is over the limit of {settings.max_ig_steps}"
            )
    else:
        out["ig_steps"] = None
    if out["site"] == "edges":
        _edge_methods(req, out)
    # the typed contract the worker reads back (service.contract.NormalisedRequest)
    return NormalisedRequest.model_validate(out).stored()


#: What an edge analysis computes: EAP ("atp"), EAP-IG ("ig"), the HVP-corrected edge ("hvp")
#: and edge patching ("ap"); the default is the edge screen, EAP + HVP-corrected.
EDGE_METHODS = ("atp", "ig", "hvp", "ap")
EDGE_DEFAULT_METHODS = ("atp", "hvp")


def _edge_methods(req: AnalysisRequest, out: dict[str, Any]) -> None:
    """Site edges: the methods an edge analysis has (the node defaults become the edge
    screen); a method asked for by name that edges lack is a 422."""
    if "methods" not in req.model_fields_set:
        out["methods"] = list(EDGE_DEFAULT_METHODS)
    bad = [m for m in out["methods"] if m not in EDGE_METHODS]
    if bad:
        raise unprocessable(
            "methods",
            f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not computed for edges: an edge "
            f"analysis takes {', '.join(EDGE_METHODS)} (EAP, EAP-IG, HVP-corrected, edge patching)",
        )
    # (the node defaults include hvp, so its probes are set; ig's steps only when asked for)
    if "ig" not in out["methods"]:
        out["ig_steps"] = None
    if "hvp" not in out["methods"]:
        out["hvp_probes"] = None


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
            f"pair {i + 1}: {'; '.join(problems)}{more}",  # numbered from 1, as on the page
            detail=[
                {"loc": ["body", "pairs", j], "msg": "; ".join(p), "type": "value_error"}
                for j, p in bad
            ],
        )
