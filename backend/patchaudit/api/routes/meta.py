"""/api/models, /api/tasks, /api/tokenize."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import SettingsDep, WriteAccess
from ..errors import ApiError
from ..schemas import ErrorResponse, ModelInfo, TaskInfo, TokenizeRequest, TokenizeResponse
from ..validation import check_model, enable_hint, tokenizer_for

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
