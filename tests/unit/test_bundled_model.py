"""The bundled default model (committed weights) and the IOI / induction generators."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from patchaudit.tasks.induction import FILLER, INDUCTION_EXAMPLE, filler_ids, make_induction
from patchaudit.tasks.ioi import IOI_EXAMPLE, NAMES, TEMPLATES, make_ioi

BUNDLED = Path(__file__).resolve().parents[2] / "backend" / "patchaudit" / "models" / "bundled"


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
    assert cfg["n_layer"] == 4 and cfg["n_head"] == 4
    assert 64 <= cfg["n_embd"] <= 128 and cfg["n_positions"] >= 64
    assert cfg["attn_pdrop"] == cfg["resid_pdrop"] == cfg["embd_pdrop"] == 0
    metrics = json.loads((BUNDLED / "metrics.json").read_text())
    assert metrics["held_out"]["ioi_clean"]["acc_vs_all_names"] >= 0.95
    assert metrics["held_out"]["induction_clean"]["acc_top1"] >= 0.9


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


def test_bridge_boots_offline():
    from transformer_lens.model_bridge import TransformerBridge

    m = TransformerBridge.boot_transformers(str(BUNDLED))
    assert m.cfg.n_layers == 4 and m.cfg.n_heads == 4
    toks = m.to_tokens("When Mary and John")
    assert toks.shape == (1, 5) and int(toks[0, 0]) == m.tokenizer.bos_token_id
    _, cache = m.run_with_cache(toks)
    assert cache["blocks.0.attn.hook_z"].shape[-2:] == (4, m.cfg.d_model // 4)


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
    pairs = make_ioi(32, seed=2024, corruption="abc")
    acc, ld_clean = _ioi_logit_diffs(hf_model, tok, pairs, "clean")
    assert acc >= 0.9
    assert ld_clean.mean() > 0 and (ld_clean > 0).float().mean() >= 0.9
    _, ld_abc = _ioi_logit_diffs(hf_model, tok, pairs, "corrupted")
    assert ld_abc.abs().mean() < 0.5 * ld_clean.mean()
    swap = make_ioi(32, seed=2024, corruption="swap")
    _, ld_swap = _ioi_logit_diffs(hf_model, tok, swap, "corrupted")
    assert ld_swap.mean() < 0  # the correct answer flips to the subject


@torch.no_grad()
def test_induction_accuracy_and_corruption(hf_model, tok):
    clean, corrupted, ans, wrong = make_induction(tok, 64, seed=2024, half_len=8)
    acc_clean = (hf_model(clean).logits[:, -1].argmax(-1) == ans).float().mean().item()
    acc_corr = (hf_model(corrupted).logits[:, -1].argmax(-1) == ans).float().mean().item()
    assert acc_clean >= 0.9
    assert acc_corr < 0.5 * acc_clean
    # a longer repeat (n = 12): weaker (see metrics.json: the model's induction is partial),
    # but far above chance (1/100)
    clean, _, ans, _ = make_induction(tok, 32, seed=7, half_len=12)
    assert (hf_model(clean).logits[:, -1].argmax(-1) == ans).float().mean().item() >= 0.4


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
