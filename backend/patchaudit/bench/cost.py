"""Cost benchmark (issue 3): wall time, passes and peak memory of every method side by side on
the same inputs, with TransformerLens's own loops as the reference systems.

CPU: a randomly initialised GPT-2-small config, batch 4 x 16 tokens (quick and full).
GPU (``--gpu``): GPT-2 small / medium / XL configs, 8 pairs x 16 tokens, fp32.
Site heads, metric logit_diff, direction noising; every measurement starts from the tokens
(base pass included), as a user would run it.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from .. import defaults as D
from ..estimators import methods as M
from ..estimators.core import Tracker, compute_base, compute_base_fused, make_problem
from . import common as C

log = logging.getLogger("patchaudit.bench")


def _tl_metric(tp):
    idx = torch.arange(len(tp))
    last, ans, wr = tp.last_pos, tp.answer_ids, tp.wrong_ids

    def metric(logits):
        i = idx.to(logits.device)
        lg = logits[i, last.to(logits.device)]
        return (lg[i, ans.to(logits.device)] - lg[i, wr.to(logits.device)]).mean()

    a0, w0, l0 = int(ans[0]), int(wr[0]), int(last[0])

    def metric1(logits):  # attribution_patch calls it with one pair's logits
        return logits[0, l0, a0] - logits[0, l0, w0]

    return metric, metric1


def tl_ap_loop(model, tp):
    """TransformerLens's serial loop: one patched forward per head (clean cache included)."""
    from transformer_lens import patching

    metric, _ = _tl_metric(tp)
    with torch.no_grad():
        _, cache = model.run_with_cache(tp.clean)
        return patching.get_act_patch_attn_head_out_all_pos(model, tp.corrupted, cache, metric)


