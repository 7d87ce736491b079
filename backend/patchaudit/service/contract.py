"""The one typed contract between the API, Redis and the workers (pydantic).

The API builds the normalised request (``NormalisedRequest``) and stores it; the worker reads
it and writes the stored result (``AnalysisResult``, with ``FixInfo``, ``CircuitInfo``,
``ComponentRecord`` and ``Verification`` next to it); the API reads them back through
``result_view``. Every number goes through ``serial.json_safe`` (NaN / inf -> null) on the way
in. The JavaScript reads these names and no others.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..component_keys import component_key, key_order
from ..serial import json_safe
from ..store.status import JobStatus
from ..tasks import TASKS as _TASKS

Site = Literal["heads", "mlp", "resid", "q", "k", "v", "edges"]
Metric = Literal["logit_diff", "prob_diff", "logprob", "kl"]
Direction = Literal["noising", "denoising"]
Method = Literal[
    "ap", "atp", "hvp", "hvp_joint", "hvp_exact", "sat", "ig", "mhvp", "atp_star", "graddrop"
]
Task = Literal[_TASKS]  # type: ignore[valid-type]  # the task registry (patchaudit.tasks)

SITES: tuple[str, ...] = Site.__args__  # type: ignore[attr-defined]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]
DIRECTIONS: tuple[str, ...] = Direction.__args__  # type: ignore[attr-defined]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]
TASKS: tuple[str, ...] = _TASKS


class _Strict(BaseModel):
    # strict: "8" and true are not numbers; unknown fields are errors
    model_config = ConfigDict(extra="forbid", strict=True)


# -- the request ------------------------------------------------------------------------------


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


class NormalisedRequest(BaseModel):
    """The canonical request: what a job runs and (its canonical JSON) what identifies a
    duplicate. Built by ``api.validation.normalise``, stored with the analysis, read by the
    worker. Every field is always present (null where it does not apply)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    task: str | None = None
    n_pairs: int
    seed: int = 0
    pairs: list[PairIn] | None = None
    tokens: TokenPairsIn | None = None
    corruption: str | None = None
    site: Site
    metric: Metric
    direction: Direction
    methods: list[Method]
    hvp_probes: int | None = None
    ig_steps: int | None = None
    tau: float | None = None

    def stored(self) -> dict[str, Any]:
        """The stored (and hashed) form."""
        return self.model_dump(mode="json")


# -- the stored result ------------------------------------------------------------------------


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
    """Screen-Flag-Fix step 3: the fix against a full activation-patching sweep, like with like
    (the engine's ``FixResult`` names)."""

    model_config = ConfigDict(extra="allow")
    status: JobStatus = JobStatus.DONE
    components: list[str] = Field(default_factory=list)
    fix_forwards: int = Field(
        default=0, description="component forwards the fix spent (one per verified component)"
    )
    full_sweep_forwards: int = Field(
        default=0, description="what a full activation-patching sweep costs: one per component"
    )
    fix_batch_passes: int | None = Field(
        default=None, description="batched forward passes the fix ran"
    )
    full_sweep_batch_passes: int | None = Field(
        default=None, description="batched forward passes a full ap sweep runs (one per layer)"
    )
    fix_seconds: float | None = None
    full_sweep_seconds: float | None = Field(
        default=None, description="measured when ap ran with the analysis, else estimated"
    )
    full_sweep_seconds_estimated: bool | None = None
    backwards: int | None = None
    cache_hit: bool | None = None
    job_id: str | None = None
    error: ErrorInfo | None = None


Matrix = list[list[float | None]]
#: Edge analyses (site "edges"): one value per edge, in ``result.edges`` order.
Vector = list[float | None]


class CircuitInfo(BaseModel):
    """One ranking's circuit curve (``result.circuits[ranking]``; "hvp:signed" when signed)."""

    model_config = ConfigDict(extra="allow")
    status: JobStatus = JobStatus.QUEUED
    ranking: str = ""
    absolute: bool = True
    requested_sizes: list[int] | None = None
    sizes: list[int] | None = Field(default=None, description="circuit sizes k on the curve")
    fractions: list[float] | None = Field(default=None, description="k / number of components")
    faithfulness: list[float | None] | None = Field(default=None, description="f of the top k")
    cpr: float | None = Field(default=None, description="area under f (higher is better)")
    cmd: float | None = Field(default=None, description="area of |1 - f| (lower is better)")
    smallest_80: int | None = None
    smallest_90: int | None = None
    order: list[list[int]] | list[str] | None = Field(
        default=None,
        description="every component (every edge key, site edges), most important first: "
        "top k = first k",
    )
    m_all: float | None = None
    m_empty: float | None = None
    cache_hit: bool | None = None
    job_id: str | None = None
    error: ErrorInfo | None = None


class Screen(BaseModel):
    """What the screen (AtP + HVP) can say: not informative where the first-order term
    vanishes at the base point (KL noising; a saturated prob_diff / logprob noising)."""

    informative: bool = True
    first_order_vanishes: bool = False
    message: str = ""


