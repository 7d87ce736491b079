"""The public API: bad inputs give one-line errors, reports serialise, verify reuses the cache,
chunking and cancellation behave."""

from __future__ import annotations

import json

import pytest
import torch

import patchaudit as pa
from patchaudit.tasks.pairs import check_pairs

from .conftest import one_copy_budget, random_pairs


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


def test_mismatched_token_lengths(tiny_model):
    with pytest.raises(ValueError) as e:
        pa.PromptPairs.from_tokens(
            torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long), [1, 2], [3, 4]
        )
    assert "same token length" in one_line(e)


def test_empty_strings():
    with pytest.raises(ValueError) as e:
        pa.PromptPairs.from_text(["a b"], [""], [" x"], [" y"])
    assert "pair 1:" in one_line(e) and "empty" in str(e.value)  # numbered from 1, as on the page
    with pytest.raises(ValueError) as e:
        pa.PromptPairs.from_text([], [], [], [])
    one_line(e)


def test_text_problems_named_per_pair(tiny_model):
    """Placeholder tokenizer of the tiny model: '<i>' is token i, anything else is unknown."""
    pairs = pa.PromptPairs.from_text(
        ["<1> <2> <3>", "<1> <2> <3>"], ["<1> <4> <3>", "<1> <4>"], ["<5>", "<5>"], ["<6>", "<6>"]
    )
    with pytest.raises(ValueError) as e:
        pairs.tokenize(tiny_model)
    msg = one_line(e)
    assert msg.startswith("pair 2:") and "same length" in msg


def test_multi_token_answer(tiny_model):
    pairs = pa.PromptPairs.from_text(["<1> <2>"], ["<1> <3>"], ["<5> <6>"], ["<7>"])
    with pytest.raises(ValueError) as e:
        pairs.tokenize(tiny_model)
    assert "not one" in one_line(e) and "pair 1:" in str(e.value)


def test_check_pairs_reports_without_raising(tiny_model):
    out = check_pairs(
        tiny_model, ["<1> <2>", "<1> <2>"], ["<1> <3>", "<1>"], ["<5>", "<5> <6>"], ["<7>", ""]
    )
    assert out[0]["problems"] == []
    assert out[0]["clean_tokens"][-2:] == ["<1>", "<2>"]  # after the BOS the bridge sets
    probs = " | ".join(out[1]["problems"])
    assert "same length" in probs and "not one" in probs and "empty" in probs


def test_prompt_longer_than_context(tiny_model):
    n_ctx = tiny_model.cfg.n_ctx
    t = torch.zeros(1, n_ctx + 1, dtype=torch.long)
    with pytest.raises(ValueError) as e:
        pa.PromptPairs.from_tokens(t, t, [1], [2]).tokenize(tiny_model)
    assert "context" in one_line(e)


def test_unknown_model():
    with pytest.raises(pa.ModelLoadError) as e:
        pa.load_model("no-such-org/no-such-model-xyz")
    assert "cannot load model" in one_line(e)
    with pytest.raises(pa.ModelLoadError):
        pa.load_model(12345)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"site": "neurons"}, "unknown site"),
        ({"methods": ["atp", "magic"]}, "unknown method"),
        ({"metric": "accuracy"}, "unknown metric"),
        ({"direction": "sideways"}, "unknown direction"),
        ({"hvp_probes": 0}, "hvp_probes must be a positive integer"),
        ({"hvp_probes": -3}, "hvp_probes must be a positive integer"),
        ({"ig_steps": 0, "methods": ["ig"]}, "ig_steps must be a positive integer"),
        ({"methods": []}, "no methods"),
        ({"tau": 1.5}, "tau must lie in"),
    ],
)
def test_bad_audit_arguments(tiny_model, tiny_pairs, kw, words):
    with pytest.raises(ValueError) as e:
        pa.audit(tiny_model, tiny_pairs, **kw)
    assert words in one_line(e)


def test_unknown_task():
    with pytest.raises(ValueError) as e:
        pa.PromptPairs.from_task("sorting", n=4)
    assert "unknown task" in one_line(e)


