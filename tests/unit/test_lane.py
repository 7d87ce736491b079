"""The interactive lane's turnstile (worker.lane.Lane) with real threads, the per-worker torch
thread cap, and the job kinds' lane attributes."""

from __future__ import annotations

import threading
import time

from patchaudit.service import kinds as K
from patchaudit.worker.lane import Lane, cpu_cores, torch_threads


def test_an_interactive_job_runs_between_two_passes_of_a_long_job() -> None:
    lane = Lane(linger_s=0.05)
    events: list[str] = []
    started = threading.Event()
    stop = threading.Event()

    def long_job() -> None:
        with lane.long_job():
            started.set()
            while not stop.is_set():
                events.append("pass")  # one pass on the model: the lane must not run now
                time.sleep(0.01)
                lane.yield_point()

    t = threading.Thread(target=long_job)
    t.start()
    assert started.wait(5)
    t0 = time.monotonic()
    with lane.interactive():
        waited = time.monotonic() - t0
        n = len(events)
        time.sleep(0.1)  # the long job is parked meanwhile: no pass runs
        assert len(events) == n
        events.append("interactive")
    time.sleep(0.2)  # after the linger the long job resumes
    stop.set()
    t.join(5)
    assert waited < 0.5  # at most the rest of one pass (10 ms) and the wake-up
    i = events.index("interactive")
    assert "pass" in events[:i] and "pass" in events[i + 1 :]
    assert lane.parks >= 1


def test_a_long_job_waits_for_a_running_interactive_job_before_it_starts() -> None:
    lane = Lane(linger_s=0.0)
    order: list[str] = []
    inside = threading.Event()

    def interactive() -> None:
        with lane.interactive():
            inside.set()
            time.sleep(0.1)
            order.append("interactive")

    t = threading.Thread(target=interactive)
    t.start()
    assert inside.wait(5)
    with lane.long_job():
        order.append("long")
    t.join(5)
    assert order == ["interactive", "long"]


def test_without_interactive_work_a_yield_point_returns_at_once() -> None:
    lane = Lane()
    with lane.long_job():
        t0 = time.monotonic()
        for _ in range(1000):
            lane.yield_point()
        assert time.monotonic() - t0 < 0.5
    assert lane.parks == 0


def test_torch_threads_share_the_cores_among_workers() -> None:
    cores = cpu_cores()
    assert torch_threads(None, 1) == cores
    assert torch_threads(None, cores * 4) == 1  # never 0
    assert torch_threads(None, 2) == max(1, cores // 2)
    assert torch_threads(3, 8) == 3  # the setting wins


def test_verify_and_inspect_are_interactive_long_kinds_are_not() -> None:
    assert K.VERIFY.interactive and K.VERIFY.first
    assert K.INSPECT.interactive and not K.INSPECT.first
    for kind in (K.ANALYSIS, K.FIX, K.CIRCUIT):
        assert not kind.interactive
    assert set(K.interactive_kinds()) >= {"verify", "inspect"}


def test_cancel_right_after_the_base_pass_keeps_atp_with_the_fused_method(
    tiny_model, tiny_pairs
) -> None:
    """AtP is the base pass's gradient: a cancel at the first check after the base pass (before
    AtP's turn in the method loop) keeps it, with the second-order method fused into that pass."""
    import pytest

    import patchaudit as pa

    seen: list[tuple[str, float]] = []

    def progress(phase: str, frac: float, passes: int) -> None:
        seen.append((phase, frac))

    def stop() -> bool:  # stop as soon as the base pass has reported its end
        return any(ph.startswith("base") and f >= 0.2 for ph, f in seen)

    with pytest.raises(pa.Cancelled) as e:
        pa.audit(
            tiny_model, tiny_pairs, methods=("atp", "hvp"), progress=progress, should_stop=stop
        )
    part = e.value.partial  # type: ignore[attr-defined]
    assert "atp" in part.methods and "atp" in part.scores
    if any(ph == "base + hvp" for ph, _ in seen):  # fused: hvp came with the same pass
        assert set(part.methods) == {"atp", "hvp"}
    # the base pass reports its start (a long base pass is not shown as the phase before it)
    assert seen[0][0].startswith("base") and seen[0][1] == 0.0


def test_job_progress_estimates_the_passes_and_the_time_left() -> None:
    from types import SimpleNamespace

    from patchaudit.worker.jobs import JobProgress

    rt = SimpleNamespace(config=SimpleNamespace(test_job_delay_s=0.0), store=None)
    p = JobProgress(rt, "a", None, mirror=False)  # type: ignore[arg-type]
    p("starting", 0.0, 0)
    assert p.estimate(0.0, 0) == {"passes_total": None, "eta_s": None}  # set-up: no estimate
    p("base + hvp", 0.0, 0)
    assert p._t0 is not None
    p._t0 -= 10.0  # 10 s of computation so far
    e = p.estimate(0.25, 30)
    assert e["passes_total"] == 120  # 30 passes in a quarter of the work
    assert abs(e["eta_s"] - 30.0) < 0.5  # three more quarters at 10 s each
    assert p.estimate(1.0, 118) == {"passes_total": 118, "eta_s": 0.0}
    assert p.phase == "base + hvp"


def test_a_job_timeout_names_the_phase_it_stopped_in() -> None:
    from rq.timeouts import JobTimeoutException

    from patchaudit.worker.jobs import error_info

    try:
        raise JobTimeoutException("timed out")
    except JobTimeoutException as e:
        info = error_info(e, None, "base + hvp_exact")
    assert info["type"] == "JobTimeout"
    assert "during base + hvp_exact" in info["message"] and "load_model" not in info["message"]
