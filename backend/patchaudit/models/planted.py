"""A GPT-2 whose weights are set by hand (no training), so that its circuit is known exactly.

``pa.load_model("planted")`` builds it in code at load time (a few milliseconds) and wraps it
in a TransformerBridge like any other model. Its task is induction with a BOS token
(``PromptPairs.from_task("planted")``): clean = [bos] r r[:-1], corrupted = [bos] r' r[:-1],
answer r[-1], wrong r'[-1] (r, r' 8 distinct tokens each, disjoint).

3 layers x 4 heads, no MLPs (zero weights). The residual stream is a set of labelled
subspaces (one-hot codes), and two large constant coordinates (+C, -C) keep every LayerNorm
practically linear (their LayerNorm weight is 0; every other coordinate's weight undoes the
constant scale). The heads:

- L0H0 previous-token head: writes the previous token into PREV.
- L1H0 induction head: query = the current token, key = PREV, value = the token: at the last
  position it attends (saturated, score 20) to the token after the earlier copy of the
  current token, i.e. the answer, and writes it to the logits (OUT) and to IND.
  Its saturated attention hides L0H0 from AtP: the gradient through a saturated softmax is
  ~e^-20, while patching L0H0 moves the whole attention (an AtP false negative).
- L0H1 positional copy head: copies the token 7 positions back (the answer, at the last
  position) to the logits (+1.5) and into SA.
- L2H0 gate head: attends to its own position with score 8 * <IND, SA> - 8 against a BOS sink
  and writes -SA to the logits: a -sigmoid(8 <IND, SA> - 8) copy of L0H1's token. At the clean
  point the direct effect of L0H1 and its indirect effect through L2H0 cancel to first order
  (1.5 = sigmoid(0) + 8 sigmoid'(0) / 2), so AtP scores L0H1 ~0 while patching it moves the
  logit difference by ~-2.5: a second-order (HVP-visible) component.
- 8 distractors: heads with a zero output matrix (their patch and gradient are exactly 0) or
  whose activation is identical on clean and corrupted prompts (BOS attention / position
  reads): activation patching gives exactly 0.

The ground truth (components and the reason each is there) is ``planted/ground_truth.json``;
its "edges" list the true edges of the graph (``pa.audit(site="edges")`` keys: the previous-token
head -> the induction head's key, the copy head -> the gate head's key and value, the induction
head -> the gate head's query, the embedding -> the three copying heads' values, and the direct
paths of L0H1, L1H0 and L2H0 to the logits); every other edge patches to (nearly) exactly 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

PLANTED_DIR = Path(__file__).resolve().parent / "planted"

N_LAYERS, N_HEADS, D_MODEL, N_CTX = 3, 4, 256, 32
D_HEAD = D_MODEL // N_HEADS
WORDS = [f"t{i:02d}" for i in range(32)]
BOS, UNK = 0, 33
VOCAB = 34  # <bos>, t00 .. t31, <unk>
C = 100.0  # the constant that keeps LayerNorm linear

# residual-stream subspaces (start offsets of one-hot codes over the vocabulary / positions)
TOK, POS, PREV, OUT, SA, IND = 0, 34, 66, 100, 134, 168
ONE, NOTBOS, JUNK, BIG_P, BIG_N = 202, 203, 204, 205, 206

S_PREV, S_POS, S_IND, S_BOS = 30.0, 30.0, 20.0, 30.0  # attention scores (saturated)
GAMMA = 8.0  # the gate head's slope
SINK = 6.0  # the gate head's BOS-sink score
ALPHA = 0.5 + GAMMA * 0.25 / 2  # sigmoid(0) + gamma sigmoid'(0) / 2: first-order cancellation
KAPPA = 4.0  # the induction head's weight on the logits
OFFSET = 7  # the positional copy head looks this many positions back


def ground_truth() -> dict[str, Any]:
    """The shipped ground truth: every component, whether it is planted, and why."""
    return json.loads((PLANTED_DIR / "ground_truth.json").read_text())


def planted_edges() -> list[str]:
    """The keys of the true edges (``ground_truth()["edges"]``)."""
    return [e["edge"] for e in ground_truth()["edges"]]


def planted_mask() -> torch.Tensor:
    """[n_layers, n_heads] bool: True for the planted components."""
    m = torch.zeros(N_LAYERS, N_HEADS, dtype=torch.bool)
    for c in ground_truth()["components"]:
        if c["planted"]:
            m[c["component"][0], c["component"][1]] = True
    return m


def tokenizer():
    """The shipped word-level tokenizer (<bos>, t00 .. t31, <unk>; ``planted/tokenizer.json``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(PLANTED_DIR))


