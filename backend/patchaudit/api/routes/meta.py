"""/api/models, /api/models/{name}/vocab, /api/tasks, /api/tokenize, /api/config,
/api/whoami, /api/pairs/parse."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from ..deps import SettingsDep, WriteAccess, check_token, presented_token
from ..errors import ApiError
from ..schemas import (
    ErrorResponse,
    ModelInfo,
    PairsParsed,
    PairsParseRequest,
    ServerConfig,
    TaskInfo,
    TokenizeRequest,
    TokenizeResponse,
    Vocab,
    WhoAmI,
)
from ..validation import check_model, enable_hint, engine_defaults, tokenizer_for, unprocessable

router = APIRouter(prefix="/api", tags=["meta"])


@router.get("/models", response_model=list[ModelInfo], summary="Models this server offers")
def list_models(settings: SettingsDep) -> list[ModelInfo]:
    """The enabled models first (bundled, then what the operator named); then the featured hub
    models this server does not run, with ``enabled: false`` and the setting that enables them."""
    import patchaudit as pa

    featured = {m["name"]: m for m in pa.list_models()}
    allowed = settings.allowed_models
    out = [
        ModelInfo.model_validate(
            featured.get(name)
            or {"name": name, "description": "enabled by the operator (PATCHAUDIT_MODEL_ALLOWLIST)"}
        )
        for name in settings.named_models
    ]
    named = set(settings.named_models)
    for name, m in featured.items():
        if name in named:
            continue
        if name in allowed:
            out.append(ModelInfo.model_validate(m))
        else:
            out.append(
                ModelInfo.model_validate({**m, "enabled": False, "enable_with": enable_hint(name)})
            )
    return out


@router.get("/tasks", response_model=list[TaskInfo], summary="Built-in prompt-pair tasks")
def list_tasks() -> list[TaskInfo]:
    import patchaudit as pa

    return [TaskInfo.model_validate(t) for t in pa.list_tasks()]


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    responses={
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    },
    summary="Tokens of each pair and what is wrong with it (before submitting)",
)
def tokenize(body: TokenizeRequest, _: WriteAccess, settings: SettingsDep) -> TokenizeResponse:
    import patchaudit as pa

    model = check_model(body.model, settings)
    if len(body.pairs) > settings.max_pairs:
        raise ApiError(
            422, f"pairs: {len(body.pairs)} pairs is over the limit of {settings.max_pairs}"
        )
    tok = tokenizer_for(model)
    checked = pa.check_pairs(
        tok,
        [p.clean for p in body.pairs],
        [p.corrupted for p in body.pairs],
        [p.answer for p in body.pairs],
        [p.wrong for p in body.pairs],
        max_tokens=settings.max_tokens,
    )
    return TokenizeResponse.model_validate(
        {"pairs": checked, "ok": not any(c["problems"] for c in checked)}
    )


@router.get(
    "/models/{name:path}/vocab",
    response_model=Vocab,
    responses={422: {"model": ErrorResponse}},
    summary="The words of a word-level vocabulary (such as the bundled model's)",
)
def vocab(name: str, settings: SettingsDep) -> Vocab:
    from patchaudit.tasks.pairs import word_vocab

    model = check_model(name, settings)
    words = word_vocab(tokenizer_for(model))
    if words is None:
        raise unprocessable(
            "model",
            f"{model} has a subword vocabulary, not a word list: any text is split into known "
            "pieces; check prompts with POST /api/tokenize",
        )
    return Vocab(model=model, size=len(words), words=words)


@router.get("/config", response_model=ServerConfig, summary="Engine defaults and server limits")
def config(settings: SettingsDep) -> ServerConfig:
    d = engine_defaults(settings)
    return ServerConfig.model_validate(
        {
            "defaults": {**d, "n_pairs": 16},
            "limits": {
                "max_pairs": settings.max_pairs,
                "max_ig_steps": settings.max_ig_steps,
                "max_hvp_probes": settings.max_hvp_probes,
                "max_prompt_tokens": settings.max_tokens,
                "max_prompt_chars": settings.max_prompt_chars,
                "max_verify_components": settings.max_verify_components,
                "max_body_bytes": settings.max_body_bytes,
            },
            "auth_required": settings.auth_required,
        }
    )


@router.get(
    "/whoami",
    response_model=WhoAmI,
    responses={401: {"model": ErrorResponse, "description": "API token missing or wrong"}},
    summary="Whether the sent API token is right (200) or wrong / missing (401)",
)
def whoami(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> WhoAmI:
    member = check_token(settings, presented_token(authorization, x_api_token))
    return WhoAmI(auth_required=settings.auth_required, token_ok=True, member=member)


@router.post(
    "/pairs/parse",
    response_model=PairsParsed,
    responses={422: {"model": ErrorResponse}},
    summary="Read pasted pairs (TSV, CSV or JSON lines) into clean, corrupted, answer, wrong",
)
def parse_pairs(body: PairsParseRequest, settings: SettingsDep) -> PairsParsed:
    from patchaudit.tasks.pairs import PairsParseError
    from patchaudit.tasks.pairs import parse_pairs as parse

    try:
        pairs, fmt = parse(body.text, body.format)
    except PairsParseError as e:
        raise ApiError(
            422,
            f"pairs: {e}",
            detail=[
                {"loc": ["body", "text"], "line": e.line, "msg": str(e), "type": "value_error"}
            ],
        ) from None
    if len(pairs) > settings.max_pairs:
        raise unprocessable("text", f"{len(pairs)} pairs is over the limit of {settings.max_pairs}")
    return PairsParsed.model_validate({"pairs": pairs, "format": fmt})
