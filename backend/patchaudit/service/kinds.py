"""The job kinds: the one registry of what a job of each kind runs and what the stored analysis
becomes when it is cancelled, fails, or is lost with its worker.

Each ``JobKind`` declares
- ``function``: the import path of the worker function RQ runs (``patchaudit.worker.jobs``
  registers it through ``worker.jobs.job_kind``, whose one wrapper owns the error handling);
- ``params``: its enqueue arguments after ``analysis_id``, by name (jobs carry kwargs);
- ``cancelled`` / ``failed`` / ``lost`` / ``requeued`` / ``released``: the store writes for a
  cancelled job (queued or running), an error raised by the job, a job abandoned by its worker
  twice, a job abandoned once (RQ retries it), and the clean-up every job ends with.
- ``interactive``: a job a person waits for at the page (a click's verify, a drill-down, a
  "why", an edge check). Such jobs go to the interactive queue, which every worker serves in a
  lane of its own: they never wait behind analyses, fixes or circuits (docs/SERVICE.md, "The
  interactive lane"). A new kind opts in with ``interactive=True``.

The API reads it to enqueue and to cancel queued jobs; the worker to run jobs and in its failure
callback. Nothing here imports the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..store import AnalysisStore, JobStatus
from .contract import circuit_key, error_of

Args = Mapping[str, Any]
#: (store, analysis_id, the job's arguments by name)
StoreWrite = Callable[[AnalysisStore, str, Args], None]
#: (store, analysis_id, the job's arguments, the error {type, message, traceback})
ErrorWrite = Callable[[AnalysisStore, str, Args, dict[str, str]], None]

WORKER_LOST = {"type": "WorkerLost", "message": "the worker stopped; try again", "traceback": ""}


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class JobKind:
    name: str
    function: str
    params: tuple[str, ...] = ()
    cancelled: StoreWrite = _nothing
    failed: ErrorWrite = _nothing
    lost: ErrorWrite = _nothing
    requeued: StoreWrite = _nothing
    released: StoreWrite = _nothing
    lost_error: dict[str, str] = field(default_factory=lambda: dict(WORKER_LOST))
    #: served by the interactive lane (short jobs a person waits for; see the module doc)
    interactive: bool = False
    #: an interactive kind the lane serves before the other interactive ones (a click's value,
    #: which the page shows in the cell, goes ahead of drill-downs queued before it)
    first: bool = False

    def arguments(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The job's arguments by name (``analysis_id`` first), from its kwargs, or from the
        positions of a job enqueued positionally."""
        names = ("analysis_id", *self.params)
        if len(args) > len(names):
            raise TypeError(
                f"a {self.name} job takes {', '.join(names)}; got {len(args)} arguments"
            )
        out = dict(zip(names, args, strict=False))
        for k, v in (kwargs or {}).items():
            if k not in names:
                raise TypeError(f"a {self.name} job has no argument {k!r} ({', '.join(names)})")
            out[k] = v
        return out

    def of_job(self, job: Any) -> dict[str, Any]:
        """The arguments of an RQ job of this kind."""
        return self.arguments(tuple(job.args or ()), job.kwargs or {})


# -- analysis -------------------------------------------------------------------------------


def _analysis_requeued(store: AnalysisStore, aid: str, _: Args) -> None:
    store.update(
        aid, status=JobStatus.QUEUED, progress={"phase": "requeued", "fraction": 0.0, "passes": 0}
    )


ANALYSIS = JobKind(
    "analysis",
    "patchaudit.worker.jobs.run_analysis",
    cancelled=lambda store, aid, _: store.set_status(aid, JobStatus.CANCELLED),
    failed=lambda store, aid, _, err: store.set_error(aid, err),
    lost=lambda store, aid, _, err: store.set_error(aid, err),
    requeued=_analysis_requeued,
    lost_error={
        "type": "WorkerLost",
        "message": "the worker running this analysis stopped twice; submit it again",
        "traceback": "",
    },
)

# -- verify and fix: components pending until the job ends ----------------------------------


def _release_pending(store: AnalysisStore, aid: str, a: Args) -> None:
    store.remove_pending(aid, list(a.get("components") or []))


def _verify_failed(store: AnalysisStore, aid: str, a: Args, err: dict[str, str]) -> None:
    entry = {"kind": "verify", "components": list(a.get("components") or [])}
    store.append_verification(aid, {**entry, "error": error_of(err)})


VERIFY = JobKind(
    "verify",
    "patchaudit.worker.jobs.run_verify",
    ("components",),
    failed=_verify_failed,
    lost=_verify_failed,  # its pending cells end visibly failed, never silently dropped
    released=_release_pending,
    lost_error={
        "type": "WorkerLost",
        "message": "the worker verifying these components stopped twice; click them again",
        "traceback": "",
    },
    interactive=True,
    first=True,
)


