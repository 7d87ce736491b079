"""/api/analyses: submit, read, verify, fix, cancel, export."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from ...component_keys import (
    EDGE_FORM,
    KEY_FORMS,
    component_key,
    is_node_key,
    key_order,
    parse_component_key,
    parse_edge_key,
)
from ...models import fingerprint
from ...service.contract import (
    CircuitInfo,
    FixInfo,
    circuit_key,
    error_of,
    flagged_components,
    n_components,
    result_view,
    stored,
)
from ...service.kinds import kind_of, why_key
from ...store import JobStatus
from ...store.results import Analysis as StoredAnalysis
from ...worker.admission import estimate_cost
from ...worker.queue import enqueue, job_states, new_job_id
from ..deps import (
    GateDep,
    ListAccess,
    QueueDep,
    RedisDep,
    SettingsDep,
    StoreDep,
    WriteAccess,
    require_owner,
    require_write_token,
)
from ..errors import ApiError
from ..schemas import (
    Accepted,
    Analysis,
    AnalysisList,
    AnalysisRequest,
    AnalysisSummary,
    CircuitAccepted,
    CircuitRequest,
    ComponentDetailOut,
    ComponentPending,
    DiagnosisOut,
    ErrorResponse,
    JobState,
    VerifyAccepted,
    VerifyRequest,
)
from ..validation import normalise, unprocessable

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/analyses", tags=["analyses"])

_ID = re.compile(r"^[0-9a-f]{32}$")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed request (e.g. not UTF-8 JSON)"},
    401: {"model": ErrorResponse, "description": "API token missing or wrong"},
    403: {"model": ErrorResponse, "description": "only the owner (or the note's author) may"},
    404: {"model": ErrorResponse, "description": "no analysis with this id"},
    409: {"model": ErrorResponse, "description": "the analysis is not in a state that allows this"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request (the message says what to fix)"},
    429: {
        "model": ErrorResponse,
        "description": "too much queued work (per client or in all): retry after Retry-After s",
    },
}


#: Highest page number of the list (offsets stay inside the store's 64-bit integers).
MAX_PAGE = 1_000_000


def page_url(analysis_id: str) -> str:
    return f"/a/{analysis_id}"


def load(store: Any, analysis_id: str) -> StoredAnalysis:
    rec = store.get(analysis_id) if _ID.match(analysis_id) else None
    if rec is None:
        raise ApiError(404, f"no analysis {analysis_id!r}: check the link")
    return rec


def to_schema(rec: StoredAnalysis) -> Analysis:
    result = None
    if rec.result is not None:
        result = result_view(rec.result, rec.verified, rec.fix, rec.circuits)
    error = error_of(rec.error) if rec.error else None
    progress = dict(rec.progress or {})
    return Analysis.model_validate(
        {
            "id": rec.id,
            "status": rec.status,
            "url": page_url(rec.id),
            "progress": {
                **{k: progress.get(k) for k in ("passes_total", "eta_s", "elapsed_s")},
                "phase": progress.get("phase", rec.status.value),
                "fraction": progress.get("fraction", 0.0),
                "passes": progress.get("passes", 0),
            },
            "request": rec.request,
            "result": result,
            "error": error,
            "pending": rec.pending,
            "verifications": rec.verifications,
            "owner": rec.owner,
            "notes": rec.notes,
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }
    )


@router.post(
    "",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
    summary="Submit an analysis (the same request returns the existing one)",
)
def create_analysis(
    body: AnalysisRequest,
    response: Response,
    member: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    gate: GateDep,
) -> Accepted:
    request = normalise(body, settings)
    with gate.admit(estimate_cost(request)) as record:
        analysis_id, existed = store.create_or_get(
            request, fingerprint(request["model"]), owner=member
        )
        if not existed:
            try:
                job_id = enqueue(
                    queue,
                    store,
                    "analysis",
                    analysis_id,
                    job_timeout_s=settings.job_timeout_s,
                )
                store.update(analysis_id, job_id=job_id)
            except Exception as e:
                store.set_error(
                    analysis_id,
                    {
                        "type": type(e).__name__,
                        "message": "could not queue the job",
                        "traceback": "",
                    },
                )
                raise
            record(job_id)
    status = store.status(analysis_id) or JobStatus.QUEUED
    response.headers["Location"] = f"/api/analyses/{analysis_id}"
    return Accepted(id=analysis_id, status=status, url=page_url(analysis_id), existing=existed)


@router.get(
    "",
    response_model=AnalysisList,
    responses={
        401: ERRORS[401],
        403: {"model": ErrorResponse, "description": "no token set and not on loopback"},
    },
    summary="The server's analyses, newest first (API-token holders; everyone on a "
    "token-less loopback server)",
)
def list_analyses(
    member: ListAccess,
    store: StoreDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
    scope: Annotated[
        Literal["team", "mine"],
        Query(description="team: everyone's analyses; mine: those the caller owns"),
    ] = "team",
) -> AnalysisList:
    owner = member if scope == "mine" else None
    total = store.count(owner)
    items = []
    for row in store.list_summaries((page - 1) * per_page, per_page, owner):
        req = row["request"]
        custom = req.get("pairs") or req.get("tokens")
        items.append(
            AnalysisSummary(
                id=row["id"],
                url=page_url(row["id"]),
                status=row["status"],
                model=req.get("model"),
                task=req.get("task") or ("custom" if custom else None),
                site=req.get("site"),
                metric=req.get("metric"),
                direction=req.get("direction"),
                n_pairs=req.get("n_pairs"),
                methods=list(req.get("methods") or []),
                owner=row.get("owner"),
                created_at=row["created_at"],
                updated_at=row["updated_at"],
            )
        )
    pages = max(1, -(-total // per_page))
    return AnalysisList(
        items=items,
        total=total,
        page=page,
        per_page=per_page,
        pages=pages,
        scope=scope,
        member=member,
    )


@router.get(
    "/{analysis_id}",
    response_model=Analysis,
    responses={404: ERRORS[404]},
    summary="Status, progress and result of an analysis",
)
def get_analysis(analysis_id: str, store: StoreDep, queue: QueueDep) -> Analysis:
    rec = load(store, analysis_id)
    jobs = job_states(queue.connection, store, analysis_id)
    lost = any(j["id"] == rec.job_id and j["status"] in ("retrying", "worker_lost") for j in jobs)
    if (
        rec.status == JobStatus.RUNNING
        and rec.job_id
        and (lost or not worker_alive(queue, rec.job_id))
    ):
        # its worker stopped heart-beating: say so now, not when the retry starts
        rec.progress = {**(rec.progress or {}), "phase": "worker_lost", "fraction": 0.0}
    out = to_schema(rec)
    out.jobs = [JobState.model_validate(j) for j in jobs]
    return out


def worker_alive(queue: Any, job_id: str) -> bool:
    """Whether a worker still heart-beats ``job_id`` (its execution in RQ's started registry
    has not expired). A job not started yet counts as alive."""
    import time

    reg = queue.started_job_registry
    scores = [s for _, s in queue.connection.zscan_iter(reg.key, match=f"{job_id}:*")]
    return not scores or max(scores) > time.time()


def _components(body: VerifyRequest, rec: StoredAnalysis) -> list[str]:
    assert rec.result is not None
    if rec.result.get("edges") is not None:
        return _edge_keys(body, rec.result["edges"])
    labels = rec.result.get("labels") or {}
    n_rows, n_cols = len(labels.get("rows") or []), len(labels.get("cols") or [])
    out: list[str] = []
    for i, comp in enumerate(body.components):
        if isinstance(comp, str):
            try:
                comp = list(parse_component_key(comp, str(rec.request.get("site") or "heads")))
            except ValueError as e:
                raise unprocessable(f"components.{i}", str(e)) from None
        c = list(comp)
        if len(c) == 1 and n_cols == 1:
            c = [c[0], 0]
        if len(c) != 2:
            raise unprocessable(f"components.{i}", f"a component is [layer, head], got {comp}")
        if not (0 <= c[0] < n_rows and 0 <= c[1] < n_cols):
            raise unprocessable(
                f"components.{i}",
                f"{comp} is outside the {n_rows} x {n_cols} map of this analysis",
            )
        key = component_key(c)
        if key not in out:
            out.append(key)
    return out


def _edge_keys(body: VerifyRequest, edges: list[str]) -> list[str]:
    """The edge keys of a verify request on an edge analysis: each one of ``result.edges``."""
    have = set(edges)
    out: list[str] = []
    for i, e in enumerate(body.components):
        if not isinstance(e, str):
            raise unprocessable(
                f"components.{i}", f"this is an edge analysis: give edge keys, {EDGE_FORM}"
            )
        try:
            parse_edge_key(e)
        except ValueError as err:
            raise unprocessable(f"components.{i}", str(err)) from None
        if e not in have:
            raise unprocessable(
                f"components.{i}",
                f"{e!r} is not an edge of this model's graph ({len(edges)} edges: a sender "
                "reaches a receiver only in a later layer, attention before MLP within one)",
            )
        if e not in out:
            out.append(e)
    return out


def _require_done(rec: StoredAnalysis, what: str) -> None:
    if rec.status != JobStatus.DONE or rec.result is None:
        raise ApiError(409, f"the analysis is {rec.status.value}: {what} once it is done")


@router.post(
    "/{analysis_id}/verify",
    status_code=202,
    response_model=VerifyAccepted,
    responses=ERRORS,
    summary="Verify components with activation patching (click-to-verify)",
)
def verify_components(
    analysis_id: str,
    body: VerifyRequest,
    _: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    gate: GateDep,
) -> VerifyAccepted:
    rec = load(store, analysis_id)
    _require_done(rec, "verify components")
    comps = _components(body, rec)
    if len(comps) > settings.max_verify_components:
        raise unprocessable(
            "components", f"{len(comps)} is over the limit of {settings.max_verify_components}"
        )
    done = set(rec.verified) | set((rec.result or {}).get("verified") or {})
    new = [c for c in comps if c not in done and c not in rec.pending]
    job_id = _queue_components(settings, store, queue, gate, "verify", rec, new)
    return _accepted(rec, analysis_id, new, job_id)


def _queue_components(settings, store, queue, gate, kind: str, rec, comps: list[str]):  # noqa: ANN001
    """Mark ``comps`` pending and queue one job of ``kind`` (verify or fix) for them, through
    the admission gate."""
    if not comps:
        return None
    cost = estimate_cost(rec.request or {}, kind, n_components=len(comps))
    with gate.admit(cost) as record:
        store.add_pending(rec.id, comps)
        job_id = enqueue(
            queue, store, kind, rec.id, components=comps, job_timeout_s=settings.job_timeout_s
        )
        record(job_id)
    return job_id


def _accepted(rec, analysis_id: str, comps: list[str], job_id: str | None) -> VerifyAccepted:  # noqa: ANN001
    return VerifyAccepted(
        id=analysis_id,
        status=rec.status,
        url=page_url(analysis_id),
        components=comps,
        pending=sorted(set(rec.pending) | set(comps), key=key_order),
        job_id=job_id,
    )


@router.post(
    "/{analysis_id}/fix",
    status_code=202,
    response_model=VerifyAccepted,
    responses=ERRORS,
    summary="Verify every flagged component (Screen-Flag-Fix)",
)
def fix_flagged(
    analysis_id: str,
    _: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    gate: GateDep,
) -> VerifyAccepted:
    rec = load(store, analysis_id)
    _require_done(rec, "fix flagged components")
    assert rec.result is not None
    if rec.result.get("flags") is None:
        raise ApiError(
            409, "this analysis has no flags: include 'hvp' in methods to screen and flag"
        )
    if rec.fix and rec.fix.get("status") in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
        comps = list(rec.fix.get("components") or [])
        return VerifyAccepted(
            id=analysis_id,
            status=rec.status,
            url=page_url(analysis_id),
            components=comps,
            pending=rec.pending,
            job_id=rec.fix.get("job_id"),
        )
    done = set(rec.verified) | set(rec.result.get("verified") or {})
    flagged = [c for c in flagged_components(rec.result, done) if c not in rec.pending]
    total = n_components(rec.result)
    job_id = _queue_components(settings, store, queue, gate, "fix", rec, flagged)
    fix = FixInfo(
        status=JobStatus.QUEUED if flagged else JobStatus.DONE,
        components=flagged,
        fix_forwards=0,
        full_sweep_forwards=total,
    )
    if job_id:
        fix.job_id = job_id
    store.update(analysis_id, fix=stored(fix))
    return _accepted(rec, analysis_id, flagged, job_id)


@router.post(
    "/{analysis_id}/circuit",
    status_code=202,
    response_model=CircuitAccepted,
    responses=ERRORS,
    summary="Queue the circuit curve of one ranking (stored as result.circuits[ranking])",
)
def circuit_curve(
    analysis_id: str,
    body: CircuitRequest,
    _: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    gate: GateDep,
) -> CircuitAccepted:
    rec = load(store, analysis_id)
    _require_done(rec, "build circuits")
    assert rec.result is not None
    have = list(rec.result.get("scores") or {})
    if body.ranking not in have:
        raise unprocessable(
            "ranking",
            f"this analysis has no {body.ranking!r} scores: choose one of {', '.join(have)}",
        )
    n = n_components(rec.result)
    sizes = None
    if body.sizes is not None:
        for i, s in enumerate(body.sizes):
            if not 0 <= s <= n:
                raise unprocessable(f"sizes.{i}", f"size {s} is outside 0..{n} (the components)")
        sizes = sorted(set(body.sizes))
    key = circuit_key(body.ranking, body.absolute)
    old = rec.circuits.get(key)
    same = old is not None and old.get("requested_sizes") == sizes
    live = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.DONE.value)
    if same and old is not None and old.get("status") in live:
        return CircuitAccepted.model_validate(
            {
                "id": analysis_id,
                "url": page_url(analysis_id),
                "key": key,
                "circuit": old,
                "job_id": old.get("job_id"),
            }
        )
    entry: dict[str, Any] = {
        "status": JobStatus.QUEUED.value,
        "ranking": body.ranking,
        "absolute": body.absolute,
        "requested_sizes": sizes,
    }
    cost = estimate_cost(rec.request or {}, "circuit", n_components=len(sizes or range(16)))
    with gate.admit(cost) as record:
        store.set_circuit(analysis_id, key, entry)
        job_id = enqueue(
            queue,
            store,
            "circuit",
            analysis_id,
            ranking=body.ranking,
            sizes=sizes,
            absolute=body.absolute,
            job_timeout_s=settings.job_timeout_s,
        )
        record(job_id)
    entry["job_id"] = job_id
    if (store.get_circuit(analysis_id, key) or {}).get("status") == JobStatus.QUEUED.value:
        store.set_circuit(analysis_id, key, entry)  # unless the worker already picked it up
    return CircuitAccepted(
        id=analysis_id,
        url=page_url(analysis_id),
        key=key,
        circuit=CircuitInfo.model_validate(entry),
        job_id=job_id,
    )


@router.post(
    "/{analysis_id}/cancel",
    status_code=202,
    response_model=Analysis,
    responses={401: ERRORS[401], 403: ERRORS[403], 404: ERRORS[404]},
    summary="Cancel the analysis and its pending verifications (its owner only)",
)
def cancel_analysis(
    analysis_id: str,
    member: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
    redis_conn: RedisDep,
) -> Analysis:
    rec = load(store, analysis_id)
    require_owner(settings, rec.owner, member, "cancel")
    for job_id in store.active_jobs(analysis_id):
        store.request_cancel(job_id)  # a running job sees it at its next check
        try:
            job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
        except NoSuchJobError:
            store.remove_job(analysis_id, job_id)
            continue
        status = job.get_status()
        if status in (RQStatus.QUEUED, RQStatus.DEFERRED, RQStatus.SCHEDULED):
            try:
                job.cancel()
            except Exception:  # it just started: the flag stops it
                log.debug("could not cancel queued job %s", job_id, exc_info=True)
                continue
            store.remove_job(analysis_id, job_id)
            kind = kind_of(job)
            if kind is not None:  # what the job's kind leaves when it is cancelled
                args = kind.of_job(job)
                kind.cancelled(store, analysis_id, args)
                kind.released(store, analysis_id, args)
    if rec.status == JobStatus.QUEUED and store.status(analysis_id) == JobStatus.QUEUED:
        # queued with no live job left (or the job is being picked up: it sees the flag)
        if not store.active_jobs(analysis_id):
            store.set_status(analysis_id, JobStatus.CANCELLED)
    return to_schema(load(store, analysis_id))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else repr(v)
    return str(v)


def export_rows(rec: StoredAnalysis) -> tuple[list[str], list[list[str]]]:
    assert rec.result is not None
    res = to_schema(rec).result
    assert res is not None
    if res.edges is not None:
        return _edge_rows(res)
    labels = res.labels
    assert labels is not None
    methods = list(res.scores)
    header = [
        labels.row_name,
        labels.col_name,
        *methods,
        "reliability",
        "error_bound",
        "material",
        "flag",
        "verified",
    ]
    rows = []
    for i, _r in enumerate(labels.rows):
        for j, _c in enumerate(labels.cols):

            def at(m: Any, i: int = i, j: int = j) -> Any:
                return m[i][j] if m is not None else None

            bound = at(res.error_bound)
            if bound is None and res.reliability is not None:
                bound = float("inf")  # null in JSON = unbounded
            rows.append(
                [
                    str(i),
                    str(j),
                    *(_cell(at(res.scores[m])) for m in methods),
                    _cell(at(res.reliability)),
                    _cell(bound),
                    _cell(at(res.material)),
                    _cell(at(res.flags)),
                    _cell(res.verified.get(f"{i}.{j}")),
                ]
            )
    return header, rows


def _edge_rows(res: Any) -> tuple[list[str], list[list[str]]]:
    """One row per edge: sender, receiver, every method's score, reliability, bound, flags."""
    methods = list(res.scores)
    header = ["sender", "receiver", *methods, "reliability", "error_bound", "material", "flag"]
    header.append("verified")

    def at(v: Any, n: int) -> Any:
        return v[n] if v is not None and n < len(v) else None

    rows = []
    for n, e in enumerate(res.edges):
        sender, receiver = parse_edge_key(e)
        bound = at(res.error_bound, n)
        if bound is None and res.reliability is not None:
            bound = float("inf")
        rows.append(
            [
                sender,
                receiver,
                *(_cell(at(res.scores[m], n)) for m in methods),
                _cell(at(res.reliability, n)),
                _cell(bound),
                _cell(at(res.material, n)),
                _cell(at(res.flags, n)),
                _cell(res.verified.get(e)),
            ]
        )
    return header, rows


