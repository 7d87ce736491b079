"""The one status vocabulary shared by the API, the worker and the front end."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Life cycle of an analysis (and of its verify / fix jobs)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


#: Statuses after which a new submission of the same request computes again.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
