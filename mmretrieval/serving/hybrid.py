"""Search modes: ``vector`` (the dual encoder), ``keyword`` (Milvus' BM25 over the items' keyword field) and
``hybrid`` (both lists fused).

Hybrid search takes ``max(k, index.hybrid.depth)`` candidates from each list and fuses them here, the same on
Milvus Lite and a server:

* ``rrf`` (reciprocal rank fusion): score = sum over the lists of ``weight / (rrf_k + rank)`` (rank from 1), a list
  that did not return the item adds nothing;
* ``weighted``: score = sum of ``weight x`` the item's score min-max normalised within its list (best 1, worst 0; a
  list whose scores are all equal gives 1), a list that did not return the item adds 0.

Ties go to the item ranked better by the vector list, then to the smaller id. An item without keyword text (a photo,
a clip with no caption) can never be a keyword hit: its vector part stands in for its keyword part (:func:`fuse`), so
hybrid search still finds it by vector among captioned items; a query none of whose words any item has gets the
vector order. Keyword and hybrid modes need a text query and a Milvus with the BM25 function
(:meth:`~mmretrieval.backends.index.MilvusIndex.keyword_search` raises
:class:`~mmretrieval.core.errors.SearchModeUnavailable` where there is none, e.g. a Milvus 2.3 server).

:func:`search_ids` is the hook for evaluation: a mode name, query vectors and texts -> ranked item ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmretrieval.backends.index import KEYWORDS, OUTPUT_FIELDS, STRONG, MilvusIndex
from mmretrieval.core.errors import QueryError

if TYPE_CHECKING:
    from mmretrieval.core.params import HybridParams, IndexParams

SEARCH_MODES = ("vector", "keyword", "hybrid")
MAX_DEPTH = 1000  # Milvus' largest limit per search kept well in range (serving.client.MAX_K)


def check_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`SEARCH_MODES`; raises :class:`QueryError` naming it."""
    if mode not in SEARCH_MODES:
        raise QueryError(f"unknown search mode {mode!r}; use one of {list(SEARCH_MODES)}")
    return str(mode)


def rank_parts(hits: Sequence[dict[str, Any]], rrf_k: int) -> list[float]:
    """Reciprocal-rank values of a list (best first): ``1 / (rrf_k + rank)``, rank from 1."""
    return [1.0 / (rrf_k + rank) for rank in range(1, len(hits) + 1)]


def score_parts(hits: Sequence[dict[str, Any]]) -> list[float]:
    """A list's ``score`` min-max normalised to [0, 1] (best 1; all equal: 1)."""
    scores = [float(h["score"]) for h in hits]
    low, high = (min(scores), max(scores)) if scores else (0.0, 0.0)
    return [(s - low) / (high - low) if high > low else 1.0 for s in scores]


def _fused(lists: Sequence[Sequence[dict[str, Any]]], contributions: list[list[float]], limit: int
           ) -> list[dict[str, Any]]:
    """Sum each item's ``contributions`` (parallel to ``lists``); ties by the best rank in the earliest list that
    has the item, then id."""
    rows: dict[str, dict[str, Any]] = {}
    scores: dict[str, float] = {}
    first: dict[str, tuple[int, int]] = {}
    for which, (hits, parts) in enumerate(zip(lists, contributions, strict=True)):
        for rank, (hit, part) in enumerate(zip(hits, parts, strict=True)):
            key = str(hit["id"])
            rows.setdefault(key, hit)
            first.setdefault(key, (which, rank))
            scores[key] = scores.get(key, 0.0) + part
    best = sorted(scores, key=lambda i: (-scores[i], first[i], i))[:limit]
    return [{**rows[i], "score": scores[i]} for i in best]


