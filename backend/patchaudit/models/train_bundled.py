"""Train the bundled default model: a small GPT-2 that does IOI and induction.

Run (deterministic, seeded: the same thread count gives the same weights bit for bit; 5000
steps at about 0.14 s a step on one free CPU core, so about 12 minutes; the committed run took
22 minutes because other jobs shared the 2 cores; ``--threads`` defaults to 1, which stood up
to that contention better than 2)::

    PYTHONPATH=backend python -m patchaudit.models.train_bundled \
        --out backend/patchaudit/models/bundled

Outputs in ``--out``: config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json, special_tokens_map.json (if transformers writes it)
and metrics.json (held-out accuracies, training settings and time).

Model: ``transformers.GPT2LMHeadModel``, 4 layers, 4 heads, d_model 96 (d_head 24), d_mlp 384,
n_positions 64, tied embeddings, no dropout, 468,672 parameters (1.9 MB in float32).
Tokenizer: a word-level ``tokenizers`` model (WordLevel + WhitespaceSplit, so a leading space
does not matter and one word is one token), wrapped as a ``PreTrainedTokenizerFast`` with
``<bos>``, ``<pad>``, ``<unk>``; it adds no special tokens by itself (we prepend ``<bos>``).
Vocabulary: the special tokens, the IOI names (``patchaudit.tasks.ioi.NAMES``), the template
words, "," and ".", and the induction filler block "t00" .. "t99"
(``patchaudit.tasks.induction.FILLER``).

Training data, freshly sampled each step from a seeded RNG:

- IOI: ``<bos>`` + a clean prompt of ``patchaudit.tasks.ioi`` (a template filled with IO and S
  in either order, S repeated), target = the IO name at the last position.
- Induction: ``<bos>`` + a random-length prefix (0-12 filler tokens) + r + r, where r is
  4-16 distinct filler tokens (prefix and r distinct). The random prefix makes the repeat
  start at a random position, so the model must do induction, not memorise positions.

Loss: cross-entropy on the predictable answer positions only: for IOI the last position
(predict IO); for induction every position of the repeated half that predicts r[1..n-1]
(the token after a repeated token). The two losses are averaged with equal weight.
Positions whose next token is unpredictable (names, random tokens) carry no loss.

Optimiser: AdamW (lr 2e-3, betas 0.9/0.98, weight decay 0.01 on matrices), 200 warm-up steps,
cosine decay to 10%, gradient clipping at 1, batches of 24 IOI + 48 induction sequences, at most
5000 steps (early stop when the held-out accuracies reach the targets in DEFAULTS).
``sinusoidal_wpe_init`` (off for the committed model) initialises the position embeddings with
a sinusoidal table; it did not speed up induction in a trial run.

What the committed model does (metrics.json): IOI is saturated (100% held out, logit diff
about 14; ABC corruption brings it to about 0, name swap to about -14). Induction is only
partial: the last position of [bos] + r + r[:-1] (n = 8) is right 93% of the time, but the
per-token accuracy over the repeated half is about 50-65%: early in the repeat the model is
poor, late in it a "token seen once and not yet repeated" heuristic helps it. Training longer
(loss was still falling at step 5000) should make it a cleaner induction model.

Loading (offline; no download): both calls below work, the first is the short one::

    from transformer_lens.model_bridge import TransformerBridge
    m = TransformerBridge.boot_transformers("backend/patchaudit/models/bundled")

    from transformers import AutoTokenizer, GPT2LMHeadModel
    d = "backend/patchaudit/models/bundled"
    m = TransformerBridge.boot_transformers(
        d, hf_model=GPT2LMHeadModel.from_pretrained(d), tokenizer=AutoTokenizer.from_pretrained(d)
    )

(set HF_HUB_OFFLINE=1 so nothing tries the network).
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
from pathlib import Path

import torch
import torch.nn.functional as F

from patchaudit.tasks.induction import FILLER, make_induction
from patchaudit.tasks.ioi import FRAMES, NAMES, OBJECTS, PLACES, TEMPLATES, fill, make_ioi

log = logging.getLogger("patchaudit.train_bundled")

SPECIAL = ["<bos>", "<pad>", "<unk>"]
PUNCT = [",", "."]

DEFAULTS = {
    "seed": 0,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 96,
    "n_positions": 64,
    "batch_ioi": 24,
    "batch_induction": 48,
    "max_steps": 5000,
    "min_steps": 1000,
    "lr": 2e-3,
    "warmup": 200,
    "weight_decay": 0.01,
    "eval_every": 250,
    "induction_half_len": (4, 16),
    "induction_prefix_len": (0, 12),
    "target_ioi_acc": 0.99,
    "target_induction_acc": 0.99,
    "sinusoidal_wpe_init": 0.0,  # e.g. 0.05: sinusoidal wpe init (off for the bundled run)
}


def template_words() -> list[str]:
    """Every non-name word of the IOI frames, places and objects (sorted, no punctuation)."""
    words: set[str] = set(PLACES) | set(OBJECTS)
    for frame in FRAMES:
        for w in frame.split():
            if not w.startswith("{"):
                words.add(w)
    return sorted(w for w in words if w not in PUNCT)


def build_vocab() -> dict[str, int]:
    words = SPECIAL + list(NAMES) + template_words() + PUNCT + list(FILLER)
    assert len(set(words)) == len(words), "duplicate vocabulary entries"
    return {w: i for i, w in enumerate(words)}


def build_tokenizer(vocab: dict[str, int]):
    """A word-level PreTrainedTokenizerFast (no automatic special tokens)."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = WhitespaceSplit()
    # Decode word tokens joined by spaces (each token's text carries no space itself).
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=DEFAULTS["n_positions"],
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


