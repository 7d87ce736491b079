"""The paper's table, measured here: where AtP's error comes from.

For each task, site and direction on the bundled model, and on random GPT-2, NeoX, Llama (and
Gemma-2 / Qwen2 where ``common.random_arch`` builds them) configs with random-token
corruptions: every component's exact second-order term q split by operation
(``estimators/diagnose.py``), pooled over the components as magnitudes: the share of
sum |share| from local operations (the patched component's own sub-block, after the patch
point) against downstream ones, and the share of each kind of operation. The paper's finding
("AtP's error comes mainly from downstream non-linearities") holds for a row where the
downstream share is above one half.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..diagnosis import is_local
from ..estimators.core import Tracker, compute_base, make_problem
from ..estimators.diagnose import KINDS, kind_of, split_second_order
from ..estimators.sites import SITES
from . import common as C

log = logging.getLogger("patchaudit.bench")

TASKS = ("ioi", "induction", "greater_than")
DIRECTIONS = ("noising", "denoising")
ARCHS = ("gpt2", "neox", "llama", "gemma2", "qwen2")


def measure(model, pairs, site: str, direction: str, metric: str = "logit_diff") -> dict[str, Any]:
    """One row: the pooled local / downstream and per-kind shares of sum |share| over every
    component of the site."""
    tp = pairs.tokenize(model) if hasattr(pairs, "tokenize") else pairs
    p = make_problem(model, tp, site, metric, direction)
    tracker = Tracker()
    t0 = time.perf_counter()
    base = compute_base(p, tracker)
    comps = [(i, c) for i in range(p.site.n_layers) for c in range(p.site.n_comp)]
    s = split_second_order(p, base, comps, tracker)
    seconds = time.perf_counter() - t0
    local = down = 0.0
    kinds = dict.fromkeys(KINDS, 0.0)
    n_local_dominant = 0
    n_nonzero = 0
    for (layer, _), sh in zip(comps, s.shares, strict=True):
        loc = sum(abs(v) for k, v in sh.items() if is_local(site, layer, k))
        tot = sum(abs(v) for v in sh.values())
        local += loc
        down += tot - loc
        for k, v in sh.items():
            kinds[kind_of(k)] += abs(v)
        if tot > 0:
            n_nonzero += 1
            n_local_dominant += int(loc > tot / 2)
    total = local + down
    frac = {k: (v / total if total else 0.0) for k, v in kinds.items()}
    top = sorted((k for k in frac if frac[k] > 0), key=lambda k: -frac[k])[:3]
    return {
        "site": site,
        "direction": direction,
        "metric": metric,
        "n_components": len(comps),
        "n_with_q": n_nonzero,
        "n_local_dominant": n_local_dominant,
        "local_share": local / total if total else 0.0,
        "downstream_share": down / total if total else 0.0,
        "kinds": frac,
        "top_kinds": top,
        "holds": bool(total and down > local),
        "seconds": seconds,
        "passes": tracker.forward + tracker.backward,
    }


def random_model(arch: str, layers: int, heads: int = 4, width: int = 64, vocab: int = 128):
    """``common.random_arch``, or (for the Gemma-2 and Qwen2 families where that version does
    not build them) the same recipe here: standard init, 2-D weights x3, float32."""
    try:
        return C.random_arch(arch, layers=layers, heads=heads, width=width, vocab=vocab)
    except ValueError:
        if arch not in ("gemma2", "qwen2"):
            raise
    import transformers as tr

    import patchaudit as pa

    torch.manual_seed(0)
    kw: dict[str, Any] = {
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "vocab_size": vocab,
        "max_position_embeddings": 128,
        "attention_dropout": 0.0,
    }
    hf: Any
    if arch == "gemma2":
        hf = tr.Gemma2ForCausalLM(
            tr.Gemma2Config(  # type: ignore[call-arg]  # soft-caps, sandwich norms, GQA, window
                head_dim=width // heads,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                query_pre_attn_scalar=width // heads,
                sliding_window=4,
                attn_implementation="eager",
                **kw,
            )
        )
    else:
        hf = tr.Qwen2ForCausalLM(tr.Qwen2Config(**kw))
    with torch.no_grad():
        for prm in hf.parameters():
            if prm.dim() == 2:
                prm.mul_(3.0)
    return pa.load_model(hf.float(), device="cpu", dtype=torch.float32)


def _sites() -> list[str]:
    return [s for s in ("heads", "mlp", "resid", "q", "k", "v") if s in SITES]


def run(out: str, quick: bool = False) -> dict[str, Any]:
    """Random configs first (small), then the bundled model's tasks; the JSON is rewritten
    after every row (``complete`` False until the last), so a long run leaves a usable table."""
    import patchaudit as pa

    t0 = time.time()
    rows: list[dict[str, Any]] = []
    n_pairs = 2 if quick else 4
    sites = _sites()
    tasks = TASKS[:1] if quick else TASKS

    def save(complete: bool) -> dict[str, Any]:
        result = {
            "rows": rows,
            "quick": quick,
            "complete": complete,
            "n_pairs": n_pairs,
            "environment": C.environment(torch.device("cpu")),
            "seconds": time.time() - t0,
        }
        C.write_json(out, result)
        return result

    for arch in ARCHS:
        try:
            m = random_model(arch, layers=2 if quick else 3)
        except ValueError as e:  # an architecture this version's random_arch does not build
            log.warning("skipping %s: %s", arch, e)
            continue
        pairs = C.random_token_pairs(n_pairs, 8, 128, seed=0)
        for site in sites:
            for direction in DIRECTIONS:
                r = measure(m, pairs, site, direction)
                rows.append({"model": f"random {arch}", "task": "random tokens", **r})
                log.info("%s %s %s: downstream %.2f", arch, site, direction, r["downstream_share"])
                save(False)
    model = pa.load_model("bundled", device="cpu")
    for task in tasks:
        pairs = pa.PromptPairs.from_task(task, n=n_pairs, seed=0)
        for site in sites:
            for direction in DIRECTIONS:
                r = measure(model, pairs, site, direction)
                rows.append({"model": "bundled", "task": task, **r})
                log.info(
                    "bundled %s %s %s: downstream %.2f",
                    task,
                    site,
                    direction,
                    r["downstream_share"],
                )
                save(False)
    return save(True)
