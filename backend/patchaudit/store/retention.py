"""Deleting analyses: one by its owner (``DELETE /api/analyses/{id}``) or the oldest by the
retention limits (``PATCHAUDIT_RETENTION_MAX_AGE_DAYS``, ``PATCHAUDIT_RETENTION_MAX_ANALYSES``),
pruned by the workers' maintenance tick. Queued and running analyses are never pruned."""

from __future__ import annotations

import logging
import time
from typing import Any

from . import keys
from .cache import ActivationCache
from .results import AnalysisStore

log = logging.getLogger(__name__)


def delete_analysis(store: AnalysisStore, cache: ActivationCache | None, analysis_id: str) -> None:
    """Remove an analysis: its record, results, verified values, components, circuits, notes,
    and its cached activations (another analysis of the same prompts recomputes them)."""
    cache_key = store._text(store.r.hget(keys.analysis(analysis_id), "cache_key"))
    store.delete(analysis_id)
    if cache is not None and cache_key:
        try:
            cache.remove(cache_key)
        except (OSError, ValueError):
            log.warning("could not remove the cache entry of %s", analysis_id, exc_info=True)


def prune(
    store: AnalysisStore,
    cache: ActivationCache | None,
    *,
    max_age_days: float | None,
    max_analyses: int | None,
    now: float | None = None,
) -> list[str]:
    """Delete what the retention limits remove (oldest first); returns their ids. One pruner
    at a time (a short lock); nothing to do without a limit."""
    if max_age_days is None and max_analyses is None:
        return []
    if not store.r.set(keys.PRUNE_LOCK, "1", nx=True, ex=60):
        return []
    try:
        now = time.time() if now is None else now
        max_age_s = None if max_age_days is None else max_age_days * 86400.0
        ids = store.prune_candidates(now, max_age_s, max_analyses)
        for analysis_id in ids:
            delete_analysis(store, cache, analysis_id)
        if ids:
            log.info("retention: deleted %d analyses", len(ids))
        return ids
    finally:
        store.r.delete(keys.PRUNE_LOCK)


def pruner(store: AnalysisStore, cache: ActivationCache | None, settings: Any) -> Any:
    """The worker's maintenance hook: ``prune`` with the settings' limits."""

    def run() -> list[str]:
        return prune(
            store,
            cache,
            max_age_days=settings.retention_max_age_days,
            max_analyses=settings.retention_max_analyses,
        )

    return run
