"""The planted model: weights set by hand, a circuit known by construction (issue 12,
acceptance 2: activation patching ranks every planted head above every distractor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchaudit as pa
from patchaudit.bench.common import auroc
from patchaudit.models import planted


@pytest.fixture(scope="module")
def model():
    return pa.load_model("planted", device="cpu")


@pytest.fixture(scope="module")
def report(model):
    pairs = pa.PromptPairs.from_task("planted", n=8, seed=0)
    return pa.audit(model, pairs, methods=("atp", "hvp", "ap"))


def test_ground_truth_ships_beside_the_model_and_names_a_reason_for_every_head():
    gt = planted.ground_truth()
    comps = gt["components"]
    assert sorted(tuple(c["component"]) for c in comps) == [
        (i, j) for i in range(planted.N_LAYERS) for j in range(planted.N_HEADS)
    ]
    assert all(c["reason"] for c in comps)
    assert int(planted.planted_mask().sum()) == 4
    assert "planted" in {t["name"] for t in pa.list_tasks()}
    assert "planted" in {m["name"] for m in pa.list_models()}


def test_the_model_does_induction(model):
    tp = pa.PromptPairs.from_task("planted", n=8, seed=1).tokenize(model)
    assert int(tp.clean[0, 0]) == planted.BOS and tp.clean.shape[1] == 16
    idx = torch.arange(len(tp))
    with torch.no_grad():
        clean = model(tp.clean)[idx, tp.last_pos]
        corr = model(tp.corrupted)[idx, tp.last_pos]
    assert (clean.argmax(-1) == tp.answer_ids).all()  # predicts the repeated token
    assert (corr.argmax(-1) == tp.wrong_ids).all()  # the copy head alone on corrupted


def test_ap_ranks_every_planted_head_above_every_distractor(report):
    mask = planted.planted_mask()
    ap = report.scores["ap"]
    assert (ap[~mask] == 0).all(), "distractors have exactly zero patch effect"
    assert (ap[mask].abs() > 0.3).all()
    labels = mask.flatten().numpy()
    assert auroc(ap.abs().flatten().numpy(), labels) == 1.0
    # the planted failure modes: AtP misses the previous-token head (saturated attention)
    # and the cancelling copy head; the gate head's downstream is linear (AtP exact)
    atp, hvp = report.scores["atp"], report.scores["hvp"]
    assert abs(float(atp[0, 0])) < 1e-3 * abs(float(ap[0, 0]))
    assert abs(float(atp[0, 1])) < 0.1 * abs(float(ap[0, 1]))
    assert abs(float(hvp[0, 1])) > 0.5 * abs(float(ap[0, 1]))  # second order sees it
    assert float(atp[2, 0]) == pytest.approx(float(ap[2, 0]), rel=1e-3)
    # AtP ranks the previous-token head last of the planted heads (its score is ~1e-4)
    order = np.argsort(-np.abs(atp.flatten().numpy()), kind="stable").tolist()
    assert [i for i in order if labels[i]][-1] == 0


def test_the_planted_circuit_is_fully_faithful(model, report):
    pairs = pa.PromptPairs.from_task("planted", n=8, seed=0)
    circuit = [tuple(c) for c in planted.planted_mask().nonzero().tolist()]
    r = pa.faithfulness(model, pairs, [circuit, circuit[:2]], base=report.base)
    assert r.f[0] == pytest.approx(1.0, abs=1e-6)
    assert r.f[1] < 0.9
    c = pa.circuit_curve(model, pairs, report.scores["ap"], base=report.base)
    assert c.sizes == list(range(13)) and c.smallest_90 is not None and c.smallest_90 <= 4
    assert c.faithfulness[4] == pytest.approx(1.0, abs=1e-6)  # the top 4 by ap: the circuit
