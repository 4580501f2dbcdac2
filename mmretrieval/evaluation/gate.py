"""The gates: whether a challenger may become champion (:func:`decide`) and whether a re-ranker may serve
(:func:`bootstrap_gate`). Pure decisions over metrics; the stages record them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmretrieval.core.errors import TrainingError
from mmretrieval.core.params import GateParams, RerankParams


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]


def decide(gate: GateParams, challenger: dict[str, float], champion: dict[str, float] | None) -> Decision:
    """Pure gate logic on two metric dicts."""
    from mmretrieval.evaluation.metrics import CHANCE_SUFFIX, resolve_metric

    m = resolve_metric(gate.metric, challenger)
    if m is None or (champion is not None and m not in champion):
        raise TrainingError(f"gate metric {gate.metric!r} is not among the evaluation metrics {sorted(challenger)}")
    value = challenger[m]
    reasons = []
    ok = value >= gate.floor
    reasons.append(f"{m}={value:.4f} {'>=' if ok else '<'} floor {gate.floor}")
    chance = challenger.get(m + CHANCE_SUFFIX)
    queries = challenger.get(m.split("_", 1)[0] + "_queries")
    if chance is None or not queries:
        raise TrainingError(f"the evaluation reports no chance level or query count for {m!r}: evaluate the "
                            "challenger again")
    noise = gate.chance_z * math.sqrt(chance * (1 - chance) / queries)
    required = chance + max(gate.margin_over_chance, noise)
    beats = value >= required
    ok = ok and beats
    error = math.sqrt(chance * (1 - chance) / queries)
    reasons.append(f"{m}={value:.4f} {'beats' if beats else 'does not beat'} its chance level {chance:.4f} "
                   f"(random ranking, {int(queries)} queries): needs >= {required:.4f}, i.e. + max(margin "
                   f"{gate.margin_over_chance}, {gate.chance_z} x chance's standard error {error:.4f})")
    if required > 1.0:
        reasons.append(f"no model can pass: {m} is at most 1, but chance alone is {chance:.4f} on these "
                       f"{int(queries)} test queries; use a stricter metric (e.g. gate.metric: "
                       f"{m.split('@')[0].rsplit('_', 1)[0]}_recall@1) or a larger test split")
    if champion is not None:
        base = champion[m]
        holds = value >= base - gate.tolerance
        ok = ok and holds
        reasons.append(f"{m}={value:.4f} vs champion {base:.4f} (tolerance {gate.tolerance}): "
                       f"{'no regression' if holds else 'regression'}")
    else:
        reasons.append("no champion yet")
    return Decision(ok, reasons)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    gain: float  # mean per-query gain of the metric (re-ranked - dual)
    low: float  # bounds of the bootstrap interval of the gain
    high: float
    reasons: list[str]
    decided: bool = True  # False: too few test items for the interval to mean anything (never promoted then)


def cluster_bootstrap_means(diff: np.ndarray, clusters: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples,) means of the per-query ``diff`` (Q,) over cluster-bootstrap resamples: each resample draws as many
    clusters as there are (the distinct values of ``clusters`` (Q,), e.g. the test item a caption query describes)
    with replacement and takes every query of each drawn cluster (a cluster drawn twice counts twice); its mean is
    the sum of the drawn queries' values over their count. With every query its own cluster this is the plain
    bootstrap over queries."""
    _, index = np.unique(clusters, return_inverse=True)
    sums = np.bincount(index, weights=diff)  # (C,) per-cluster sum and size
    sizes = np.bincount(index).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # (chunk, C) draws at a time
        draws = rng.integers(0, len(sums), (min(256, resamples - start), len(sums)))
        means[start:start + len(draws)] = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    return means


def bootstrap_gate(dual: np.ndarray, reranked: np.ndarray, p: RerankParams, clusters: np.ndarray | None = None
                   ) -> GateDecision:
    """Paired cluster bootstrap: (Q,) per-query values of the metric (e.g. hit@1 as 0/1) without and with
    re-ranking, and (Q,) ``clusters``, the test item each query belongs to (a caption's item; None: every query
    its own). Resamples test items with replacement, each with all its queries, ``p.bootstrap`` times (seeded by
    ``p.seed``): :func:`cluster_bootstrap_means`. Passes when the lower end of the two-sided ``p.confidence``
    interval of the mean gain is above ``p.min_gain``; with fewer than ``p.min_test_items`` test items it cannot
    decide (``decided`` False, not promoted, the reason says so). Raises :class:`TrainingError` for arrays that do
    not pair."""
    clusters = np.arange(len(dual)) if clusters is None else np.asarray(clusters)
    if dual.shape != reranked.shape or dual.ndim != 1 or len(dual) < 2 or clusters.shape != dual.shape:
        raise TrainingError(f"paired bootstrap needs equal (queries,) arrays of dual, re-ranked values and clusters; "
                            f"got {dual.shape}, {reranked.shape} and {clusters.shape}")
    diff = reranked.astype(np.float64) - dual.astype(np.float64)
    items = len(np.unique(clusters))
    means = cluster_bootstrap_means(diff, clusters, p.bootstrap, p.seed)
    tail = (1 - p.confidence) / 2
    low, high = float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
    gain = float(diff.mean())
    decided = items >= p.min_test_items
    ok = decided and low > p.min_gain
    verdict = ("is above" if ok else "does not clear") if decided else "cannot decide against"
    reasons = [f"{p.metric}: dual {dual.mean():.4f}, re-ranked {reranked.mean():.4f}, gain {gain:+.4f} over "
               f"{len(diff)} queries of {items} test items; {p.confidence:.0%} cluster-bootstrap interval "
               f"[{low:+.4f}, {high:+.4f}] ({p.bootstrap} resamples of the items) {verdict} min_gain {p.min_gain}"]
    if not decided:
        reasons.append(f"cannot decide: {items} test items, fewer than rerank.min_test_items {p.min_test_items}; an "
                       "interval over so few items is too narrow to trust, so the re-ranker is not promoted (use a "
                       "larger test split)")
    return GateDecision(ok, gain, low, high, reasons, decided)
