"""Shared test set-up: jaxtyping shape checks at run time for the estimators, and paths
(everything a test reads is inside the repository)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tensor arguments in estimators/ carry jaxtyping shapes; the tests check them at run time.
from jaxtyping import install_import_hook  # noqa: E402

with install_import_hook(
    ["patchaudit.estimators", "patchaudit.tasks.metrics"], "beartype.beartype"
):
    import patchaudit.estimators.core  # noqa: E402,F401
    import patchaudit.estimators.methods  # noqa: E402,F401
    import patchaudit.estimators.reliability  # noqa: E402,F401
    import patchaudit.estimators.sites  # noqa: E402,F401
    import patchaudit.tasks.metrics  # noqa: E402,F401


#: The tiny GPT-2 and its float64 reference values (METHODS.md), committed with the tests.
TINY_GPT2 = ROOT / "tests" / "data" / "tiny_gpt2"
