"""Retrieval metrics (pure numpy) and the relevance structure of an evaluation set.

Conventions: ``sim`` is (queries, gallery); ``relevant`` is a bool matrix of the same shape. ``recall@k`` is the
share of queries with at least one relevant item in the top k (the usual cross-modal "R@K"); ``precision@k`` the mean
share of relevant items in the top k; ``map@k`` the mean average precision cut at k; ``median_rank`` the median
1-based rank of the first relevant item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def retrieval_metrics(sim: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
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
    out: dict[str, float] = {"queries": float(sim.shape[0]), "median_rank": float(np.median(first))}
    cum = np.cumsum(hits, axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    for k in ks:
        kk = min(k, hits.shape[1])
        out[f"recall@{k}"] = float((first <= k).mean())
        out[f"precision@{k}"] = float(cum[:, kk - 1].mean() / k)
        ap = (hits[:, :kk] * (cum[:, :kk] / ranks[:kk])).sum(axis=1) / np.minimum(n_rel, k)
        out[f"map@{k}"] = float(ap.mean())
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


def both_directions(text_vecs: np.ndarray, item_vecs: np.ndarray, eval_set: EvalSet,
                    ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``t2i_*`` and ``i2t_*`` metrics from unit vectors (cosine = dot product)."""
    sim = text_vecs @ item_vecs.T  # (captions, items)
    t2i = retrieval_metrics(sim, eval_set.relevant, ks)
    i2t = retrieval_metrics(sim.T, eval_set.relevant.T, ks)
    return {f"t2i_{k}": v for k, v in t2i.items()} | {f"i2t_{k}": v for k, v in i2t.items()}


def resolve_metric(name: str, metrics: dict[str, float]) -> str | None:
    """The key for ``name`` in ``metrics``: as is, or its audio twin (``t2i_*`` -> ``t2a_*``, ``i2t_*`` -> ``a2t_*``)
    for datasets without images. None when neither is there."""
    if name in metrics:
        return name
    for image_prefix, audio_prefix in (("t2i_", "t2a_"), ("i2t_", "a2t_")):
        twin = audio_prefix + name.removeprefix(image_prefix)
        if name.startswith(image_prefix) and twin in metrics:
            return twin
    return None