def test_report_serialises_and_round_trips(tiny_model, tiny_pairs):
    r = pa.audit(
        tiny_model, tiny_pairs, methods=["atp", "hvp", "ap"], hvp_probes=3, hvp_mode="tile"
    )
    d = r.to_dict()
    s = json.dumps(d, allow_nan=False)  # strictly JSON-safe: inf/nan become null
    back = pa.Report.from_dict(json.loads(s))
    assert torch.allclose(back.scores["hvp"], r.scores["hvp"])
    assert torch.equal(back.flags, r.flags)
    assert back.verified == r.verified and len(r.verified) == 8  # ap verifies every component
    assert set(d["cost"]) >= {"atp", "hvp", "ap", "base"}
    assert d["cost"]["atp"]["forward"] == 2 and d["cost"]["atp"]["backward"] == 1
    # hvp (fused screen): the base pass carries the probes on its batch axis; one double
    # backward on top of AtP, no extra forward
    assert d["cost"]["hvp"]["forward"] == 2 and d["cost"]["hvp"]["backward"] == 2
    fig = r.figure("hvp")
    assert fig.data[0].type == "heatmap" and fig.data[0].zmid == 0
    assert "reliability" in fig.data[0].text[0][0]
    with pytest.raises(ValueError):
        r.figure("ig")


def test_reliability_definitions(tiny_model, tiny_pairs):
    """rho, the calibrated interval, materiality and flags as docs/METHODS.md defines them."""
    from patchaudit.estimators import reliability as R

    r = pa.audit(tiny_model, tiny_pairs, methods=["atp", "hvp_exact"], tau=0.9)
    a1, q = r.scores["atp"], r.q
    rr = R.ratio(a1, q)
    assert torch.allclose(r.reliability, 1 / (1 + rr))
    est = a1 + q / 2
    assert r.estimate_method == "hvp_exact" and torch.allclose(r.estimate, est)
    cal = r.calibration
    assert cal is not None and cal["why"]
    te = abs(r.total_effect)
    f = max(1.0, te / float(est.abs().sum()))
    e = cal["scale"] * ((q / 2).abs() + (cal["kappa"] + f - 1) * est.abs())
    assert torch.allclose(r.error_bound, e)
    lo, hi = r.interval
    assert torch.allclose(lo, est - e) and torch.allclose(hi, est + e)  # logit_diff: no clip
    line = 0.01 * max(te, float(est.abs().sum()))
    assert r.material_threshold == pytest.approx(line)
    mat = (torch.maximum(lo.abs(), hi.abs()) >= line) | (est.abs() >= line)
    assert torch.equal(r.material, mat)
    assert not bool((r.flags & ~mat).any())  # nothing immaterial is flagged
    low = r.reliability < 0.9  # tau given: a material low-rho component is flagged (or deferred)
    assert bool(((r.flags | r.deferred) >= (mat & low)).all())
    assert bool((r.flag_reasons["reliability"] <= (mat & low)).all())


def test_verify_with_cached_base_costs_one_forward(tiny_model, tiny_pairs, tmp_path):
    r = pa.audit(tiny_model, tiny_pairs, methods=["atp", "hvp"])
    path = tmp_path / "base.safetensors"
    r.base.save(str(path))
    base = pa.BaseCache.load(str(path))
    assert base.nbytes > 0
    cached = pa.verify(tiny_model, tiny_pairs, [[1, 2]], base=base)
    fresh = pa.verify(tiny_model, tiny_pairs, [[1, 2]])
    assert cached.cost["forward"] == 1 and cached.cost["backward"] == 0
    assert fresh.cost["forward"] == 3  # source + base forwards (and a backward) first
    full = pa.audit(tiny_model, tiny_pairs, methods=["ap"]).scores["ap"]
    assert cached.values[(1, 2)] == pytest.approx(float(full[1, 2]), rel=1e-5)
    two_layers = pa.verify(tiny_model, tiny_pairs, [[0, 1], [0, 3], [1, 0]], base=base)
    assert two_layers.cost["forward"] == 2  # one batched forward per layer
    with pytest.raises(ValueError) as e:
        pa.verify(tiny_model, tiny_pairs, [[5, 0]], base=base)
    assert "outside" in one_line(e)
    # a re-run of the audit on the cached base spends no base passes
    again = pa.audit(tiny_model, tiny_pairs, methods=["atp", "hvp"], base=base)
    assert again.cost["atp"]["forward"] == 0 and torch.allclose(
        again.scores["hvp"], r.scores["hvp"]
    )


def test_memory_budget_chunks_give_the_same_numbers(tiny_model, tiny_pairs):
    methods = ["ap", "hvp", "hvp_exact", "ig", "mhvp"]
    kw = dict(methods=methods, hvp_probes=5, ig_steps=5, mhvp_steps=3, hvp_mode="tile")
    big = pa.audit(tiny_model, tiny_pairs, **kw)
    one = one_copy_budget(tiny_model, tiny_pairs, methods=methods, hvp_mode="tile")
    small = pa.audit(tiny_model, tiny_pairs, memory_budget_mb=one, **kw)  # one copy per forward
    assert small.cost["plan"]["max_copies"] == 1
    for m in methods:
        assert torch.allclose(big.scores[m], small.scores[m], rtol=1e-4, atol=1e-7), m
    assert small.cost["hvp_exact"]["forward"] > big.cost["hvp_exact"]["forward"]
    assert small.cost["ap"]["forward"] > big.cost["ap"]["forward"]


