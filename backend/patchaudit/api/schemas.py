"""Pydantic models of the REST contract (requests and responses).

The vocabularies (sites, metrics, methods, directions, tasks) mirror the engine's constants;
tests/integration checks they agree with ``patchaudit.SITES`` etc.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..store.status import JobStatus

Site = Literal["heads", "mlp", "resid"]
Metric = Literal["logit_diff", "prob_diff", "logprob", "kl"]
Direction = Literal["noising", "denoising"]
Method = Literal["ap", "atp", "hvp", "hvp_joint", "hvp_exact", "ig", "mhvp"]
Task = Literal["ioi", "induction", "greater_than"]

SITES: tuple[str, ...] = Site.__args__  # type: ignore[attr-defined]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]
DIRECTIONS: tuple[str, ...] = Direction.__args__  # type: ignore[attr-defined]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]
TASKS: tuple[str, ...] = Task.__args__  # type: ignore[attr-defined]


def _default_methods() -> list[Method]:
    return ["atp", "hvp"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests --------------------------------------------------------------------------------


class PairIn(_Strict):
    """One prompt pair as text. ``answer`` and ``wrong`` are single tokens (often with a
    leading space, e.g. " Mary")."""

    clean: str = Field(
        min_length=1, examples=["When Mary and John went to the store, John gave a drink to"]
    )
    corrupted: str = Field(
        min_length=1, examples=["When Alice and Bob went to the store, Bob gave a drink to"]
    )
    answer: str = Field(min_length=1, examples=[" Mary"])
    wrong: str = Field(min_length=1, examples=[" John"])


class TokenPairsIn(_Strict):
    """Pairs as token ids (models without a tokenizer, exact control)."""

    clean: list[list[int]] = Field(min_length=1)
    corrupted: list[list[int]] = Field(min_length=1)
    answer: list[int] = Field(min_length=1)
    wrong: list[int] = Field(min_length=1)


class AnalysisRequest(_Strict):
    """What to audit. Give a built-in ``task`` (with ``n_pairs`` and ``seed``), or your own
    ``pairs`` (text) or ``tokens``."""

    model: str = Field(default="bundled", min_length=1, examples=["bundled"])
    task: Task | None = Field(default=None, examples=["ioi"])
    n_pairs: int = Field(default=16, ge=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    pairs: list[PairIn] | None = None
    tokens: TokenPairsIn | None = None
    corruption: str | None = Field(
        default=None, description="Task corruption, e.g. ioi: abc | swap"
    )
    site: Site = "heads"
    metric: Metric = "logit_diff"
    direction: Direction = "noising"
    methods: list[Method] = Field(default_factory=lambda: _default_methods(), min_length=1)
    hvp_probes: int | None = Field(default=8, ge=1)
    ig_steps: int | None = Field(default=16, ge=1)
    tau: float | None = Field(default=None, ge=0.0, le=1.0)


class VerifyRequest(_Strict):
    """Components to verify with activation patching: ``[[layer, head], ...]``."""

    components: list[list[int]] = Field(min_length=1, examples=[[[0, 1], [1, 0]]])


class TokenizeRequest(_Strict):
    model: str = Field(default="bundled", min_length=1)
    pairs: list[PairIn] = Field(min_length=1)


# -- responses -------------------------------------------------------------------------------


class Progress(BaseModel):
    phase: str = "queued"
    fraction: float = 0.0
    passes: int = 0


class ErrorInfo(BaseModel):
    """A failed job: the exception type and a one-line message (never a traceback)."""

    type: str
    message: str


class Labels(BaseModel):
    model_config = ConfigDict(extra="allow")
    rows: list[Any]
    cols: list[Any]
    row_name: str = "layer"
    col_name: str = "head"


class FixInfo(BaseModel):
    """Screen-Flag-Fix step 3: patched forwards spent vs a full activation-patching sweep."""

    model_config = ConfigDict(extra="allow")
    status: JobStatus = JobStatus.DONE
    forwards: int = Field(
        default=0, description="patched component-forwards spent (one per verified component)"
    )
    full_sweep_forwards: int = Field(
        default=0, description="what a full activation-patching sweep costs: one per component"
    )
    passes: int | None = Field(default=None, description="batched forward passes actually run")
    full_sweep_passes: int | None = Field(
        default=None, description="batched passes of a full sweep (one per layer)"
    )
    components: list[str] = Field(default_factory=list)
    error: ErrorInfo | None = None


Matrix = list[list[float | None]]


class AnalysisResult(BaseModel):
    """Per-component numbers; matrices are [rows][cols] (layer x head for site heads)."""

    model_config = ConfigDict(extra="allow")
    labels: Labels
    scores: dict[str, Matrix]
    reliability: Matrix | None = None
    error_bound: Matrix | None = Field(default=None, description="null = unbounded")
    flags: list[list[bool]] | None = None
    material: list[list[bool]] | None = None
    verified: dict[str, float | None] = Field(
        default_factory=dict, description='"layer.head" -> activation-patching value'
    )
    cost: dict[str, dict[str, float]] = Field(default_factory=dict)
    fix: FixInfo | None = None
    pairs: list[dict[str, str]] | None = Field(
        default=None, description="the prompts the analysis ran on (task sets are generated)"
    )


class Verification(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str = "verify"
    components: list[str] = Field(default_factory=list)
    forwards: int | None = None
    backwards: int | None = None
    seconds: float | None = None
    cache_hit: bool | None = None
    error: ErrorInfo | None = None


class Analysis(BaseModel):
    id: str
    status: JobStatus
    url: str
    progress: Progress
    request: dict[str, Any]
    result: AnalysisResult | None = None
    error: ErrorInfo | None = None
    pending: list[str] = Field(default_factory=list, description='"layer.head" being verified')
    verifications: list[Verification] = Field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0


class Accepted(BaseModel):
    """202: the analysis (new, or the existing one for the same request)."""

    id: str
    status: JobStatus
    url: str
    existing: bool = Field(default=False, description="the same request was submitted before")


class VerifyAccepted(BaseModel):
    id: str
    status: JobStatus
    url: str
    components: list[str] = Field(description="components queued for verification")
    pending: list[str] = Field(description="every component of this analysis being verified")
    job_id: str | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    n_layers: int | None = None
    n_heads: int | None = None
    bundled: bool = False


class TaskExample(BaseModel):
    model_config = ConfigDict(extra="allow")
    clean: str = ""
    corrupted: str = ""
    answer: str = ""
    wrong: str = ""


class TaskInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    corruptions: list[str] = Field(default_factory=list)
    example: TaskExample | None = None


class TokenizedPair(BaseModel):
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    answer_tokens: list[str]
    wrong_tokens: list[str]
    problems: list[str]


class TokenizeResponse(BaseModel):
    pairs: list[TokenizedPair]
    ok: bool = Field(description="no pair has a problem")


class CacheStats(BaseModel):
    model_config = ConfigDict(extra="allow")
    entries: int = 0
    bytes: int = 0
    budget: int = 0


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    redis: bool
    workers: int
    queued: int = 0
    cache: CacheStats | None = None
    auth_required: bool = False  # writes need the team token (reads by link stay open)
    message: str = ""


class ErrorResponse(BaseModel):
    """Every error answer: a status-specific ``detail`` and a sentence a person can act on."""

    detail: Any
    message: str
