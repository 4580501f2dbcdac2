"""The re-ranker's paired-bootstrap gate."""

from __future__ import annotations

import numpy as np
import pytest

from mmretrieval.core.params import RerankParams
from mmretrieval.evaluation.gate import bootstrap_gate

GATE = RerankParams(bootstrap=500, seed=0)


def test_gate_refuses_a_reranker_that_does_not_help() -> None:
    rng = np.random.default_rng(0)
    dual = (rng.random(300) < 0.2).astype(float)
    same = dual.copy()
    assert not bootstrap_gate(dual, same, GATE).promote
    # a re-ranker that fixes 3 queries and breaks 2 of 300 is within the noise
    noisy = dual.copy()
    noisy[np.flatnonzero(dual == 0)[:3]] = 1
    noisy[np.flatnonzero(dual == 1)[:2]] = 0
    decision = bootstrap_gate(dual, noisy, GATE)
    assert not decision.promote and decision.low <= 0 < decision.high
    assert "does not clear" in decision.reasons[0]


def test_gate_passes_a_clear_gain_and_reports_its_interval() -> None:
    rng = np.random.default_rng(0)
    dual = (rng.random(300) < 0.2).astype(float)
    better = dual.copy()
    better[np.flatnonzero(dual == 0)[:30]] = 1  # +10 points, never worse
    decision = bootstrap_gate(dual, better, GATE)
    assert decision.promote and decision.gain == pytest.approx(0.1)
    assert 0 < decision.low < 0.1 < decision.high


def test_gate_needs_a_gain_above_min_gain() -> None:
    dual = np.zeros(200)
    better = dual.copy()
    better[:20] = 1  # +10 points
    assert not bootstrap_gate(dual, better, RerankParams(bootstrap=300, min_gain=0.2)).promote