@router.get(
    "/{analysis_id}/export.csv",
    response_class=Response,
    response_model=None,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "one row per component: layer, head, every method's score, "
            "reliability, error_bound, material, flag, verified",
        },
        404: ERRORS[404],
        409: ERRORS[409],
    },
    summary="Every component's numbers as CSV",
)
def export_csv(analysis_id: str, store: StoreDep) -> Response:
    rec = load(store, analysis_id)
    _require_done(rec, "export")
    header, rows = export_rows(rec)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="patchaudit-{analysis_id}.csv"'},
    )


def _component_of(rec: StoredAnalysis, key: str) -> str:
    """The stored key ("L.C") of an API key: "L.H" (heads), "L" (mlp), "L.P" (resid)."""
    assert rec.result is not None
    if rec.result.get("edges") is not None:
        return _node_of(rec.result["edges"], key)
    site = str(rec.request.get("site", "heads"))
    if site not in KEY_FORMS:
        site = "heads"
    try:
        layer, comp = parse_component_key(key, site)
    except ValueError as e:
        raise unprocessable("key", str(e)) from None
    labels = rec.result.get("labels") or {}
    n_rows, n_cols = len(labels.get("rows") or []), len(labels.get("cols") or [])
    if not (layer < n_rows and comp < n_cols):
        raise ApiError(404, f"no component {key} in this analysis's {n_rows} x {n_cols} {site} map")
    return component_key([layer, comp])


