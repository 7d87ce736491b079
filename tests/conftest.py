"""Shared test set-up: jaxtyping shape checks at run time for the estimators, and paths
(everything a test reads is inside the repository)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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


def pytest_collection_modifyitems(config, items):
    """A test that takes the ``bundled`` fixture (the bundled trained model) is marked
    ``bundled``: ``make test-fast`` (``-m "not bundled and not slow"``) leaves it out."""
    for item in items:
        if "bundled" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.bundled)


@pytest.fixture(autouse=True)
def _fast_tier_loads_no_bundled_model(request, monkeypatch):
    """In the fast tier (PATCHAUDIT_TEST_FAST=1, set by ``make test-fast``) a test that loads
    the bundled model without the ``bundled`` marker fails, naming the marker it needs."""
    if os.environ.get("PATCHAUDIT_TEST_FAST") != "1" or request.node.get_closest_marker("bundled"):
        yield
        return
    from patchaudit import models

    original = models._load_local

    def refuse(path, *args, **kwargs):
        if Path(path).resolve() == models.BUNDLED_DIR.resolve():
            pytest.fail(
                f"{request.node.nodeid} loads the bundled model: mark it @pytest.mark.bundled "
                "(make test-fast leaves those tests out)"
            )
        return original(path, *args, **kwargs)

    monkeypatch.setattr(models, "_load_local", refuse)
    yield
