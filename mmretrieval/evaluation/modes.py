"""Search modes side by side: the metrics of each way serving ranks items for a text query, under the same metric
names with the mode as a prefix (``vector/t2i_recall@10``, ``reranked/t2i_recall@10``).

A mode is a :data:`RankFn`: (Q,) query texts in, per query the gallery's item ids best first out. The metrics
come from the ranks alone (:func:`ranking_metrics`, the definitions and chance levels of
:mod:`mmretrieval.evaluation.metrics`), so any mode that returns ids (vector search, vector search re-ranked, a
keyword or hybrid search) is scored the same way. Which modes exist and how each ranks: ``serving/modes.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mmretrieval.evaluation.metrics import chance_levels, retrieval_metrics, with_chance

VECTOR = "vector"  # the dual encoder alone (cosine of the query's and the items' vectors)
RERANKED = "reranked"  # the dual encoder's top candidates re-scored by the version's gated re-ranker
KEYWORD = "keyword"  # BM25 over the items' keyword text, where index.search_mode is "keyword"
HYBRID = "hybrid"  # the vector and keyword lists fused, where index.search_mode is "hybrid"
SEPARATOR = "/"  # f"{mode}{SEPARATOR}{metric}"

RankFn = Callable[[list[str]], list[list[str]]]  # (Q,) query texts -> per query gallery ids, best first


def prefixed(mode: str, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with every key prefixed by ``mode`` and :data:`SEPARATOR` (``vector/t2i_mrr``)."""
    return {f"{mode}{SEPARATOR}{k}": v for k, v in metrics.items()}


def ranking_scores(rankings: Sequence[Sequence[str]], item_ids: Sequence[str]) -> np.ndarray:
    """Per query ranked ids -> (Q, G) scores over ``item_ids`` that sort into exactly that order: G - position for a
    ranked id, -1 for an id the ranking left out (those tie below every ranked one and keep the gallery order, as
    :func:`~mmretrieval.evaluation.metrics.retrieval_metrics` sorts stably). Raises ``ValueError`` for an id not in
    ``item_ids`` or ranked twice."""
    column = {item: j for j, item in enumerate(item_ids)}
    scores = np.full((len(rankings), len(item_ids)), -1.0)
    for q, ranked in enumerate(rankings):
        for position, item in enumerate(ranked):
            j = column.get(item)
            if j is None:
                raise ValueError(f"query {q}: ranked id {item!r} is not in the gallery")
            if scores[q, j] >= 0:
                raise ValueError(f"query {q}: id {item!r} ranked twice")
            scores[q, j] = len(item_ids) - position
    return scores


def ranking_metrics(rankings: Sequence[Sequence[str]], relevant: np.ndarray, item_ids: Sequence[str],
                    direction: str, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Every metric of :func:`~mmretrieval.evaluation.metrics.retrieval_metrics` (R@K, P@K, mAP, nDCG, MRR, median
    rank, ``queries``) of per-query ``rankings`` (ids best first; ids left out count as ranked after them, in gallery
    order) against the (Q, G) bool ``relevant`` over ``item_ids``, each with its ``*_chance``, named
    ``<direction>_*`` (e.g. ``t2i``). Queries with nothing relevant in the gallery are left out. Raises
    ``ValueError`` when no query can be scored or the shapes differ."""
    scores = ranking_scores(rankings, item_ids)
    return with_chance(retrieval_metrics(scores, relevant, ks), chance_levels(relevant, ks), f"{direction}_")


def scored_rankings(scores: np.ndarray, item_ids: Sequence[str]) -> list[list[str]]:
    """(Q, G) scores (higher first, ties in gallery order) -> per query every id of ``item_ids``, best first: the
    :data:`RankFn` output of a mode that scores the whole gallery."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ids = np.asarray(item_ids, dtype=object)
    return [list(ids[row]) for row in order]
