"""Engine vs the float64 reference vectors of tiny_gpt2 on any device (the GPU correctness
check): ``python -m patchaudit.bench.vectors DIR --device cuda --out F.json``; prints PASS/FAIL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import common as C

PAIRS = [
    ("ap", "ap"),
    ("atp", "atp"),
    ("hvp_exact", "hvp_exact"),
    ("hvp_joint", "hvp_joint"),
    ("ig", "ig_K4"),
    ("mhvp", "mhvp_K2"),
]


def check(path: str, device: str, tol: float = 1e-4) -> dict:
    import patchaudit as pa

    d = Path(path)
    vec = json.loads((d / "vectors.json").read_text())
    model = pa.load_model(str(d), device=device)
    pairs = pa.PromptPairs.from_tokens(
        torch.tensor(vec["clean"]),
        torch.tensor(vec["corrupted"]),
        vec["answer_ids"],
        vec["wrong_ids"],
    )
    rows, worst = [], 0.0
    for direction in ("noising", "denoising"):
        r = pa.audit(
            model,
            pairs,
            direction=direction,
            methods=[m for m, _ in PAIRS],
            ig_steps=4,
            mhvp_steps=2,
        )
        ref = vec[direction]
        for ours, theirs in PAIRS:
            b = torch.tensor(ref[theirs], dtype=torch.float64)
            a = r.scores[ours].double().cpu()
            err = float((a - b).abs().max() / b.abs().max())
            worst = max(worst, err)
            rows.append({"direction": direction, "method": ours, "rel_err": err, "ok": err < tol})
    dev = torch.device(device)
    out = {
        "device": device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "tolerance": tol,
        "max_rel_err": worst,
        "pass": all(r["ok"] for r in rows),
        "rows": rows,
        "environment": C.environment(dev),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    res = check(args.dir, args.device)
    if args.out:
        C.write_json(args.out, res)
    for r in res["rows"]:
        sys.stdout.write(f"{r['direction']:9s} {r['method']:9s} rel_err {r['rel_err']:.2e}\n")
    sys.stdout.write(
        ("PASS" if res["pass"] else "FAIL") + f" max rel err {res['max_rel_err']:.2e} "
        f"on {res['device_name']}\n"
    )
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