def tl_atp(model, tp):
    """TransformerLens's attribution_patch (node granularity; per-pair forwards/backward).
    It needs activations that require grad: the embedding weight is switched on meanwhile."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    _, metric1 = _tl_metric(tp)
    w = next(model.parameters())
    w.requires_grad_(True)
    try:
        return attribution_patch(model, tp.clean, tp.corrupted, metric1)
    finally:
        w.requires_grad_(False)


def _silence_tqdm() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:  # TL's patching loop shows a tqdm bar per sweep
        import transformer_lens.patching as P

        if hasattr(P, "tqdm"):
            P.tqdm = lambda it, *a, **k: it  # type: ignore[assignment]
    except ImportError:
        pass


def bench_model(
    model,
    tp,
    device: torch.device,
    probes: int,
    ig_steps: int,
    mhvp_steps: int,
    repeats: int,
    max_seconds: float,
    with_tl: bool,
    with_exact: bool,
    tl_loop: bool = True,
    deadline: float | None = None,
    warmup: int = 1,
    memory: bool = True,
) -> dict:
    import patchaudit as pa

    # every path (ours, TransformerLens's loops, the plain forward) gets the tokens on the device
    tp = pa.TokenPairs(
        tp.clean.to(device),
        tp.corrupted.to(device),
        tp.answer_ids.to(device),
        tp.wrong_ids.to(device),
        tp.last_pos.to(device),
    )

    def problem():
        return make_problem(
            model,
            tp,
            "heads",
            "logit_diff",
            "noising",
        )

    n = int(model.cfg.n_layers * model.cfg.n_heads)
    passes: dict[str, dict] = {}

    def ours(name: str, method: str, k: int, fn):
        def go():
            p = problem()
            tr = Tracker()
            b = compute_base(p, tr)
            fn(p, b, tr)
            passes[name] = {
                "passes": tr.forward + tr.backward,
                "forward": tr.forward,
                "backward": tr.backward,
                "rows": tr.forward_rows + tr.backward_rows,
            }

        return go

    def fused(name: str, method: str, k: int):
        """The engine's screen: the second-order tangents ride on the base pass itself."""

        def go():
            p = problem()
            tr = Tracker()
            signs, combine = M.second_order_signs(p, method, k, 0)
            b, y = compute_base_fused(p, tr, signs)
            assert y is not None
            M.from_tangents(p, b, y, combine)
            passes[name] = {
                "passes": tr.forward + tr.backward,
                "forward": tr.forward,
                "backward": tr.backward,
                "rows": tr.forward_rows + tr.backward_rows,
                "schedule": p.hvp_mode,
            }

        return go

    def sff():
        r = pa.screen_flag_fix(model, tp, hvp_probes=probes)
        sc, fx = r.cost["screen"], r.cost["fix"]
        passes["screen_flag_fix"] = {
            "passes": sc["forward"] + sc["backward"] + fx["forward"],
            "flagged": len(r.flagged),
            "rows": sc["rows"] + fx["rows"],
        }

    def fwd():
        with torch.no_grad():
            model(tp.clean)
        passes["forward"] = {"passes": 1, "rows": 1}

    jobs = [
        ("forward", fwd),
        ("atp", ours("atp", "atp", 0, lambda p, b, tr: M.atp(p, b, tr))),
        ("hvp_joint", fused("hvp_joint", "hvp_joint", 0)),
        *[(f"hvp_P{k}", fused(f"hvp_P{k}", "hvp", k)) for k in sorted({1, 4, probes})],
        (
            f"ig_K{ig_steps}",
            ours(
                f"ig_K{ig_steps}",
                "ig",
                ig_steps,
                lambda p, b, tr: M.ig(p, b, steps=ig_steps, tracker=tr),
            ),
        ),
        (
            f"mhvp_K{mhvp_steps}",
            ours(
                f"mhvp_K{mhvp_steps}",
                "mhvp",
                mhvp_steps,
                lambda p, b, tr: M.mhvp(p, b, steps=mhvp_steps, tracker=tr),
            ),
        ),
        ("screen_flag_fix", sff),
        ("ap", ours("ap", "ap", 0, lambda p, b, tr: M.ap(p, b, tracker=tr))),
    ]
    if with_exact:
        jobs.append(("hvp_exact", fused("hvp_exact", "hvp_exact", 0)))
    if with_tl:
        jobs.append(("tl_atp", lambda: tl_atp(model, tp)))
        # one pair per pass: 3 passes per pair, 3 copies of the batch in rows
        passes["tl_atp"] = {"passes": 3 * len(tp), "rows": 3}
        if tl_loop:
            jobs.append(("tl_ap_loop", lambda: tl_ap_loop(model, tp)))
            passes["tl_ap_loop"] = {"passes": 1 + n, "rows": 1 + n}
    only = os.environ.get("PATCHAUDIT_BENCH_METHODS")  # e.g. "forward,atp,hvp_P8": a subset
    if only:
        keep = {m.strip() for m in only.split(",")}
        jobs = [(name, fn) for name, fn in jobs if name in keep]
    out: dict = {}
    if warmup == 0:  # one untimed forward warms the allocator and kernels for every method
        fwd()
    for name, fn in jobs:
        if deadline is not None and time.perf_counter() > deadline:
            out[name] = {"skipped": "time budget"}
            log.warning("skip %s: time budget", name)
            continue
        t0 = time.perf_counter()
        try:
            m = C.measure(
                fn, device, repeats=repeats, warmup=warmup, max_seconds=max_seconds, memory=memory
            )
        except Exception as e:  # a failing reference system is recorded, not fatal
            log.exception("%s failed", name)
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        m.update(passes.get(name, {}))
        out[name] = m
        log.info(
            "%s: median %.4fs (%d runs, %.0fs)",
            name,
            m["median_s"],
            m["repeats"],
            time.perf_counter() - t0,
        )
    return out


def _sizes_env(default: list[str]) -> list[str]:
    env = os.environ.get("PATCHAUDIT_BENCH_SIZES")
    return env.split(",") if env else default