def _node_of(edges: list[str], key: str) -> str:
    """The stored key of a graph node of an edge analysis: a head "L.H" or an MLP "mL" (the
    component panel of the node: per pair, per position, attention, at the node's own site)."""
    if not is_node_key(key) or key in ("emb", "logits"):
        raise unprocessable(
            "key",
            f"{key!r} is not a head or an MLP of the graph: a node's detail is 'L.H' (a head) or "
            "'mL' (an MLP); the embedding and the logits have none",
        )
    if not any(e.startswith(key + "->") for e in edges):
        raise ApiError(404, f"no node {key} in this analysis's graph")
    return key


def _component_failed(store: Any, analysis_id: str, key: str, record: dict[str, Any]) -> ApiError:
    store.drop_component(analysis_id, key)  # the next request tries again
    err = record.get("error") or {}
    status = {"ValueError": 422, "WorkerLost": 503}.get(str(err.get("type")), 500)
    what = f"diagnosing {key[4:]}" if key.startswith("why:") else f"inspecting {key}"
    return ApiError(
        status,
        f"{what} failed ({err.get('type', 'Error')}): {err.get('message', '')}",
    )


#: How often a waiting component request looks at Redis again.
COMPONENT_POLL_S = 0.05


def _component_answer(store: Any, analysis_id: str, ckey: str) -> Any:
    """The answer for a component whose record is done (200) or failed (an ApiError raised),
    else None (still queued or running) with the record."""
    record = store.get_component(analysis_id, ckey) or {}
    if record.get("status") == JobStatus.DONE.value:
        return JSONResponse(record["detail"]), record
    if record.get("status") == JobStatus.FAILED.value:
        raise _component_failed(store, analysis_id, ckey, record)
    return None, record


