"""Train the bundled default model: a small GPT-2 that does IOI, induction and greater-than.

Run (deterministic, seeded: the same settings and thread count give the same weights bit for
bit; ``--threads`` defaults to 1, which stands up to a shared, busy CPU better than 2)::

    PYTHONPATH=backend python -m patchaudit.models.train_bundled \
        --out backend/patchaudit/models/bundled [--set KEY=VALUE ...]

The committed model's exact settings (``DEFAULTS`` plus the ``--set`` overrides it was run
with) are in its metrics.json under "settings"; ``--small`` trains the small test model.
``--eval-only`` recomputes metrics.json's "held_out" block for the model in ``--out``.

Outputs in ``--out``: config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json and metrics.json (held-out accuracies, settings, history, time). The
best checkpoint so far (by the distance to the targets) is written at every evaluation, so a
run stopped early still leaves a usable model.

Model: ``transformers.GPT2LMHeadModel``, 6 layers, 8 heads, d_model 128 (d_head 16), d_mlp 512,
n_positions 64, tied embeddings, no dropout.
Tokenizer: a word-level ``tokenizers`` model wrapped as a ``PreTrainedTokenizerFast`` with
``<bos>``, ``<pad>``, ``<unk>``; it adds no special tokens by itself (we prepend ``<bos>``). The
pre-tokenizer splits on whitespace, isolates punctuation ("store," -> "store" ",") and cuts a
four-digit number in two ("1732" -> "17" "32"). Vocabulary: the special tokens, the IOI names
(``patchaudit.tasks.ioi.NAMES``, 110 first names), the template words, punctuation, the
two-digit numbers "00" .. "99" (``patchaudit.tasks.greater_than.YEARS``) and the induction
filler block "t00" .. "t99" (``patchaudit.tasks.induction.FILLER``).

Training data, freshly sampled each step from a seeded RNG:

- IOI: ``<bos>`` + a clean prompt (a template filled with IO and S in either order, S
  repeated), target = IO at the last position.
- Induction: ``<bos>`` + a random-length prefix of filler tokens + r + r (r: distinct filler
  tokens; prefix and r distinct). The random prefix makes the repeat start anywhere and makes
  "a token seen once and not yet repeated" a poor guess, so only induction lowers the loss.
- Greater-than: ``<bos>`` + "The {noun} lasted from the year {C}{YY} to the year {C}"; the
  target is the uniform distribution over the later years YY+1 .. 99.

IOI and greater-than prompts whose CRC32 is 0 mod 10 (``is_held_out``) are never trained on:
they are the held-out sets. Loss: a weighted mean of the IOI cross-entropy at the last
position, the induction cross-entropy at every position of the second copy that predicts
r[1..n-1], and the greater-than cross-entropy against its soft target. AdamW (betas 0.9/0.98,
weight decay on matrices), linear warm-up, cosine decay to 10%, gradient clipping at 1; early
stop when the held-out accuracies (seed 777) pass the targets in ``DEFAULTS``.

Loading (offline; no download)::

    from transformer_lens.model_bridge import TransformerBridge
    m = TransformerBridge.boot_transformers("backend/patchaudit/models/bundled")

(set HF_HUB_OFFLINE=1 so nothing tries the network), or ``pa.load_model("bundled")``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from patchaudit.tasks.greater_than import (
    CENTURIES,
    GT_NOUNS,
    GT_TEMPLATE,
    YEARS,
    YY_RANGE,
    gt_prompt,
    make_greater_than,
    prob_diff_greater,
)
from patchaudit.tasks.induction import FILLER, make_induction
from patchaudit.tasks.ioi import FRAMES, NAMES, OBJECTS, PLACES, TEMPLATES, fill, make_ioi

log = logging.getLogger("patchaudit.train_bundled")

SPECIAL = ["<bos>", "<pad>", "<unk>"]
PUNCT = [",", ".", "!", "?", ";", ":", "'", '"', "(", ")", "-"]

DEFAULTS: dict = {
    "seed": 0,
    "n_layer": 6,
    "n_head": 8,
    "n_embd": 128,
    "n_positions": 64,
    "batch_ioi": 16,
    "batch_induction": 32,
    "batch_gt": 16,
    "weight_ioi": 1.0,
    "weight_induction": 2.0,
    "weight_gt": 1.0,
    # auxiliary previous-token probe: a linear read-out (discarded after training) of the
    # residual stream after block ``prev_probe_layer - 1`` must name the previous token on the
    # induction sequences; it grows the previous-token heads induction needs
    "weight_prev_probe": 0.0,
    "prev_probe_layer": 2,
    "init": None,  # start from this saved model (a second training stage) instead of random
    "stop_at": None,  # stop after this step (the schedule still spans max_steps)
    "max_steps": 5000,
    "min_steps": 600,
    "lr": 3e-3,
    "warmup": 200,
    "weight_decay": 0.01,
    "eval_every": 200,
    "induction_half_len": (4, 10),
    "induction_prefix_len": (0, 6),
    # random filler tokens between the two copies (and a longer prefix): many tokens are then
    # "seen once", so guessing one that has not repeated yet stops paying and only induction
    # (attend to the token after the earlier copy of this one) lowers the loss
    "induction_gap_len": (0, 0),
    # this share of the induction sequences has no prefix (the task's prompts: <bos> + r + r):
    # the first copy's r[1] then sits at position 2, whose previous-token feature r[1]'s
    # prediction in the second copy reads
    "induction_prefix_zero_frac": 0.0,
    # loss weight of the first predictable token of the repeat (r[1], predicted at the second
    # copy's r[0]): there only a one-token match finds the earlier copy
    "weight_first_repeat": 1.0,
    # early stop: held-out (seed 777) accuracies with a margin over the targets
    "target_ioi_acc": 0.995,
    "target_induction_min_pos_acc": 0.98,
    "target_gt_acc": 0.97,
}

#: The small test model: same script, same data, a smaller network and a shorter run.
SMALL = {"n_layer": 2, "n_head": 4, "n_embd": 64, "max_steps": 1500, "min_steps": 200}


def is_held_out(prompt: str) -> bool:
    """One prompt in ten (by a CRC of its text) is never trained on: the held-out set."""
    return zlib.crc32(prompt.encode()) % 10 == 0


def template_words() -> list[str]:
    """Every non-name, non-number word of the IOI frames, places, objects and the greater-than
    template and nouns (sorted, no punctuation)."""
    words: set[str] = set(PLACES) | set(OBJECTS) | set(GT_NOUNS)
    for frame in [*FRAMES, GT_TEMPLATE]:
        for w in frame.split():
            if not w.startswith("{"):
                words.add(w)
    return sorted(w for w in words if w not in PUNCT)


def build_vocab() -> dict[str, int]:
    words = SPECIAL + list(NAMES) + template_words() + PUNCT + list(YEARS) + list(FILLER)
    assert len(set(words)) == len(words), "duplicate vocabulary entries"
    return {w: i for i, w in enumerate(words)}


def build_tokenizer(vocab: dict[str, int], n_positions: int = 64):
    """A word-level PreTrainedTokenizerFast (no automatic special tokens). The pre-tokenizer
    splits on whitespace, isolates punctuation ("store," -> "store" ",") and cuts a four-digit
    number into two two-digit tokens ("1732" -> "17" "32"); filler words like "t07" stay whole."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Split(Regex(r"\b\d\d(?=\d\d\b)"), behavior="isolated"),
        ]
    )
    # Decode word tokens joined by spaces (each token's text carries no space itself).
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=n_positions,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def build_model(vocab_size: int, cfg: dict, bos_id: int, pad_id: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg["n_positions"],
        n_embd=cfg["n_embd"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_inner=4 * cfg["n_embd"],
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


# ----------------------------------------------------------------------------- data


def ioi_batch(rng: random.Random, vocab: dict[str, int], b: int):
    """(ids [b, 15], target [b]): <bos> + a clean IOI prompt not in the held-out set; target =
    IO at the last position."""
    rows: list[list[int]] = []
    targets: list[int] = []
    while len(rows) < b:
        t = rng.choice(TEMPLATES)
        io, s = rng.sample(NAMES, 2)
        a, bb = (io, s) if rng.random() < 0.5 else (s, io)
        text = fill(t, a, bb, s)
        if is_held_out(text):
            continue
        rows.append([vocab["<bos>"]] + [vocab[w] for w in text.split()])
        targets.append(vocab[io])
    return torch.tensor(rows), torch.tensor(targets)  # [b, pos], [b]


def induction_batch(rng: random.Random, vocab: dict[str, int], b: int, cfg: dict):
    """(ids [b, L], targets [b, L] with -100 where no loss), L = longest sequence, right-padded.
    <bos> + a random prefix (so the repeat starts anywhere) + r + r; every position of the second
    copy from r[0] on predicts the next token of r."""
    pool = [vocab[w] for w in FILLER]
    lo_n, hi_n = cfg["induction_half_len"]
    lo_p, hi_p = cfg["induction_prefix_len"]
    lo_g, hi_g = cfg.get("induction_gap_len", (0, 0))
    seqs, tgts = [], []
    for _ in range(b):
        n = rng.randint(lo_n, hi_n)
        p = rng.randint(lo_p, hi_p)
        if (
            cfg.get("induction_prefix_zero_frac", 0.0)
            and rng.random() < cfg["induction_prefix_zero_frac"]
        ):
            p = 0  # the repeat starts right after <bos>, as in the task's prompts
        gap = rng.randint(lo_g, hi_g)
        toks = rng.sample(pool, n + p + gap)
        prefix, r, mid = toks[:p], toks[p : p + n], toks[p + n :]
        seq = [vocab["<bos>"]] + prefix + r + mid + r
        inp, tgt = seq[:-1], seq[1:]
        mask_from = 1 + p + n + gap  # index in inp of the 2nd copy's r[0]; it predicts r[1]
        tgt = [t if i >= mask_from else -100 for i, t in enumerate(tgt)]
        seqs.append(inp)
        tgts.append(tgt)
    length = max(len(s) for s in seqs)
    assert length <= cfg["n_positions"]
    ids = torch.full((b, length), vocab["<pad>"], dtype=torch.long)
    targets = torch.full((b, length), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(seqs, tgts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        targets[i, : len(t)] = torch.tensor(t)
    return ids, targets  # [b, L], [b, L]


def first_repeat_mask(targets: torch.Tensor) -> torch.Tensor:
    """[b, L] bool: each row's first position with a target (the second copy's r[0])."""
    valid = targets != -100
    first = valid & (valid.int().cumsum(1) == 1)
    return first


def gt_batch(rng: random.Random, vocab: dict[str, int], b: int):
    """(ids [b, 13], soft targets [b, vocab]): <bos> + a greater-than prompt not in the
    held-out set; the target spreads its mass evenly over the years after YY."""
    year_ids = torch.tensor([vocab[y] for y in YEARS])
    rows: list[list[int]] = []
    yys: list[int] = []
    while len(rows) < b:
        noun, century = rng.choice(GT_NOUNS), rng.choice(CENTURIES)
        yy = rng.randint(*YY_RANGE)
        text = gt_prompt(noun, century, yy)
        if is_held_out(text):
            continue
        rows.append([vocab["<bos>"]] + [vocab[w] for w in _words(text)])
        yys.append(yy)
    target = torch.zeros(b, len(vocab))
    for i, yy in enumerate(yys):
        later = year_ids[yy + 1 :]
        target[i, later] = 1.0 / len(later)
    return torch.tensor(rows), target  # [b, pos], [b, vocab]


def _words(text: str) -> list[str]:
    """The bundled pre-tokenizer's split, for the training prompts (four-digit years)."""
    out = []
    for w in text.split():
        if len(w) == 4 and w.isdigit():
            out += [w[:2], w[2:]]
        else:
            out.append(w)
    return out


# ----------------------------------------------------------------------------- evaluation


def _encode(tok, texts: list[str]) -> torch.Tensor:
    bos = tok.bos_token_id
    rows = [[bos] + tok(t, add_special_tokens=False).input_ids for t in texts]
    return torch.tensor(rows)  # [n, pos] (all prompts of a set have the same length)


def held_out_ioi(n: int, seed: int, corruption: str) -> list[dict]:
    """``n`` IOI pairs whose clean prompt is in the held-out set (never trained on)."""
    rows = [
        r for r in make_ioi(n * 20, seed=seed, corruption=corruption) if is_held_out(r["clean"])
    ]
    assert len(rows) >= n, "too few held-out IOI prompts"
    return rows[:n]


def held_out_gt(n: int, seed: int) -> list[dict]:
    """``n`` greater-than pairs whose clean prompt is in the held-out set."""
    rows = [r for r in make_greater_than(n * 20, seed=seed) if is_held_out(r["clean"])]
    assert len(rows) >= n, "too few held-out greater-than prompts"
    return rows[:n]


@torch.no_grad()
def induction_layouts(model, tok, n: int = 512, seed: int = 5) -> dict:
    """Where the induction holds beyond the task's layout: per prefix length p (random
    tokens between <bos> and an 8-token repeat r + r) the accuracy at r[1] and the worst
    later position; per repeat length h (no prefix) the worst position."""
    pool = [tok.convert_tokens_to_ids(w) for w in FILLER]
    bos = tok.bos_token_id
    rng = random.Random(seed)

    def per_position(p: int, h: int) -> torch.Tensor:
        rows = [[bos] + rng.sample(pool, p + h) for _ in range(n)]
        ids = torch.tensor([r + r[1 + p :] for r in rows])  # [n, 1 + p + 2h]
        s = 1 + p + h  # the second copy's r[0]
        pred = model(ids).logits[:, s : s + h - 1].argmax(-1)  # predicts r[1] .. r[h-1]
        return (pred == ids[:, s + 1 : s + h]).float().mean(0)  # [h-1]

    by_prefix = {}
    for p in range(7):
        acc = per_position(p, 8)
        by_prefix[str(p)] = {
            "r1": round(float(acc[0]), 4),
            "later_min": round(float(acc[1:].min()), 4),
        }
    by_len = {str(h): round(float(per_position(0, h).min()), 4) for h in (4, 6, 8, 10, 12, 16)}
    return {"n": n, "by_prefix_len_half8": by_prefix, "min_position_by_half_len": by_len}


@torch.no_grad()
def evaluate(model, tok, n_ioi: int = 512, n_ind: int = 512, n_gt: int = 512, seed: int = 12345):
    """Held-out accuracies: IOI and greater-than prompts from the held-out set, fresh induction
    sequences (random tokens: 100^8 orderings, so no overlap with training worth counting)."""
    was_training = model.training
    model.eval()
    name_ids = torch.tensor([tok.convert_tokens_to_ids(n) for n in NAMES])
    out: dict = {}
    for corruption in ("abc", "swap"):
        pairs = held_out_ioi(n_ioi, seed, corruption)
        ans = torch.tensor([tok.convert_tokens_to_ids(p["answer"].strip()) for p in pairs])
        wrong = torch.tensor([tok.convert_tokens_to_ids(p["wrong"].strip()) for p in pairs])
        for kind in ("clean", "corrupted"):
            if kind == "clean" and corruption == "swap":
                continue  # same clean prompts as for "abc" (same seed)
            logits = model(_encode(tok, [p[kind] for p in pairs])).logits[:, -1]  # [n, vocab]
            la = logits.gather(1, ans[:, None])[:, 0]
            lw = logits.gather(1, wrong[:, None])[:, 0]
            names_logits = logits[:, name_ids]  # [n, n_names]
            others = names_logits.masked_fill(name_ids[None, :] == ans[:, None], -math.inf)
            key = "ioi_clean" if kind == "clean" else f"ioi_{corruption}_corrupted"
            out[key] = {
                "acc_vs_all_names": float((la > others.max(1).values).float().mean()),
                "acc_vs_subject": float((la > lw).float().mean()),
                "mean_logit_diff": float((la - lw).mean()),
                "top1_is_answer": float((logits.argmax(-1) == ans).float().mean()),
                "n": n_ioi,
            }
    h = 8
    clean, corrupted, ans, wrong = make_induction(tok, n_ind, seed=seed, half_len=h)
    for kind, ids in (("clean", clean), ("corrupted", corrupted)):
        logits = model(ids).logits  # [n, pos, vocab]
        last = logits[:, -1]
        la = last.gather(1, ans[:, None])[:, 0]
        lw = last.gather(1, wrong[:, None])[:, 0]
        res: dict = {
            "acc_top1": float((last.argmax(-1) == ans).float().mean()),
            "mean_logit_diff": float((la - lw).mean()),
            "n": n_ind,
            "half_len": h,
        }
        if kind == "clean":
            # every position of the repeated half after its first token: position h+1+j (the
            # second copy's r[j]) predicts r[j+1], j = 0 .. h-2
            pred = logits[:, h + 1 : 2 * h, :].argmax(-1)  # [n, h-1]
            target = ids[:, 2 : h + 1]  # [n, h-1] = r[1..h-1]
            per_pos = (pred == target).float().mean(0)  # [h-1]
            res["acc_repeated_half"] = float(per_pos.mean())
            res["acc_per_position"] = [round(float(a), 4) for a in per_pos]
            res["acc_min_position"] = float(per_pos.min())
        out[f"induction_{kind}"] = res
    # prefix-shifted variant: random prefix, then the repeat (the training distribution)
    rng = random.Random(seed + 1)
    ids, tg = induction_batch(rng, tok.get_vocab(), n_ind, DEFAULTS)
    logits = model(ids).logits
    m = tg != -100
    out["induction_random_prefix_tokens"] = {
        "acc": float((logits.argmax(-1)[m] == tg[m]).float().mean()),
        "n_seqs": n_ind,
    }
    yids = [tok.convert_tokens_to_ids(y) for y in YEARS]
    pairs = held_out_gt(n_gt, seed)
    yy = torch.tensor([p["yy"] for p in pairs])
    ans = torch.tensor([tok.convert_tokens_to_ids(p["answer"].strip()) for p in pairs])
    wrong = torch.tensor([tok.convert_tokens_to_ids(p["wrong"].strip()) for p in pairs])
    for kind in ("clean", "corrupted"):
        last = model(_encode(tok, [p[kind] for p in pairs])).logits[:, -1]  # [n, vocab]
        py = last.softmax(-1)[:, yids]  # [n, 100]
        top_year = py.argmax(-1)  # [n] in 0..99
        pdiff = prob_diff_greater(last, yy, yids)
        years = torch.arange(100)[None, :]
        after = ((years > yy[:, None]) & (years <= yy[:, None] + 5)).float()
        before = ((years < yy[:, None]) & (years >= yy[:, None] - 5)).float()
        window = (py * after).sum(1) > (py * before).sum(1)  # the cutoff sits at YY
        out[f"greater_than_{kind}"] = {
            "acc": float((window & (top_year > yy)).float().mean()),
            "acc_top_year_later": float((top_year > yy).float().mean()),
            "acc_cutoff_window5": float(window.float().mean()),
            "acc_prob_greater_gt_less": float((pdiff > 0).float().mean()),
            "mean_prob_diff": float(pdiff.mean()),
            "prob_on_years": float(last.softmax(-1)[:, yids].sum(1).mean()),
            "mean_logit_diff": float(
                (last.gather(1, ans[:, None]) - last.gather(1, wrong[:, None])).mean()
            ),
            "n": n_gt,
        }
    if was_training:
        model.train()
    return out


def _score(ev: dict, cfg: dict) -> float:
    """How close the checkpoint is to the early-stop targets (1 = all met); the best-scoring
    checkpoint is the one kept on disk."""
    return min(
        ev["ioi_clean"]["acc_vs_all_names"] / cfg["target_ioi_acc"],
        ev["induction_clean"]["acc_min_position"] / cfg["target_induction_min_pos_acc"],
        ev["greater_than_clean"]["acc"] / cfg["target_gt_acc"],
        1.0,
    )


# ----------------------------------------------------------------------------- training


def _save(model, tok, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    _fix_tokenizer_config(out_dir)


def train(out_dir: Path, cfg: dict) -> dict:
    torch.manual_seed(cfg["seed"])
    rng = random.Random(cfg["seed"])
    vocab = build_vocab()
    tok = build_tokenizer(vocab, cfg["n_positions"])
    if cfg["init"]:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(cfg["init"])
    else:
        model = build_model(len(vocab), cfg, vocab["<bos>"], vocab["<pad>"])
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("vocab %d, params %d", len(vocab), n_params)
    probe = torch.nn.Linear(model.config.n_embd, len(vocab))  # used when weight_prev_probe > 0

    params = list(model.parameters()) + (
        list(probe.parameters()) if cfg["weight_prev_probe"] else []
    )
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg["lr"],
        betas=(0.9, 0.98),
    )
    total = cfg["max_steps"]

    def lr_at(step: int) -> float:
        if step < cfg["warmup"]:
            return cfg["lr"] * (step + 1) / cfg["warmup"]
        frac = (step - cfg["warmup"]) / max(1, total - cfg["warmup"])
        return cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    w_sum = (
        cfg["weight_ioi"] + cfg["weight_induction"] + cfg["weight_gt"] + cfg["weight_prev_probe"]
    )
    t0 = time.time()
    history: list[dict] = []
    best = -1.0
    best_step = 0
    step = 0
    for step in range(1, total + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1)
        ids, tgt = ioi_batch(rng, vocab, cfg["batch_ioi"])
        loss_ioi = F.cross_entropy(model(ids).logits[:, -1], tgt)
        ids, tgt = induction_batch(rng, vocab, cfg["batch_induction"], cfg)
        first = first_repeat_mask(tgt)  # [b, L]: the first position with a target
        real = ids != vocab["<pad>"]
        out = model(ids, attention_mask=real.long(), output_hidden_states=True)
        logits = out.logits  # [b, L, vocab]
        if cfg["weight_first_repeat"] == 1.0:  # the plain mean (the first stage's loss)
            loss_ind = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        else:
            per_tok = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none"
            ).view(tgt.shape)
            w = (tgt != -100).float() * (1 + (cfg["weight_first_repeat"] - 1) * first.float())
            loss_ind = (per_tok * w).sum() / w.sum()
        loss_prev = torch.zeros(())
        if cfg["weight_prev_probe"]:
            hid = out.hidden_states[cfg["prev_probe_layer"]][:, 1:]  # [b, L-1, d]
            prev = ids[:, :-1].masked_fill(~real[:, 1:], -100)  # position i names token i-1
            loss_prev = F.cross_entropy(probe(hid).flatten(0, 1), prev.flatten())
        ids, soft = gt_batch(rng, vocab, cfg["batch_gt"])
        loss_gt = F.cross_entropy(model(ids).logits[:, -1], soft)
        loss = (
            cfg["weight_ioi"] * loss_ioi
            + cfg["weight_induction"] * loss_ind
            + cfg["weight_gt"] * loss_gt
            + cfg["weight_prev_probe"] * loss_prev
        ) / w_sum
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            log.info(
                "step %d %.1fs loss ioi %.3f ind %.3f gt %.3f prev %.3f",
                step,
                time.time() - t0,
                loss_ioi.item(),
                loss_ind.item(),
                loss_gt.item(),
                loss_prev.item(),
            )
        if step % cfg["eval_every"] == 0 or step in (total, cfg["stop_at"]):
            ev = evaluate(model, tok, n_ioi=256, n_ind=256, n_gt=256, seed=777)
            row = {
                "step": step,
                "seconds": round(time.time() - t0, 1),
                "loss_ioi": round(loss_ioi.item(), 4),
                "loss_induction": round(loss_ind.item(), 4),
                "loss_gt": round(loss_gt.item(), 4),
                "ioi_acc": ev["ioi_clean"]["acc_vs_all_names"],
                "induction_min_pos_acc": ev["induction_clean"]["acc_min_position"],
                "induction_repeated_half_acc": ev["induction_clean"]["acc_repeated_half"],
                "induction_prefix_acc": ev["induction_random_prefix_tokens"]["acc"],
                "gt_acc": ev["greater_than_clean"]["acc"],
            }
            history.append(row)
            log.info("eval %s", row)
            score = _score(ev, cfg)
            if (
                score > best or step == cfg["stop_at"]
            ):  # keep the best checkpoint on disk: a stopped run can still ship
                best, best_step = score, step
                _save(model, tok, out_dir)
                (out_dir / "checkpoint.json").write_text(
                    json.dumps({"step": step, "score": score, "eval": row}, indent=2) + "\n"
                )
            if (step >= cfg["min_steps"] and score >= 1.0) or step == cfg["stop_at"]:
                break
    train_seconds = time.time() - t0
    if best_step != step:  # reload the best checkpoint
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(out_dir)
    model.eval()
    ck = out_dir / "checkpoint.json"
    if ck.exists():
        ck.unlink()
    metrics = {
        "held_out": evaluate(model, tok, n_ioi=512, n_ind=512, n_gt=512, seed=12345),
        "induction_layouts": induction_layouts(model, tok),
        "params": n_params,
        "model_safetensors_bytes": (out_dir / "model.safetensors").stat().st_size,
        "vocab_size": len(vocab),
        "n_names": len(NAMES),
        "steps": best_step,
        "steps_run": step,
        "train_seconds": round(train_seconds, 1),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "loss": "weighted mean of: IOI cross-entropy at the last position (IO); induction "
        "cross-entropy at every position of the repeated copy that predicts r[1..n-1]; "
        "greater-than cross-entropy against a uniform distribution over the years after YY",
        "history": history,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "held_out_note": "IOI and greater-than: prompts whose CRC32 is 0 mod 10 are never "
        "trained on; the held-out sets are the first 512 such prompts of make_ioi / "
        "make_greater_than with seed 12345. Induction: make_induction(tok, 512, seed=12345, "
        "half_len=8). Training draws from random.Random(seed); evaluation during training "
        "uses seed 777.",
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _fix_tokenizer_config(out_dir: Path) -> None:
    """Make AutoTokenizer load a PreTrainedTokenizerFast (not GPT2Tokenizer from config.json)."""
    p = out_dir / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["bos_token"] = "<bos>"
    cfg["pad_token"] = "<pad>"
    cfg["unk_token"] = "<unk>"
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    cfg["clean_up_tokenization_spaces"] = False
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "bundled")
    ap.add_argument("--small", action="store_true", help="the small test model's settings")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of DEFAULTS (a JSON value), e.g. --set lr=0.003",
    )
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="recompute metrics.json's held-out block for the model in --out",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = dict(DEFAULTS, seed=args.seed)
    if args.small:
        cfg.update(SMALL)
    for kv in args.set:
        k, v = kv.split("=", 1)
        if k not in DEFAULTS:
            raise SystemExit(f"unknown setting {k!r}")
        cfg[k] = json.loads(v)
    if args.max_steps is not None:
        cfg["max_steps"] = args.max_steps
    if args.eval_only:
        from transformers import AutoTokenizer, GPT2LMHeadModel

        p = args.out / "metrics.json"
        model = GPT2LMHeadModel.from_pretrained(args.out).eval()
        if p.exists():
            metrics = json.loads(p.read_text())
        else:  # a checkpoint of a stopped run: record its step and the settings given
            ck = json.loads((args.out / "checkpoint.json").read_text())
            metrics = {
                "params": sum(x.numel() for x in model.parameters()),
                "model_safetensors_bytes": (args.out / "model.safetensors").stat().st_size,
                "vocab_size": model.config.vocab_size,
                "steps": ck["step"],
                "train_seconds": ck["eval"]["seconds"],
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                "checkpoint_eval": ck["eval"],
                "torch": torch.__version__,
                "threads": args.threads,
                "machine": platform.machine(),
            }
        tok = AutoTokenizer.from_pretrained(args.out)
        metrics["held_out"] = evaluate(model, tok, n_ioi=512, n_ind=512, n_gt=512, seed=12345)
        metrics["induction_layouts"] = induction_layouts(model, tok)
        metrics["n_names"] = len(NAMES)
        p.write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics["held_out"], indent=2))  # noqa: T201
        return
    metrics = train(args.out, cfg)
    summary = {k: v for k, v in metrics.items() if k not in ("history", "settings")}
    print(json.dumps(summary, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