def run(out: str, quick: bool = False, gpu: bool = False, sizes: list[str] | None = None) -> dict:
    t_start = time.perf_counter()
    _silence_tqdm()
    # PATCHAUDIT_BENCH_DEVICE=cpu dry-runs the --gpu code path on a CPU (tests, tiny sizes)
    device = torch.device(os.environ.get("PATCHAUDIT_BENCH_DEVICE", "cuda") if gpu else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device")
    try:
        import transformer_lens  # noqa: F401

        with_tl = True
    except ImportError:
        with_tl = False
    dflt = D.load()
    probes = int(dflt["hvp_probes"]["cuda" if gpu else "cpu"])
    ig_steps, mhvp_steps = 16, int(dflt["mhvp_steps"])
    budget = float(os.environ.get("PATCHAUDIT_BENCH_BUDGET_S", "300" if gpu else "1e9"))
    deadline = t_start + budget
    res: dict = {
        "kind": "cost",
        "mode": "gpu" if gpu else ("quick" if quick else "full"),
        "environment": C.environment(device),
        "site": "heads",
        "metric": "logit_diff",
        "direction": "noising",
        "dtype": "float32",
        "settings": {"hvp_probes": probes, "ig_steps": ig_steps, "mhvp_steps": mhvp_steps},
        "models": {},
    }
    if gpu:
        sizes = sizes or _sizes_env(["small", "medium", "xl"])
        n_pairs, n_pos, repeats, cap = 8, 16, 3, 15.0
    else:
        sizes = sizes or _sizes_env(["small"])
        n_pairs, n_pos = 4, 16
        # quick (CI-sized, < 3 min on 2 cores): 3 runs, no per-method warm-up (one warm-up
        # forward instead), a 10 s cap; full: median of 7 after a warm-up each
        repeats, cap = (3, 10.0) if quick else (7, 120.0)
    res["settings"].update(
        {
            "n_pairs": n_pairs,
            "n_pos": n_pos,
            "repeats": repeats,
            "stat": "median (min also given) after 1 warm-up"
            if not (quick and not gpu)
            else "median (min also given), one warm-up forward for all",
        }
    )
    for size in sizes:
        t0 = time.perf_counter()
        model = C.random_gpt2(size, device=device)
        load_s = time.perf_counter() - t0
        tp = C.random_token_pairs(n_pairs, n_pos, int(model.cfg.d_vocab), seed=0).tokenize(model)
        r = bench_model(
            model,
            tp,
            device,
            probes,
            ig_steps,
            mhvp_steps,
            repeats=repeats,
            max_seconds=cap,
            with_tl=with_tl,
            with_exact=(size in ("tiny", "small")) and (gpu or not quick),
            warmup=0 if quick and not gpu else 1,
            memory=not (quick and not gpu),  # the full run measures peak memory
            deadline=deadline,
        )
        res["models"][size] = {
            "n_layers": int(model.cfg.n_layers),
            "n_heads": int(model.cfg.n_heads),
            "d_model": int(model.cfg.d_model),
            "n_components": int(model.cfg.n_layers * model.cfg.n_heads),
            "load_seconds": load_s,
            "methods": r,
        }
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        res["seconds"] = time.perf_counter() - t_start
        C.write_json(out, res)
    if not gpu:
        res["patching"] = bench_patching(quick, with_tl=with_tl)
        C.write_json(out, res)
        res["precision"] = bench_precision(quick)
        C.write_json(out, res)
        res["audit_bundled"] = audit_bundled(quick)
    res["seconds"] = time.perf_counter() - t_start
    C.write_json(out, res)
    return res


def audit_bundled(quick: bool) -> dict:
    """End-to-end ``pa.audit(bundled, ioi n=16, methods atp,hvp,ap)`` on the CPU."""
    import patchaudit as pa

    from .accuracy import bundled_available

    if not bundled_available():
        return {"skipped": "bundled model missing"}
    t0 = time.perf_counter()
    model = pa.load_model("bundled", device="cpu")
    load_s = time.perf_counter() - t0
    pairs = pa.PromptPairs.from_task("ioi", n=16, seed=0)
    m = C.measure(
        lambda: pa.audit(model, pairs, methods=("atp", "hvp", "ap")),
        torch.device("cpu"),
        repeats=3 if quick else 5,
    )
    m["load_seconds"] = load_s
    m["call"] = "pa.audit(model, PromptPairs.from_task('ioi', n=16), methods=('atp','hvp','ap'))"
    return m


def middle_corruption_pairs(n: int, pos: int, vocab: int, seed: int):
    """Random clean prompts; the corrupted prompt redraws one token, in the middle."""
    import patchaudit as pa

    g = torch.Generator().manual_seed(int(seed))
    clean = torch.randint(0, vocab, (n, pos), generator=g)
    corr = clean.clone()
    mid = pos // 2
    corr[:, mid] = (clean[:, mid] + 1 + torch.randint(0, vocab - 1, (n,), generator=g)) % vocab
    ans = torch.randint(0, vocab, (n,), generator=g)
    wrong = (ans + 1 + torch.randint(0, vocab - 1, (n,), generator=g)) % vocab
    return pa.PromptPairs.from_tokens(clean, corr, ans, wrong)


def _ap_map(model, tp, shortcuts: bool) -> torch.Tensor:
    p = make_problem(model, tp, "heads", "logit_diff", "denoising", shortcuts=shortcuts)
    b = compute_base(p, Tracker(), grad=False)
    return M.ap(p, b).values.detach().double().cpu()


def patching_case(model, tp, repeats: int, with_tl: bool, memory: bool, exact_model=None) -> dict:
    """Batched head patching with the exact shortcuts against the same sweep without them
    and against TransformerLens's loop, side by side on the same tokens (base pass included,
    denoising like TL's ``get_act_patch_attn_head_out_all_pos``); their numbers compared, in
    float32 and (with ``exact_model``, the same weights in float64) without rounding."""
    from ..estimators.core import shared_prefix_len

    cpu = torch.device("cpu")
    maps: dict[str, torch.Tensor] = {}
    info: dict = {}

    def ours(shortcuts: bool):
        def go():
            p = make_problem(model, tp, "heads", "logit_diff", "denoising", shortcuts=shortcuts)
            tr = Tracker()
            b = compute_base(p, tr, grad=not shortcuts)  # patching alone needs no gradient
            maps[str(shortcuts)] = M.ap(p, b, tracker=tr).values.detach().double().cpu()
            info[str(shortcuts)] = {
                "forward": tr.forward,
                "prefix_forward": tr.prefix,
                "shared_prefix": shared_prefix_len(p),
                "max_copies": p.max_copies,
            }

        return go

    out: dict = {"n_pairs": len(tp), "n_pos": int(tp.clean.shape[1])}
    jobs = [("ap_plain", ours(False)), ("ap", ours(True))]
    if with_tl:
        jobs.append(("tl_ap_loop", lambda: maps.__setitem__("tl", tl_ap_loop(model, tp))))
    for name, fn in jobs:
        out[name] = C.measure(fn, cpu, repeats=repeats, warmup=1, memory=memory)
    out["ap"].update(info["True"])
    out["ap_plain"].update(info["False"])
    a, b = maps["True"], maps["False"]
    scale = float(b.abs().max())
    out["max_abs_diff"] = float((a - b).abs().max())
    out["max_rel_diff"] = out["max_abs_diff"] / scale if scale > 0 else 0.0
    if exact_model is not None:  # the same sweep in float64: rounding out of the way
        x, y = (_ap_map(exact_model, tp, sc) for sc in (True, False))
        sc64 = float(y.abs().max())
        out["max_rel_diff_fp64"] = float((x - y).abs().max()) / sc64 if sc64 > 0 else 0.0
    out["speedup_vs_plain"] = out["ap_plain"]["median_s"] / out["ap"]["median_s"]
    if with_tl:
        out["tl_over_ap"] = out["tl_ap_loop"]["median_s"] / out["ap"]["median_s"]
        out["tl_over_ap_plain"] = out["tl_ap_loop"]["median_s"] / out["ap_plain"]["median_s"]
    log.info(
        "patching %s x %s: ap %.3fs, plain %.3fs, TL %s; rel diff %.2e",
        out["n_pairs"],
        out["n_pos"],
        out["ap"]["median_s"],
        out["ap_plain"]["median_s"],
        out.get("tl_ap_loop", {}).get("median_s"),
        out["max_rel_diff"],
    )
    return out


def bench_patching(quick: bool, with_tl: bool) -> dict:
    """Issue 13's acceptance cases: GPT-2 small (random weights, 4 pairs x 16 tokens, one
    middle position corrupted) and IOI prompts on the bundled model."""
    import patchaudit as pa

    from .accuracy import bundled_available

    _silence_tqdm()
    repeats = 3 if quick else 5
    res: dict = {}
    model = C.random_gpt2("small")
    tp = middle_corruption_pairs(4, 16, int(model.cfg.d_vocab), seed=0).tokenize(model)
    exact = C.random_gpt2("small", dtype=torch.float64)  # the same seed: the same weights
    res["gpt2_small_middle"] = patching_case(
        model, tp, repeats, with_tl, memory=not quick, exact_model=exact
    )
    del exact
    res["gpt2_small_middle"]["model"] = "GPT-2 small (random weights)"
    del model
    if bundled_available():
        model = pa.load_model("bundled", device="cpu")
        tp = pa.PromptPairs.from_task("ioi", n=16, seed=0).tokenize(model)
        exact = pa.load_model("bundled", device="cpu", dtype=torch.float64)
        res["bundled_ioi"] = patching_case(
            model, tp, repeats, with_tl, memory=not quick, exact_model=exact
        )
        res["bundled_ioi"]["model"] = "bundled (IOI prompts)"
    else:
        res["bundled_ioi"] = {"skipped": "bundled model missing"}
    return res


PRECISION_ARCHS = ("gpt2", "neox", "llama")


def bench_precision(quick: bool, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Half precision against fp32 on the same random GPT-2, NeoX and Llama configs (4 layers
    x 8 heads x 128 wide; the same weights cast), over several prompt sets: the relative error
    ||x_half - x_fp32|| / ||x_fp32|| of the atp, hvp and ap maps (median over the sets) and
    how often the flags agree on the components that are material in fp32 (pooled)."""
    import patchaudit as pa

    out: dict = {"dtype": str(dtype).replace("torch.", ""), "archs": {}}
    n_pairs, n_pos, probes, n_sets = (4, 12, 8, 2) if quick else (8, 16, 16, 8)
    out.update({"n_pairs": n_pairs, "n_pos": n_pos, "hvp_probes": probes, "n_sets": n_sets})
    for arch in PRECISION_ARCHS:
        models = {dt: C.random_arch(arch, dtype=dt) for dt in (torch.float32, dtype)}
        errs: dict[str, list[float]] = {k: [] for k in ("atp", "hvp", "ap")}
        agree = n_mat = 0
        secs = {str(dt).replace("torch.", ""): 0.0 for dt in models}
        for k in range(n_sets):
            pairs = C.random_token_pairs(n_pairs, n_pos, 512, seed=k)
            reps = {}
            for dt, model in models.items():
                t0 = time.perf_counter()
                reps[dt] = pa.audit(model, pairs, methods=("atp", "hvp", "ap"), hvp_probes=probes)
                secs[str(dt).replace("torch.", "")] += time.perf_counter() - t0
            a, b = reps[torch.float32], reps[dtype]
            for m in errs:
                x, y = a.scores[m].double(), b.scores[m].double()
                errs[m].append(float((y - x).norm() / x.norm()) if x.norm() > 0 else 0.0)
            assert a.material is not None and a.flags is not None and b.flags is not None
            mat = a.material
            n_mat += int(mat.sum())
            agree += int((a.flags[mat] == b.flags[mat]).sum())
        e: dict = {"seconds": secs}
        for m, v in errs.items():
            e[f"rel_err_{m}"] = float(np.median(v))
            e[f"rel_err_{m}_max"] = float(max(v))
        e["n_material"] = n_mat
        e["flag_agreement_material"] = agree / n_mat if n_mat else None
        out["archs"][arch] = e
        del models
        log.info("precision %s: %s", arch, e)
    return out