def fuse(vector_hits: Sequence[dict[str, Any]], keyword_hits: Sequence[dict[str, Any]], params: HybridParams,
         limit: int, textless: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The vector and keyword lists of one query (best first, hits with ``id`` and ``score``) fused as ``params``
    (``index.hybrid``) says; the best ``limit`` rows, each with its fused ``score``.

    An item in ``textless`` (no keyword text: it can never be a keyword hit) stands in for its missing keyword part
    with its vector part (RRF: as if its keyword rank were its vector rank; weighted: its normalised vector score),
    so a photo without a caption competes with captioned ones on its vector evidence alone instead of sinking
    below every keyword match. When the keyword list is empty (no item has a query word), the vector list is the
    answer."""
    if not keyword_hits:
        return [dict(h) for h in vector_hits[:limit]]
    if params.fusion == "rrf":
        near, words = rank_parts(vector_hits, params.rrf_k), rank_parts(keyword_hits, params.rrf_k)
    else:
        near, words = score_parts(vector_hits), score_parts(keyword_hits)
    stand_in = [(h, part) for h, part in zip(vector_hits, near, strict=True) if str(h["id"]) in textless]
    lists = [vector_hits, keyword_hits, [h for h, _ in stand_in]]
    contributions = [[params.vector_weight * p for p in near], [params.keyword_weight * p for p in words],
                     [params.keyword_weight * p for _, p in stand_in]]
    return _fused(lists, contributions, limit)


def search_rows(index: MilvusIndex, collection: str, params: IndexParams, mode: str,
                vectors: Sequence[Sequence[float]] | None, texts: Sequence[str] | None, k: int, expr: str = "",
                output_fields: Sequence[str] = OUTPUT_FIELDS, consistency: str = STRONG) -> list[list[dict[str, Any]]]:
    """The best ``k`` rows of ``collection`` per query in ``mode``: ``vectors`` (Q, dim) unit query vectors in the
    collection's space (centred as it is) for "vector" and "hybrid", ``texts`` (Q,) for "keyword" and "hybrid".
    Rows are Milvus' dicts (``id``, ``score``, the ``output_fields``), best first; ``score`` is the cosine, BM25 or
    fused score; ``consistency``: Milvus' level (:data:`~mmretrieval.backends.index.SERVING` for a published
    collection). Raises :class:`QueryError` for a bad mode or missing queries,
    :class:`~mmretrieval.core.errors.SearchModeUnavailable` where keyword search is not possible, and what
    :meth:`MilvusIndex.search` raises."""
    check_mode(mode)
    if mode != "keyword" and vectors is None:
        raise QueryError(f"search mode {mode!r} needs query vectors")
    if mode != "vector" and texts is None:
        raise QueryError(f"search mode {mode!r} needs a text query (keyword search matches words)")
    if vectors is not None and texts is not None and len(vectors) != len(texts):
        raise QueryError(f"{len(vectors)} query vectors but {len(texts)} query texts: give one of each per query")
    if mode == "vector":
        return index.search(collection, _given(vectors), k, params, expr, output_fields, consistency)
    if mode == "keyword":
        return index.keyword_search(collection, _given(texts), k, expr, output_fields, consistency)
    depth = min(MAX_DEPTH, max(k, params.hybrid.depth))
    words = index.keyword_search(collection, _given(texts), depth, expr, output_fields, consistency)
    asked = list(dict.fromkeys([*output_fields, KEYWORDS]))
    near = index.search(collection, _given(vectors), depth, params, expr, asked, consistency)
    fused = [fuse(v, w, params.hybrid, k, textless_ids(v)) for v, w in zip(near, words, strict=True)]
    drop = KEYWORDS not in output_fields
    return [[{f: x for f, x in h.items() if not (drop and f == KEYWORDS)} for h in hits] for hits in fused]


def textless_ids(hits: Sequence[dict[str, Any]]) -> frozenset[str]:
    """The ids of the hits whose keyword text is empty (they carry the ``keywords`` field)."""
    return frozenset(str(h["id"]) for h in hits if not str(h.get(KEYWORDS) or "").strip())


def _given(queries: Any) -> Any:
    """``queries`` checked present by the caller (a list or an array: never tested for truth)."""
    assert queries is not None
    return queries


def search_ids(index: MilvusIndex, collection: str, params: IndexParams, mode: str,
               query_vectors: Sequence[Sequence[float]] | None, query_texts: Sequence[str] | None, k: int,
               expr: str = "", consistency: str = STRONG) -> list[list[str]]:
    """Ranked item ids (best first, at most ``k``) per query in ``mode`` (:func:`search_rows`): what serving
    returns for these queries, for evaluation (``mmr evaluate`` per mode)."""
    rows = search_rows(index, collection, params, mode, query_vectors, query_texts, k, expr, ["id"], consistency)
    return [[str(h["id"]) for h in hits] for hits in rows]