def sinusoid(n_pos: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The transformer's sinusoidal position table [n_pos, d] (used only as an init)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # [n_pos, 1]
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]
    table = torch.zeros(n_pos, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


# ----------------------------------------------------------------------------- data


def ioi_batch(rng: random.Random, vocab: dict[str, int], b: int):
    """(ids [b, 15], target [b]): <bos> + clean IOI prompt; target = IO at the last position."""
    rows, targets = [], []
    for _ in range(b):
        t = rng.choice(TEMPLATES)
        io, s = rng.sample(NAMES, 2)
        a, bb = (io, s) if rng.random() < 0.5 else (s, io)
        words = fill(t, a, bb, s).split()
        rows.append([vocab["<bos>"]] + [vocab[w] for w in words])
        targets.append(vocab[io])
    return torch.tensor(rows), torch.tensor(targets)  # [b, pos], [b]


def induction_batch(rng: random.Random, vocab: dict[str, int], b: int, cfg: dict):
    """(ids [b, L], targets [b, L] with -100 where no loss), L = longest sequence, right-padded."""
    pool = [vocab[w] for w in FILLER]
    lo_n, hi_n = cfg["induction_half_len"]
    lo_p, hi_p = cfg["induction_prefix_len"]
    seqs, tgts = [], []
    for _ in range(b):
        n = rng.randint(lo_n, hi_n)
        p = rng.randint(lo_p, hi_p)
        toks = rng.sample(pool, n + p)
        prefix, r = toks[:p], toks[p:]
        seq = [vocab["<bos>"]] + prefix + r + r
        inp, tgt = seq[:-1], seq[1:]
        mask_from = 1 + p + n  # index in inp of the 2nd copy's r[0]; it predicts r[1]
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


# ----------------------------------------------------------------------------- evaluation


def _encode(tok, texts: list[str]) -> torch.Tensor:
    bos = tok.bos_token_id
    rows = [[bos] + tok(t, add_special_tokens=False).input_ids for t in texts]
    return torch.tensor(rows)  # [n, pos] (all prompts of a set have the same length)


@torch.no_grad()
def evaluate(model, tok, n_ioi: int = 512, n_ind: int = 512, seed: int = 12345) -> dict:
    """Held-out accuracies: fresh prompts from seeds the training RNG does not use."""
    model.eval()
    name_ids = torch.tensor([tok.convert_tokens_to_ids(n) for n in NAMES])
    out: dict = {}
    for corruption in ("abc", "swap"):
        pairs = make_ioi(n_ioi, seed=seed, corruption=corruption)
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
    clean, corrupted, ans, wrong = make_induction(tok, n_ind, seed=seed, half_len=8)
    for kind, ids in (("clean", clean), ("corrupted", corrupted)):
        logits = model(ids).logits  # [n, pos, vocab]
        last = logits[:, -1]
        la = last.gather(1, ans[:, None])[:, 0]
        lw = last.gather(1, wrong[:, None])[:, 0]
        res = {
            "acc_top1": float((last.argmax(-1) == ans).float().mean()),
            "mean_logit_diff": float((la - lw).mean()),
            "n": n_ind,
            "half_len": 8,
        }
        if kind == "clean":
            # per-token accuracy on the whole repeated half: position 8+j predicts r[j+1]
            h = 8
            pred = logits[:, h + 1 : 2 * h, :].argmax(-1)  # [n, h-1]
            target = ids[:, 2 : h + 1]  # [n, h-1] = r[1..h-1]
            res["acc_repeated_half"] = float((pred == target).float().mean())
        out[f"induction_{kind}"] = res
    # a longer prefix-shifted variant: random prefix, then the repeat (position generalisation)
    rng = random.Random(seed + 1)
    vocab = tok.get_vocab()
    cfg = dict(DEFAULTS)
    ids, tg = induction_batch(rng, vocab, n_ind, cfg)
    logits = model(ids).logits
    m = tg != -100
    out["induction_random_prefix_tokens"] = {
        "acc": float((logits.argmax(-1)[m] == tg[m]).float().mean()),
        "n_seqs": n_ind,
    }
    model.train()
    return out


# ----------------------------------------------------------------------------- training


def train(out_dir: Path, cfg: dict) -> dict:
    torch.manual_seed(cfg["seed"])
    rng = random.Random(cfg["seed"])
    vocab = build_vocab()
    tok = build_tokenizer(vocab)
    model = build_model(len(vocab), cfg, vocab["<bos>"], vocab["<pad>"])
    if cfg["sinusoidal_wpe_init"]:
        with torch.no_grad():  # optional init, meant to ease the previous-token head
            model.transformer.wpe.weight.copy_(
                sinusoid(cfg["n_positions"], cfg["n_embd"]) * cfg["sinusoidal_wpe_init"]
            )
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("vocab %d, params %d", len(vocab), n_params)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
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

    t0 = time.time()
    history = []
    step = 0
    for step in range(1, total + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1)
        ids, tgt = ioi_batch(rng, vocab, cfg["batch_ioi"])
        loss_ioi = F.cross_entropy(model(ids).logits[:, -1], tgt)
        ids, tgt = induction_batch(rng, vocab, cfg["batch_induction"], cfg)
        logits = model(ids, attention_mask=(ids != vocab["<pad>"]).long()).logits  # [b, L, vocab]
        loss_ind = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        loss = 0.5 * (loss_ioi + loss_ind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg["eval_every"] == 0 or step == total:
            ev = evaluate(model, tok, n_ioi=256, n_ind=256, seed=777)
            ioi_acc = ev["ioi_clean"]["acc_vs_all_names"]
            ind_acc = ev["induction_clean"]["acc_top1"]
            rp_acc = ev["induction_random_prefix_tokens"]["acc"]
            history.append(
                {
                    "step": step,
                    "seconds": round(time.time() - t0, 1),
                    "loss_ioi": round(loss_ioi.item(), 4),
                    "loss_induction": round(loss_ind.item(), 4),
                    "ioi_acc": ioi_acc,
                    "induction_acc": ind_acc,
                    "induction_prefix_acc": rp_acc,
                }
            )
            log.info("%s", history[-1])
            done = (
                step >= cfg["min_steps"]
                and ioi_acc >= cfg["target_ioi_acc"]
                and ind_acc >= cfg["target_induction_acc"]
                and rp_acc >= cfg["target_induction_acc"]
            )
            if done:
                break
    train_seconds = time.time() - t0

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    _fix_tokenizer_config(out_dir)
    metrics = {
        "held_out": evaluate(model, tok, n_ioi=512, n_ind=512, seed=12345),
        "params": n_params,
        "model_safetensors_bytes": (out_dir / "model.safetensors").stat().st_size,
        "vocab_size": len(vocab),
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "loss": "cross-entropy on answer positions only: IOI last position (IO); induction "
        "positions of the repeated half that predict r[1..n-1]; mean of the two",
        "history": history,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "held_out_note": "IOI: make_ioi(512, seed=12345); induction: make_induction(tok, 512, "
        "seed=12345, half_len=8); training draws from random.Random(seed=0), evaluation during "
        "training uses seed 777",
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "bundled")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = dict(DEFAULTS, seed=args.seed, max_steps=args.max_steps)
    metrics = train(args.out, cfg)
    summary = {k: v for k, v in metrics.items() if k not in ("history", "settings")}
    print(json.dumps(summary, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
