"""Scale benchmark (issue 13): random Llama-architecture models of growing width in bf16, up to
about a billion parameters, each method run under a memory budget.

For every config it records the parameters, the load time, and for the screen (atp + the
corrected estimate at the default probes, ``pa.audit``), atp alone and activation patching of
every head (with the exact shortcuts) the wall time, the peak memory (RSS growth of this process
on the CPU, max allocated on a GPU) and the chunking the planner chose for the budget
(``report.cost["plan"]``), and whether the peak stayed under the budget. One config also runs
under a budget a quarter the size, to show the planner trading passes for memory.

``patchaudit bench scale --out bench/results/scale.json [--quick]``
"""

from __future__ import annotations

import gc
import logging
import time

import torch

from . import common as C
from .cost import middle_corruption_pairs

log = logging.getLogger("patchaudit.bench.scale")

#: (name, layers, heads, width); vocab 32000, Llama's MLP ratio (intermediate 4 x width) and
#: grouped-query attention (key/value heads = heads / 2). The last is ~1.1B parameters.
CONFIGS = (
    ("llama-w512", 8, 8, 512),
    ("llama-w1024", 12, 16, 1024),
    ("llama-w2048", 16, 32, 2048),
)
QUICK = (("llama-w256", 4, 4, 256), ("llama-w512", 8, 8, 512))
VOCAB = 32000


def _one(fn, device: torch.device) -> tuple[float, float, object]:
    """Wall time and peak memory of one call of ``fn`` (its result kept). Freed memory is
    handed back to the OS first (glibc's malloc_trim), so the RSS growth is not hidden by pages
    an earlier run left in the allocator."""
    gc.collect()
    _trim()
    out: dict = {}

    def go() -> None:
        out["r"] = fn()

    C.sync(device)
    t0 = time.perf_counter()
    mem = C.peak_memory(go, device)
    return time.perf_counter() - t0, mem, out["r"]


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS baseline may include freed pages
        pass


def bench_config(
    name: str,
    layers: int,
    heads: int,
    width: int,
    budget_mb: float,
    dtype,
    n_pairs: int,
    n_pos: int,
) -> dict:
    import patchaudit as pa

    device = torch.device("cpu")
    t0 = time.perf_counter()
    model = C.random_arch(
        "llama", dtype=dtype, layers=layers, heads=heads, width=width, vocab=VOCAB
    )
    load_s = time.perf_counter() - t0
    pairs = middle_corruption_pairs(n_pairs, n_pos, VOCAB, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    res: dict = {
        "layers": layers,
        "heads": heads,
        "width": width,
        "n_components": layers * heads,
        "params": n_params,
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "dtype": str(dtype).replace("torch.", ""),
        "load_seconds": load_s,
        "memory_budget_mb": budget_mb,
        "methods": {},
    }
    with torch.no_grad():
        model(pairs.tokenize(model).clean[:1, :4])  # warm-up (lazy init, the block probe)
    runs = {
        "screen": ("atp", "hvp"),  # the default screen: AtP and the corrected estimate
        "atp": ("atp",),
        "ap": ("ap",),  # activation patching of every head (the ground truth)
    }
    for label, methods in runs.items():
        secs, mem, rep = _one(
            lambda m=methods, mod=model: pa.audit(
                mod, pairs, methods=m, memory_budget_mb=budget_mb
            ),
            device,
        )
        plan = rep.cost["plan"]  # type: ignore[attr-defined]
        passes = {
            k: {"forward": v.get("forward"), "backward": v.get("backward")}
            for k, v in rep.cost.items()  # type: ignore[attr-defined]
            if k != "plan"
        }
        res["methods"][label] = {
            "methods": list(methods),
            "seconds": secs,
            "peak_mem_mb": mem,
            "under_budget": bool(mem < budget_mb),
            "max_copies": plan["max_copies"],
            "per_copy_mb": plan["per_copy_mb"],
            "hvp_mode": plan["hvp_mode"],
            "passes": passes,
        }
        log.info(
            "scale %s %s: %.1fs, peak %.0f MiB (budget %.0f)", name, label, secs, mem, budget_mb
        )
        del rep
    del model
    gc.collect()
    return res


def run(out: str, quick: bool = False) -> dict:
    from .cost import _silence_tqdm

    _silence_tqdm()
    t_start = time.perf_counter()
    dtype = torch.bfloat16
    n_pairs, n_pos = (2, 12) if quick else (2, 16)
    budget = 256.0 if quick else 1024.0
    res: dict = {
        "benchmark": "scale",
        "quick": quick,
        "environment": C.environment(torch.device("cpu")),
        "settings": {
            "arch": "llama (random weights, transformers LlamaConfig)",
            "dtype": "bfloat16",
            "n_pairs": n_pairs,
            "n_pos": n_pos,
            "corruption": "one token in the middle of the prompt",
            "site": "heads",
            "metric": "logit_diff",
            "direction": "noising",
            "memory_budget_mb": budget,
            "memory": "peak RSS growth of the process during the call (weights loaded before)",
        },
        "configs": {},
    }
    configs = QUICK if quick else CONFIGS
    for name, layers, heads, width in configs:
        res["configs"][name] = bench_config(
            name, layers, heads, width, budget, dtype, n_pairs, n_pos
        )
        res["seconds"] = time.perf_counter() - t_start
        C.write_json(out, res)
    # the largest config again under a quarter of the budget: more, smaller passes
    name, layers, heads, width = configs[-1]
    small = budget / 4
    r = bench_config(name, layers, heads, width, small, dtype, n_pairs, n_pos)
    res["configs"][f"{name}@{small:.0f}MiB"] = r
    largest = res["configs"][name]
    res["largest"] = {
        "name": name,
        "params": largest["params"],
        "screen_seconds": largest["methods"]["screen"]["seconds"],
        "screen_peak_mem_mb": largest["methods"]["screen"]["peak_mem_mb"],
        "ap_seconds": largest["methods"]["ap"]["seconds"],
        "memory_budget_mb": budget,
        "all_under_budget": all(
            m["under_budget"] for c in res["configs"].values() for m in c["methods"].values()
        ),
    }
    res["seconds"] = time.perf_counter() - t_start
    C.write_json(out, res)
    return res
