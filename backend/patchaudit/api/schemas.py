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
Method = Literal["ap", "atp", "hvp", "hvp_joint", "hvp_exact", "sat", "ig", "mhvp"]
Task = Literal["ioi", "induction", "greater_than", "planted"]

SITES: tuple[str, ...] = Site.__args__  # type: ignore[attr-defined]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]
DIRECTIONS: tuple[str, ...] = Direction.__args__  # type: ignore[attr-defined]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]
TASKS: tuple[str, ...] = Task.__args__  # type: ignore[attr-defined]


def _default_methods() -> list[Method]:
    return ["atp", "hvp", "sat"]


#: Longest model name (or local directory) a request may carry; longer ones are not echoed back.
MAX_MODEL_NAME = 256


class _Strict(BaseModel):
    # strict: "8" and true are not numbers; unknown fields are errors
    model_config = ConfigDict(extra="forbid", strict=True)


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

    model: str = Field(
        default="bundled", min_length=1, max_length=MAX_MODEL_NAME, examples=["bundled"]
    )
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
    hvp_probes: int | None = Field(
        default=None,
        ge=1,
        description="HVP probes; default: the engine's benchmark-chosen value (GET /api/config)",
    )
    ig_steps: int | None = Field(
        default=None, ge=1, description="IG steps; default: the engine's (GET /api/config)"
    )
    tau: float | None = Field(default=None, ge=0.0, le=1.0)


class VerifyRequest(_Strict):
    """Components to verify with activation patching: ``[[layer, head], ...]``."""

    components: list[list[int]] = Field(min_length=1, examples=[[[0, 1], [1, 0]]])


class CircuitRequest(_Strict):
    """A circuit curve: rank the components by one method's scores (any the analysis has),
    keep the top k for each size, measure faithfulness (METHODS.md, Circuits)."""

    ranking: Method = Field(examples=["hvp"], description="the method whose scores rank")
    sizes: list[int] | None = Field(
        default=None,
        max_length=256,
        examples=[[1, 2, 4, 8]],
        description="circuit sizes (numbers of components); default: every k for maps of at "
        "most 64 components, MIB's 0.1 .. 100 % otherwise; 0 and all are always included",
    )
    absolute: bool = Field(default=True, description="rank by |score| (else signed)")


class PairsParseRequest(_Strict):
    """Pasted or uploaded pairs: TSV, CSV or JSON lines (clean, corrupted, answer, wrong)."""

    text: str = Field(examples=["clean\tcorrupted\tanswer\twrong\nWhen Mary and John ..."])
    format: Literal["auto", "tsv", "csv", "jsonl"] = "auto"


class TokenizeRequest(_Strict):
    model: str = Field(default="bundled", min_length=1, max_length=MAX_MODEL_NAME)
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
    fix_forwards: int | None = Field(
        default=None, description="component forwards the fix spent (one per verified component)"
    )
    fix_batch_passes: int | None = Field(
        default=None, description="batched forward passes the fix ran"
    )
    full_sweep_batch_passes: int | None = Field(
        default=None, description="batched forward passes a full ap sweep runs"
    )
    fix_seconds: float | None = None
    full_sweep_seconds: float | None = Field(
        default=None, description="measured when ap ran with the analysis, else estimated"
    )
    full_sweep_seconds_estimated: bool | None = None
    components: list[str] = Field(default_factory=list)
    error: ErrorInfo | None = None


Matrix = list[list[float | None]]


class CircuitInfo(BaseModel):
    """One ranking's circuit curve (``result.circuits[ranking]``; "hvp:signed" when signed)."""

    model_config = ConfigDict(extra="allow")
    status: JobStatus = JobStatus.QUEUED
    ranking: str = ""
    absolute: bool = True
    sizes: list[int] | None = Field(default=None, description="circuit sizes k on the curve")
    fractions: list[float] | None = Field(default=None, description="k / number of components")
    faithfulness: list[float | None] | None = Field(default=None, description="f of the top k")
    cpr: float | None = Field(default=None, description="area under f (higher is better)")
    cmd: float | None = Field(default=None, description="area of |1 - f| (lower is better)")
    smallest_80: int | None = None
    smallest_90: int | None = None
    order: list[list[int]] | None = Field(
        default=None, description="every component, most important first: top k = first k"
    )
    m_all: float | None = None
    m_empty: float | None = None
    job_id: str | None = None
    error: ErrorInfo | None = None


