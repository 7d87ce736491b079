"""Circuit roles of the bundled model, from activation patching and attention patterns.

For each task (IOI with the abc corruption, induction, greater-than) the script runs
``pa.audit(model, pairs, methods=("ap",))`` on the heads and on the MLPs (noising: each
component's clean activation replaced by its corrupted one; the score is the change of the
logit difference, so a negative score marks a component the clean behaviour needs), reads the
attention patterns of the clean prompts, and names the heads that play the literature's roles:

- IOI (Wang et al. 2022): name movers (attend from the last position to the indirect object),
  S-inhibition heads (attend from the last position to the second subject mention S2),
  duplicate-token heads (attend from S2 back to S1) and induction heads (from S2 to the token
  after S1).
- Induction (Olsson et al. 2022): previous-token heads (attend to the position before) and
  induction heads (attend to the token after the earlier copy of the current token).
- Greater-than (Hanna et al. 2023): the heads that attend from the last position to the start
  year YY and the MLP layers whose patching removes the preference for later years.

A head gets a role when its attention score (mean attention weight on the role's target) is at
least ``ATTN_MIN`` and its patching effect is at least ``EFFECT_MIN`` of the largest head
effect of that task. It writes docs/bundled/roles.json and docs/BUNDLED_MODEL.md.

    PYTHONPATH=backend python bench/model_roles.py [--model bundled] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ATTN_MIN = 0.3
EFFECT_MIN = 0.1


def _hf(model_dir: Path):
    from transformers import GPT2LMHeadModel

    m = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager")
    m.eval()
    return m


@torch.no_grad()
def _attn(hf, ids: torch.Tensor) -> torch.Tensor:
    """Attention patterns [layer, batch, head, query, key]."""
    return torch.stack(hf(ids, output_attentions=True).attentions)


def _ap(model, pairs, site: str) -> tuple[list[list[float]], float, float]:
    import patchaudit as pa

    r = pa.audit(model, pairs, site=site, methods=("ap",))
    return r.scores["ap"].tolist(), float(r.metric_base), float(r.metric_src)


def _round(x, nd: int = 3):
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    return round(float(x), nd)


def _roles(scores: dict[str, torch.Tensor], effect: torch.Tensor) -> dict[str, list[dict]]:
    """Heads with attention score >= ATTN_MIN and |effect| >= EFFECT_MIN * max |effect|."""
    big = effect.abs().max().item()
    out: dict[str, list[dict]] = {}
    for role, s in scores.items():
        rows = []
        for layer, head in (s >= ATTN_MIN).nonzero().tolist():
            e = effect[layer, head].item()
            if abs(e) >= EFFECT_MIN * big:
                rows.append(
                    {
                        "head": f"L{layer}H{head}",
                        "attention": round(s[layer, head].item(), 3),
                        "ap_effect": round(e, 3),
                    }
                )
        out[role] = sorted(rows, key=lambda r: r["ap_effect"])
    return out


def _top(effect: torch.Tensor, k: int = 6) -> list[dict]:
    flat = effect.flatten()
    order = flat.abs().argsort(descending=True)[:k]
    n_head = effect.shape[1]
    return [
        {"head": f"L{i // n_head}H{i % n_head}", "ap_effect": round(flat[i].item(), 3)}
        for i in order.tolist()
    ]


def ioi(model, hf, tok, n: int, seed: int) -> dict:
    import patchaudit as pa
    from patchaudit.tasks.ioi import make_ioi

    rows = make_ioi(n, seed=seed, corruption="abc")
    pairs = pa.PromptPairs.from_task("ioi", n=n, seed=seed, corruption="abc")
    heads, base, src = _ap(model, pairs, "heads")
    mlp, _, _ = _ap(model, pairs, "mlp")
    tp = pairs.tokenize(model)
    att = _attn(hf, tp.clean)  # [L, B, H, q, k]
    end = tp.clean.shape[1] - 1
    # positions (with the bos at 0): IO, S1, S2 from the words
    io_pos, s1_pos, s2_pos = [], [], []
    for r in rows:
        w = ["<bos>", *r["clean"].split()]
        io, s = r["answer"].strip(), r["wrong"].strip()
        idx_s = [i for i, x in enumerate(w) if x == s]
        io_pos.append(w.index(io))
        s1_pos.append(idx_s[0])
        s2_pos.append(idx_s[1])
    b = torch.arange(len(rows))
    io_t, s1_t, s2_t = torch.tensor(io_pos), torch.tensor(s1_pos), torch.tensor(s2_pos)
    end_t = torch.full_like(b, end)
    per_pair = att.permute(1, 0, 2, 3, 4)  # [B, L, H, q, k]

    def at(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return per_pair[b, :, :, q, k].mean(0)  # [L, H], mean over the pairs

    end_io, end_s2 = at(end_t, io_t), at(end_t, s2_t)
    s2_s1, s2_s1p = at(s2_t, s1_t), at(s2_t, s1_t + 1)
    eff = torch.tensor(heads)
    return {
        "pairs": f"PromptPairs.from_task('ioi', n={n}, seed={seed}, corruption='abc')",
        "metric": "logit_diff (IO - S)",
        "clean_metric": round(base, 3),
        "corrupted_metric": round(src, 3),
        "ap_heads": _round(heads),
        "ap_mlp": _round([r[0] for r in mlp]),
        "attention": {
            "end_to_io": _round(end_io.tolist()),
            "end_to_s2": _round(end_s2.tolist()),
            "s2_to_s1": _round(s2_s1.tolist()),
            "s2_to_s1_plus_1": _round(s2_s1p.tolist()),
        },
        "top_heads": _top(eff),
        "roles": _roles(
            {
                "name_mover": end_io,
                "s_inhibition": end_s2,
                "duplicate_token": s2_s1,
                "induction": s2_s1p,
            },
            eff,
        ),
    }


def induction(model, hf, tok, n: int, seed: int) -> dict:
    import patchaudit as pa

    h = 8
    pairs = pa.PromptPairs.from_task("induction", n=n, seed=seed)
    heads, base, src = _ap(model, pairs, "heads")
    mlp, _, _ = _ap(model, pairs, "mlp")
    tp = pairs.tokenize(model)
    att = _attn(hf, tp.clean)  # [L, B, H, q, k]; clean = bos + r + r[:-1]
    q = torch.arange(h + 1, 2 * h)  # the second copy's r[0] .. r[h-2]
    prev = att[:, :, :, q, q - 1].mean((1, 3))  # [L, H]
    ind = att[:, :, :, q, q - h + 1].mean((1, 3))  # to the token after the first copy
    eff = torch.tensor(heads)
    return {
        "pairs": f"PromptPairs.from_task('induction', n={n}, seed={seed})",
        "metric": "logit_diff (r[-1] - r'[-1]) at the last position",
        "clean_metric": round(base, 3),
        "corrupted_metric": round(src, 3),
        "ap_heads": _round(heads),
        "ap_mlp": _round([r[0] for r in mlp]),
        "attention": {"previous_token": _round(prev.tolist()), "induction": _round(ind.tolist())},
        "top_heads": _top(eff),
        "roles": {
            "induction": _roles({"x": ind}, eff)["x"],
            # a previous-token head acts through the induction head's key (on the first copy),
            # not at the last position: named by attention alone, with its patching effect
            "previous_token": [
                {
                    "head": f"L{a}H{b}",
                    "attention": round(prev[a, b].item(), 3),
                    "ap_effect": round(eff[a, b].item(), 3),
                }
                for a, b in (prev >= 0.5).nonzero().tolist()
            ],
        },
    }


def greater_than(model, hf, tok, n: int, seed: int) -> dict:
    import patchaudit as pa
    from patchaudit.tasks.greater_than import make_greater_than, prob_diff_greater, year_ids

    rows = make_greater_than(n, seed=seed)
    pairs = pa.PromptPairs.from_task("greater_than", n=n, seed=seed)
    heads, base, src = _ap(model, pairs, "heads")
    mlp, _, _ = _ap(model, pairs, "mlp")
    tp = pairs.tokenize(model)
    att = _attn(hf, tp.clean)
    end = tp.clean.shape[1] - 1
    yy_pos = 8  # <bos> The noun lasted from the year C YY ...
    end_yy = att[:, :, :, end, yy_pos].mean(1)  # [L, H]
    eff = torch.tensor(heads)
    # the paper's metric under MLP patching: p(later) - p(earlier), clean vs each MLP patched
    yids = year_ids(tok)
    yy = torch.tensor([r["yy"] for r in rows])
    with torch.no_grad():
        clean_logits = hf(tp.clean).logits[:, -1]
        pd_clean = prob_diff_greater(clean_logits, yy, yids).mean().item()
        corr_acts = {}
        hooks = []
        for i, blk in enumerate(hf.transformer.h):
            hooks.append(
                blk.mlp.register_forward_hook(
                    lambda mod, inp, out, i=i: corr_acts.__setitem__(i, out.detach())
                )
            )
        hf(tp.corrupted)
        for hk in hooks:
            hk.remove()
        pd_patched = []
        for i, blk in enumerate(hf.transformer.h):
            hk = blk.mlp.register_forward_hook(lambda mod, inp, out, i=i: corr_acts[i])
            lg = hf(tp.clean).logits[:, -1]
            hk.remove()
            pd_patched.append(prob_diff_greater(lg, yy, yids).mean().item())
    return {
        "pairs": f"PromptPairs.from_task('greater_than', n={n}, seed={seed})",
        "metric": "logit_diff (YY + d - (YY - d))",
        "clean_metric": round(base, 3),
        "corrupted_metric": round(src, 3),
        "ap_heads": _round(heads),
        "ap_mlp": _round([r[0] for r in mlp]),
        "prob_diff_clean": round(pd_clean, 3),
        "prob_diff_mlp_patched": _round(pd_patched),
        "attention": {"end_to_yy": _round(end_yy.tolist())},
        "top_heads": _top(eff),
        "roles": {"attend_to_yy": _roles({"x": end_yy}, eff)["x"]},
        "mlp_roles": [
            {"mlp": f"MLP{i}", "ap_effect": round(v[0], 3)}
            for i, v in enumerate(mlp)
            if abs(v[0]) >= 0.1 * max(abs(x[0]) for x in mlp)
        ],
    }


def _heads(rows: list[dict]) -> str:
    if not rows:
        return "none"
    return ", ".join(f"{r['head']} ({r['attention']:.2f}, {r['ap_effect']:+.2f})" for r in rows)


def markdown(d: dict) -> str:
    i, n, g = d["ioi"], d["induction"], d["greater_than"]
    mlp_g = ", ".join(f"{r['mlp']} ({r['ap_effect']:+.2f})" for r in g["mlp_roles"]) or "none"
    pd = ", ".join(f"MLP{k} {v:+.2f}" for k, v in enumerate(g["prob_diff_mlp_patched"]))
    return f"""