def _start_component(
    analysis_id: str,
    key: str,
    settings: Any,
    store: Any,
    queue: Any,
    gate: Any,
    authorization: str | None,
    x_api_token: str | None,
    kind: str = "inspect",
) -> tuple[str, Any]:
    """(stored key, answer or None): the answer when the component is stored already, else
    its job queued (unless one is live) and None. ``kind`` "why": the component's diagnosis
    (stored under "why:L.C"; key "flagged": the flagged components of the analysis)."""
    rec = load(store, analysis_id)
    _require_done(rec, "inspect components" if kind == "inspect" else "diagnose components")
    job_key = key if kind == "why" and key == "flagged" else _component_of(rec, key)
    ckey = why_key(job_key) if kind == "why" else job_key
    record = store.get_component(analysis_id, ckey)
    if record is not None and record.get("status") in (
        JobStatus.DONE.value,
        JobStatus.FAILED.value,
    ):
        return ckey, _component_answer(store, analysis_id, ckey)[0]
    if record is None or record.get("job_id") not in store.active_jobs(analysis_id):
        # first request (or a job lost with its worker): computing needs write access
        require_write_token(settings, authorization, x_api_token)
        if record is not None:
            store.drop_component(analysis_id, ckey)
        job_id = new_job_id(kind, analysis_id)
        if store.claim_component(analysis_id, ckey, job_id):
            cost = estimate_cost(rec.request or {}, "inspect", n_components=1)
            try:
                with gate.admit(cost) as record_job:
                    enqueue(
                        queue,
                        store,
                        kind,
                        analysis_id,
                        key=job_key,
                        job_timeout_s=settings.job_timeout_s,
                        job_id=job_id,
                    )
                    record_job(job_id)
            except ApiError:
                store.drop_component(analysis_id, ckey)  # refused: the next request asks again
                raise
    return ckey, None


