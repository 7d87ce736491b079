"""The service's single sources: the component-key parser, the NaN/inf serialiser, the task
registry, the job kinds (arguments by name) and the stored-result contract."""

from __future__ import annotations

import math

import pytest
import torch

from patchaudit.component_keys import component_key, parse_component_key
from patchaudit.serial import json_safe


def test_component_keys_round_trip_and_refuse_other_forms() -> None:
    assert parse_component_key("3.4") == (3, 4) and component_key((3, 4)) == "3.4"
    assert parse_component_key("3") == (3, 0) == parse_component_key("3", "mlp")
    assert parse_component_key([1, 2], "heads") == (1, 2) and parse_component_key(5) == (5, 0)
    for bad, site in (("1", "heads"), ("1.2.3", "heads"), ("-1.2", "resid"), ("x", None)):
        with pytest.raises(ValueError, match=f"is not a {site or 'heads'} component"):
            parse_component_key(bad, site)
    with pytest.raises(ValueError, match="use 'L.H'"):
        parse_component_key("x", "heads")


def test_json_safe_is_the_one_nan_inf_serialiser() -> None:
    t = torch.tensor([[1.5, float("nan")], [float("inf"), -float("inf")]])
    assert json_safe(t) == [[1.5, None], [None, None]]
    assert json_safe({"a": (math.nan, 2, True), "b": [torch.tensor(3.0)]}) == {
        "a": [None, 2, True],
        "b": [3.0],
    }
    assert json_safe(torch.tensor([True, False])) == [True, False]


def test_task_registry_is_the_one_list() -> None:
    import patchaudit as pa
    from patchaudit.api import schemas
    from patchaudit.tasks import TASK_REGISTRY, TASKS
    from patchaudit.tasks.pairs import TASKS as PAIR_TASKS

    assert TASKS == PAIR_TASKS == schemas.TASKS == tuple(TASK_REGISTRY)
    assert [t["name"] for t in pa.list_tasks()] == list(TASKS)
    with pytest.raises(ValueError, match="unknown task"):
        pa.PromptPairs.from_task("nosuch")


def test_job_kinds_take_their_arguments_by_name() -> None:
    from patchaudit.service.kinds import KINDS

    circuit = KINDS["circuit"]
    assert circuit.arguments(("a1", "hvp"), {"absolute": False}) == {
        "analysis_id": "a1",
        "ranking": "hvp",
        "absolute": False,
    }
    with pytest.raises(TypeError, match="no argument 'components'"):
        circuit.arguments(("a1",), {"components": []})
    assert set(KINDS) >= {"analysis", "verify", "fix", "circuit", "inspect", "why"}
    assert all(k.function.startswith("patchaudit.worker.jobs.run_") for k in KINDS.values())


def test_fix_has_one_name_per_number_and_results_are_validated() -> None:
    from patchaudit.service.contract import FixInfo, result_view, stored, stored_result

    fix = FixInfo(fix_forwards=2, full_sweep_forwards=8, fix_batch_passes=1)
    assert stored(fix) == {"fix_forwards": 2, "full_sweep_forwards": 8, "fix_batch_passes": 1}
    report = {
        "labels": {"rows": [0], "cols": [0, 1]},
        "scores": {"atp": [[float("nan"), 1.0]]},
        "verified": {"0.1": 0.5},
        "circuit": [],
    }
    res = stored_result(report, cache_hit=False, pairs=[], runtime={"device": "cpu"})
    assert res["scores"] == {"atp": [[None, 1.0]]} and res["circuit"] == []
    view = result_view(res, {"0.0": 0.25}, None, {})
    assert list(view.verified) == ["0.0", "0.1"] and view.fix is None