Roles found by activation patching (`pa.audit(..., methods=("ap",))`, noising, logit difference;
a negative effect means the clean behaviour needs the component) and attention patterns on the
clean prompts; each head is listed as `LlayerHhead (attention weight on the role's target,
patching effect)`. Made by `bench/model_roles.py` (data: `docs/bundled/roles.json`).

- **IOI** (abc corruption; clean logit difference {i["clean_metric"]:+.2f}, corrupted
  {i["corrupted_metric"]:+.2f}): name movers (last position -> IO):
  {_heads(i["roles"]["name_mover"])}; S-inhibition (last position -> S2):
  {_heads(i["roles"]["s_inhibition"])}; duplicate-token (S2 -> S1):
  {_heads(i["roles"]["duplicate_token"])}; induction (S2 -> S1+1):
  {_heads(i["roles"]["induction"])}. Largest head effects:
  {", ".join(f"{r['head']} {r['ap_effect']:+.2f}" for r in i["top_heads"])}.
- **Induction** (random first half; clean logit difference {n["clean_metric"]:+.2f}, corrupted
  {n["corrupted_metric"]:+.2f}): induction heads (-> the token after the earlier copy):
  {_heads(n["roles"]["induction"])}; previous-token heads (attention to the position before
  >= 0.5): {_heads(n["roles"]["previous_token"])}.
