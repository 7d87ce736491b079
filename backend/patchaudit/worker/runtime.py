"""What a worker process holds between jobs: Redis clients, the stores and the loaded models."""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import ActivationCache, AnalysisStore
from ..store.redis_conn import connect

if TYPE_CHECKING:  # pragma: no cover
    import redis

    from ..settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """The settings a worker process needs (a plain copy of the service settings)."""

    redis_url: str
    data_dir: Path
    cache_budget_bytes: int = 2 * 1024**3
    job_timeout_s: int = 3600
    max_loaded_models: int = 2
    device: str | None = None
    execution_ttl_s: int = 30
    maintenance_interval_s: int = 15
    worker_ttl_s: int = 35
    test_job_delay_s: float = 0.0
    max_tokens: int = 256
    max_model_params: int = 3_000_000_000
    dtype: str = "auto"
    memory_budget_mb: float | None = None
    #: models this worker may load (the API's allowlist, checked again here); None: any
    allowed_models: frozenset[str] | None = None
    torch_threads: int | None = None
    workers: int = 1
    interactive_lane: bool = True

    @classmethod
    def from_settings(cls, s: Settings) -> WorkerConfig:
        if not s.redis_url:
            raise ValueError("no Redis URL: set REDIS_URL or PATCHAUDIT_REDIS_URL")
        return cls(
            redis_url=s.redis_url,
            data_dir=Path(s.data_dir),
            cache_budget_bytes=s.cache_budget_bytes,
            job_timeout_s=s.job_timeout_s,
            max_loaded_models=s.max_loaded_models,
            device=s.device,
            dtype=s.dtype,
            memory_budget_mb=s.memory_budget_mb,
            execution_ttl_s=s.execution_ttl_s,
            maintenance_interval_s=s.maintenance_interval_s,
            worker_ttl_s=s.worker_ttl_s,
            test_job_delay_s=s.test_job_delay_s,
            max_tokens=s.max_tokens,
            max_model_params=s.max_model_params,
            allowed_models=s.allowed_models,
            torch_threads=s.torch_threads,
            workers=s.workers,
            interactive_lane=s.interactive_lane,
        )


class ModelLRU:
    """Loaded models, least recently used evicted beyond ``capacity`` (models stay resident
    between jobs: loading is the slow part of a small job)."""

    def __init__(self, capacity: int, loader: Callable[[str], Any]) -> None:
        self.capacity = max(1, int(capacity))
        self.loader = loader
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, name: str) -> Any:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
        model = self.loader(name)
        with self._lock:
            self.loads += 1
            self._models[name] = model
            self._models.move_to_end(name)
            while len(self._models) > self.capacity:
                old, _ = self._models.popitem(last=False)
                log.info("model cache: unloading %s", old)
                self._release()
        return model

    def resident(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        self._release()

    @staticmethod
    def _release() -> None:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass


def check_model_size(name: str, max_params: int) -> None:
    """Refuse a model whose config says it is over the size cap, before any weights are
    fetched (raises ModelLoadError naming the setting)."""
    if name == "bundled":
        return
    from ..models import ModelLoadError, config_params

    n = config_params(name)
    if n is not None and n > max_params:
        raise ModelLoadError(
            f"model {name!r} has about {n:,} parameters, over this server's cap of "
            f"{max_params:,} (PATCHAUDIT_MAX_MODEL_PARAMS)"
        )


def resolve_dtype(dtype: str, device: str | None) -> Any:
    """The torch dtype of a ``PATCHAUDIT_DTYPE`` value: auto is bfloat16 on CUDA, float32
    elsewhere."""
    import torch

    from ..models import default_device

    if dtype == "auto":
        dev = torch.device(device) if device else default_device()
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def check_model_allowed(name: str, allowed: frozenset[str] | None) -> None:
    """Refuse a model the server's allowlist does not name (the API checks it at submission;
    the worker checks again before loading anything: a job written into the queue by other
    means does not load a model of its choice). Raises ModelLoadError."""
    if allowed is None or name in allowed:
        return
    from ..models import ModelLoadError

    shown = name if len(name) <= 80 else name[:77] + "..."
    raise ModelLoadError(
        f"model {shown!r} is not enabled on this worker (PATCHAUDIT_MODEL_ALLOWLIST): not loaded"
    )


def _load_model(
    name: str,
    device: str | None,
    max_params: int = 3_000_000_000,
    dtype: str = "auto",
    allowed: frozenset[str] | None = None,
) -> Any:
    import patchaudit as pa

    check_model_allowed(name, allowed)
    check_model_size(name, max_params)
    dt = resolve_dtype(dtype, device)
    log.info("loading model %s (%s)", name, str(dt).replace("torch.", ""))
    return pa.load_model(name, device=device, dtype=dt)


class Runtime:
    """One per worker process (set by ``patchaudit worker``)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.redis: redis.Redis = connect(config.redis_url)
        self.store = AnalysisStore(self.redis)
        self.cache = ActivationCache(
            self.redis, Path(config.data_dir) / "cache", config.cache_budget_bytes
        )
        from .lane import Lane

        #: who runs on the models now: the long job or the interactive lane (worker.lane)
        self.lane = Lane()
        self.models = ModelLRU(
            config.max_loaded_models,
            lambda name: _load_model(
                name, config.device, config.max_model_params, config.dtype, config.allowed_models
            ),
        )


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def set_runtime(rt: Runtime | None) -> None:
    global _runtime
    _runtime = rt


def get_runtime() -> Runtime:
    """The process's runtime; built from the environment when a job runs under a plain
    ``rq worker`` instead of ``patchaudit worker``."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from ..settings import Settings

            _runtime = Runtime(WorkerConfig.from_settings(Settings()))
        return _runtime
