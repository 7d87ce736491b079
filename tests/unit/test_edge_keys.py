"""Edge keys (site "edges"): the one parser of "SENDER->RECEIVER", the sort order shared by the
store and the API, and the stored result's 1-D form (service contract)."""

from __future__ import annotations

import pytest

from patchaudit.component_keys import (
    is_edge_key,
    is_node_key,
    key_order,
    node_of_receiver,
    parse_edge_key,
)
from patchaudit.service.contract import AnalysisResult, flagged_components, n_components


def test_edge_keys_parse_and_refuse_other_forms() -> None:
    assert parse_edge_key("0.1->1.0.k") == ("0.1", "1.0.k")
    assert parse_edge_key("emb->2.3.q") == ("emb", "2.3.q")
    assert parse_edge_key("1.2->logits") == ("1.2", "logits")
    assert parse_edge_key("m0->m1") == ("m0", "m1")
    for bad in ("0.1", "0.1->1.0", "logits->m1", "0.1->emb", "0.1->1.0.x", "a->b", "0.1->->m1",
                " 0.1->m1", "0.1->m1 ", "", None, 3, ["0.1", "m1"]):  # fmt: skip
        assert not is_edge_key(bad)
        with pytest.raises(ValueError, match="is not an edge"):
            parse_edge_key(bad)
    assert node_of_receiver("1.0.k") == "1.0" and node_of_receiver("m2") == "m2"
    assert all(is_node_key(k) for k in ("emb", "logits", "m3", "3.4"))
    assert not any(is_node_key(k) for k in ("3.4.q", "m", "3", "x"))


def test_one_sort_order_for_components_nodes_and_edges() -> None:
    keys = ["1.2->logits", "emb->0.0.q", "0.1->1.0.k", "0.1->1.0.q", "m0->1.0.q", "emb->m0",
            "10.0", "2.1", "m1", "emb", "logits", "0.0->m0"]  # fmt: skip
    out = sorted(keys, key=key_order)
    assert out[:5] == ["emb", "m1", "2.1", "10.0", "logits"]  # nodes / components first
    edges = out[5:]  # by receiver in the order the model computes, then sender
    assert edges == ["emb->0.0.q", "emb->m0", "0.0->m0", "0.1->1.0.q", "m0->1.0.q", "0.1->1.0.k",
                     "1.2->logits"]  # fmt: skip


def test_the_stored_result_of_an_edge_analysis_is_one_value_per_edge() -> None:
    edges = ["emb->0.0.q", "0.0->m0", "m0->logits"]
    res = AnalysisResult.model_validate(
        {
            "edges": edges,
            "scores": {"atp": [0.1, None, -0.3], "hvp": [0.2, 0.0, -0.2]},
            "reliability": [0.9, None, 0.2],
            "flags": [False, True, True],
            "flag_reasons": [[], ["unbounded"], ["reliability"]],
            "verified": {"m0->logits": -0.25},
        }
    ).model_dump(mode="json")
    assert res["labels"] is None and res["scores"]["atp"] == [0.1, None, -0.3]
    assert n_components(res) == 3
    # least reliable first (no reliability counts as 1), verified ones left out
    assert flagged_components(res, set()) == ["m0->logits", "0.0->m0"]
    assert flagged_components(res, {"m0->logits"}) == ["0.0->m0"]
    # a node map stays 2-D
    node = AnalysisResult.model_validate(
        {"labels": {"rows": [0], "cols": [0, 1]}, "scores": {"atp": [[0.1, 0.2]]}}
    )
    assert node.scores["atp"] == [[0.1, 0.2]]
