"""/api/models, /api/tasks, /api/tokenize."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import SettingsDep
from ..errors import ApiError
from ..schemas import ErrorResponse, ModelInfo, TaskInfo, TokenizeRequest, TokenizeResponse
from ..validation import check_model, tokenizer_for

router = APIRouter(prefix="/api", tags=["meta"])


@router.get("/models", response_model=list[ModelInfo], summary="Models this server offers")
def list_models(settings: SettingsDep) -> list[ModelInfo]:
    import patchaudit as pa

    allowed = settings.allowed_models
    out = [ModelInfo.model_validate(m) for m in pa.list_models() if m["name"] in allowed]
    known = {m.name for m in out}
    for name in settings.model_allowlist or []:
        if name not in known:
            out.append(ModelInfo(name=name, description="allowed by PATCHAUDIT_MODEL_ALLOWLIST"))
    return out


@router.get("/tasks", response_model=list[TaskInfo], summary="Built-in prompt-pair tasks")
def list_tasks() -> list[TaskInfo]:
    import patchaudit as pa

    return [TaskInfo.model_validate(t) for t in pa.list_tasks()]


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    responses={422: {"model": ErrorResponse}, 413: {"model": ErrorResponse}},
    summary="Tokens of each pair and what is wrong with it (before submitting)",
)
def tokenize(body: TokenizeRequest, settings: SettingsDep) -> TokenizeResponse:
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
