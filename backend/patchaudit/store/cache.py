"""Activation cache: ``pa.BaseCache`` safetensors files under the data dir, indexed in Redis.

A cache entry holds the activations and gradients of one (model, tokens, site, direction,
metric). The files live in ``<data_dir>/cache/<key>.safetensors``; Redis holds the index:
a hash of sizes (``keys.CACHE_SIZES``) and the LRU order (``keys.CACHE_LRU``, a sorted set
scored by last use). After each insertion the least recently used entries are deleted until
the total fits the byte budget. Several workers on one machine share the directory; on
several machines each needs the same directory (a shared volume) or misses are recomputed.

This module never imports torch: callers hand in the save / load functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import redis

from . import keys

log = logging.getLogger(__name__)

T = TypeVar("T")

SUFFIX = ".safetensors"


def cache_key(parts: Iterable[bytes | str]) -> str:
    """SHA-256 over length-prefixed parts (model name, token bytes, site, direction, metric)."""
    h = hashlib.sha256()
    for part in parts:
        b = part.encode() if isinstance(part, str) else bytes(part)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class ActivationCache:
    """LRU cache of BaseCache files with a byte budget, indexed in Redis."""

    def __init__(self, client: redis.Redis, directory: Path, budget_bytes: int) -> None:
        self.r = client
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.dir.stat().st_mode & 0o077:  # made before by an older version, or by hand
            try:
                os.chmod(self.dir, 0o700)
            except OSError:  # not ours (a shared volume): leave it
                log.warning("cache directory %s is readable by others", self.dir)
        self.budget = int(budget_bytes)

    def path(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"bad cache key {key!r}")
        return self.dir / f"{key}{SUFFIX}"

    # -- lookup -----------------------------------------------------------------------

    def get(self, key: str | None, load: Callable[[Path], T]) -> T | None:
        """Load an entry and mark it recently used; ``None`` on a miss (or a broken file)."""
        if not key:
            return None
        path = self.path(key)
        if self.r.hget(keys.CACHE_SIZES, key) is None or not path.exists():
            self._forget(key)
            self.r.hincrby(keys.CACHE_STATS, "misses", 1)
            return None
        try:
            value = load(path)
        except Exception:  # a truncated or stale file: drop it, recompute
            log.warning("cache entry %s unreadable, dropping it", key, exc_info=True)
            self.remove(key)
            self.r.hincrby(keys.CACHE_STATS, "misses", 1)
            return None
        with self.r.pipeline() as p:
            p.zadd(keys.CACHE_LRU, {key: time.time()})
            p.hincrby(keys.CACHE_STATS, "hits", 1)
            p.execute()
        return value

    def contains(self, key: str) -> bool:
        return self.r.hget(keys.CACHE_SIZES, key) is not None and self.path(key).exists()

    # -- insertion / eviction ---------------------------------------------------------

    def put(self, key: str, save: Callable[[Path], object]) -> bool:
        """Write an entry with ``save(path)`` (atomically: temp file + rename), index it and
        evict least recently used entries beyond the budget. Returns False when the entry
        alone exceeds the budget (it is not kept)."""
        path = self.path(key)
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp{SUFFIX}")
        try:
            save(tmp)
            size = tmp.stat().st_size
            if size > self.budget:
                log.info("cache entry %s (%d bytes) exceeds the budget, not kept", key, size)
                return False
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        with self.r.pipeline() as p:
            p.hset(keys.CACHE_SIZES, key, size)
            p.zadd(keys.CACHE_LRU, {key: time.time()})
            p.execute()
        self.evict()
        return self.contains(key)

    def total_bytes(self) -> int:
        return sum(int(v) for v in self.r.hvals(keys.CACHE_SIZES))

    def evict(self) -> list[str]:
        """Delete least recently used entries until the total fits the budget."""
        removed: list[str] = []
        lock = self.r.lock(keys.CACHE_LOCK, timeout=30, blocking_timeout=10)
        if not lock.acquire():
            return removed
        try:
            total = self.total_bytes()
            while total > self.budget:
                oldest: list[Any] = list(self.r.zrange(keys.CACHE_LRU, 0, 0))
                if not oldest:
                    break
                key = oldest[0].decode() if isinstance(oldest[0], bytes) else str(oldest[0])
                size = int(self.r.hget(keys.CACHE_SIZES, key) or 0)
                self.remove(key)
                total -= size
                removed.append(key)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass
        if removed:
            log.info("cache: evicted %d entries", len(removed))
        return removed

    def remove(self, key: str) -> None:
        self._forget(key)
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

    def _forget(self, key: str) -> None:
        with self.r.pipeline() as p:
            p.hdel(keys.CACHE_SIZES, key)
            p.zrem(keys.CACHE_LRU, key)
            p.execute()

    def stats(self) -> dict[str, int]:
        raw = self.r.hgetall(keys.CACHE_STATS)
        out = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        out["entries"] = int(self.r.hlen(keys.CACHE_SIZES))
        out["bytes"] = self.total_bytes()
        out["budget"] = self.budget
        return out