class Screen(BaseModel):
    """What the screen (AtP + HVP) can say: not informative where the first-order term
    vanishes at the base point (KL noising; a saturated prob_diff / logprob noising)."""

    informative: bool = True
    first_order_vanishes: bool = False
    message: str = ""


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
    cost: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per method: forward, backward, seconds, cached (served from the activation "
        "cache), note (what the counts mean)",
    )
    fix: FixInfo | None = None
    circuits: dict[str, CircuitInfo] = Field(
        default_factory=dict, description="circuit curves by ranking (POST .../circuit)"
    )
    screen: Screen | None = None
    flag_reasons: list[list[list[str]]] | None = Field(
        default=None,
        description="per component, why it is flagged: reliability, sign, cutoff, unbounded, "
        "atp_error (empty when not flagged)",
    )
    material_threshold: float | None = Field(
        default=None, description="1% of |m(clean) - m(corrupted)|: the materiality line"
    )
    partial: bool = Field(
        default=False, description="a cancelled analysis: only the methods that completed"
    )
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


class CircuitAccepted(BaseModel):
    id: str
    url: str
    key: str = Field(description="where the curve appears: result.circuits[key]")
    circuit: CircuitInfo
    job_id: str | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    n_layers: int | None = None
    n_heads: int | None = None
    bundled: bool = False
    enabled: bool = Field(
        default=True, description="False: this server refuses it until the operator enables it"
    )
    enable_with: str | None = Field(
        default=None, description="For a disabled model: the setting (or flag) that enables it"
    )


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


class ConfigDefaults(BaseModel):
    hvp_probes: int
    ig_steps: int
    mhvp_steps: int
    tau: float
    n_pairs: int


class ConfigLimits(BaseModel):
    model_config = ConfigDict(extra="allow")
    max_pairs: int
    max_ig_steps: int
    max_hvp_probes: int
    max_prompt_tokens: int | None = None
    max_prompt_chars: int
    max_verify_components: int
    max_body_bytes: int


class ServerConfig(BaseModel):
    """The engine's defaults and the limits this server enforces (the form reads both)."""

    defaults: ConfigDefaults
    limits: ConfigLimits
    auth_required: bool


class WhoAmI(BaseModel):
    auth_required: bool
    token_ok: bool


class PairsParsed(BaseModel):
    pairs: list[PairIn]
    format: Literal["tsv", "csv", "jsonl"]


class Vocab(BaseModel):
    model: str
    size: int
    words: list[str]


class ErrorResponse(BaseModel):
    """Every error answer: a status-specific ``detail`` and a sentence a person can act on."""

    detail: Any
    message: str


# -- exploration (issue 11) --------------------------------------------------------------------


class ComponentDetailOut(BaseModel):
    """One component in detail (``pa.ComponentDetail.to_dict()``): per-pair values (mean = the
    map's value), per-position rows (first order: they sum to the per-pair value) and, for a
    head, its attention pattern on the clean and the corrupted prompts."""

    model_config = ConfigDict(extra="allow")
    site: Site
    component: list[int]
    key: str = Field(description='"L.H" (heads), "L" (mlp), "L.P" (resid)')
    name: str
    metric: str
    direction: str
    methods: list[str]
    n_pairs: int
    n_pos: int
    tokens: dict[str, Any] = Field(description="clean / corrupted token strings, last_pos")
    per_pair: dict[str, list[float | None]] = Field(
        description='method -> [pairs], + "reliability", + "ap" when verified'
    )
    per_position: dict[str, list[list[float | None]]] = Field(
        description="method -> [pairs][positions]"
    )
    q: dict[str, list[float | None]] = Field(default_factory=dict)
    attention: dict[str, list[list[list[float | None]]]] | None = Field(
        default=None, description='heads: "clean" / "corrupted" -> [pairs][query][key]'
    )
    map_value: dict[str, float | None] = Field(default_factory=dict)
    verified: float | None = None
    reliability_source: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    cost: dict[str, Any] = Field(default_factory=dict)


class ComponentPending(BaseModel):
    """202: the component is being computed by a worker; ask again (Retry-After)."""

    id: str
    key: str
    status: JobStatus
    job_id: str | None = None
    retry_after_s: float = 1.0


class AnalysisSummary(BaseModel):
    id: str
    url: str
    status: JobStatus
    model: str | None = None
    task: str | None = Field(default=None, description='a task name, or "custom" for own pairs')
    site: str | None = None
    metric: str | None = None
    direction: str | None = None
    n_pairs: int | None = None
    methods: list[str] = Field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0


class AnalysisList(BaseModel):
    items: list[AnalysisSummary]
    total: int
    page: int
    per_page: int
    pages: int