def make_tokenizer():
    """Build the word-level tokenizer (``write_tokenizer`` saves it beside the ground truth)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": BOS, **{w: i + 1 for i, w in enumerate(WORDS)}, "<unk>": UNK}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>")


def _heads(n: int = D_MODEL) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(n, D_HEAD) for k in "QKV"} | {"O": torch.zeros(D_HEAD, n)}


def build_hf():
    """The transformers GPT2LMHeadModel with the planted weights."""
    import transformers as tr

    cfg = tr.GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_CTX,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_inner=16,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=BOS,
        layer_norm_epsilon=1e-5,
    )
    hf = tr.GPT2LMHeadModel(cfg)  # type: ignore[call-arg]
    with torch.no_grad():
        for prm in hf.parameters():
            prm.zero_()
        we = hf.transformer.wte.weight  # [vocab, d_model]
        for t in range(VOCAB):
            we[t, TOK + t] = 1.0
            we[t, ONE] = 1.0
            we[t, NOTBOS] = 0.0 if t == BOS else 1.0
            we[t, BIG_P], we[t, BIG_N] = C, -C
        wp = hf.transformer.wpe.weight  # [n_ctx, d_model]
        for p in range(N_CTX):
            wp[p, POS + p] = 1.0
        # LayerNorm: x -> (x - mean) / std * w; std ~ C sqrt(2 / d) from the constants
        scale = C * math.sqrt(2.0 / D_MODEL)
        lns = [hf.transformer.ln_f] + [m for b in hf.transformer.h for m in (b.ln_1, b.ln_2)]
        for ln in lns:
            ln.weight.fill_(scale)
            ln.weight[BIG_P] = ln.weight[BIG_N] = 0.0
        hf.lm_head.weight[:, :] = 0.0
        for t in range(VOCAB):
            hf.lm_head.weight[t, OUT + t] = 1.0  # logits read OUT
        q = math.sqrt(D_HEAD)  # GPT-2 divides scores by sqrt(d_head)
        heads = [[_heads() for _ in range(N_HEADS)] for _ in range(N_LAYERS)]

        def prev_attention(h, s):
            for p in range(N_CTX - 1):
                h["Q"][POS + p + 1, p] = s * q
                h["K"][POS + p, p] = 1.0

        def copy_tokens(h):
            for t in range(1, VOCAB):
                h["V"][TOK + t, t] = 1.0

        # L0H0 previous-token head
        h = heads[0][0]
        prev_attention(h, S_PREV)
        copy_tokens(h)
        for t in range(VOCAB):
            h["O"][t, PREV + t] = 1.0
        # L0H1 positional copy head: the token OFFSET positions back -> OUT (+ALPHA) and SA
        h = heads[0][1]
        for p in range(OFFSET, N_CTX):
            h["Q"][POS + p, p - OFFSET] = S_POS * q
            h["K"][POS + p - OFFSET, p - OFFSET] = 1.0
        copy_tokens(h)
        for t in range(VOCAB):
            h["O"][t, OUT + t] = ALPHA
            h["O"][t, SA + t] = 1.0
        # L0H2 distractor: uniform attention over the tokens, zero output
        copy_tokens(heads[0][2])
        # L0H3 distractor: attends to BOS, reads only the BOS coordinate: identical on both runs
        h = heads[0][3]
        h["Q"][ONE, 0] = S_BOS * q
        h["K"][TOK + BOS, 0] = 1.0
        h["V"][TOK + BOS, 0] = 1.0
        h["O"][0, JUNK] = 1.0
        # L1H0 induction head: query = token, key = PREV, value = token -> OUT and IND
        h = heads[1][0]
        for t in range(1, VOCAB):
            h["Q"][TOK + t, t] = S_IND * q
            h["K"][PREV + t, t] = 1.0
        copy_tokens(h)
        for t in range(VOCAB):
            h["O"][t, OUT + t] = KAPPA
            h["O"][t, IND + t] = 1.0
        # L1H1 distractor: the induction pattern, zero output
        h = heads[1][1]
        for t in range(1, VOCAB):
            h["Q"][TOK + t, t] = S_IND * q
            h["K"][PREV + t, t] = 1.0
        copy_tokens(h)
        # L1H2 distractor: previous-token pattern, zero output; L1H3: uniform, zero output
        prev_attention(heads[1][2], S_PREV)
        copy_tokens(heads[1][2])
        copy_tokens(heads[1][3])
        # L2H0 gate head: score GAMMA <IND, SA> - GAMMA + SINK at non-BOS keys, SINK at BOS
        h = heads[2][0]
        for t in range(VOCAB):
            h["Q"][IND + t, t] = GAMMA * q
            h["K"][SA + t, t] = 1.0
            h["V"][SA + t, t] = 1.0
            h["O"][t, OUT + t] = -1.0
        h["Q"][ONE, VOCAB] = q
        h["K"][NOTBOS, VOCAB] = SINK - GAMMA
        h["K"][TOK + BOS, VOCAB] = SINK
        # L2H1 .. L2H3 distractors: zero output (induction, SA-reading, uniform patterns)
        h = heads[2][1]
        for t in range(1, VOCAB):
            h["Q"][TOK + t, t] = S_IND * q
            h["K"][PREV + t, t] = 1.0
        copy_tokens(h)
        for t in range(VOCAB):
            heads[2][2]["V"][SA + t, t] = 1.0
        copy_tokens(heads[2][3])

        for layer, block in enumerate(hf.transformer.h):
            w = block.attn.c_attn.weight  # [d_model, 3 * d_model]: Q | K | V
            o = block.attn.c_proj.weight  # [d_model (heads' z), d_model]
            for i, hh in enumerate(heads[layer]):
                sl = slice(i * D_HEAD, (i + 1) * D_HEAD)
                for j, name in enumerate("QKV"):
                    w[:, j * D_MODEL + sl.start : j * D_MODEL + sl.stop] = hh[name]
                o[sl, :] = hh["O"]
    hf.eval()
    return hf


def write_tokenizer() -> None:
    make_tokenizer().save_pretrained(str(PLANTED_DIR))


def load(device, dtype):
    """The planted model as a TransformerBridge (see ``models.load_model``)."""
    from . import _load_object

    return _load_object(build_hf(), device, dtype, tokenizer=tokenizer())
