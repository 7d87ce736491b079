"""Redis keys, analysis results, the activation cache and the shared job status."""

from .cache import ActivationCache, cache_key
from .results import Analysis, AnalysisStore, component_key, parse_component_key, request_hash
from .status import JobStatus

__all__ = [
    "ActivationCache",
    "Analysis",
    "AnalysisStore",
    "JobStatus",
    "cache_key",
    "component_key",
    "parse_component_key",
    "request_hash",
]