- **Greater-than** (start year 01; clean logit difference {g["clean_metric"]:+.2f}, corrupted
  {g["corrupted_metric"]:+.2f}): MLP layers carrying it: {mlp_g}; heads attending from the last
  position to YY: {_heads(g["roles"]["attend_to_yy"])}. Probability on later minus earlier
  years, clean {g["prob_diff_clean"]:+.2f}; with one MLP's output patched from the corrupted
  prompt: {pd}.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--out", default=str(ROOT / "docs/bundled/roles.json"))
    ap.add_argument("--md", default=str(ROOT / "docs/BUNDLED_MODEL.md"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import patchaudit as pa
    from patchaudit.models import BUNDLED_DIR

    model_dir = BUNDLED_DIR if a.model == "bundled" else Path(a.model)
    model = pa.load_model(a.model, device="cpu")
    hf = _hf(model_dir)
    tok = model.tokenizer
    d = {
        "model": a.model,
        "attn_min": ATTN_MIN,
        "effect_min": EFFECT_MIN,
        "ioi": ioi(model, hf, tok, a.n, a.seed),
        "induction": induction(model, hf, tok, a.n, a.seed),
        "greater_than": greater_than(model, hf, tok, a.n, a.seed),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(d, indent=1) + "\n")
    md = Path(a.md)
    head = md.read_text().split("<!-- roles:start -->")[0] if md.exists() else ""
    if not head:
        head = "# The bundled model's circuits\n\n"
    md.write_text(f"{head}<!-- roles:start -->\n{markdown(d).strip()}\n<!-- roles:end -->\n")
    print(markdown(d))  # noqa: T201


if __name__ == "__main__":
    main()
