"""Pydantic models of the REST contract (requests and responses).

What the worker stores and the API serves (the result, the fix, circuits, component details)
is ``service.contract``, re-exported here. The vocabularies mirror the engine's constants;
tests/integration checks they agree with ``patchaudit.SITES`` etc.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..service.contract import (
    DIRECTIONS,
    METHODS,
    METRICS,
    SITES,
    TASKS,
    AnalysisResult,
    CircuitInfo,
    ComponentDetailOut,
    DiagnosisOut,
    Direction,
    ErrorInfo,
    FixInfo,
    Labels,
    Matrix,
    Method,
    Metric,
    Note,
    NoteIn,
    PairIn,
    Screen,
    Site,
    Task,
    TokenPairsIn,
    Verification,
    _Strict,
)
from ..store.status import JobStatus

__all__ = [
    "DIRECTIONS",
    "METHODS",
    "METRICS",
    "SITES",
    "TASKS",
    "AnalysisResult",
    "CircuitInfo",
    "ComponentDetailOut",
    "DiagnosisOut",
    "Direction",
    "ErrorInfo",
    "FixInfo",
    "Labels",
    "Matrix",
    "Metric",
    "Note",
    "NoteIn",
    "PairIn",
    "Screen",
    "Site",
    "Task",
    "TokenPairsIn",
    "Verification",
]


def _default_methods() -> list[Method]:
    return ["atp", "hvp", "sat"]


#: Longest model name (or local directory) a request may carry; longer ones are not echoed back.
MAX_MODEL_NAME = 256

#: Longest corruption name a request may carry (the tasks' names are a few characters).
MAX_CORRUPTION = 64


# -- requests --------------------------------------------------------------------------------


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
        default=None,
        max_length=MAX_CORRUPTION,
        description="Task corruption, e.g. ioi: abc | swap",
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
    """Components to verify with activation patching: ``[[layer, head], ...]`` (or their keys
    "L.H"); for an edge analysis, edge keys ``["0.1->1.0.k", ...]`` (edge patching)."""

    components: list[list[int] | str] = Field(
        min_length=1, max_length=10_000, examples=[[[0, 1], [1, 0]], ["0.1->1.0.k"]]
    )


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
    passes_total: int | None = Field(
        default=None, description="estimated passes in all (passes / fraction so far)"
    )
    eta_s: float | None = Field(default=None, description="estimated seconds left")
    elapsed_s: float | None = None


class JobState(BaseModel):
    """One job of an analysis not finished yet (analysis, verify, fix, circuit, inspect, ...)."""

    id: str
    kind: str
    status: str = Field(
        description="queued, running, retrying (its worker stopped: it runs once more), "
        "or worker_lost (its worker stopped and it will not run again)"
    )
    interactive: bool = False
    phase: str = "queued"
    fraction: float = 0.0
    passes: int = 0
    passes_total: int | None = None
    eta_s: float | None = None
    attempt: int = 1
    what: str = Field(default="", description="what it works on: components, key, ranking")


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
    owner: str | None = Field(
        default=None, description="the member who created it (null: made before members)"
    )
    notes: dict[str, Note] = Field(
        default_factory=dict, description='"L.C" (as in verified) -> the note on that component'
    )
    jobs: list[JobState] = Field(
        default_factory=list, description="its jobs not finished yet, with their state"
    )
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
    member: str | None = Field(
        default=None, description='the member this token names ("local" on a token-less server)'
    )


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
    owner: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class AnalysisList(BaseModel):
    items: list[AnalysisSummary]
    total: int
    page: int
    per_page: int
    pages: int
    scope: Literal["team", "mine"] = "team"
    member: str | None = Field(default=None, description="who asked (the 'mine' in scope)")


class NoteList(BaseModel):
    notes: dict[str, Note]
