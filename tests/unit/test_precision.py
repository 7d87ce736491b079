"""Half precision end to end (issue 13): a bf16 model audits with float32 score maps close to
the float32 model's, on random GPT-2, GPT-NeoX and Llama configs."""

from __future__ import annotations

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
