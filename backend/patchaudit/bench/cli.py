"""``patchaudit bench accuracy|cost|circuits|scale|trust|atpstar|diagnose|edges --out F.json [--quick] [--gpu] [--write-defaults]``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patchaudit bench", description=__doc__)
    ap.add_argument(
        "what",
        choices=("accuracy", "cost", "circuits", "scale", "trust", "atpstar", "diagnose", "edges"),
        help="which benchmark",
    )
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--quick", action="store_true", help="small run (< 3 min on 2 CPU cores)")
    ap.add_argument("--gpu", action="store_true", help="cost: GPT-2 small/medium/XL on CUDA")
    ap.add_argument(
        "--write-defaults",
        action="store_true",
        help="accuracy: write backend/patchaudit/defaults.json even in --quick mode",
    )
    ap.add_argument("--sizes", default=None, help="cost: comma-separated GPT-2 sizes")
    ap.add_argument("--quiet", action="store_true", help="warnings only")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "transformer_lens", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.what == "accuracy":
        from . import accuracy

        r = accuracy.run(args.out, quick=args.quick, write_defaults=args.write_defaults or None)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    elif args.what == "trust":
        from . import trust

        r = trust.run(args.out, quick=args.quick, write_defaults=args.write_defaults or None)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    elif args.what == "diagnose":
        from . import diagnose

        r = diagnose.run(args.out, quick=args.quick)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    elif args.what == "scale":
        from . import scale

        r = scale.run(args.out, quick=args.quick)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    elif args.what == "edges":
        from . import edges

        r = edges.run(args.out, quick=args.quick)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    elif args.what == "atpstar":
        from . import atpstar

        r = atpstar.run(args.out, quick=args.quick)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    elif args.what == "circuits":
        from . import circuits

        r = circuits.run(args.out, quick=args.quick)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    else:
        from . import cost

        sizes = args.sizes.split(",") if args.sizes else None
        r = cost.run(args.out, quick=args.quick, gpu=args.gpu, sizes=sizes)
        sys.stdout.write(f"wrote {args.out} ({r['seconds']:.0f} s)\n")
    return 0
