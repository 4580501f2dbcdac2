"""Retrieval metrics (pure numpy), their chance levels, and the relevance structure of an evaluation set.

Conventions: ``sim`` is (queries, gallery); ``relevant`` is a bool matrix of the same shape; ranks are 1-based; a
query with nothing relevant in the gallery is left out. Per query, averaged over queries (names as in trec_eval /
sentence-transformers' ``InformationRetrievalEvaluator``):

==============  ==================================================================================================
``hit_rate@k``  1 if any relevant item is in the top k (sentence-transformers' ``accuracy@k``, trec_eval's
                ``success_k``; the "R@K" of cross-modal papers when a query has several relevant items)
``recall@k``    share of the query's relevant items that are in the top k (trec_eval ``recall_k``); equal to
                ``hit_rate@k`` when each query has exactly one relevant item (text -> image on Flickr8k)
``precision@k`` share of the top k that is relevant (trec_eval ``P_k``)
``map@k``       average precision cut at k, divided by min(k, relevant items) (sentence-transformers' MAP@k;
                trec_eval's ``map_cut_k`` divides by all relevant items, so the two agree when those are <= k)
``ndcg@k``      binary-gain nDCG cut at k, gain 1 / log2(rank + 1) (trec_eval ``ndcg_cut_k``)
``mrr``         1 / rank of the first relevant item (trec_eval ``recip_rank``)
``median_rank`` median rank of the first relevant item
==============  ==================================================================================================

:func:`chance_levels` gives the exact expected value of each metric under a uniformly random ranking of the same
relevance matrix (by linearity of expectation and hypergeometric counts), so every number can be read against it:
on a label-aware evaluation set (ten classes of 100) a random ranking scores hit_rate@10 = 0.65 but recall@10 = 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CHANCE_SUFFIX = "_chance"  # metrics[f"{name}_chance"]: the expected value of metrics[name] under a random ranking


def retrieval_metrics(sim: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Every metric of the module docstring for each k, plus ``queries`` (how many were scored).

    Ties keep the gallery order (stable sort). Raises ``ValueError`` for mismatched shapes or no scorable query.
    """
    if sim.shape != relevant.shape:
        raise ValueError(f"sim {sim.shape} and relevant {relevant.shape} differ in shape")
    keep = relevant.any(axis=1)  # a query with nothing relevant cannot be scored
    sim, relevant = sim[keep], relevant[keep]
    if sim.shape[0] == 0:
        raise ValueError("no query has a relevant item in the gallery")
    order = np.argsort(-sim, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)  # (Q, G) relevance in ranked order
    first = hits.argmax(axis=1) + 1  # 1-based rank of the first relevant item
    n_rel = relevant.sum(axis=1)
    cum = np.cumsum(hits, axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    gains = 1.0 / np.log2(ranks + 1)
    out: dict[str, float] = {"queries": float(sim.shape[0]), "median_rank": float(np.median(first)),
                             "mrr": float(np.mean(1.0 / first))}
    for k in ks:
        kk = min(k, hits.shape[1])
        out[f"hit_rate@{k}"] = float((first <= k).mean())
        out[f"recall@{k}"] = float((cum[:, kk - 1] / n_rel).mean())
        out[f"precision@{k}"] = float(cum[:, kk - 1].mean() / k)
        ap = (hits[:, :kk] * (cum[:, :kk] / ranks[:kk])).sum(axis=1) / np.minimum(n_rel, k)
        out[f"map@{k}"] = float(ap.mean())
        ideal = np.cumsum(gains)[np.minimum(n_rel, kk) - 1]
        out[f"ndcg@{k}"] = float(((hits[:, :kk] * gains[:kk]).sum(axis=1) / ideal).mean())
    return out


@lru_cache(maxsize=4096)
def _chance_one(n: int, r: int, ks: tuple[int, ...]) -> tuple[float, ...]:
    """Expected (mrr, then per k: hit_rate, recall, precision, map, ndcg) for r relevant among n, random order."""
    i = np.arange(1, n + 1, dtype=np.float64)
    # P(first relevant at rank i) = C(n - i, r - 1) / C(n, r), in logs for large n
    log_c = (np.array([math.lgamma(n - x + 1) - math.lgamma(r) - math.lgamma(n - x - r + 2) if n - x >= r - 1
                       else -np.inf for x in i]) - (math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)))
    p_first = np.exp(log_c)
    values = [float((p_first / i).sum())]
    p_rel = r / n  # each rank holds a relevant item with this probability
    # E[rel_i * precision@i] = p_rel * (1 + (i - 1)(r - 1)/(n - 1)) / i
    prec_terms = p_rel * (1 + (i - 1) * ((r - 1) / (n - 1) if n > 1 else 0.0)) / i
    gains = 1.0 / np.log2(i + 1)
    for k in ks:
        kk = min(k, n)
        miss = math.exp(math.lgamma(n - r + 1) - math.lgamma(n - r - kk + 1) - math.lgamma(n + 1)
                        + math.lgamma(n - kk + 1)) if n - r >= kk else 0.0  # C(n-r, kk) / C(n, kk)
        values += [1.0 - miss, kk / n, kk * p_rel / k, float(prec_terms[:kk].sum() / min(r, k)),
                   float(p_rel * gains[:kk].sum() / gains[:min(r, kk)].sum())]
    return tuple(values)


