"""Regenerate docs/screenshots/*.png from the e2e tests (real `patchaudit serve`, real Chromium).

    .venv/bin/python tests/e2e/make_screenshots.py            # -> docs/screenshots/
    .venv/bin/python tests/e2e/make_screenshots.py OUT_DIR

The screenshots are taken by the tests themselves (test_e2e_new_analysis.py: the form, and
test_e2e_flow.py: a finished IOI analysis with flagged and verified cells; test_e2e_component.py,
test_e2e_circuit.py, test_e2e_compare.py, test_e2e_graph.py: the component, circuit and compare
panels and the graph view) when
PATCHAUDIT_SCREENSHOTS names a directory; this script sets it and runs those tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else REPO / "docs" / "screenshots"
    out = out if out.is_absolute() else Path.cwd() / out
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PATCHAUDIT_SCREENSHOTS"] = str(out)
    code = pytest.main(
        [
            "-q",
            "-m",
            "e2e",
            "-p",
            "no:cacheprovider",
            str(HERE / "test_e2e_new_analysis.py"),
            str(HERE / "test_e2e_flow.py"),
            str(HERE / "test_e2e_component.py"),  # component-panel.png (issue 11)
            str(HERE / "test_e2e_circuit.py"),  # circuit-panel.png (issue 12)
            str(HERE / "test_e2e_compare.py"),  # compare.png (issue 11)
            str(HERE / "test_e2e_graph.py"),  # graph-view.png (issue 22)
        ]
    )
    for png in sorted(out.glob("*.png")):
        sys.stdout.write(f"{png}\n")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
