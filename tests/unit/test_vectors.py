"""Agreement with the float64 reference values in tests/data/tiny_gpt2 (METHODS.md)."""

from __future__ import annotations

import pytest
import torch

import patchaudit as pa
from patchaudit.bench.vectors import PAIRS  # our method -> the reference key

ALL = ["ap", "atp", "hvp", "hvp_joint", "hvp_exact", "ig", "mhvp"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_every_estimator_matches_reference(tiny_model, tiny_pairs, vectors, direction):
    r = pa.audit(
        tiny_model,
        tiny_pairs,
        direction=direction,
        methods=ALL,
        ig_steps=4,
        mhvp_steps=2,
        hvp_probes=8,
    )
    ref = vectors[direction]
    assert r.metric_base == pytest.approx(ref["metric_base"], rel=1e-5)
    for ours, theirs in PAIRS:
        assert rel_err(r.scores[ours], torch.tensor(ref[theirs], dtype=torch.float32)) < 2e-5, ours
    # the second-order terms themselves
    q_exact = pa.audit(tiny_model, tiny_pairs, direction=direction, methods=["hvp_exact"]).q
    q_joint = pa.audit(tiny_model, tiny_pairs, direction=direction, methods=["hvp_joint"]).q
    assert rel_err(q_exact, torch.tensor(ref["q_exact"])) < 1e-4
    assert rel_err(q_joint, torch.tensor(ref["q_joint"])) < 1e-4
    # 8 components <= 8 probes: hvp uses the exact diagonal (no variance)
    assert rel_err(r.scores["hvp"], torch.tensor(ref["hvp_exact"])) < 2e-5
    assert r.reliability_source == "hvp_exact"
    assert torch.allclose(r.reliability, torch.tensor(ref["reliability_exact"]), atol=1e-4)


def test_hvp_with_fewer_probes_is_unbiased_estimate(tiny_model, tiny_pairs, vectors):
    """P=2 < N=8 probes: a noisy estimate of q_exact whose error is within a few SEs."""
    r = pa.audit(tiny_model, tiny_pairs, methods=["hvp"], hvp_probes=2, seed=1)
    q_exact = torch.tensor(vectors["noising"]["q_exact"])
    assert r.q_se is not None and float(r.q_se.max()) > 0
    z = ((r.q - q_exact).abs() / (r.q_se + 1e-12)).flatten()
    assert float(z.median()) < 4
