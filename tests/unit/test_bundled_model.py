"""The bundled default model (committed weights) and the IOI / induction / greater-than
generators."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from patchaudit.models.train_bundled import held_out_gt, held_out_ioi, is_held_out
from patchaudit.tasks.greater_than import GT_EXAMPLE, YEARS, make_greater_than, prob_diff_greater
from patchaudit.tasks.induction import FILLER, INDUCTION_EXAMPLE, filler_ids, make_induction
from patchaudit.tasks.ioi import IOI_EXAMPLE, NAMES, TEMPLATES, make_ioi

BUNDLED = Path(__file__).resolve().parents[2] / "backend" / "patchaudit" / "models" / "bundled"

pytestmark = pytest.mark.bundled  # (make test-fast leaves these out)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel.from_pretrained(BUNDLED)
    m.eval()
    return m


def _encode(tok, texts):
    rows = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in texts]
    return torch.tensor(rows)


def _ids(tok, words):
    return torch.tensor([tok(w, add_special_tokens=False).input_ids[0] for w in words])


# ----------------------------------------------------------------------------- files


def test_bundled_files_present():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (BUNDLED / name).is_file(), name
    size = (BUNDLED / "model.safetensors").stat().st_size
    assert size < 8 * 2**20
    cfg = json.loads((BUNDLED / "config.json").read_text())
    assert cfg["model_type"] == "gpt2"
    assert cfg["n_layer"] >= 6 and cfg["n_head"] >= 8  # 48+ heads
    assert 128 <= cfg["n_embd"] <= 192 and cfg["n_positions"] >= 64
    assert cfg["attn_pdrop"] == cfg["resid_pdrop"] == cfg["embd_pdrop"] == 0
    # the held-out targets, as measured by the training script (512 prompts each)
    h = json.loads((BUNDLED / "metrics.json").read_text())["held_out"]
    assert h["ioi_clean"]["acc_vs_all_names"] >= 0.98
    # induction: >= 95% at every position of the repeat after its first token, r[1] (the
    # repeat's first one-token match) included
    per_pos = h["induction_clean"]["acc_per_position"]
    assert len(per_pos) == 7 and min(per_pos) >= 0.95 and h["induction_clean"]["acc_top1"] >= 0.95
    assert abs(min(per_pos) - h["induction_clean"]["acc_min_position"]) < 1e-3
    assert h["greater_than_clean"]["acc"] >= 0.90


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_properties(tok):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.bos_token == "<bos>" and tok.pad_token == "<pad>" and tok.unk_token == "<unk>"
    assert (
        tok("When Mary and John", add_special_tokens=False).input_ids
        == _ids(tok, ["When", "Mary", "and", "John"]).tolist()
    )
    # no automatic special tokens, even with the default add_special_tokens=True
    assert len(tok("When Mary and John").input_ids) == 4
    assert tok.bos_token_id not in tok("When Mary and John").input_ids
    # a leading space does not matter
    assert tok(" Mary", add_special_tokens=False).input_ids == tok("Mary").input_ids
    assert len(tok(" Mary", add_special_tokens=False).input_ids) == 1
    for name in NAMES:
        ids = tok(" " + name, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, name
    for w in FILLER + [",", "."]:
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, w
    for t in TEMPLATES:
        ids = tok(t.format(A="Mary", B="John", C="John"), add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids, t
    assert tok("zebra", add_special_tokens=False).input_ids == [tok.unk_token_id]
    assert len(NAMES) >= 100
    # punctuation is split off words, four-digit years become two two-digit tokens
    assert tok.tokenize("the store, John.") == ["the", "store", ",", "John", "."]
    assert tok.tokenize("the year 1732 to the year 17") == [
        "the",
        "year",
        "17",
        "32",
        "to",
        "the",
        "year",
        "17",
    ]
    assert tok.tokenize("t07 t93") == ["t07", "t93"]  # filler words stay whole
    for y in YEARS:
        ids = tok(" " + y, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, y


def test_word_vocab(tok):
    from patchaudit.models import placeholder_tokenizer
    from patchaudit.tasks.pairs import word_vocab

    words = word_vocab(tok)
    assert words is not None and len(words) == len(tok.get_vocab()) - 3
    assert {"Mary", "store", ",", "17", "t00"} <= set(words)
    assert not {"<bos>", "<pad>", "<unk>"} & set(words)
    assert word_vocab(placeholder_tokenizer(8)) is None


def test_bridge_boots_offline():
    from transformer_lens.model_bridge import TransformerBridge

    m = TransformerBridge.boot_transformers(str(BUNDLED))
    assert m.cfg.n_layers >= 6 and m.cfg.n_heads >= 8
    toks = m.to_tokens("When Mary and John went to the store,")
    assert toks.shape == (1, 10) and int(toks[0, 0]) == m.tokenizer.bos_token_id
    _, cache = m.run_with_cache(toks)
    h = m.cfg.n_heads
    assert cache["blocks.0.attn.hook_z"].shape[-2:] == (h, m.cfg.d_model // h)


# ----------------------------------------------------------------------------- behaviour


def _ioi_logit_diffs(model, tok, pairs, kind):
    logits = model(_encode(tok, [p[kind] for p in pairs])).logits[:, -1]  # [n, vocab]
    ans = _ids(tok, [p["answer"] for p in pairs])
    wrong = _ids(tok, [p["wrong"] for p in pairs])
    names = _ids(tok, NAMES)
    la = logits.gather(1, ans[:, None])[:, 0]
    lw = logits.gather(1, wrong[:, None])[:, 0]
    others = logits[:, names].masked_fill(names[None] == ans[:, None], -torch.inf)
    acc = (la > others.max(1).values).float().mean().item()
    return acc, (la - lw)


@torch.no_grad()
def test_ioi_accuracy_and_corruptions(hf_model, tok):
    # held-out prompts (never trained on), from a seed the training script does not use
    pairs = held_out_ioi(64, seed=2024, corruption="abc")
    assert all(is_held_out(p["clean"]) for p in pairs)
    acc, ld_clean = _ioi_logit_diffs(hf_model, tok, pairs, "clean")
    assert acc >= 0.95
    assert ld_clean.mean() > 0 and (ld_clean > 0).float().mean() >= 0.95
    _, ld_abc = _ioi_logit_diffs(hf_model, tok, pairs, "corrupted")
    # no name repeated: on average IO and S are equally likely (either sign per prompt)
    assert ld_abc.mean().abs() < 0.5 * ld_clean.mean()
    swap = held_out_ioi(64, seed=2024, corruption="swap")
    _, ld_swap = _ioi_logit_diffs(hf_model, tok, swap, "corrupted")
    assert ld_swap.mean() < 0  # the correct answer flips to the subject
    # the same prompts typed the natural way ("store," without a space) give the same logits
    text = pairs[0]["clean"]
    a = hf_model(_encode(tok, [text])).logits[0, -1]
    b = hf_model(_encode(tok, [text.replace(" ,", ",")])).logits[0, -1]
    assert torch.equal(a, b)


@torch.no_grad()
def test_induction_accuracy_and_corruption(hf_model, tok):
    h = 8
    clean, corrupted, ans, wrong = make_induction(tok, 64, seed=2024, half_len=h)
    logits = hf_model(clean).logits
    # position h+1+j of the repeat predicts r[j+1]: every one is induction, r[1] included
    per_pos = (logits[:, h + 1 : 2 * h].argmax(-1) == clean[:, 2 : h + 1]).float().mean(0)
    assert per_pos.min() >= 0.9, per_pos.tolist()
    acc_clean = (logits[:, -1].argmax(-1) == ans).float().mean().item()
    acc_corr = (hf_model(corrupted).logits[:, -1].argmax(-1) == ans).float().mean().item()
    assert acc_clean >= 0.9  # chance is 1 in 100
    assert acc_corr < 0.1


@torch.no_grad()
def test_greater_than_accuracy_and_corruption(hf_model, tok):
    pairs = held_out_gt(64, seed=2024)
    assert all(is_held_out(p["clean"]) for p in pairs)
    yids = [tok.convert_tokens_to_ids(y) for y in YEARS]
    yy = torch.tensor([p["yy"] for p in pairs])
    clean = hf_model(_encode(tok, [p["clean"] for p in pairs])).logits[:, -1]
    corrupted = hf_model(_encode(tok, [p["corrupted"] for p in pairs])).logits[:, -1]
    py = clean.softmax(-1)[:, yids]  # [n, 100]
    assert (py.argmax(-1) > yy).float().mean().item() >= 0.85
    # the cutoff sits at YY: more mass on the 5 years after it than on the 5 years before
    years = torch.arange(100)[None, :]
    after = ((years > yy[:, None]) & (years <= yy[:, None] + 5)).float()
    before = ((years < yy[:, None]) & (years >= yy[:, None] - 5)).float()
    assert ((py * after).sum(1) > (py * before).sum(1)).float().mean().item() >= 0.85
    pd_clean = prob_diff_greater(clean, yy, yids)
    pd_corr = prob_diff_greater(corrupted, yy, yids)
    assert pd_clean.mean() > 0.5 and pd_corr.mean() < pd_clean.mean()
    ans = _ids(tok, [p["answer"] for p in pairs])
    wrong = _ids(tok, [p["wrong"] for p in pairs])
    ld_clean = clean.gather(1, ans[:, None]) - clean.gather(1, wrong[:, None])
    ld_corr = corrupted.gather(1, ans[:, None]) - corrupted.gather(1, wrong[:, None])
    assert ld_clean.mean() > 2 * ld_corr.mean().abs()


# ----------------------------------------------------------------------------- generators


@pytest.mark.parametrize("corruption", ["abc", "swap"])
def test_make_ioi_deterministic_and_equal_lengths(corruption, tok):
    a = make_ioi(50, seed=3, corruption=corruption)
    assert a == make_ioi(50, seed=3, corruption=corruption)
    assert a != make_ioi(50, seed=4, corruption=corruption)
    for p in a:
        assert set(p) == {"clean", "corrupted", "answer", "wrong"}
        assert p["answer"].startswith(" ") and p["wrong"].startswith(" ")
        assert p["answer"] != p["wrong"]
        c, x = p["clean"].split(), p["corrupted"].split()
        assert len(c) == len(x)
        assert len(tok(p["clean"]).input_ids) == len(tok(p["corrupted"]).input_ids)
        io, s = p["answer"][1:], p["wrong"][1:]
        assert c.count(io) == 1 and c.count(s) == 2 and c[-1] == "to"
        diff = [i for i in range(len(c)) if c[i] != x[i]]
        assert len(diff) == 1 and c[diff[0]] == s
        if corruption == "abc":
            assert x[diff[0]] not in (io, s) and x[diff[0]] in NAMES
        else:
            assert x[diff[0]] == io
    first_is_io = [p["clean"].split()[1] == p["answer"][1:] for p in a]
    assert 0 < sum(first_is_io) < len(a)  # both name orders occur


def test_make_ioi_custom_names_templates_and_errors():
    p = make_ioi(5, seed=0, names=["Ann", "Bo", "Cy"], templates=["{A} {B} , {C} to"])
    assert all(len(d["clean"].split()) == 5 for d in p)
    with pytest.raises(ValueError):
        make_ioi(2, corruption="nope")
    with pytest.raises(ValueError):
        make_ioi(2, names=["A", "B"])
    assert make_ioi(0) == []
    assert set(IOI_EXAMPLE) == {"clean", "corrupted", "answer", "wrong"}


def test_make_greater_than(tok):
    import patchaudit as pa

    a = make_greater_than(40, seed=3)
    assert a == make_greater_than(40, seed=3) and a != make_greater_than(40, seed=4)
    for p in a:
        c, x = tok.tokenize(p["clean"]), tok.tokenize(p["corrupted"])
        assert len(c) == len(x) == 12 and tok.unk_token not in c + x
        assert c[6] == c[-1] and x[7] == "01" and c[7] == f"{p['yy']:02d}"
        assert [i for i in range(12) if c[i] != x[i]] == [7]
        assert int(p["wrong"]) < p["yy"] < int(p["answer"]) <= 99
        assert int(p["answer"]) - p["yy"] == p["yy"] - int(p["wrong"])
    with pytest.raises(ValueError):
        make_greater_than(2, corruption="abc")
    assert set(GT_EXAMPLE) == {"clean", "corrupted", "answer", "wrong"}
    pairs = pa.PromptPairs.from_task("greater_than", n=5, seed=1)
    assert pairs.task is not None and pairs.task["corruption"] == "01"
    with pytest.raises(ValueError, match="greater-than corruption"):
        pa.PromptPairs.from_task("greater_than", n=5, corruption="swap")
    from patchaudit.tasks import list_tasks

    gt = [t for t in list_tasks() if t["name"] == "greater_than"]
    assert gt and gt[0]["corruptions"] == ["01"]


def test_make_induction_shapes_and_determinism(tok):
    c, x, a, w = make_induction(tok, 10, seed=1, half_len=8)
    assert c.shape == x.shape == (10, 16) and a.shape == w.shape == (10,)
    assert c.dtype == torch.long
    c2, x2, a2, w2 = make_induction(tok, 10, seed=1, half_len=8)
    assert torch.equal(c, c2) and torch.equal(x, x2) and torch.equal(a, a2) and torch.equal(w, w2)
    assert not torch.equal(c, make_induction(tok, 10, seed=2, half_len=8)[0])
    assert (c[:, 0] == tok.bos_token_id).all()
    assert torch.equal(c[:, 1:8], c[:, 9:16])  # r[:-1] repeated
    assert torch.equal(c[:, 8], a) and torch.equal(x[:, 8], w)
    assert torch.equal(c[:, 9:], x[:, 9:])
    pool = set(filler_ids(tok))
    assert set(c.flatten().tolist()) - {tok.bos_token_id} <= pool
    for i in range(10):
        assert not set(c[i, 1:9].tolist()) & set(x[i, 1:9].tolist())
    c, _, _, _ = make_induction(tok, 3, seed=1, half_len=8, bos=False)
    assert c.shape == (3, 15)
    assert {"clean", "corrupted", "answer", "wrong"} <= set(INDUCTION_EXAMPLE)


class _GenericTok:
    """A stand-in for a large generic tokenizer without a bos token."""

    bos_token_id = None
    all_special_ids = [1500]

    def __len__(self):
        return 50257

    def get_vocab(self):
        return {f"w{i}": i for i in range(50257)}


def test_make_induction_generic_tokenizer():
    c, x, a, w = make_induction(_GenericTok(), 8, seed=0, half_len=10)
    assert c.shape == (8, 19)  # no bos token -> no bos
    ids = torch.cat([c.flatten(), x.flatten()])
    assert ids.min() >= 1000 and ids.max() < 20000 and not (ids == 1500).any()


def test_fingerprint_follows_the_weights(tmp_path, monkeypatch):
    """Stored analyses and cached activations are keyed on the weights' fingerprint: a copy of
    the bundled model has the bundled model's, a changed file (a retrained model) another; a
    hub name has none (the name alone)."""
    import shutil

    from patchaudit import models

    fp = models.fingerprint("bundled")
    assert len(fp) == 16 and models.fingerprint(str(BUNDLED)) == fp
    copy = tmp_path / "copy"
    shutil.copytree(BUNDLED, copy)
    assert models.fingerprint(str(copy)) == fp
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    w.write_bytes(bytes(data))
    changed = models.fingerprint(str(copy))
    assert changed != fp and models.fingerprint(str(copy)) == changed
    # a directory over the content-hash limit enters by sizes and modification times
    monkeypatch.setattr(models, "FINGERPRINT_HASH_LIMIT", 1024)
    big = models.fingerprint(str(copy))
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10**9))
    assert models.fingerprint(str(copy)) != big
    assert models.fingerprint("gpt2") == "" and models.fingerprint(str(tmp_path / "none")) == ""