class AnalysisResult(BaseModel):
    """Per-component numbers; matrices are [rows][cols] (layer x head for site heads). The
    worker stores it (``stored_result``), the API serves it with the verified values, the fix
    and the circuits added (``result_view``)."""

    model_config = ConfigDict(extra="allow")
    labels: Labels | None = Field(
        default=None, description="rows and columns of the map (none for site edges)"
    )
    edges: list[str] | None = Field(
        default=None,
        description='site edges: every edge "SENDER->RECEIVER" ("0.1->1.0.k", "emb->2.3.q", '
        '"1.2->logits", "m0->m1"); scores, reliability, flags ... are 1-D in this order',
    )
    scores: dict[str, Matrix | Vector]
    reliability: Matrix | Vector | None = None
    error_bound: Matrix | Vector | None = Field(default=None, description="null = unbounded")
    flags: list[list[bool]] | list[bool] | None = None
    material: list[list[bool]] | list[bool] | None = None
    verified: dict[str, float | None] = Field(
        default_factory=dict,
        description='"layer.head" (or an edge key) -> activation (edge) patching value',
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
    flag_reasons: list[list[list[str]]] | list[list[str]] | None = Field(
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
    cache_hit: bool | None = Field(default=None, description="the base pass came from the cache")
    runtime: dict[str, str] | None = Field(
        default=None, description="where and in what precision the worker ran the model"
    )


class Verification(BaseModel):
    """One verify (or fix) run: its components and cost, or its error."""

    model_config = ConfigDict(extra="allow")
    kind: str = "verify"
    components: list[str] = Field(default_factory=list)
    forwards: int | None = None
    backwards: int | None = None
    seconds: float | None = None
    cache_hit: bool | None = None
    error: ErrorInfo | None = None


class DiagnosisOut(BaseModel):
    """Why AtP is wrong (``pa.diagnose(...).to_dict()``): per component its second-order term q,
    the shares of q by operation ("L3.attn.softmax", "L4.ln1", "metric", ...), local against
    downstream, the remainder ap - A1 - q/2 and the saturation estimate; and the cost."""

    model_config = ConfigDict(extra="allow")
    components: list[dict[str, Any]]
    cost: dict[str, Any] = Field(default_factory=dict)


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


class ComponentRecord(BaseModel):
    """A component's stored state: queued / running (with its job), done (with the detail as
    ``pa.ComponentDetail.to_dict()`` wrote it) or failed."""

    status: JobStatus
    job_id: str | None = None
    detail: dict[str, Any] | None = None
    error: ErrorInfo | None = None

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# -- one path in, one path out ---------------------------------------------------------------


def stored(model: BaseModel) -> dict[str, Any]:
    """What goes to Redis: JSON-safe, without the fields left unset."""
    return json_safe(model.model_dump(mode="json", exclude_unset=True))


def stored_result(
    report: dict[str, Any],
    *,
    cache_hit: bool,
    pairs: list[dict[str, str]],
    runtime: dict[str, str],
) -> dict[str, Any]:
    """The stored result of an engine report (``Report.to_dict()``) run by a worker."""
    result = AnalysisResult.model_validate(
        {**report, "cache_hit": cache_hit, "pairs": pairs, "runtime": runtime}
    )
    return stored(result)


def result_view(
    result: dict[str, Any],
    verified: dict[str, float | None],
    fix: dict[str, Any] | None,
    circuits: dict[str, dict[str, Any]],
) -> AnalysisResult:
    """The result the API serves: the stored one with the values verified since, the fix and
    the circuit curves (each stored on its own) added."""
    merged = {**(result.get("verified") or {}), **verified}
    return AnalysisResult.model_validate(
        {
            **result,
            "verified": dict(sorted(merged.items(), key=lambda kv: key_order(kv[0]))),
            "fix": fix,
            "circuits": circuits,
        }
    )


def error_of(err: dict[str, Any]) -> dict[str, str]:
    """The part of an error record the API shows (type and message, never the traceback)."""
    return {"type": str(err.get("type", "Error")), "message": str(err.get("message", ""))}


def n_components(result: dict[str, Any]) -> int:
    """Components of a stored result's map (its edges for site edges)."""
    if result.get("edges") is not None:
        return len(result["edges"])
    labels = result.get("labels") or {}
    return len(labels.get("rows") or []) * len(labels.get("cols") or [])


def flagged_components(result: dict[str, Any], verified: Any) -> list[str]:
    """Flagged components of a stored result not verified yet, least reliable first."""
    flags = result.get("flags") or []
    rel = result.get("reliability") or []
    out = []
    edges = result.get("edges")
    if edges is not None:  # 1-D over the edges
        for e, f, r in zip(edges, flags, rel or [None] * len(edges), strict=False):
            if f and e not in verified:
                out.append((1.0 if r is None else float(r), e))
        return [k for _, k in sorted(out, key=lambda t: (t[0], key_order(t[1])))]
    for i, row in enumerate(flags):
        for j, f in enumerate(row):
            k = component_key((i, j))
            if f and k not in verified:
                r = rel[i][j] if i < len(rel) and j < len(rel[i]) else None
                out.append((1.0 if r is None else float(r), k))
    return [k for _, k in sorted(out)]


def circuit_key(ranking: str, absolute: bool = True) -> str:
    """Where a curve is stored in ``result.circuits``: the ranking ("hvp"), or "hvp:signed"."""
    return ranking if absolute else f"{ranking}:signed"


# -- notes on components (issue 20) -------------------------------------------------------------

#: Longest label (shown on the map cell) and note text, in characters.
NOTE_LABEL_MAX = 40
NOTE_TEXT_MAX = 2000


class NoteIn(_Strict):
    """``PUT /api/analyses/{id}/notes/{key}``: a short label (on the map) and a note (in the
    component panel)."""

    label: str = Field(min_length=1, max_length=NOTE_LABEL_MAX, description="e.g. 'name mover'")
    text: str = Field(default="", max_length=NOTE_TEXT_MAX)


class Note(BaseModel):
    """A stored note (``Analysis.notes["L.C"]``); ``key`` is the component's API key."""

    key: str
    label: str
    text: str = ""
    author: str
    created_at: float
    updated_at: float