@router.get(
    "/{analysis_id}/components/{key}",
    response_model=ComponentDetailOut,
    responses={
        202: {"model": ComponentPending, "description": "being computed: ask again"},
        **{k: ERRORS[k] for k in (401, 404, 409, 422)},
    },
    summary="One component in detail: per pair, per position, attention (computed once by "
    "a worker, then stored with the analysis)",
)
async def get_component(
    request: Request,
    analysis_id: str,
    key: str,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    gate: GateDep,
    wait: Annotated[
        float, Query(ge=0, le=30, description="seconds to wait for a first computation")
    ] = 2.0,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> Any:
    """Async: a request that waits for the worker holds no thread. Each Redis call runs in the
    threadpool for the few milliseconds it takes; between calls the handler sleeps on the
    event loop, so other requests (/healthz) are served while many of these wait."""
    return await _component_request(
        request, analysis_id, key, settings, store, queue, gate, wait, authorization, x_api_token
    )


async def _component_request(
    request: Request,
    analysis_id: str,
    key: str,
    settings: Any,
    store: Any,
    queue: Any,
    gate: Any,
    wait: float,
    authorization: str | None,
    x_api_token: str | None,
    kind: str = "inspect",
) -> Any:
    """A component's stored record (detail or diagnosis), its job started where needed, waited
    for up to ``wait`` seconds on the event loop (202 with the job after that)."""
    ckey, answer = await run_in_threadpool(
        _start_component,
        analysis_id,
        key,
        settings,
        store,
        queue,
        gate,
        authorization,
        x_api_token,
        kind,
    )
    if answer is not None:
        return answer
    end = time.monotonic() + wait
    state = request.app.state  # how many wait now (one event loop: no lock needed)
    state.waiting_components = getattr(state, "waiting_components", 0) + 1
    try:
        while True:
            answer, record = await run_in_threadpool(_component_answer, store, analysis_id, ckey)
            if answer is not None:
                return answer
            now = time.monotonic()
            if now >= end:
                break
            # every 50 ms for the first second (a drill-down takes about that), then 200 ms:
            # many long waits cost the event loop and the threadpool little
            slow = now - (end - wait) > 1.0
            await asyncio.sleep(min(end - now, 4 * COMPONENT_POLL_S if slow else COMPONENT_POLL_S))
    finally:
        state.waiting_components -= 1
    pending = ComponentPending(
        id=analysis_id,
        key=key,
        status=JobStatus(record.get("status", JobStatus.QUEUED.value)),
        job_id=record.get("job_id"),
    )
    return JSONResponse(
        pending.model_dump(mode="json"), status_code=202, headers={"Retry-After": "1"}
    )


_WHY_WAIT = Query(ge=0, le=30, description="seconds to wait for a first computation")


@router.get(
    "/{analysis_id}/components/{key}/why",
    responses={
        200: {
            "model": DiagnosisOut,
            "description": "the diagnosis (pa.diagnose's to_dict() for this component)",
        },
        202: {"model": ComponentPending, "description": "being computed: ask again"},
        **{k: ERRORS[k] for k in (401, 404, 409, 422)},
    },
    summary="Why AtP is wrong for one component: its second-order term split by layer and "
    "kind of operation, local against downstream, the remainder and the saturation estimate "
    "(computed once by a worker, then stored with the analysis)",
)
async def get_component_why(
    request: Request,
    analysis_id: str,
    key: str,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    gate: GateDep,
    wait: Annotated[float, _WHY_WAIT] = 2.0,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> Any:
    return await _component_request(
        request,
        analysis_id,
        key,
        settings,
        store,
        queue,
        gate,
        wait,
        authorization,
        x_api_token,
        kind="why",
    )


@router.get(
    "/{analysis_id}/why",
    responses={
        200: {
            "model": DiagnosisOut,
            "description": "the diagnosis of the analysis's flagged components",
        },
        202: {"model": ComponentPending, "description": "being computed: ask again"},
        **{k: ERRORS[k] for k in (401, 404, 409, 422)},
    },
    summary="Model-wide: for the flagged components of an analysis (the 24 least reliable), "
    "their second-order terms split by operation: which downstream layers carry their error",
)
async def get_analysis_why(
    request: Request,
    analysis_id: str,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    gate: GateDep,
    wait: Annotated[float, _WHY_WAIT] = 2.0,
    authorization: Annotated[str | None, Header()] = None,
    x_api_token: Annotated[str | None, Header()] = None,
) -> Any:
    return await _component_request(
        request,
        analysis_id,
        "flagged",
        settings,
        store,
        queue,
        gate,
        wait,
        authorization,
        x_api_token,
        kind="why",
    )
