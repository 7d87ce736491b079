"""Shared pieces of the benchmarks: models, prompt sets, accuracy metrics, timing, JSON."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("patchaudit.bench")

# GPT-2 family configs (layers, heads, d_model); "tiny" is for tests and CPU dry runs.
GPT2_SIZES = {
    "micro": (2, 2, 16),
    "tiny": (2, 4, 64),
    "small": (12, 12, 768),
    "medium": (24, 16, 1024),
    "xl": (48, 25, 1600),
}


def random_gpt2(size: str, device="cpu", dtype=torch.float32, seed: int = 0, vocab: int = 50257):
    """A randomly initialised GPT-2-family model (standard init) as a TransformerBridge."""
    import transformers as tr

    import patchaudit as pa

    n_layer, n_head, n_embd = GPT2_SIZES[size]
    torch.manual_seed(seed)
    cfg = tr.GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=vocab,
        n_positions=128,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    dev = torch.device(device)
    with dev:  # initialise on the target device (XL on a CPU is slow)
        hf = tr.GPT2LMHeadModel(cfg)  # type: ignore[call-arg]
    hf = hf.to(dtype=dtype)  # type: ignore[call-arg]
    return pa.load_model(hf, device=dev, dtype=dtype)


def random_arch(
    arch: str,
    dtype=torch.float32,
    layers: int = 4,
    heads: int = 8,
    width: int = 128,
    vocab: int = 512,
    seed: int = 0,
):
    """A randomly initialised GPT-2, GPT-NeoX (Pythia) or Llama model from a transformers
    config (weights scaled x3 so the network is visibly non-linear), as a TransformerBridge
    in ``dtype``: the same weights for every dtype (drawn in fp32, then cast)."""
    import transformers as tr

    import patchaudit as pa

    torch.manual_seed(seed)
    common: dict[str, Any] = {"vocab_size": vocab, "max_position_embeddings": 128}
    hf: Any
    if arch == "gpt2":
        hf = tr.GPT2LMHeadModel(
            tr.GPT2Config(
                n_layer=layers,
                n_head=heads,
                n_embd=width,
                vocab_size=vocab,
                n_positions=128,
                attn_pdrop=0,
                resid_pdrop=0,
                embd_pdrop=0,
            )
        )
    elif arch == "neox":
        hf = tr.GPTNeoXForCausalLM(
            tr.GPTNeoXConfig(  # type: ignore[call-arg]
                num_hidden_layers=layers,
                num_attention_heads=heads,
                hidden_size=width,
                intermediate_size=4 * width,
                rotary_pct=0.25,
                attention_dropout=0.0,
                hidden_dropout=0.0,
                **common,
            )
        )
    elif arch == "llama":
        hf = tr.LlamaForCausalLM(
            tr.LlamaConfig(
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2),
                hidden_size=width,
                intermediate_size=4 * width,
                **common,
            )
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}: choose gpt2, neox or llama")
    with torch.no_grad():
        for prm in hf.parameters():
            if prm.dim() == 2:
                prm.mul_(3.0)
    return pa.load_model(hf.to(dtype), device="cpu", dtype=dtype)


def random_token_pairs(n: int, pos: int, vocab: int, seed: int):
    """Random clean prompts; the corrupted prompt redraws every token but the first and last."""
    import patchaudit as pa

    g = torch.Generator().manual_seed(int(seed))
    clean = torch.randint(0, vocab, (n, pos), generator=g)
    corr = clean.clone()
    corr[:, 1:-1] = torch.randint(0, vocab, (n, pos - 2), generator=g)
    ans = torch.randint(0, vocab, (n,), generator=g)
    wrong = (ans + 1 + torch.randint(0, vocab - 1, (n,), generator=g)) % vocab
    return pa.PromptPairs.from_tokens(clean, corr, ans, wrong)


# ----------------------------------------------------------------------------- accuracy metrics


def _rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(_rank(a), _rank(b))[0, 1])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def nmae(est: np.ndarray, ref: np.ndarray) -> float:
    """mean |estimate - ap| / mean |ap|."""
    d = float(np.mean(np.abs(ref)))
    return float(np.mean(np.abs(est - ref)) / d) if d > 0 else float("nan")


def topk(n: int, share: float = 0.1) -> int:
    return max(1, round(share * n))


def topk_recall(est: np.ndarray, ref: np.ndarray, share: float = 0.1) -> float:
    """Share of ap's top-k components (by |ap|, k = 10% of components) in the estimate's top-k."""
    est, ref = np.ravel(est), np.ravel(ref)
    k = topk(ref.size, share)
    top_ref = set(np.argsort(-np.abs(ref), kind="stable")[:k].tolist())
    top_est = set(np.argsort(-np.abs(est), kind="stable")[:k].tolist())
    return len(top_ref & top_est) / k


def sign_agreement(est: np.ndarray, ref: np.ndarray, total_effect: float) -> float:
    """Share of components with |ap| >= 1% of the total effect whose sign the estimate gets."""
    est, ref = np.ravel(est), np.ravel(ref)
    m = np.abs(ref) >= 0.01 * abs(total_effect)
    if not m.any():
        m = np.ones_like(ref, dtype=bool)
    return float(np.mean(np.sign(est[m]) == np.sign(ref[m])))


def all_metrics(est: np.ndarray, ref: np.ndarray, total_effect: float) -> dict:
    return {
        "spearman": spearman(est, ref),
        "pearson": pearson(est, ref),
        "nmae": nmae(est, ref),
        "topk_recall": topk_recall(est, ref),
        "sign_agreement": sign_agreement(est, ref, total_effect),
    }


def summary(xs) -> dict:
    """Median and interquartile range (NaNs dropped)."""
    a = np.asarray([x for x in xs if x is not None and not math.isnan(x)], dtype=float)
    if a.size == 0:
        return {"median": None, "q25": None, "q75": None, "n": 0}
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "n": int(a.size)}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = _rank(scores)
    return float((r[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    order = np.argsort(-scores, kind="stable")
    lab = labels[order]
    tp = np.concatenate([[0], np.cumsum(lab)])
    fp = np.concatenate([[0], np.cumsum(~lab)])
    n1, n0 = max(1, int(lab.sum())), max(1, int((~lab).sum()))
    return (fp / n0).round(5).tolist(), (tp / n1).round(5).tolist()


# ----------------------------------------------------------------------------- timing, memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RssPeak:
    """Peak resident-set growth of this process while the block runs (CPU; torch allocations
    are invisible to tracemalloc). Sampled every 2 ms by a thread."""

    def __enter__(self) -> RssPeak:
        import psutil

        self._p = psutil.Process()
        self.start = self._p.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._p.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._p.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / 2**20


def measure(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 1,
    max_seconds: float | None = None,
    memory: bool = True,
) -> dict:
    """Wall time of ``fn`` (median and min of ``repeats`` after ``warmup``) and its peak memory
    (one more run). ``max_seconds`` caps the total: when the warm-up run alone exceeds it, that
    run is the measurement (``single_slow_run``) and memory is not measured; otherwise fewer
    repeats fit the cap (the count is recorded)."""
    t_first = None
    for _ in range(warmup):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        t_first = time.perf_counter() - t0
    if max_seconds is not None and t_first is not None and t_first > max_seconds:
        return {
            "median_s": t_first,
            "min_s": t_first,
            "repeats": 1,
            "warmup": 0,
            "single_slow_run": True,
            "peak_mem_mb": None,
        }
    if max_seconds is not None and t_first is not None and t_first > 0:
        repeats = int(max(1, min(repeats, max_seconds // t_first)))
    times: list[float] = []

    def once() -> None:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)

    if t_first is None and max_seconds is not None:  # no warm-up: the first run sets the pace
        once()
        repeats = int(max(1, min(repeats, max_seconds // max(times[0], 1e-9))))
    while len(times) < repeats:
        once()
    mem = peak_memory(fn, device) if memory else None
    return {
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "repeats": len(times),
        "warmup": warmup,
        "peak_mem_mb": mem,
    }


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with RssPeak() as r:
        fn()
    return r.mb


# ----------------------------------------------------------------------------- output


def environment(device: torch.device) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        from importlib.metadata import version

        env["transformer_lens"] = version("transformer-lens")
    except Exception:  # not installed
        env["transformer_lens"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _clean(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.floating | np.integer):
        return _clean(o.item())
    if isinstance(o, torch.Tensor):
        return _clean(o.tolist())
    return o


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1))
    tmp.replace(path)