def _fix_state(status: JobStatus, err: dict[str, str] | None = None) -> StoreWrite:
    def write(store: AnalysisStore, aid: str, _: Args) -> None:
        fix: dict[str, Any] = {"status": status.value, "components": []}
        if err is not None:
            fix["error"] = error_of(err)
        store.update(aid, fix=fix)

    return write


FIX = JobKind(
    "fix",
    "patchaudit.worker.jobs.run_fix",
    ("components",),
    cancelled=_fix_state(JobStatus.CANCELLED),
    failed=lambda store, aid, a, err: _fix_state(JobStatus.FAILED, err)(store, aid, a),
    lost=lambda store, aid, a, err: _fix_state(JobStatus.FAILED, err)(store, aid, a),
    released=_release_pending,
)

# -- circuit ----------------------------------------------------------------------------------


def circuit_entry(a: Args) -> tuple[str, dict[str, Any]]:
    """(key in result.circuits, the entry a new job starts from) of a circuit job."""
    absolute = bool(a.get("absolute", True))
    ranking = str(a.get("ranking"))
    entry = {"ranking": ranking, "absolute": absolute, "requested_sizes": a.get("sizes")}
    return circuit_key(ranking, absolute), entry


def _circuit_state(status: JobStatus) -> ErrorWrite:
    def write(store: AnalysisStore, aid: str, a: Args, err: dict[str, str] | None = None) -> None:
        key, entry = circuit_entry(a)
        entry = {**entry, **(store.get_circuit(aid, key) or {}), "status": status.value}
        if err is not None:
            entry["error"] = error_of(err)
        store.set_circuit(aid, key, entry)

    return write


CIRCUIT = JobKind(
    "circuit",
    "patchaudit.worker.jobs.run_circuit",
    ("ranking", "sizes", "absolute"),
    cancelled=_circuit_state(JobStatus.CANCELLED),  # type: ignore[arg-type]
    failed=_circuit_state(JobStatus.FAILED),
    lost=_circuit_state(JobStatus.FAILED),
)

# -- inspect ----------------------------------------------------------------------------------


def _inspect_failed(store: AnalysisStore, aid: str, a: Args, err: dict[str, str]) -> None:
    record = {"status": JobStatus.FAILED.value, "error": error_of(err)}
    store.set_component(aid, str(a["key"]), record)


def _drop_component(store: AnalysisStore, aid: str, a: Args, *_: Any) -> None:
    store.drop_component(aid, str(a["key"]))  # the next request queues it again


INSPECT = JobKind(
    "inspect",
    "patchaudit.worker.jobs.run_inspect",
    ("key",),
    cancelled=_drop_component,
    failed=_inspect_failed,
    lost=_inspect_failed,  # shown in the panel (the next request computes it again)
    lost_error={
        "type": "WorkerLost",
        "message": "the worker computing this detail stopped twice; open it again",
        "traceback": "",
    },
    interactive=True,
)

# -- why: the second-order term of a component (or of the flagged ones) split by operation ----


def why_key(key: str) -> str:
    """Where a "why" record is stored among the components: "why:L.C" or "why:flagged"."""
    return f"why:{key}"


def _why_failed(store: AnalysisStore, aid: str, a: Args, err: dict[str, str]) -> None:
    record = {"status": JobStatus.FAILED.value, "error": error_of(err)}
    store.set_component(aid, why_key(str(a["key"])), record)


def _drop_why(store: AnalysisStore, aid: str, a: Args, *_: Any) -> None:
    store.drop_component(aid, why_key(str(a["key"])))


WHY = JobKind(
    "why",
    "patchaudit.worker.jobs.run_why",
    ("key",),
    cancelled=_drop_why,
    failed=_why_failed,
    lost=_why_failed,
    lost_error={
        "type": "WorkerLost",
        "message": "the worker computing this diagnosis stopped twice; open it again",
        "traceback": "",
    },
    interactive=True,
)

#: Every job kind by name.
KINDS: dict[str, JobKind] = {k.name: k for k in (ANALYSIS, VERIFY, FIX, CIRCUIT, INSPECT, WHY)}

#: The failure callback every job carries (RQ calls it for a job abandoned by its worker).
ON_FAILURE = "patchaudit.worker.jobs.on_job_failure"


def interactive_kinds() -> list[str]:
    """The names of the kinds served by the interactive lane."""
    return [k.name for k in KINDS.values() if k.interactive]


def register(kind: JobKind) -> JobKind:
    """Add a job kind defined elsewhere (a module of another feature) to the registry."""
    KINDS[kind.name] = kind
    return kind


def kind_of(job: Any) -> JobKind | None:
    """The kind of an RQ job (from its meta), or None for a job that is not ours."""
    return KINDS.get(str((job.meta or {}).get("kind", "analysis")))
