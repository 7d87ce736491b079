"""Flags and the screen: a vanishing first order never passes silently (revised materiality,
screen informativeness, flags with reasons), one colour convention and shared scale, resid
labels with tokens, unknown words named, pairs from files, short reprs, partial results on
cancel, and Screen-Flag-Fix compared like with like. Bundled model and the tiny GPT-2."""

from __future__ import annotations

import json
import math

import pytest
import torch

import patchaudit as pa
from patchaudit.estimators import reliability as R
from patchaudit.tasks.pairs import PairsParseError, parse_pairs


@pytest.fixture(scope="module")
def bundled():
    return pa.load_model("bundled", device="cpu")


# -- item 1: KL and a vanishing first order ---------------------------------------------------


@pytest.mark.parametrize("metric", ["logit_diff", "prob_diff", "logprob", "kl"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_largest_ap_component_is_flagged_when_atp_is_off_by_half(bundled, metric, direction):
    """Acceptance: on the bundled model the component with the largest |ap| is flagged whenever
    its AtP error exceeds 50% (two prompt sets; seed 1 has a prob_diff denoising case whose
    corrected estimate leaves the metric's range)."""
    for seed in (0, 1):
        pairs = pa.PromptPairs.from_task("ioi", n=16, seed=seed)
        r = pa.audit(
            bundled,
            pairs,
            metric=metric,
            direction=direction,
            methods=("atp", "hvp", "sat", "ap"),
        )
        ap, atp = r.scores["ap"], r.scores["atp"]
        i = int(ap.abs().argmax())
        li, ci = divmod(i, ap.shape[1])
        err = float((atp[li, ci] - ap[li, ci]).abs() / ap[li, ci].abs())
        if err > 0.5:
            assert bool(r.flags[li, ci]), (metric, direction, seed, err, r.table(3))
            assert r.reasons_grid()[li][ci], "a flagged component names its reasons"
        # nothing with a true material effect is called immaterial
        truly = ap.abs() >= 0.01 * abs(r.total_effect)
        assert not bool((truly & ~r.material & torch.isinf(r.error_bound)).any())


def test_kl_noising_screen_is_uninformative_and_flags_what_matters(bundled):
    pairs = pa.PromptPairs.from_task("ioi", n=16, seed=0)
    r = pa.audit(
        bundled, pairs, metric="kl", direction="noising", methods=("atp", "hvp", "sat", "ap")
    )
    assert float(r.scores["atp"].abs().max()) < 1e-5  # the gradient of KL vanishes at clean
    assert r.screen["informative"] is False and r.screen["first_order_vanishes"] is True
    assert "KL noising" in r.screen["message"]
    # every component with a material effect is flagged (AtP is 100% off on each), with the
    # reason that says why, and the flags stay selective (before issue 18: 46 of 48 flagged)
    ap = r.scores["ap"]
    truly = ap.abs() >= 0.01 * ap.abs().sum()
    assert bool(r.flags[truly].all()), r.table(6)
    reasons = r.reasons_grid()
    assert all("vanishing" in reasons[i][j] for i, j in r.flags.nonzero().tolist())
    assert float(r.flags.float().mean()) <= 0.4
    # the screen ranks by the leading estimate: the largest |ap| component is among the flagged
    assert bool(r.flags.flatten()[int(ap.abs().argmax())])
    assert "uninformative" in repr(r)
    d = r.to_dict()
    assert d["screen"]["informative"] is False and json.dumps(d)


def test_screen_informative_for_logit_diff_and_denoising_kl(bundled):
    pairs = pa.PromptPairs.from_task("ioi", n=8, seed=0)
    for metric, direction in (("logit_diff", "noising"), ("kl", "denoising")):
        r = pa.audit(bundled, pairs, metric=metric, direction=direction)
        assert r.screen["informative"] is True, (metric, direction)
        assert r.screen["first_order_vanishes"] is False


def test_first_order_vanishes_rule():
    a1 = torch.tensor([[1e-4, -2e-4], [0.0, 3e-4]])
    assert R.first_order_vanishes(a1, 1.0)  # 0.06% of the total effect
    assert not R.first_order_vanishes(a1 * 1000, 1.0)
    assert R.first_order_vanishes(a1 * 1000, 1.0, "kl", "noising")  # structural


def test_materiality_needs_the_bound_to_rule_out():
    a1 = torch.tensor([1e-4, 1e-4, 0.5])
    a2 = torch.tensor([2e-4, 2e-4, 0.4])
    e = torch.tensor([math.inf, 1e-4, 0.05])
    m = R.material(a1, a2, total_effect=1.0, e=e)
    assert m.tolist() == [True, False, True]
    assert R.material(a1, a2, 1.0, e=torch.tensor([float("nan"), 1e-4, 0.0]))[0]  # missing bound


def test_flag_reasons_at_tau_zero_sign_cutoff_unbounded_atp_error():
    a1 = torch.tensor([1.0, 1.0, -1.0, 2.0, 1.0])
    a2 = torch.tensor([1.1, 1.0, 0.5, 1.0, 1.5])
    rho = torch.ones(5)
    e = torch.tensor([0.01, 0.3, 0.1, math.inf, 0.01])
    mat = torch.ones(5, dtype=torch.bool)
    why = R.flag_reasons(a1, a2, rho, e, mat, tau=0.0, cutoff=1.2)
    assert not bool(why["reliability"].any())  # tau = 0: never by reliability
    # 1.0 +- 0.3 straddles 1.2; so does an infinite interval
    assert why["cutoff"].tolist() == [False, True, False, True, False]
    assert why["sign"].tolist() == [False, False, True, False, False]
    assert why["unbounded"].tolist() == [False, False, False, True, False]
    # 1.5 +- 0.01 against A1 = 1: AtP is ~33% off, fine; the range rule below
    assert not bool(why["atp_error"][4])
    why = R.flag_reasons(a1, a2, rho, e, mat, 0.0, 1.2, feasible=(-1.0, 1.2))
    assert bool(why["atp_error"][4])  # 1.5 +- 0.01 lies outside what the metric can reach
    assert R.feasible_range("prob_diff", 0.25) == (-1.25, 0.75)
    assert R.feasible_range("kl", 0.0)[0] == 0.0


# -- item 3: one colour convention, shared scale -------------------------------------------


def test_figure_negative_blue_shared_scale_metric_units(tiny_model, tiny_pairs):
    r = pa.audit(tiny_model, tiny_pairs, methods=("atp", "hvp", "ap"))
    z = r.shared_zmax()
    assert z == pytest.approx(max(float(v.abs().max()) for v in r.scores.values()))
    for m in ("atp", "hvp", "ap"):
        h = r.figure(m, zmax=z).data[0]
        assert h.zmin == -z and h.zmax == z and h.zmid == 0
        scale = [c for _, c in h.colorscale]
        low, high = scale[0], scale[-1]  # rgb(r,g,b)
        rgb = [tuple(int(x) for x in c[c.index("(") + 1 : -1].split(",")) for c in (low, high)]
        assert rgb[0][2] > rgb[0][0], "negative is blue"
        assert rgb[1][0] > rgb[1][2], "positive is red"
        assert h.colorbar.title.text == "logit diff (answer - wrong)"
    assert "negative_means" in r.to_dict() and "supports" in r.to_dict()["negative_means"]


def test_cli_html_uses_the_shared_scale(tiny_model, tiny_pairs, tmp_path):
    from patchaudit.cli import write_html

    r = pa.audit(tiny_model, tiny_pairs, methods=("atp", "hvp"))
    out = tmp_path / "r.html"
    write_html(r, out)
    html = out.read_text()
    assert "negative blue, positive red" in html and f"{r.shared_zmax():.3g}" in html


# -- item 4: resid labels ----------------------------------------------------------------------


def test_resid_components_carry_layer_position_and_token(bundled):
    pairs = pa.PromptPairs.from_task("ioi", n=4, seed=0)
    r = pa.audit(bundled, pairs, site="resid", methods=("atp",))
    pos = r.labels["positions"]
    assert len(pos) == r.scores["atp"].shape[1]
    tokens = bundled.tokenizer.convert_ids_to_tokens(pairs.tokenize(bundled).clean[0].tolist())
    assert pos[3] == tokens[3]
    from patchaudit.report import component_label

    name = component_label(r.labels, 1, 3)
    assert name == f"L1 @3 {tokens[3]!r}" and ".H" not in name
    assert r.to_dict()["labels"]["positions"] == pos
    assert name in r._hover()[1][3]


# -- item 5: unknown words ------------------------------------------------------------------


def test_unknown_words_are_named_with_a_punctuation_hint(bundled):
    pairs = pa.PromptPairs.from_text(
        ["When Mary and Zed went to the store, John gave a drink to"],
        ["When Amy and Zed went to the store, John gave a drink to"],
        [" Mary"],
        [" John"],
    )
    with pytest.raises(ValueError) as e:
        pairs.tokenize(bundled)
    msg = str(e.value)
    # the bundled tokenizer splits punctuation off words: only the unknown name is named
    assert "'Zed'" in msg and "store" not in msg
    # a word-level tokenizer that splits on spaces only reads "store," as one unknown word:
    # the message names it and says how to space it
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from patchaudit.models.train_bundled import build_vocab
    from patchaudit.tasks.pairs import unknown_words_message

    tk = Tokenizer(WordLevel(vocab=build_vocab(), unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    spaces_only = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    msg = unknown_words_message(spaces_only, "clean prompt", pairs.clean[0])
    assert "'Zed'" in msg and "'store,'" in msg and "'store ,'" in msg
    from patchaudit.tasks.pairs import word_vocab

    words = word_vocab(bundled.tokenizer)
    assert "store" in words and "<unk>" not in words
    assert word_vocab(object()) is None


# -- item 6: repr -------------------------------------------------------------------------------


def test_reprs_are_short_summaries(bundled):
    pairs = pa.PromptPairs.from_task("ioi", n=8, seed=0)
    r = pa.audit(bundled, pairs, methods=("atp", "hvp"))
    for obj in (
        r,
        pa.verify(bundled, pairs, [[0, 2], [1, 0]], base=r.base),
        pa.screen_flag_fix(bundled, pairs, report=r),
    ):
        s = repr(obj)
        assert len(s) < 600, s
        assert "tensor(" not in s and "BaseCache" not in s
    s = repr(r)
    assert "model=bundled" in s and "site=heads" in s and "flagged=" in s and "top:" in s


# -- item 7: pairs from files -----------------------------------------------------------------


def test_parse_pairs_formats_headers_and_line_errors(tmp_path):
    pairs, fmt = parse_pairs("wrong\tanswer\tcorrupted\tclean\n J\t M\tb c\ta c\n")
    assert fmt == "tsv" and pairs == [
        {"clean": "a c", "corrupted": "b c", "answer": " M", "wrong": " J"}
    ]
    pairs, fmt = parse_pairs('# comment\n"x, y",z, M, J\n\n')
    assert fmt == "csv" and pairs[0]["clean"] == "x, y" and pairs[0]["answer"] == " M"
    with pytest.raises(PairsParseError, match="line 3: expected 4 columns"):
        parse_pairs("a\tb\tc\td\n\na\tb\tc\n")
    with pytest.raises(PairsParseError, match="line 1: not valid JSON"):
        parse_pairs("{bad", "jsonl")
    with pytest.raises(PairsParseError, match="line 2: the answer field is empty"):
        parse_pairs(
            '{"clean":"a","corrupted":"b","answer":" c","wrong":" d"}\n'
            '{"clean":"a","corrupted":"b","answer":" ","wrong":" d"}',
            "auto",
        )
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"clean":"When Mary and John went to the store , John gave a drink to",'
        '"corrupted":"When Amy and Eric went to the store , Eric gave a drink to",'
        '"answer":"Mary","wrong":"John"}\n'
    )
    p = pa.PromptPairs.from_file(f)
    assert len(p) == 1 and p.answers == ["Mary"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n")
    with pytest.raises(ValueError, match="bad.csv: line 1"):
        pa.PromptPairs.from_file(bad)


@pytest.mark.bundled
def test_cli_audit_reads_pairs_from_a_file(tmp_path, capsys):
    from patchaudit.cli import main

    f = tmp_path / "pairs.tsv"
    f.write_text(
        "clean\tcorrupted\tanswer\twrong\n"
        "When Mary and John went to the store , John gave a drink to\t"
        "When Amy and Eric went to the store , Eric gave a drink to\tMary\tJohn\n"
    )
    assert main(["audit", "--pairs", str(f), "--methods", "atp,hvp", "--fix", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "pairs.tsv x1" in out
    assert "component forwards vs 48 for a full ap sweep" in out and "batched passes vs" in out
    f.write_text("only\ttwo\n")
    assert main(["audit", "--pairs", str(f)]) == 2
    assert "pairs.tsv: line 1" in capsys.readouterr().err


# -- item 8: Screen-Flag-Fix like with like --------------------------------------------------


def test_fix_compares_component_forwards_batch_passes_and_seconds(bundled):
    pairs = pa.PromptPairs.from_task("ioi", n=8, seed=0)
    r = pa.audit(bundled, pairs, methods=("atp", "hvp", "ap"), tau=1.0)
    fix = pa.screen_flag_fix(bundled, pairs, report=r)
    n = r.estimate.numel()
    assert fix.full_sweep_forwards == n and fix.fix_forwards == len(fix.flagged) > 0
    # a full sweep batches each layer's components: as many passes as the ap run took
    ap_passes = r.cost["ap"]["forward"] - r.cost["base"]["forward"]
    assert fix.full_sweep_batch_passes == ap_passes
    assert 1 <= fix.fix_batch_passes <= fix.full_sweep_batch_passes
    assert fix.full_sweep_seconds_estimated is False and fix.full_sweep_seconds > 0
    r2 = pa.audit(bundled, pairs, methods=("atp", "hvp"), tau=1.0)
    fix2 = pa.screen_flag_fix(bundled, pairs, report=r2)
    assert fix2.full_sweep_seconds_estimated is True and fix2.full_sweep_seconds is not None


# -- item 12: cancel keeps completed methods ---------------------------------------------------


def test_cancel_keeps_the_methods_that_completed(bundled):
    pairs = pa.PromptPairs.from_task("ioi", n=4, seed=0)
    seen: list[str] = []

    def progress(phase: str, frac: float, passes: int) -> None:
        seen.append(phase)

    def stop() -> bool:
        return "ap" in seen  # cancel once ap has started

    with pytest.raises(pa.Cancelled) as e:
        pa.audit(
            bundled,
            pairs,
            methods=("atp", "hvp", "ap"),
            progress=progress,
            should_stop=stop,
        )
    part = e.value.partial  # type: ignore[attr-defined]
    assert part.partial is True and part.methods == ["atp", "hvp"]
    assert set(part.scores) == {"atp", "hvp"} and part.flags is not None
    assert part.to_dict()["partial"] is True
    with pytest.raises(pa.Cancelled) as e2:  # cancelled before anything completed
        pa.audit(bundled, pairs, methods=("atp",), should_stop=lambda: True)
    assert getattr(e2.value, "partial", None) is None
