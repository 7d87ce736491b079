from __future__ import annotations

import json

import pytest
import torch

import patchaudit as pa
from tests.conftest import TINY_GPT2


@pytest.fixture(scope="session")
def vectors() -> dict:
    return json.loads((TINY_GPT2 / "vectors.json").read_text())


@pytest.fixture(scope="session")
def tiny_model():
    return pa.load_model(str(TINY_GPT2), device="cpu")


@pytest.fixture(scope="session")
def tiny_pairs(vectors):
    return pa.PromptPairs.from_tokens(
        torch.tensor(vectors["clean"]),
        torch.tensor(vectors["corrupted"]),
        vectors["answer_ids"],
        vectors["wrong_ids"],
    )


def random_model(arch: str, dtype=torch.float32):
    """A randomly initialised model of a real architecture, from its transformers config."""
    import transformers as tr

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = tr.GPT2Config(
            n_layer=2,
            n_head=4,
            n_embd=32,
            vocab_size=64,
            n_positions=32,
            attn_pdrop=0,
            resid_pdrop=0,
            embd_pdrop=0,
        )
        hf = tr.GPT2LMHeadModel(cfg)
    elif arch == "neox":
        cfg = tr.GPTNeoXConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_size=32,
            intermediate_size=64,
            vocab_size=64,
            max_position_embeddings=32,
            rotary_pct=0.25,
            attention_dropout=0.0,
            hidden_dropout=0.0,
        )
        hf = tr.GPTNeoXForCausalLM(cfg)
    elif arch == "llama":
        cfg = tr.LlamaConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            vocab_size=64,
            max_position_embeddings=32,
        )
        hf = tr.LlamaForCausalLM(cfg)
    elif arch == "gemma2":
        # attention-logit soft-capping, final logit soft-capping, sandwich norms, GQA, and
        # sliding-window layers (window 4 < the 8-token prompts: the mask matters)
        cfg = tr.Gemma2Config(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            hidden_size=32,
            intermediate_size=64,
            vocab_size=64,
            max_position_embeddings=32,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=8.0,
            query_pre_attn_scalar=8,
            sliding_window=4,
            attention_dropout=0.0,
            attn_implementation="eager",
        )
        hf = tr.Gemma2ForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = tr.Qwen2Config(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            vocab_size=64,
            max_position_embeddings=32,
            attention_dropout=0.0,
        )
        hf = tr.Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(arch)
    # scale weights up a little so the random network is visibly non-linear
    with torch.no_grad():
        for prm in hf.parameters():
            if prm.dim() == 2:
                prm.mul_(3.0)
    return pa.load_model(hf.to(dtype), device="cpu", dtype=dtype)


def random_pairs(n: int = 3, pos: int = 8, vocab: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n, pos), generator=g)
    corr = clean.clone()
    corr[:, 1:-1] = torch.randint(0, vocab, (n, pos - 2), generator=g)
    ans = torch.randint(0, vocab, (n,), generator=g)
    wrong = (ans + 1 + torch.randint(0, vocab - 1, (n,), generator=g)) % vocab
    return pa.PromptPairs.from_tokens(clean, corr, ans, wrong)


ARCHS = ("gpt2", "neox", "llama", "gemma2", "qwen2")
#: The architectures as test parameters: GPT-2 in every tier, the others marked slow
#: (``make test-fast`` checks each property on GPT-2; ``make test`` on all five).
ARCH_PARAMS = [a if a == "gpt2" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS]


@pytest.fixture(scope="session", params=ARCH_PARAMS)
def arch_model(request):
    return request.param, random_model(request.param)


def one_copy_budget(model, pairs, site: str = "heads", methods=None, hvp_mode=None) -> float:
    """A memory budget (MiB) that fits one copy of the batch per pass of every one of
    ``methods`` (none named: any method) and not two: the smallest budget a request is not
    refused at."""
    from patchaudit.estimators import core

    tp = pairs.tokenize(model) if hasattr(pairs, "tokenize") else pairs
    p = core.make_problem(model, tp, site, "logit_diff", "noising", hvp_mode=hvp_mode)
    return 1.05 * max(core.method_need_mb(model, p, m) for m in core.planned_methods(methods))
