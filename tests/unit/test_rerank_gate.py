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


def _captions_move_together(items: int, per_item: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic gate data where an item's captions move together: per item, the re-ranker fixes all of its captions,
    breaks all of them, or changes none (dual hit@1 is 0 for fixed items, 1 for broken ones)."""
    rng = np.random.default_rng(seed)
    effect = rng.choice([1, -1, 0], size=items, p=[0.3, 0.2, 0.5])  # per item: fixed, broken, unchanged
    clusters = np.repeat(np.arange(items), per_item)
    per_query = effect[clusters]
    dual = (per_query == -1).astype(float)
    reranked = (per_query == 1).astype(float)
    return dual, reranked, clusters


def test_cluster_bootstrap_is_wider_than_the_naive_one_when_captions_move_together() -> None:
    dual, reranked, clusters = _captions_move_together(items=80, per_item=5, seed=1)
    p = RerankParams(bootstrap=2000, seed=0)
    naive = bootstrap_gate(dual, reranked, p)  # every caption its own cluster
    clustered = bootstrap_gate(dual, reranked, p, clusters=clusters)
    assert clustered.gain == naive.gain  # the same point estimate...
    naive_width, cluster_width = naive.high - naive.low, clustered.high - clustered.low
    # ...but five perfectly correlated captions per item carry the information of one: the standard error grows by
    # about sqrt(5) = 2.24 (design effect 1 + (m - 1) * rho with m = 5, rho = 1)
    assert cluster_width > 1.8 * naive_width
    assert "80 test items" in clustered.reasons[0] and "400 queries" in clustered.reasons[0]


def test_cluster_bootstrap_of_singleton_clusters_is_the_plain_bootstrap() -> None:
    from mmretrieval.evaluation.gate import cluster_bootstrap_means

    diff = np.random.default_rng(3).normal(size=50)
    means = cluster_bootstrap_means(diff, np.arange(50), 300, seed=5)
    rng = np.random.default_rng(5)
    plain = np.concatenate([diff[rng.integers(0, 50, (min(256, 300 - s), 50))].mean(axis=1)
                            for s in range(0, 300, 256)])
    assert np.allclose(means, plain)


def test_too_few_test_items_cannot_decide_and_does_not_promote() -> None:
    items = 20
    dual = np.zeros(items * 5)
    better = np.ones(items * 5)  # a gain of 100 points, every caption, every item: still too few items to trust
    clusters = np.repeat(np.arange(items), 5)
    decision = bootstrap_gate(dual, better, RerankParams(bootstrap=200, min_test_items=21), clusters=clusters)
    assert not decision.promote and not decision.decided
    assert "cannot decide" in decision.reasons[-1] and "20 test items" in decision.reasons[-1]
    assert "min_test_items 21" in decision.reasons[-1]
    enough = bootstrap_gate(dual, better, RerankParams(bootstrap=200, min_test_items=20), clusters=clusters)
    assert enough.promote and enough.decided
