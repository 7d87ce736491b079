"""Half precision end to end (issue 13): a bf16 model audits with float32 score maps close to
the float32 model's, on random GPT-2, GPT-NeoX and Llama configs."""

from __future__ import annotations

import pytest
import torch

import patchaudit as pa

from .conftest import random_model, random_pairs


def test_bf16_audit_is_float32_and_close_to_fp32(arch_model):
    arch, _ = arch_model
    pairs = random_pairs(n=3, pos=8)
    ref = pa.audit(random_model(arch), pairs, methods=["atp", "hvp", "ap"], hvp_probes=4)
    half_model = random_model(arch, dtype=torch.bfloat16)
    assert next(half_model.parameters()).dtype == torch.bfloat16
    half = pa.audit(half_model, pairs, methods=["atp", "hvp", "ap"], hvp_probes=4)
    for m in ("atp", "hvp", "ap"):
        x, y = ref.scores[m].double(), half.scores[m].double()
        assert half.scores[m].dtype == torch.float32, (arch, m)
        assert torch.isfinite(y).all(), (arch, m)
        err = float((y - x).norm() / x.norm())
        assert err < 0.15, (arch, m, err)  # bf16 keeps ~3 significant digits
    assert half.q is not None and half.q.dtype == torch.float32


def test_request_that_cannot_fit_the_budget_is_refused_before_any_pass(arch_model):
    """A budget below one copy's pass: MemoryBudgetError (a ValueError) naming the budget and
    the setting, raised before any forward; without a budget on the CPU nothing is refused."""
    from patchaudit.estimators import core

    arch, model = arch_model
    pairs = random_pairs(n=2, pos=8)
    calls = []
    h = model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(core.MemoryBudgetError, match="memory budget of 0 MiB") as e:
            pa.audit(model, pairs, methods=["atp"], memory_budget_mb=0.001)
        assert "PATCHAUDIT_MEMORY_BUDGET_MB" in str(e.value)
        assert calls == []
    finally:
        h.remove()
    rep = pa.audit(model, pairs, methods=["atp"])
    assert rep.cost["plan"]["max_copies"] >= 1


@pytest.mark.bundled
def test_model_load_reports_its_progress():
    """load_progress counts the transformers loader's weight loop: fractions rise to 1."""
    from patchaudit.estimators.compat import load_progress

    seen: list[float] = []
    with load_progress(seen.append):
        pa.load_model("bundled", device="cpu")
    assert seen and seen[-1] == 1.0
    assert seen == sorted(seen) and seen[0] < 0.5
