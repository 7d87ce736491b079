"""Circuits: faithfulness against a plain hook-based patch, the exact end points, and curves
that agree with faithfulness of their own top-k sets (issue 12, acceptance 1)."""

from __future__ import annotations

import random

import pytest
import torch

import patchaudit as pa
from patchaudit.estimators import circuits as K

from .conftest import random_pairs


def plain_patch(model, tp, keep: set[tuple[int, int]]) -> float:
    """Run the clean prompts with every head outside ``keep`` set to its corrupted z (plain
    TransformerLens hooks, one copy of the batch); mean logit difference."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [f"blocks.{i}.attn.hook_z" for i in range(n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tp.corrupted, names_filter=lambda n: n in names)
        hooks = []
        for layer in range(n_layers):
            drop = [h for h in range(n_heads) if (layer, h) not in keep]
            if not drop:
                continue

            def hook(z, hook, layer=layer, drop=drop):
                z = z.clone()
                z[:, :, drop] = cache[names[layer]][:, :, drop]
                return z

            hooks.append((names[layer], hook))
        lg = model.run_with_hooks(tp.clean, fwd_hooks=hooks)
    idx = torch.arange(len(tp))
    last = lg[idx, tp.last_pos]
    return float((last[idx, tp.answer_ids] - last[idx, tp.wrong_ids]).double().mean())


def _circuits(shape, n: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    rng = random.Random(seed)
    comps = [(i, j) for i in range(shape[0]) for j in range(shape[1])]
    out = [[], list(comps)]
    for _ in range(n):
        out.append(sorted(rng.sample(comps, rng.randint(1, len(comps) - 1))))
    out.append([c for c in comps if c[0] == shape[0] - 1])  # only the last layer kept
    return out


def test_faithfulness_equals_plain_hook_patch(arch_model):
    name, model = arch_model
    pairs = random_pairs(n=3, pos=8)
    tp = pairs.tokenize(model)
    shape = (int(model.cfg.n_layers), int(model.cfg.n_heads))
    circuits = _circuits(shape, 6)
    r = pa.faithfulness(model, pairs, circuits)
    assert isinstance(r.m, list) and isinstance(r.f, list) and len(r.m) == len(circuits)
    m_all = plain_patch(model, tp, {(i, j) for i in range(shape[0]) for j in range(shape[1])})
    m_empty = plain_patch(model, tp, set())
    assert r.m_all == pytest.approx(m_all, rel=1e-5, abs=1e-6)
    assert r.m_empty == pytest.approx(m_empty, rel=1e-5, abs=1e-6)
    assert abs(m_all - m_empty) > 1e-3, f"{name}: the corruption must move the metric"
    for circ, m, f in zip(circuits, r.m, r.f, strict=True):
        ref = plain_patch(model, tp, set(circ))
        assert m == pytest.approx(ref, rel=1e-5, abs=1e-6), (name, circ)
        assert f == pytest.approx((ref - m_empty) / (m_all - m_empty), rel=1e-4, abs=1e-5)
    # the end points are exact, not approximately so
    assert r.f[0] == 0.0 and r.f[1] == 1.0
    assert r.m[0] == r.m_empty and r.m[1] == r.m_all
    one = pa.faithfulness(model, pairs, circuits[2])
    # alone or among other circuits (another batch layout): the same m to float rounding, and
    # f to that rounding carried through its denominator m_all - m_empty
    assert isinstance(one.f, float) and one.m == pytest.approx(r.m[2], rel=1e-6, abs=1e-7)
    tol = 1e-6 * max(1.0, abs(r.m[2])) / abs(r.m_all - r.m_empty)
    assert one.f == pytest.approx(r.f[2], rel=1e-6, abs=tol)


def test_faithfulness_of_empty_and_full_is_exact_on_every_metric(arch_model):
    _, model = arch_model
    pairs = random_pairs(n=2, pos=6, seed=1)
    shape = (int(model.cfg.n_layers), int(model.cfg.n_heads))
    full = [(i, j) for i in range(shape[0]) for j in range(shape[1])]
    for metric in ("logit_diff", "kl"):
        for direction in ("noising", "denoising"):
            r = pa.faithfulness(model, pairs, [[], full], metric=metric, direction=direction)
            assert r.f == [0.0, 1.0], (metric, direction)


def test_curve_equals_faithfulness_of_its_own_topk_sets(arch_model):
    name, model = arch_model
    pairs = random_pairs(n=3, pos=8, seed=2)
    rep = pa.audit(model, pairs, methods=("atp",))
    scores = rep.scores["atp"]
    for absolute in (True, False):
        c = pa.circuit_curve(model, pairs, scores, absolute=absolute, base=rep.base)
        n = c.n_components
        assert c.sizes == list(range(n + 1))  # a small map: every k
        assert c.fractions == [k / n for k in c.sizes]
        assert c.faithfulness[0] == 0.0 and c.faithfulness[-1] == 1.0
        circuits = [c.circuit(k) for k in c.sizes]
        r = pa.faithfulness(model, pairs, circuits, base=rep.base)
        assert c.faithfulness == pytest.approx(r.f, rel=1e-6, abs=1e-9), name
        # the ranking: |score| descending, or the score's push towards m(empty)
        key = scores.abs() if absolute else scores * (1 if c.m_empty >= c.m_all else -1)
        vals = [float(key[i, j]) for i, j in c.order]
        assert vals == sorted(vals, reverse=True)
        # CPR / CMD are the trapezoids of the curve
        x, f = c.fractions, c.faithfulness
        cpr = sum((x[i + 1] - x[i]) * (f[i + 1] + f[i]) / 2 for i in range(len(x) - 1))
        cmd = sum(
            (x[i + 1] - x[i]) * (abs(1 - f[i + 1]) + abs(1 - f[i])) / 2 for i in range(len(x) - 1)
        )
        assert c.cpr == pytest.approx(cpr, rel=1e-12) and c.cmd == pytest.approx(cmd, rel=1e-12)
        for level, got in ((0.8, c.smallest_80), (0.9, c.smallest_90)):
            first = next(k for k, v in zip(c.sizes, f, strict=True) if v >= level)
            assert got == first


def test_curve_sizes_and_batched_pass():
    assert K.default_sizes(10) == list(range(11))
    assert K.default_sizes(144) == [0, 1, 3, 7, 14, 29, 72, 144]
    assert K.check_sizes([5, 2, 2], 12) == [0, 2, 5, 12]
    with pytest.raises(ValueError, match="outside 0..12"):
        K.check_sizes([13], 12)
    with pytest.raises(ValueError, match="whole numbers"):
        K.check_sizes([1.5], 12)


def test_many_circuits_share_one_forward(arch_model):
    _, model = arch_model
    pairs = random_pairs(n=2, pos=6, seed=3)
    rep = pa.audit(model, pairs, methods=("atp",))
    c = pa.circuit_curve(model, pairs, rep.scores["atp"], sizes=[1, 2, 3, 4], base=rep.base)
    assert c.sizes == [0, 1, 2, 3, 4, 8]
    # a cached base: no backward, and every circuit (plus m(empty)) in one batched forward
    assert c.cost["backward"] == 0 and c.cost["forward"] == 1


def test_bad_input_is_one_clear_error(arch_model):
    _, model = arch_model
    pairs = random_pairs(n=2, pos=6)
    with pytest.raises(ValueError, match="outside the 2 x 4 map"):
        pa.faithfulness(model, pairs, [(5, 0)])
    with pytest.raises(ValueError, match=r"\[layer, index\]"):
        pa.faithfulness(model, pairs, [[(0, 1, 2)]])
    with pytest.raises(ValueError, match="scores have shape"):
        pa.circuit_curve(model, pairs, torch.zeros(3, 3))


@pytest.mark.parametrize("site", ["mlp", "resid"])
def test_all_but_one_equals_activation_patching_on_every_site(site):
    from .conftest import random_model

    model = random_model("gpt2")
    pairs = random_pairs(n=2, pos=6, seed=4)
    rep = pa.audit(model, pairs, site=site, methods=("ap",))
    ap = rep.scores["ap"]
    comps = [(i, j) for i in range(ap.shape[0]) for j in range(ap.shape[1])]
    circuits = [[x for x in comps if x != c] for c in comps]
    r = pa.faithfulness(model, pairs, circuits, site=site, base=rep.base)
    for c, m in zip(comps, r.m, strict=True):
        assert m - r.m_all == pytest.approx(float(ap[c]), rel=1e-4, abs=1e-5), (site, c)
