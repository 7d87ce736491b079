"""The team's routes on an analysis: delete it (its owner), notes on its components.

``DELETE /api/analyses/{id}`` removes the analysis with everything stored for it (results,
verified values, components, circuits, notes, cached activations); only its owner may, and
not while a job of it is queued or running (cancel first).

``PUT /api/analyses/{id}/notes/{key}`` labels a component ("name mover") and keeps a note on
it, with its author and time; the label shows on the map cell and label + note in the
component panel, for everyone with the link (``Analysis.notes``). Any member may write the
note of a component that has none; only its author may change or delete it.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Response

from ...service.contract import NOTE_LABEL_MAX, Note, NoteIn
from ...settings import LOCAL_MEMBER
from ...store.retention import delete_analysis
from ..deps import CacheDep, SettingsDep, StoreDep, WriteAccess, require_owner
from ..errors import ApiError
from ..schemas import NoteList
from ..validation import unprocessable
from .analyses import ERRORS, _component_of, load

router = APIRouter(prefix="/api/analyses", tags=["team"])

#: Control characters a label may not hold (a note's text may hold tabs and newlines).
_LABEL_BAD = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@router.delete(
    "/{analysis_id}",
    status_code=204,
    response_class=Response,
    responses={k: ERRORS[k] for k in (401, 403, 404, 409)},
    summary="Delete an analysis with its results, cached activations and notes (its owner)",
)
def delete_one(
    analysis_id: str,
    member: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
    cache: CacheDep,
) -> Response:
    rec = load(store, analysis_id)
    require_owner(settings, rec.owner, member, "delete")
    if store.active_jobs(analysis_id):
        raise ApiError(
            409,
            f"the analysis is {rec.status.value} or has verifications running: cancel it "
            "first, then delete it",
        )
    delete_analysis(store, cache, analysis_id)
    return Response(status_code=204)


def _api_key(site: str, stored_key: str) -> str:
    """The API key of a stored "L.C": "L" for an MLP layer, else "L.C"."""
    return stored_key.split(".")[0] if site == "mlp" else stored_key


def _note_target(store: Any, analysis_id: str, key: str) -> tuple[Any, str]:
    rec = load(store, analysis_id)
    if rec.result is None:
        raise ApiError(409, f"the analysis is {rec.status.value}: notes need its finished map")
    return rec, _component_of(rec, key)


def _may_edit(settings: Any, note: dict[str, Any], member: str) -> None:
    author = note.get("author")
    if settings.auth_required and author not in (None, LOCAL_MEMBER, member):
        raise ApiError(403, f"this note is {author}'s: only {author} can change or delete it")


@router.put(
    "/{analysis_id}/notes/{key}",
    response_model=Note,
    responses={k: ERRORS[k] for k in (401, 403, 404, 409, 422)},
    summary="Label a component and keep a note on it (shown on the map and in its panel)",
)
def put_note(
    analysis_id: str,
    key: str,
    body: NoteIn,
    member: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
) -> Note:
    rec, ckey = _note_target(store, analysis_id, key)
    label, text = body.label.strip(), body.text.strip()
    if not label:
        raise unprocessable("label", "the label is empty: a few words, e.g. 'name mover'")
    if _LABEL_BAD.search(label):
        raise unprocessable("label", "the label holds control characters (one line of text)")
    if _TEXT_BAD.search(text):
        raise unprocessable("text", "the note holds control characters")
    assert len(label) <= NOTE_LABEL_MAX
    old = store.get_note(analysis_id, ckey)
    if old is not None:
        _may_edit(settings, old, member)
    now = time.time()
    note = Note(
        key=_api_key(str(rec.request.get("site", "heads")), ckey),
        label=label,
        text=text,
        author=member,
        created_at=float(old["created_at"]) if old else now,
        updated_at=now,
    )
    store.set_note(analysis_id, ckey, note.model_dump())
    return note


@router.delete(
    "/{analysis_id}/notes/{key}",
    status_code=204,
    response_class=Response,
    responses={k: ERRORS[k] for k in (401, 403, 404, 409, 422)},
    summary="Delete a component's note (its author)",
)
def delete_note(
    analysis_id: str, key: str, member: WriteAccess, settings: SettingsDep, store: StoreDep
) -> Response:
    _, ckey = _note_target(store, analysis_id, key)
    old = store.get_note(analysis_id, ckey)
    if old is None:
        raise ApiError(404, f"component {key} has no note")
    _may_edit(settings, old, member)
    store.delete_note(analysis_id, ckey)
    return Response(status_code=204)


@router.get(
    "/{analysis_id}/notes",
    response_model=NoteList,
    responses={404: ERRORS[404]},
    summary='Every note of an analysis, by "L.C" (as in Analysis.notes)',
)
def list_notes(analysis_id: str, store: StoreDep) -> NoteList:
    return NoteList.model_validate({"notes": load(store, analysis_id).notes})
