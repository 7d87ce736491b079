"""Shared test set-up: jaxtyping shape checks at run time for the estimators, and paths."""

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


def shared_dir() -> Path:
    """The project's shared folder (../shared beside the checkout; PATCHAUDIT_SHARED overrides)."""
    env = os.environ.get("PATCHAUDIT_SHARED")
    for p in ([Path(env)] if env else []) + [ROOT.parent / "shared", ROOT / "shared"]:
        if (p / "testvectors").is_dir():
            return p
    raise FileNotFoundError(
        "shared/testvectors not found beside the checkout; set PATCHAUDIT_SHARED to the shared folder"
    )
