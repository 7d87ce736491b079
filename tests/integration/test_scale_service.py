"""The service's scale settings (issue 13): PATCHAUDIT_DTYPE puts the worker's models in half
precision, PATCHAUDIT_MEMORY_BUDGET_MB refuses a request that cannot fit before any pass,
with a message naming the setting; a model loads with its progress reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Stack, token_request, wait_for

pytestmark = pytest.mark.integration


def _finished(s: Stack, aid: str) -> dict:
    return wait_for(
        lambda: (
            d
            if (d := s.client.get(f"/api/analyses/{aid}").json())["status"] in ("done", "failed")
            else None
        ),
        120,
        f"analysis {aid} to finish",
        interval=0.2,
    )


def test_dtype_and_memory_budget_settings(tmp_path: Path) -> None:
    s = Stack(tmp_path / "a", PATCHAUDIT_DTYPE="bfloat16", PATCHAUDIT_MEMORY_BUDGET_MB="256")
    try:
        s.start(n_workers=1)
        aid = s.client.post("/api/analyses", json=token_request(s.tiny, seed=5)).json()["id"]
        d = _finished(s, aid)
        assert d["status"] == "done", d.get("error")
        assert d["result"]["runtime"] == {"device": "cpu", "dtype": "bfloat16"}
        plan = d["result"]["cost"]["plan"]
        assert plan["memory_budget_mb"] == 256.0 and plan["max_copies"] >= 1
    finally:
        s.stop()
    s = Stack(tmp_path / "b", PATCHAUDIT_MEMORY_BUDGET_MB="0.001")
    try:
        s.start(n_workers=1)
        aid = s.client.post("/api/analyses", json=token_request(s.tiny, seed=6)).json()["id"]
        d = _finished(s, aid)
        assert d["status"] == "failed"
        msg = d["error"]["message"]
        assert "memory budget" in msg and "PATCHAUDIT_MEMORY_BUDGET_MB" in msg, msg
        assert "Traceback" not in msg
        assert d["result"] is None or not d["result"].get("scores")  # nothing ran
    finally:
        s.stop()