def chance_levels(relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The expected value of every :func:`retrieval_metrics` metric (but ``median_rank``) under a uniformly random
    ranking, computed exactly from ``relevant`` (queries x gallery, bool) over the queries that would be scored."""
    n_rel = relevant.sum(axis=1)
    n_rel = n_rel[n_rel > 0]
    if not len(n_rel):
        raise ValueError("no query has a relevant item in the gallery")
    n, kt = relevant.shape[1], tuple(int(k) for k in ks)
    counts = np.unique(n_rel, return_counts=True)
    total = np.zeros(1 + 5 * len(kt))
    for r, count in zip(*counts, strict=True):
        total += count * np.asarray(_chance_one(n, int(r), kt))
    mean = total / len(n_rel)
    out = {"mrr": float(mean[0])}
    for j, k in enumerate(kt):
        for m, name in enumerate(("hit_rate", "recall", "precision", "map", "ndcg")):
            out[f"{name}@{k}"] = float(mean[1 + 5 * j + m])
    return out


@dataclass(frozen=True)
class EvalSet:
    """Unique captions (queries for text->image) against items (images), and which caption fits which item."""

    captions: list[str]
    item_ids: list[str]
    relevant: np.ndarray  # (captions, items) bool


def build_eval_set(item_ids: Sequence[str], captions: Sequence[Sequence[str]], labels: Sequence[str]) -> EvalSet:
    """Multi-caption and label aware relevance.

    A caption is relevant to every item that carries it (identical captions are merged into one query) and, when
    those items have a label, to every item with the same label.
    """
    index: dict[str, int] = {}
    texts: list[str] = []
    owners: list[set[int]] = []
    for j, caps in enumerate(captions):
        for c in caps:
            key = c.casefold()
            if key not in index:
                index[key] = len(texts)
                texts.append(c)
                owners.append(set())
            owners[index[key]].add(j)
    by_label: dict[str, set[int]] = {}
    for j, lab in enumerate(labels):
        if lab:
            by_label.setdefault(lab, set()).add(j)
    rel = np.zeros((len(texts), len(item_ids)), dtype=bool)
    for q, items in enumerate(owners):
        cols = set(items)
        for j in items:
            if labels[j]:
                cols |= by_label[labels[j]]
        rel[q, sorted(cols)] = True
    return EvalSet(texts, list(item_ids), rel)


def with_chance(metrics: dict[str, float], chance: dict[str, float], prefix: str) -> dict[str, float]:
    """``metrics`` and ``chance`` prefixed (``t2i_``), the chance values as ``<name>_chance``."""
    return {f"{prefix}{k}": v for k, v in metrics.items()} | {
        f"{prefix}{k}{CHANCE_SUFFIX}": v for k, v in chance.items()}


def both_directions(text_vecs: np.ndarray, item_vecs: np.ndarray, eval_set: EvalSet,
                    ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``t2i_*`` and ``i2t_*`` metrics from unit vectors (cosine = dot product), each with its ``*_chance``."""
    sim = text_vecs @ item_vecs.T  # (captions, items)
    rel = eval_set.relevant
    return (with_chance(retrieval_metrics(sim, rel, ks), chance_levels(rel, ks), "t2i_")
            | with_chance(retrieval_metrics(sim.T, rel.T, ks), chance_levels(rel.T, ks), "i2t_"))


def resolve_metric(name: str, metrics: dict[str, float]) -> str | None:
    """The key for ``name`` in ``metrics``: as is, or its audio twin (``t2i_*`` -> ``t2a_*``, ``i2t_*`` -> ``a2t_*``)
    for datasets without images, else its video twin (``t2v_*``, ``v2t_*``). None when none is there."""
    if name in metrics:
        return name
    for image_prefix, audio_prefix in (("t2i_", "t2a_"), ("i2t_", "a2t_"), ("t2i_", "t2v_"), ("i2t_", "v2t_")):
        twin = audio_prefix + name.removeprefix(image_prefix)
        if name.startswith(image_prefix) and twin in metrics:
            return twin
    return None