def test_cancellation_between_chunks(tiny_model, tiny_pairs):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(pa.Cancelled):
        pa.audit(
            tiny_model,
            tiny_pairs,
            methods=["atp", "hvp_exact", "ap"],
            should_stop=stop,
            memory_budget_mb=one_copy_budget(tiny_model, tiny_pairs),
        )


def test_progress_reports_phases_and_reaches_one(tiny_model, tiny_pairs):
    seen = []
    pa.audit(
        tiny_model,
        tiny_pairs,
        methods=["atp", "hvp", "ap"],
        progress=lambda ph, f, n: seen.append((ph, f, n)),
    )
    phases = [s[0] for s in seen]
    assert phases[0].startswith("base") and "hvp" in phases and "ap" in phases
    fracs = [s[1] for s in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    assert seen[-1][2] > 3


def test_screen_flag_fix(arch_model):
    _, model = arch_model
    pairs = random_pairs(n=4)
    fix = pa.screen_flag_fix(model, pairs, tau=0.95)
    full = pa.audit(model, pairs, methods=["ap"]).scores["ap"]
    assert fix.full_sweep_forwards == full.numel()
    assert fix.fix_forwards == len(fix.flagged) == int(fix.report.flags.sum())
    for (i, j), v in fix.verified.items():
        assert fix.estimates[i, j] == pytest.approx(v) and v == pytest.approx(
            float(full[i, j]), rel=1e-4, abs=1e-6
        )
    # the fix never makes the estimate worse than the screen
    screen_err = (fix.report.estimate - full).abs().sum()
    assert float((fix.estimates - full).abs().sum()) <= float(screen_err) + 1e-6


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_hvp_tile_and_loop_modes_agree(tiny_model, tiny_pairs, direction):
    """The batch-axis (GPU) and shared-graph (CPU) HVP schedules compute the same numbers."""
    methods = ["hvp", "hvp_joint", "hvp_exact", "mhvp"]
    kw = dict(direction=direction, methods=methods, hvp_probes=3, mhvp_steps=2, seed=4)
    a = pa.audit(tiny_model, tiny_pairs, hvp_mode="tile", **kw)
    b = pa.audit(tiny_model, tiny_pairs, hvp_mode="loop", **kw)
    for m in methods:
        assert torch.allclose(a.scores[m], b.scores[m], rtol=1e-5, atol=1e-8), m
    sa = pa.audit(tiny_model, tiny_pairs, hvp_mode="tile", **{**kw, "methods": ["hvp"]})
    sb = pa.audit(tiny_model, tiny_pairs, hvp_mode="loop", **{**kw, "methods": ["hvp"]})
    assert torch.allclose(sa.q_se, sb.q_se, rtol=1e-4, atol=1e-8)
    # fused screen, loop: one double backward per probe on the base graph; tile: one in all
    assert b.cost["hvp"]["forward"] == b.cost["base"]["forward"] == 2
    assert b.cost["hvp"]["backward"] - b.cost["base"]["backward"] == 3
    assert a.cost["hvp"]["backward"] - a.cost["base"]["backward"] == 1
    # unfused (a cached base): its own forward and first backward, then the double backward(s)
    c = pa.audit(tiny_model, tiny_pairs, hvp_mode="tile", base=a.base, **kw)
    assert c.cost["hvp"]["forward"] == 1 and c.cost["hvp"]["backward"] == 2
    assert torch.allclose(c.scores["hvp"], a.scores["hvp"], rtol=1e-5, atol=1e-8)


@pytest.mark.bundled
def test_unknown_words_are_named_before_they_reach_the_model():
    model = pa.load_model("bundled", device="cpu")
    ok = "When Mary and John went to the store , John gave a drink to"
    bad = "When Mary and John went to the store , Zelda gave a drink to"  # not in the vocabulary
    out = check_pairs(
        model,
        [ok, ok],
        [ok.replace("John gave", "Kevin gave"), bad],
        [" Mary", " Mary"],
        [" John", " John"],
    )
    assert out[0]["problems"] == []
    assert any("vocabulary lacks" in p for p in out[1]["problems"])
    with pytest.raises(ValueError) as e:
        pa.PromptPairs.from_text([ok], [bad], [" Mary"], [" John"]).tokenize(model)
    assert one_line(e).startswith("pair 1: the corrupted prompt has words")
